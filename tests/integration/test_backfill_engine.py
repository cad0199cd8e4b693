"""Backfill in the engine, on a real SQLite state store: its own scope beside the live checkpoint, its range
``[from, to)`` exactly, the ``@backfill`` mark, one range per service; and capped windows of a service that is
behind run back to back instead of one per period (#16 item 14), counted through the scheduler's injected wait."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from qualys_collector.engine import backfill as backfills
from qualys_collector.engine.cycle import Job, run_cycle
from qualys_collector.engine.outbox import Outbox
from qualys_collector.engine.scheduler import Scheduler
from qualys_collector.engine.source import CursorMode, ServiceSpec
from qualys_collector.engine.summary import SUMMARY_TAG
from qualys_collector.errors import BackfillError
from qualys_collector.model import Page, Window
from tests.helpers.sources import ListSource, rec

pytestmark = pytest.mark.integration

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SORTED = ServiceSpec("fim_events", "monitor.qualys.fim.event", "processedTime", CursorMode.RECORD, is_sorted=True)
UNSORTED = ServiceSpec("user_activity", "vuln.qualys.useractivitylog", "Date", CursorMode.RECORD)
WINDOWED = ServiceSpec("host_list", "vuln.qualys.hosts", None, CursorMode.WINDOW)
HOUR = timedelta(hours=1)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def make_job(spec: ServiceSpec, source: Any, **kw: Any) -> Job:
    params: dict[str, Any] = {"tag": spec.default_tag, "start_time": T0, "period": timedelta(seconds=60)}
    params.update(kw)
    return Job(input_name="qualys", input_id="42", spec=spec, source=source, **params)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "state")
    box.register_outputs(["probe"])
    yield box
    box.close()


def delivered(outbox: Outbox) -> list[dict[str, Any]]:
    return [json.loads(e.body) for e in outbox.read("probe", 100_000) if e.tag != SUMMARY_TAG]


def summaries(outbox: Outbox) -> list[dict[str, Any]]:
    return [json.loads(e.body) for e in outbox.read("probe", 100_000) if e.tag == SUMMARY_TAG]


def row(outbox: Outbox, scope: str, service: str) -> str:
    data = outbox.load_checkpoint(scope, service)
    return json.dumps(data, sort_keys=True)


# ------------------------------------------------------------------------------------------------ backfill


@pytest.mark.parametrize("spec", [SORTED, UNSORTED], ids=["sorted", "unsorted"])
def test_a_backfill_pulls_exactly_its_range_marked_and_leaves_the_live_checkpoint_as_it_was(
    outbox: Outbox, spec: ServiceSpec
) -> None:
    # records every hour from T0-2h to T0+30h: the backfill asks for [T0, T0+24h), the live service starts at T0+24h
    records = [rec(f"r{h}", at(h)) for h in range(-2, 31)]
    live = make_job(spec, ListSource(records), start_time=at(24))
    run_cycle(live, outbox, clock=lambda: at(30))
    live_row = row(outbox, "42", spec.name)
    live_ids = [e["id"] for e in delivered(outbox)]
    assert live_ids == [f"r{h}" for h in range(24, 30)]  # [T0+24h, now)

    backfills.request(outbox, "42", spec.name, T0, at(24))
    source = ListSource(records, page_size=5)
    job = make_job(spec, source, start_time=T0, until=at(24))
    stats = run_cycle(job, outbox, clock=lambda: at(30))

    assert stats.completed
    assert stats.done
    assert [(w.start, w.end) for w, _token in source.calls] == [(T0, at(24))]
    body = delivered(outbox)[len(live_ids) :]
    assert [e["id"] for e in body] == [f"r{h}" for h in range(24)]  # T0 included, T0+24h (the live's) not
    assert all(e["@backfill"] is True for e in body)
    assert "@backfill" not in delivered(outbox)[0]
    assert summaries(outbox)[-1]["@backfill"] is True
    assert row(outbox, "42", spec.name) == live_row  # the live checkpoint did not move
    stored = outbox.load_checkpoint("42@backfill", spec.name)
    assert stored is not None
    assert (stored["start_time_str"], stored["until_str"]) == ("2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z")
    found = backfills.read(outbox, "42", spec.name)
    assert found is not None
    assert found.complete
    assert found.progress() == 1.0
    assert backfills.pending(outbox) == []
    # a cycle of the complete backfill pulls nothing more
    assert run_cycle(job, outbox, clock=lambda: at(31)).done
    assert len(source.calls) == 1


def test_a_live_cycle_after_the_backfill_neither_repeats_nor_loses_a_record(outbox: Outbox) -> None:
    """Both scopes keep their own boundary rows: the live prune never touches the backfill's, and back."""
    same_second = [rec(f"s{i}", at(24)) for i in range(3)]  # at the boundary: the live service's
    records = [rec(f"r{h}", at(h)) for h in range(24)] + same_second + [rec("late", at(26))]
    live = make_job(SORTED, ListSource(records), start_time=at(24))
    run_cycle(live, outbox, clock=lambda: at(25))
    backfills.request(outbox, "42", SORTED.name, T0, at(24))
    run_cycle(make_job(SORTED, ListSource(records), until=at(24)), outbox, clock=lambda: at(25))
    run_cycle(live, outbox, clock=lambda: at(27))
    ids = [e["id"] for e in delivered(outbox)]
    assert sorted(ids) == sorted(r.key for r in records)
    assert len(ids) == len(set(ids))


def test_capped_backfill_windows_follow_each_other_at_once_and_the_thread_ends_when_complete(outbox: Outbox) -> None:
    records = [rec(f"r{h}", at(h + 0.5)) for h in range(10)]
    source = ListSource(records)
    job = make_job(WINDOWED, source, until=at(10), max_span=3 * HOUR)
    backfills.request(outbox, "42", WINDOWED.name, T0, at(10))
    waits: list[float] = []
    stop = threading.Event()
    scheduler = Scheduler([], outbox, stop=stop, clock=lambda: at(100), wait=lambda s: waits.append(s) or False)

    last = scheduler.loop(job)

    assert last is not None
    assert last.done
    ends = [w.end for w, _token in source.calls]
    assert ends == [at(3), at(6), at(9), at(10)]  # four windows, the last one ending at --to
    assert waits == []  # no period waited between them, and the thread ended on its own
    assert sorted(e["id"] for e in delivered(outbox)) == sorted(r.key for r in records)


def test_one_range_per_service_resumed_when_asked_again_replaced_once_complete(outbox: Outbox) -> None:
    first = backfills.request(outbox, "42", SORTED.name, T0, at(24))
    assert not first.complete
    assert first.progress() == 0.0
    assert backfills.request(outbox, "42", SORTED.name, T0, at(24)) == first  # the same range: resumed
    with pytest.raises(BackfillError) as refused:
        backfills.request(outbox, "42", SORTED.name, at(-48), at(-24))
    assert refused.value.code == 604
    assert "state reset -c FILE --service fim_events --backfill" in str(refused.value)
    assert [b.service for b in backfills.pending(outbox)] == ["fim_events"]
    run_cycle(make_job(SORTED, ListSource([rec("a", at(1))]), until=at(24)), outbox, clock=lambda: at(30))
    assert backfills.pending(outbox) == []
    assert not backfills.delivered(outbox, backfills.read(outbox, "42", SORTED.name))  # type: ignore[arg-type]
    outbox.ack("probe", 10_000)
    assert backfills.delivered(outbox, backfills.read(outbox, "42", SORTED.name))  # type: ignore[arg-type]
    again = backfills.request(outbox, "42", SORTED.name, at(-48), at(-24))  # a complete range gives way
    assert (again.start, again.end, again.complete) == (at(-48), at(-24), False)


def test_a_backfill_interrupted_mid_window_resumes_there(outbox: Outbox) -> None:
    records = [rec(f"r{h}", at(h)) for h in range(12)]
    backfills.request(outbox, "42", SORTED.name, T0, at(12))
    failing = ListSource(records, page_size=3, fail_on_page=2)
    job = make_job(SORTED, failing, until=at(12))
    with pytest.raises(Exception, match="simulated failure"):
        run_cycle(job, outbox, clock=lambda: at(20))
    found = backfills.read(outbox, "42", SORTED.name)
    assert found is not None
    assert not found.complete
    assert 0 < found.progress() < 1
    source = ListSource(records, page_size=3)
    assert run_cycle(replace(job, source=source), outbox, clock=lambda: at(20)).done
    assert source.calls[0][1] == {"page": 2}  # from the last committed page
    ids = [e["id"] for e in delivered(outbox)]
    assert ids == [f"r{h}" for h in range(12)]


# ------------------------------------------------------------------------------- capped windows while behind


def test_a_live_service_behind_runs_its_capped_windows_back_to_back_then_waits_a_period(outbox: Outbox) -> None:
    """5 h 30 min behind with max_window_seconds 3600: six cycles at once, then one wait of a full period."""
    records = [rec(f"r{h}", at(h + 0.25)) for h in range(6)]
    source = ListSource(records)
    job = make_job(WINDOWED, source, max_span=HOUR)
    stop = threading.Event()
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        stop.set()  # the first wait ends the test
        return True

    Scheduler([job], outbox, stop=stop, clock=lambda: at(5.5), wait=wait).loop(job)

    assert [w.end for w, _token in source.calls] == [at(1), at(2), at(3), at(4), at(5), at(5.5)]
    assert waits == [60.0]  # the period, once, after the uncapped window that caught up
    assert len(delivered(outbox)) == 6


class SkewedSource:
    """Qualys' clock half an hour into a capped window: the checkpoint stops there (never past Qualys' time)."""

    def __init__(self) -> None:
        self.calls: list[Window] = []

    def pages(self, window: Window, token: dict[str, Any] | None, extra: dict[str, Any]) -> Iterator[Page]:
        self.calls.append(window)
        yield Page(records=[], horizon=window.start + timedelta(minutes=30))


def test_a_capped_window_cut_by_qualys_clock_waits_a_period_rather_than_asking_again_at_once(outbox: Outbox) -> None:
    source = SkewedSource()
    job = make_job(WINDOWED, source, max_span=HOUR)
    stop = threading.Event()
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        stop.set()
        return True

    Scheduler([job], outbox, stop=stop, clock=lambda: at(5), wait=wait).loop(job)
    assert len(source.calls) == 1
    assert waits == [60.0]


def test_a_backfill_cycle_never_counts_as_the_live_service_cycle_in_readiness(outbox: Outbox) -> None:
    from qualys_collector.observability.metrics import Metrics, MetricsObserver

    metrics = Metrics()
    metrics.readiness.periods = {SORTED.name: 60.0}
    observer = MetricsObserver(metrics)
    backfills.request(outbox, "42", SORTED.name, T0, at(2))
    job = make_job(SORTED, ListSource([rec("a", at(1))]), until=at(2))
    observer.cycle(job, run_cycle(job, outbox, clock=lambda: at(3)))
    assert set(metrics.readiness.last_cycle) == {"fim_events@backfill"}
    live = make_job(SORTED, ListSource([]), start_time=at(2))
    observer.cycle(live, run_cycle(live, outbox, clock=lambda: at(3)))
    assert set(metrics.readiness.last_cycle) == {"fim_events@backfill", "fim_events"}
