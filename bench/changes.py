"""``host_list_detection.emit: all`` vs ``emit: changes``: event volume over 30 simulated days of churn, and the
state ``changes`` keeps per detection key.

1. Volume: the simulator's detection lifecycle (``SimConfig(lifecycle=True)``: new findings, fixes,
   re-openings, severity and QDS changes, late and purged hosts), every host processed once a day, the real
   collector pulling every 12 simulated hours into a file output, once per mode over the same 30 days. Prints
   events and bytes delivered per mode, and how many of the changes were snapshot events.
2. State: ``--keys`` detection keys (200 hosts x 10 detections per page, as the parser hands them over) pushed
   through the change filter into a real state database: bytes of database per key, pages per second, and
   the resident memory before and after (flat: the state is on disk).

    python bench/changes.py
    python bench/changes.py --hosts 2000 --days 30 --keys 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import psutil

from qualys_collector.app import Collector
from qualys_collector.config import build_config
from qualys_collector.engine.cursor import BoundaryCursor
from qualys_collector.engine.pipeline import EventBuilder, Pipeline
from qualys_collector.engine.store import StateStore
from qualys_collector.model import Page, Record
from qualys_collector.services.host_list_detection import CHANGE_TABLE, HostListDetectionOptions, change_filter
from qualys_collector.simulator import Limits, Simulator
from qualys_collector.simulator.data import SimConfig

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
TAG = "vuln.qualys.hostdetections"


def volume(mode: str, hosts: int, days: int, step_hours: int, snapshot_days: int | None) -> tuple[Counter[str], int]:
    """Events per ``@change.kind`` (``all`` for the seed's events) and bytes delivered by one mode."""
    sim = Simulator(
        SimConfig(
            seed=19,
            hosts=hosts,
            detections_per_host=8,
            base=NOW - timedelta(days=1),
            span=timedelta(days=1),
            host_interval=timedelta(hours=24),
            lifecycle=True,
            purged_fraction=0.05,
            lifecycle_days=days,
        ),
        vm_limits=Limits(rate=1_000_000, window=60, concurrency=4),
    )
    sim.frozen = NOW
    url = sim.start()
    block: dict[str, Any] = {"emit": mode, "batch_size": 500}
    if snapshot_days:
        block["snapshot_every_days"] = snapshot_days
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "events.jsonl"
            raw = {
                "globals": {"persistence": {"config": {"directory_name": f"{tmp}/state"}}},
                "outputs": {"out": {"type": "file", "config": {"path": str(out)}}},
                "inputs": {
                    "qualys": {
                        "id": "1",
                        "credentials": {"base_url": url, "username": "demo", "password": "demo"},
                        "services": {"host_list_detection": block},
                    }
                },
            }
            config = build_config(raw, warnings=[])
            for n in range(days * 24 // step_hours + 1):
                if n:
                    sim.offset += timedelta(hours=step_hours)
                collector = Collector(config, clock=sim.now)
                try:
                    if not collector.run_once():
                        raise SystemExit(f"the {mode} cycle {n} failed")
                finally:
                    collector.close()
            kinds: Counter[str] = Counter()
            size = 0
            with out.open("rb") as lines:
                for line in lines:
                    event = json.loads(line)
                    if event["tag"] != TAG:
                        continue
                    size += len(line)
                    change = event["event"].get("@change")
                    kinds[change["kind"] if change else "all"] += 1
            return kinds, size
    finally:
        sim.stop()


def state_cost(keys: int) -> None:
    """Push ``keys`` detection keys through the change filter; print bytes per key, speed, memory."""
    process = psutil.Process()
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp))
        store.declare(CHANGE_TABLE, "host_list_detection")
        pipeline = Pipeline.standard(
            BoundaryCursor(None, [], None),  # type: ignore[arg-type]
            EventBuilder(tag=TAG, pulling_id=1),
            change_filter=change_filter(HostListDetectionOptions(emit="changes")),
        )
        before = store.path.stat().st_size
        rss_start = process.memory_info().rss
        started = time.perf_counter()
        pages = 0
        for first in range(0, keys, 2000):
            records = []
            for n in range(first, min(keys, first + 2000)):
                host = str(100_000 + n // 10)
                detection = {
                    "UNIQUE_VULN_ID": str(10_000_000 + n),
                    "QID": str(10_000 + n % 4000),
                    "TYPE": "Confirmed",
                    "SEVERITY": str(1 + n % 5),
                    "QDS": {"@severity": "MEDIUM", "#text": str(1 + n % 100)},
                    "PORT": "443",
                    "PROTOCOL": "tcp",
                    "SSL": "1",
                    "STATUS": ("New", "Active", "Fixed", "Re-Opened")[n % 4],
                    "FIRST_FOUND_DATETIME": "2026-01-01T00:00:00Z",
                    "LAST_FIXED_DATETIME": "2026-05-01T00:00:00Z" if n % 4 == 2 else None,
                    "IS_IGNORED": "0",
                    "IS_DISABLED": "0",
                }
                key = f"{host}:{detection['UNIQUE_VULN_ID']}"
                records.append(Record(data={"HOST": {"ID": host}, "DETECTION": detection}, key=key))
            with store.transaction("1") as tx:
                pipeline.run(Page(records, token={"id_min": 1}), tx)
            pages += 1
            if pages == 50:
                rss_start = process.memory_info().rss  # after the first pages: caches warmed up
        seconds = time.perf_counter() - started
        store.close()
        size = store.path.stat().st_size + sum(p.stat().st_size for p in Path(tmp).glob("*-wal") if p.exists())
        rate = keys / seconds
        print(f"\nstate: {keys:,} detection keys in {pages:,} pages of 2,000 ({seconds:.1f} s, {rate:,.0f} keys/s)")
        print(f"  database: {(size - before) / keys:.0f} bytes per key ({(size - before) / 2**20:,.0f} MiB)")
        print(
            f"  resident memory: {rss_start / 2**20:,.0f} MiB after 50 pages, "
            f"{process.memory_info().rss / 2**20:,.0f} MiB at the end"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--step-hours", type=int, default=12)
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"{args.hosts:,} hosts x 8 detection slots, {args.days} simulated days, a pull every {args.step_hours} h")
    runs = {"all": ("all", None), "changes": ("changes", None), "changes/30d": ("changes", 30)}
    results = {name: volume(mode, args.hosts, args.days, args.step_hours, days) for name, (mode, days) in runs.items()}
    all_events, all_size = sum(results["all"][0].values()), results["all"][1]
    print(f"{'mode':12} {'events':>10} {'MiB':>8} {'vs all':>7}  by kind")
    for name, (kinds, size) in results.items():
        detail = ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items()))
        ratio = sum(kinds.values()) / max(1, all_events)
        print(f"{name:12} {sum(kinds.values()):>10,} {size / 2**20:>8.1f} {ratio:>7.3f}  {detail}")
    print("(changes: a snapshot every 7 days, the default; changes/30d: snapshot_every_days: 30)")
    print(f"bytes: changes {results['changes'][1] / max(1, all_size):.3f} of all")
    if args.keys:
        state_cost(args.keys)


if __name__ == "__main__":
    main()
