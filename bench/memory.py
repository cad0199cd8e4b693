"""Peak memory of the collector when events are huge: host detections whose ``RESULTS`` are megabytes each.

Issue 16 item 12: "100 events with 8 MB RESULTS -> 5 GB RSS" — a page held 200 hosts whatever their size, and a
delivery batch 1,000 events whatever theirs. The simulator runs in this process; the collector runs as
``qualys-collector run --once`` in a child process (a file output, so nothing but the collector is measured),
and its peak RSS (with any child process) is sampled every 50 ms.

    python bench/memory.py                      # 100 detections with 8 MB RESULTS
    python bench/memory.py --events 30 --mb 8   # smaller

The last line is machine-readable: ``events=N results_mb=M peak_rss_mb=R delivered=D``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from harness import CLI, PeakRss

from qualys_collector.simulator import Limits, SimConfig, Simulator


def measure(events: int, results_mb: float, root: Path) -> tuple[float, int, float]:
    """(collector peak RSS in MB, events delivered, seconds)."""
    now = datetime.now(UTC).replace(microsecond=0)
    sim = Simulator(
        SimConfig(
            seed=3,
            hosts=events,
            detections_per_host=1,
            results_bytes=int(results_mb * 2**20),
            base=now - timedelta(days=1),
            span=timedelta(hours=12),
            host_interval=timedelta(days=365),
        ),
        vm_limits=Limits(rate=1_000_000, window=60, concurrency=2),  # Qualys' usual limit
    )
    sim.frozen = now
    url = sim.start()
    out = root / "events.jsonl"
    config = {
        "globals": {"persistence": {"config": {"directory_name": str(root / "state")}}},
        "outputs": {"file": {"type": "file", "config": {"path": str(out)}}},
        "inputs": {
            "qualys": {
                "id": "bench",
                "credentials": {"base_url": url, "username": "demo", "password": "demo"},
                "services": {
                    "host_list_detection": {
                        "start_time_utc": (now - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "filters": {"status": ["New", "Active", "Fixed", "Re-Opened"]},
                    }
                },
            }
        },
    }
    path = root / "config.json"
    path.write_text(json.dumps(config))
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [*CLI, "run", "-c", str(path), "--once"],
            stdout=subprocess.DEVNULL,
            stderr=(root / "collector.log").open("wb"),
        )
        rss = PeakRss(proc.pid)
        rss.start()
        code = proc.wait()
        peak = rss.stop()
    finally:
        sim.stop()
    seconds = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"the collector failed (exit {code}); see {root / 'collector.log'}")
    with out.open("rb") as handle:
        delivered = sum(1 for line in handle if b'"vuln.qualys.hostdetections"' in line[:200])
    return peak, delivered, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100, help="detections (one per host)")
    parser.add_argument("--mb", type=float, default=8.0, help="size of each RESULTS field in MB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qc-memory-") as tmp:
        peak, delivered, seconds = measure(args.events, args.mb, Path(tmp))
    print(
        f"{args.events} detections with {args.mb:g} MB RESULTS each: collector peak RSS {peak:.0f} MB, "
        f"{delivered} delivered in {seconds:.1f} s"
    )
    print(f"events={args.events} results_mb={args.mb:g} peak_rss_mb={peak:.0f} delivered={delivered}")


if __name__ == "__main__":
    main()
