"""The test kit: a configuration builder, the collector as the product builds it (only faster waits),
and an observer that records what the collector reports."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from qualys_collector.app import ClientFactory, build_client
from qualys_collector.config import build_config
from qualys_collector.config.schema import CollectorConfig
from qualys_collector.engine.cycle import CycleStats, Job
from qualys_collector.observability.observer import Observer
from qualys_collector.qualys.retry import RetryPolicy

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
#: Retries that take milliseconds: tests assert what is retried, never how long it takes.
FAST = RetryPolicy(
    attempts=4, total_seconds=30, base_backoff=0.01, max_backoff=0.05, max_wait=0.2, concurrency_wait=0.05
)


def no_sleep(_seconds: float) -> None:
    """A wait that returns at once (the stop event is still checked around it)."""


def clients(policy: RetryPolicy = FAST) -> ClientFactory:
    """The product's client factory with ``policy`` instead of the configured retry bounds."""
    return functools.partial(build_client, policy=policy)


def raw_config(
    state: Path,
    *,
    qualys: dict[str, Any] | None = None,
    qualys_fim: dict[str, Any] | None = None,
    outputs: dict[str, Any] | None = None,
    **globals_: Any,
) -> dict[str, Any]:
    """A configuration as a YAML file would hold it: state under ``state``, the given inputs and outputs.

    ``qualys``/``qualys_fim`` are input blocks, e.g. ``vm_input(url, {"host_list": {}})``.
    """
    raw: dict[str, Any] = {
        "globals": {"persistence": {"config": {"directory_name": str(state)}}, **globals_},
        "inputs": {},
    }
    if outputs is not None:
        raw["outputs"] = outputs
    if qualys is not None:
        raw["inputs"]["qualys"] = qualys
    if qualys_fim is not None:
        raw["inputs"]["qualys_fim"] = qualys_fim
    return raw


def vm_input(
    url: str,
    services: dict[str, Any],
    *,
    id: str = "7",
    username: str = "demo",
    password: str = "demo",
    **extra: Any,
) -> dict[str, Any]:
    """An ``inputs.qualys`` block against ``url``; ``extra`` are more keys of the block (``connection``...)."""
    return {
        "id": id,
        "credentials": {"base_url": url, "username": username, "password": password},
        "services": services,
        **extra,
    }


def fim_input(
    url: str,
    services: dict[str, Any],
    *,
    id: str = "5",
    username: str = "demo",
    password: str = "demo",
    auth_url: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An ``inputs.qualys_fim`` block against the simulator's gateway at ``url``."""
    block = vm_input(url, services, id=id, username=username, password=password, **extra)
    if auth_url is not None:
        block["credentials"]["auth_url"] = auth_url
    return block


def config(state: Path, **kw: Any) -> CollectorConfig:
    """:func:`raw_config`, validated as the product validates it."""
    return build_config(raw_config(state, **kw), warnings=[])


def file_output(path: Path, name: str = "out") -> dict[str, Any]:
    """An ``outputs`` section with one file output."""
    return {name: {"type": "file", "config": {"path": str(path)}}}


class Recorder(Observer):
    """Keeps each service's last cycle figures; ``on_page`` lets a test act after a page is committed."""

    def __init__(self, on_page: Callable[[Job, CycleStats], None] | None = None) -> None:
        self.stats: dict[str, CycleStats | None] = {}
        self.pages = 0
        self.on_page = on_page

    def page(self, job: Job, stats: CycleStats) -> None:
        self.pages += 1
        if self.on_page is not None:
            self.on_page(job, stats)

    def cycle(self, job: Job, stats: CycleStats | None) -> None:
        self.stats[job.spec.name] = stats


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    """Write ``raw`` as the file a user would: YAML, or JSON for a ``.json`` path (the collector-server shape)."""
    path.write_text(json.dumps(raw) if path.suffix == ".json" else yaml.safe_dump(raw))
    return path
