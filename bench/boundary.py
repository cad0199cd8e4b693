"""Boundary dedup cost when many records share one timestamp: records/s through the engine's cycle
(cursor, events, page commits with their checkpoint, real SQLite outbox) at 10k/40k/80k records in one
second, pages of 1,000, for a sorted service (the checkpoint moves every page, as fim_events) and an
unsorted one (it moves when the window completes, as user_activity). Flat figures mean O(records).

    python bench/boundary.py
    python bench/boundary.py --counts 10000 80000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from qualys_collector.engine.cycle import Job, run_cycle
from qualys_collector.engine.outbox import Outbox
from qualys_collector.engine.source import CursorMode, ServiceSpec
from qualys_collector.model import JSON, Page, Record, SourceState, Window

START = datetime(2026, 1, 1, tzinfo=UTC)
SAME = START + timedelta(minutes=5)
PAGE = 1000


class SameSecond:
    """``count`` records at one timestamp, ``PAGE`` per page, resumable by offset."""

    def __init__(self, count: int) -> None:
        self.count = count

    def pages(self, window: Window, token: JSON | None, extra: SourceState) -> Iterator[Page]:
        offset = int(token["offset"]) if token else 0
        while offset < self.count:
            end = min(self.count, offset + PAGE)
            records = [Record(data={"n": n}, key=f"record-{n:08d}", cursor=SAME) for n in range(offset, end)]
            yield Page(records, token={"offset": end} if end < self.count else None)
            offset = end


def measure(count: int, *, is_sorted: bool) -> float:
    spec = ServiceSpec(
        name="bench_sorted" if is_sorted else "bench_unsorted",
        default_tag="bench.boundary",
        cursor_field="t",
        mode=CursorMode.RECORD,
        is_sorted=is_sorted,
    )
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox(Path(tmp))
        try:
            job = Job(input_name="bench", input_id="1", spec=spec, source=SameSecond(count), tag="bench.boundary")
            job.start_time = START
            started = time.perf_counter()
            stats = run_cycle(job, outbox, clock=lambda: START + timedelta(hours=1))
            seconds = time.perf_counter() - started
        finally:
            outbox.close()
    assert stats.sent == count, stats.sent
    return count / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[10_000, 40_000, 80_000])
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    line = []
    for is_sorted in (True, False):
        for count in args.counts:
            rate = measure(count, is_sorted=is_sorted)
            kind = "sorted" if is_sorted else "unsorted"
            print(f"{kind:8s} {count:>7,} records at one timestamp: {rate:>9,.0f} records/s")
            line.append(f"{kind}_{count}={rate:.0f}")
    print(" ".join(line))


if __name__ == "__main__":
    main()
