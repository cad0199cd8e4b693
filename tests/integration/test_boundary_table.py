"""Boundary dedup when many records share one timestamp: each page commit stores only the keys it added
(its checkpoint lists none), so the cost is O(records) per window (the speed is in bench/boundary.py);
and the dedup stays exact across pages, a stop mid-window, the next window and an older checkpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qualys_collector.engine.cycle import CycleStats, Job, run_cycle
from qualys_collector.engine.outbox import Outbox
from qualys_collector.engine.source import CursorMode, ServiceSpec
from qualys_collector.engine.summary import SUMMARY_TAG
from qualys_collector.model import JSON, Page, Record, SourceState, Window

pytestmark = pytest.mark.integration
START = datetime(2026, 1, 1, tzinfo=UTC)
SAME = START + timedelta(minutes=5, milliseconds=250)
SORTED = ServiceSpec("fim_events", "t.sorted", "processedTime", CursorMode.RECORD, is_sorted=True)
UNSORTED = ServiceSpec("user_activity", "t.unsorted", "Date", CursorMode.RECORD)


class SameSecond:
    """The keys ``keys`` at one timestamp, ``size`` per page, resumable by offset."""

    def __init__(self, keys: list[str], size: int = 500) -> None:
        self.keys, self.size = keys, size

    def pages(self, window: Window, token: JSON | None, extra: SourceState) -> Iterator[Page]:
        offset = int(token["offset"]) if token else 0
        while offset < len(self.keys):
            end = min(len(self.keys), offset + self.size)
            records = [Record(data={"id": k}, key=k, cursor=SAME) for k in self.keys[offset:end]]
            yield Page(records, token={"offset": end} if end < len(self.keys) else None)
            offset = end


def job(spec: ServiceSpec, keys: list[str]) -> Job:
    return Job(
        input_name="qualys", input_id="9", spec=spec, source=SameSecond(keys), tag=spec.default_tag, start_time=START
    )


def delivered(outbox: Outbox) -> list[str]:
    outbox.register_outputs(["probe"])
    return [json.loads(e.body)["id"] for e in outbox.read("probe", 1_000_000) if e.tag != SUMMARY_TAG]


@pytest.mark.parametrize("spec", [SORTED, UNSORTED], ids=["sorted", "unsorted"])
def test_page_checkpoints_stay_small_and_every_record_arrives_once(tmp_path: Path, spec: ServiceSpec) -> None:
    keys = [f"k{n:06d}" for n in range(15_000)]
    outbox = Outbox(tmp_path)
    sizes: list[int] = []

    def on_page(_job: Job, _stats: CycleStats) -> None:
        sizes.append(len(json.dumps(outbox.load_checkpoint("9", spec.name))))

    try:
        stats = run_cycle(job(spec, keys), outbox, clock=lambda: START + timedelta(hours=1), on_page=on_page)
        assert stats.sent == len(keys)
        assert len(sizes) == 30
        assert max(sizes[:-1]) < 1500  # a page's checkpoint lists no boundary keys: 15,000 would be ~150 KB
        assert sorted(delivered(outbox)) == keys
    finally:
        outbox.close()


@pytest.mark.parametrize("spec", [SORTED, UNSORTED], ids=["sorted", "unsorted"])
def test_a_stop_mid_window_and_the_next_window_dedup_exactly(tmp_path: Path, spec: ServiceSpec) -> None:
    keys = [f"k{n:05d}" for n in range(6_000)]
    outbox = Outbox(tmp_path)
    stop = threading.Event()

    def stop_after_five(_job: Job, stats: CycleStats) -> None:
        if stats.pages == 5:
            stop.set()

    try:
        first = run_cycle(
            job(spec, keys), outbox, clock=lambda: START + timedelta(hours=1), stop=stop, on_page=stop_after_five
        )
        assert not first.completed
        rest = run_cycle(job(spec, keys), outbox, clock=lambda: START + timedelta(hours=1))
        assert rest.completed
        assert first.sent + rest.sent == len(keys)
        # the next window asks the boundary second again: the 6,000 are duplicates, 3 late ones are new
        late = [*keys, "late-1", "late-2", "late-3"]
        again = run_cycle(job(spec, late), outbox, clock=lambda: START + timedelta(hours=2))
        assert (again.sent, again.duplicates) == (3, len(keys))
        ids = delivered(outbox)
        assert sorted(ids) == sorted(late)
        assert len(ids) == len(set(ids))
    finally:
        outbox.close()


def test_an_older_checkpoint_with_inline_window_keys_still_dedups(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    try:
        run_cycle(job(UNSORTED, []), outbox, clock=lambda: START + timedelta(seconds=1))  # declares, first run
        older = {
            "@persistence_version": 1,
            "start_time_str": "2026-01-01T00:00:00Z",
            "last_event_time_str": "2026-01-01T00:00:00Z",
            "last_ids": [],
            "window": {
                "start": "2026-01-01T00:00:00Z",
                "end": "2026-01-01T01:00:00Z",
                "capped": False,
                "token": {"offset": 2},
                "max_value": SAME.isoformat().replace("+00:00", "Z"),
                "max_ids": ["a", "b"],
                "pages": 1,
                "horizon": None,
            },
        }
        outbox.commit("9", "user_activity", [], older)
        stats = run_cycle(job(UNSORTED, ["a", "b", "c", "a"]), outbox, clock=lambda: START + timedelta(hours=1))
        assert (stats.sent, stats.duplicates) == (1, 1)  # resumed after a, b: c is new, the second a is not
        final = outbox.load_checkpoint("9", "user_activity")
        assert final is not None
        assert final["last_ids"] == ["a", "b", "c"]  # a completed window still lists its boundary keys
    finally:
        outbox.close()
