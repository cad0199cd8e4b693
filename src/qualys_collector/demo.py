"""``qualys-collector demo``: the whole product in one command, against the built-in simulator.

Starts the simulator on loopback, writes a throwaway configuration with all six services, runs one
full pull of each into the local file output with a live progress display, and prints a table.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from qualys_collector.app import Collector
from qualys_collector.config import load_config
from qualys_collector.engine.cycle import CycleStats, Job
from qualys_collector.observability.logging import SeedFormatter
from qualys_collector.observability.observer import Observer
from qualys_collector.redact import RedactingFilter
from qualys_collector.relay import Certs, Rsyslog
from qualys_collector.simulator import SimConfig, Simulator

SERVICES = ("vm_scans", "host_list", "host_list_detection", "user_activity", "fim_events", "fim_incidents")


@dataclass
class Row:
    """Live figures of one service."""

    events: int = 0
    duplicates: int = 0
    requests: int = 0
    seconds: float = 0.0
    state: str = "waiting"


def write_config(directory: Path, url: str, start: datetime, relay: Rsyslog | None = None) -> Path:
    """A configuration with all six services against ``url`` (and a Devo output to ``relay``)."""
    since = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    outputs: dict[str, Any] = {"local": {"type": "file", "config": {"path": str(directory / "events.jsonl")}}}
    if relay is not None:
        outputs["devo_local"] = {
            "type": "devo_platform",
            "config": {
                "address": "127.0.0.1",
                "port": relay.port,
                "type": "SSL",
                "chain": str(relay.certs.chain),
                "cert": str(relay.certs.client_cert),
                "key": str(relay.certs.client_key),
            },
        }
    config = {
        "globals": {"name": "qualys-demo", "persistence": {"config": {"directory_name": str(directory / "state")}}},
        "outputs": outputs,
        "inputs": {
            "qualys": {
                "id": "demo",
                "environment": "demo",
                "credentials": {"base_url": url, "username": "demo", "password": "demo"},
                "services": {
                    "vm_scans": {"start_time_utc": since},
                    "host_list": {"start_time_utc": since},
                    "host_list_detection": {"start_time_utc": since},
                    "user_activity": {"start_time_utc": since},
                },
            },
            "qualys_fim": {
                "id": "demo",
                "environment": "demo",
                "credentials": {"base_url": url, "auth_url": f"{url}/auth", "username": "demo", "password": "demo"},
                "services": {
                    "fim_events": {"start_time_utc": since, "settle_lag_seconds": 0},
                    "fim_incidents": {"start_time_utc": since, "settle_lag_seconds": 0, "include_events": True},
                },
            },
        },
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


class Progress(Observer):
    """Keeps the table's rows up to date as pages and cycles end."""

    def __init__(self, rows: dict[str, Row]) -> None:
        self.rows = rows

    def page(self, job: Job, stats: CycleStats) -> None:
        self._show(job, stats, "pulling")

    def cycle(self, job: Job, stats: CycleStats | None) -> None:
        if stats is None:
            self.rows[job.spec.name].state = "FAILED (see collector.log)"
        else:
            self._show(job, stats, "done")

    def _show(self, job: Job, stats: CycleStats, state: str) -> None:
        row = self.rows[job.spec.name]
        row.events, row.duplicates, row.requests = stats.sent, stats.duplicates, stats.requests
        row.seconds, row.state = stats.seconds, state


def _table(rows: dict[str, Row]) -> Table:
    table = Table(title="qualys-collector demo: one full pull of every service")
    table.add_column("service", no_wrap=True, min_width=19)
    for column in ("state", "events", "duplicates filtered", "requests", "seconds", "events/s"):
        table.add_column(column, justify="left" if column == "state" else "right")
    for name, row in rows.items():
        rate = row.events / row.seconds if row.seconds > 0 else 0.0
        table.add_row(
            name,
            row.state,
            str(row.events),
            str(row.duplicates),
            str(row.requests),
            f"{row.seconds:.2f}",
            f"{rate:,.0f}",
        )
    return table


def run_demo(directory: Path, *, hosts: int, minutes: int, console: Console | None = None) -> int:
    """Run the demo; returns the process exit code."""
    console = console or Console()
    directory = directory.resolve()  # rsyslogd resolves relative paths from /
    directory.mkdir(parents=True, exist_ok=True)
    for old in ("events.jsonl",):
        (directory / old).unlink(missing_ok=True)
    handler = logging.FileHandler(directory / "collector.log", encoding="utf-8")
    handler.setFormatter(SeedFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    now = datetime.now(UTC).replace(microsecond=0)
    span = timedelta(minutes=minutes)
    sim = Simulator(
        SimConfig(
            hosts=hosts,
            detections_per_host=10,
            scans=max(5, minutes // 60),
            activity_rows=max(50, minutes),
            fim_events=max(100, hosts * 5),
            fim_incidents=max(5, hosts // 20),
            base=now - span,
            span=span,
            host_interval=max(span, timedelta(minutes=10)),
        )
    )
    url = sim.start()
    rows = {name: Row() for name in SERVICES}
    relay: Rsyslog | None = None
    try:
        if Rsyslog.available():
            relay = Rsyslog(directory / "relay", Certs.mint(directory / "certs"))
            (directory / "relay" / "received.log").unlink(missing_ok=True)
            relay.start()
        config_path = write_config(directory, url, now - span - timedelta(minutes=1), relay)
        config = load_config(config_path)
        state = directory / "state"
        if state.exists():
            for child in state.iterdir():
                child.unlink()

        collector = Collector(config, observer=Progress(rows))
        started = time.monotonic()
        with Live(_table(rows), console=console, refresh_per_second=8) as live:
            result: list[bool] = []
            worker = threading.Thread(target=lambda: result.append(collector.run_once()), daemon=True)
            worker.start()
            while worker.is_alive():
                live.update(_table(rows))
                worker.join(0.125)
            live.update(_table(rows))
        collector.close()
        ok = bool(result and result[0])
        total = sum(r.events for r in rows.values())
        console.print(
            f"{'Done' if ok else 'FAILED'}: {total} events in {time.monotonic() - started:.1f} s from a simulated "
            f"subscription of {hosts} hosts."
        )
        console.print(f'  events:  {directory / "events.jsonl"}  (JSON Lines: {{"tag": ..., "event": ...}})')
        if relay is not None:
            received = len(relay.wait_for(total, timeout=30))
            console.print(
                f"  relay:   {received} events received over mutual TLS by a local rsyslog ({relay.out}, "
                "Devo's line format)"
            )
        else:
            console.print("  relay:   rsyslog is not installed, so no local Devo relay was started")
        console.print(f"  state:   {directory / 'state'}  (qualys-collector state show -c {config_path})")
        console.print(f"  config:  {config_path}")
        console.print(f"  log:     {directory / 'collector.log'}")
        return 0 if ok else 1
    finally:
        if relay is not None:
            relay.stop()
        sim.stop()
