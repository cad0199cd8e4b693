"""Run collector jobs against a simulator served on loopback, with a shared frozen clock."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from qualys_collector.app import Collector, make_job
from qualys_collector.config import build_config
from qualys_collector.engine.cycle import CycleStats, Job
from qualys_collector.qualys.budget import ApiBudget
from qualys_collector.qualys.retry import RetryPolicy
from qualys_collector.qualys.vm import VmClient
from qualys_collector.services.registry import load_all
from qualys_collector.simulator import Simulator

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
FAST = RetryPolicy(
    attempts=4, total_seconds=30, base_backoff=0.01, max_backoff=0.05, max_wait=0.2, concurrency_wait=0.05
)


@dataclass
class Run:
    """One collector set up against ``sim``; ``cycle()`` runs every job once and delivers."""

    sim: Simulator
    url: str
    state: Path
    services: dict[str, dict[str, Any]]
    username: str = "demo"
    password: str = "demo"
    policy: RetryPolicy = FAST
    salt: str | None = None
    stats: dict[str, CycleStats | None] = field(default_factory=dict)

    def config(self) -> Any:
        raw = {
            "globals": {"persistence": {"config": {"directory_name": str(self.state)}}},
            "inputs": {
                "qualys": {
                    "id": "7",
                    "environment": "test",
                    "credentials": {"base_url": self.url, "username": self.username, "password": self.password},
                    "services": self.services,
                    **({"obfuscation_salt": self.salt} if self.salt else {}),
                }
            },
        }
        return build_config(raw, warnings=[])

    def jobs(self) -> tuple[list[Job], VmClient]:
        config = self.config()
        block = config.inputs.qualys
        client = VmClient(
            self.url, self.username, self.password, budget=ApiBudget(), policy=self.policy, sleep=lambda s: None
        )
        registry = load_all()
        jobs = [
            make_job(
                "qualys",
                block.id,
                block.environment,
                options,
                registry[name].spec,
                registry[name].build(client, options),
                salt=self.salt,
            )
            for name, options in block.services.items()
        ]
        return jobs, client

    def cycle(self) -> bool:
        jobs, client = self.jobs()
        collector = Collector(
            self.config(),
            clock=lambda: self.sim.now(),
            jobs=jobs,
            on_cycle=lambda job, stats: self.stats.__setitem__(job.spec.name, stats),
        )
        try:
            return collector.run_once()
        finally:
            collector.close()
            client.close()

    def events(self) -> list[dict[str, Any]]:
        path = self.state / "events.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

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
