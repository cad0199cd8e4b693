"""Run the collector, built as the product builds it, against a simulator on loopback with a frozen clock."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from qualys_collector.app import Collector
from qualys_collector.config.schema import CollectorConfig
from qualys_collector.engine.cycle import CycleStats
from qualys_collector.engine.summary import SUMMARY_TAG
from qualys_collector.qualys.retry import RetryPolicy
from qualys_collector.simulator import Simulator
from tests.helpers.kit import FAST, NOW, Recorder, clients, config, fim_input, no_sleep, vm_input

__all__ = ["FAST", "NOW", "Run", "advance", "start_sim"]


@dataclass
class Run:
    """One collector set up against ``sim``; ``cycle()`` runs every job once and delivers.

    ``input`` chooses the VM (``qualys``) or the FIM (``qualys_fim``) input; ``sleep=None`` makes the waits real.
    """

    sim: Simulator
    url: str
    state: Path
    services: dict[str, dict[str, Any]]
    input: str = "qualys"
    password: str = "demo"
    policy: RetryPolicy = FAST
    salt: str | None = None
    sleep: Callable[[float], None] | None = no_sleep
    stats: dict[str, CycleStats | None] = field(default_factory=dict)

    def config(self) -> CollectorConfig:
        if self.input == "qualys_fim":
            return config(self.state, qualys_fim=fim_input(self.url, self.services, password=self.password))
        extra = {"obfuscation_salt": self.salt} if self.salt else {}
        block = vm_input(self.url, self.services, password=self.password, environment="test", **extra)
        return config(self.state, qualys=block)

    def collector(
        self, config: CollectorConfig | None = None, *, recorder: Recorder | None = None, **kw: Any
    ) -> Collector:
        """The collector of this run (``kw``: ``clock``, ``sinks``... as :class:`Collector` takes them)."""
        recorder = recorder or Recorder()
        recorder.stats = self.stats
        kw.setdefault("clock", self.sim.now)
        return Collector(
            config or self.config(), sleep=self.sleep, clients=clients(self.policy), observer=recorder, **kw
        )

    def cycle(self, **kw: Any) -> bool:
        collector = self.collector(**kw)
        try:
            return collector.run_once()
        finally:
            collector.close()

    def events(self, *, summaries: bool = False) -> list[dict[str, Any]]:
        """Delivered lines; each completed window's summary event only with ``summaries``."""
        path = self.state / "events.jsonl"
        if not path.exists():
            return []
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return [line for line in lines if summaries or line["tag"] != SUMMARY_TAG]

    def keys(self, service_tag: str, key: str) -> Counter[str]:
        out: Counter[str] = Counter()
        for line in self.events():
            if line["tag"] == service_tag:
                value: Any = line["event"]
                for part in key.split("."):
                    value = value[part]
                out[str(value)] += 1
        return out


def start_sim(sim: Simulator, now: datetime = NOW) -> str:
    sim.frozen = now
    return sim.start()


def advance(sim: Simulator, hours: float) -> None:
    sim.offset += timedelta(hours=hours)
