"""A 30-day backfill against the simulator on loopback: wall time, windows, Qualys calls, events/s, for a FIM
and a VM service, with ``max_window_seconds`` of one day (30 capped windows) and without a cap (one window).

Capped windows follow each other at once (#16 item 14); before, each waited ``request_period_in_seconds``,
so the figure printed beside is what the same backfill would have spent waiting: windows x period.

    python bench/backfill.py
    python bench/backfill.py --days 90 --events 30000
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from qualys_collector.backfill import run_backfill
from qualys_collector.config import build_config
from qualys_collector.model import format_seed_datetime
from qualys_collector.simulator import Limits, SimConfig, Simulator

PERIOD = 60  # the default request_period_in_seconds


def measure(sim: Simulator, url: str, service: str, days: int, cap: int | None) -> tuple[float, int, int, int]:
    """(seconds, windows, Qualys calls, events) of one backfill into a file output."""
    end = sim.now().replace(microsecond=0) - timedelta(days=1)
    start = end - timedelta(days=days)
    options: dict[str, object] = {"max_window_seconds": cap} if cap else {}
    if service == "fim_events":
        options["page_size"] = 1000
    block = {"credentials": {"base_url": url, "username": "demo", "password": "demo"}, "services": {service: options}}
    with tempfile.TemporaryDirectory() as tmp:
        raw = {
            "globals": {"persistence": {"config": {"directory_name": f"{tmp}/state"}}},
            "outputs": {"out": {"type": "file", "config": {"path": f"{tmp}/events.jsonl"}}},
            "inputs": {("qualys_fim" if service.startswith("fim") else "qualys"): {"id": "1", **block}},
        }
        config = build_config(raw, warnings=[])
        calls = sum(sim.requests.values())
        began = time.perf_counter()
        ok = run_backfill(
            config, None, service, format_seed_datetime(start), format_seed_datetime(end), stop=threading.Event()
        )
        seconds = time.perf_counter() - began
        assert ok
        lines = Path(f"{tmp}/events.jsonl").read_text().splitlines()
    windows = sum('"@summary"' in line for line in lines)
    return seconds, windows, sum(sim.requests.values()) - calls, len(lines) - windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--events", type=int, default=10_000, help="FIM events and activity rows in the history")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    now = datetime.now(UTC).replace(microsecond=0)
    sim = Simulator(
        SimConfig(
            seed=5,
            hosts=200,
            detections_per_host=5,
            activity_rows=args.events,
            fim_events=args.events,
            base=now - timedelta(days=args.days + 2),
            span=timedelta(days=args.days + 2),
            host_interval=timedelta(days=3650),
        ),
        vm_limits=Limits(rate=100_000, window=60, concurrency=2),
        fim_limits=Limits(rate=100_000, window=60),
    )
    url = sim.start()
    print(f"backfill of {args.days} days, simulator on loopback ({args.events} FIM events / activity rows)")
    print(
        f"{'service':<22}{'max_window':>12}{'windows':>9}{'calls':>7}{'events':>8}{'seconds':>9}{'ev/s':>8}"
        f"{'waited before':>15}"
    )
    try:
        for service in ("fim_events", "user_activity"):
            for cap in (86400, None):
                seconds, windows, calls, events = measure(sim, url, service, args.days, cap)
                before = (windows - 1) * PERIOD
                print(
                    f"{service:<22}{(str(cap) + ' s') if cap else 'none':>12}{windows:>9}{calls:>7}{events:>8}"
                    f"{seconds:>9.2f}{events / seconds:>8.0f}{before:>13} s"
                )
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
