"""The page pipeline and the window summary against a real SQLite state store: stages in order inside
the page's transaction, keyed-table rows that roll back with the events, one summary per window."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from qualys_collector.engine.cycle import Job, run_cycle
from qualys_collector.engine.outbox import Outbox
from qualys_collector.engine.pipeline import PageWork
from qualys_collector.engine.source import CursorMode, ServiceSpec
from qualys_collector.engine.store import Transaction
from qualys_collector.engine.summary import SUMMARY_TAG
from qualys_collector.errors import PullError
from tests.helpers.sources import ListSource, rec

pytestmark = pytest.mark.integration

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SORTED = ServiceSpec("fim_events", "monitor.qualys.fim.event", "processedTime", CursorMode.RECORD, is_sorted=True)
UNSORTED = ServiceSpec("vm_scans", "vuln.qualys.vulnerabilities", "LAUNCH_DATETIME", CursorMode.RECORD)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Enrich:
    """An enrichment stage: adds a field from a keyed table, and counts what it enriched."""

    name = "enrich"
    tables = ("colours",)

    def run(self, work: PageWork, tx: Transaction) -> None:
        table = tx.table("colours")
        for event in work.events:
            event.body["colour"] = table.get(event.body["id"]) or "unknown"
            work.counts["enriched"] += 1


class ChangesOnly:
    """A change filter: keeps an event only when its status differs from the stored one; stores the new one."""

    name = "changes"
    tables = ("last_status",)

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls = 0
        self.fail_on_call = fail_on_call

    def run(self, work: PageWork, tx: Transaction) -> None:
        self.calls += 1
        table = tx.table("last_status")
        kept = []
        for event in work.events:
            key, status = str(event.body["id"]), event.body.get("status")
            if table.get(key) != status:
                table.put(key, status)
                kept.append(event)
        work.events = kept
        if self.calls == self.fail_on_call:
            raise PullError("the stage after the table writes failed", code=301)


def job(spec: ServiceSpec, source: ListSource, **kw: Any) -> Job:
    return Job(input_name="qualys", input_id="42", spec=spec, source=source, tag=spec.default_tag, start_time=T0, **kw)


def events(outbox: Outbox) -> list[tuple[str, dict[str, Any]]]:
    outbox.register_outputs(["probe"])
    return [(e.tag, json.loads(e.body)) for e in outbox.read("probe", 100_000)]


def data(outbox: Outbox) -> list[dict[str, Any]]:
    return [body for tag, body in events(outbox) if tag != SUMMARY_TAG]


def summaries(outbox: Outbox) -> list[dict[str, Any]]:
    return [body for tag, body in events(outbox) if tag == SUMMARY_TAG]


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "state")
    yield box  # type: ignore[misc]
    box.close()


def test_stages_run_in_order_and_their_table_writes_commit_with_the_page(outbox: Outbox) -> None:
    outbox.declare("colours", owner="fim_events")
    with outbox.transaction("42") as tx:
        tx.table("colours").put("a", "red")
    source = ListSource([rec("a", at(1), status="New"), rec("b", at(2), status="New"), rec("c", at(3), status="New")])
    stages = {"enrich": (Enrich(),), "change_filter": (ChangesOnly(),)}
    stats = run_cycle(job(SORTED, source, **stages), outbox, clock=lambda: at(100))
    assert [(e["id"], e["colour"]) for e in data(outbox)] == [("a", "red"), ("b", "unknown"), ("c", "unknown")]
    # the next window: b changed, a and c did not, d is new
    source.records = [
        rec("a", at(110), status="New"),
        rec("b", at(111), status="Fixed"),
        rec("d", at(112), status="New"),
    ]
    stats = run_cycle(job(SORTED, source, **stages), outbox, clock=lambda: at(200))
    assert (stats.received, stats.sent) == (3, 2)
    assert [e["id"] for e in data(outbox)][3:] == ["b", "d"]
    assert dict(outbox.table("42", "last_status").items()) == {"a": "New", "b": "Fixed", "c": "New", "d": "New"}
    last = summaries(outbox)[-1]
    assert (last["records_received"], last["records_committed"], last["enriched"]) == (3, 2, 3)


def test_a_failure_between_stages_commits_nothing_of_the_page(outbox: Outbox) -> None:
    records = [rec(f"e{i}", at(i), status="New") for i in range(1, 8)]
    source = ListSource(records, page_size=2)
    failing = ChangesOnly(fail_on_call=3)  # the third page: its table rows are written, then the stage fails
    with pytest.raises(PullError, match="the stage after the table writes failed"):
        run_cycle(job(SORTED, source, change_filter=(failing,)), outbox, clock=lambda: at(100))
    assert [e["id"] for e in data(outbox)] == ["e1", "e2", "e3", "e4"]
    assert [k for k, _ in outbox.table("42", "last_status").items()] == ["e1", "e2", "e3", "e4"]
    checkpoint = outbox.load_checkpoint("42", "fim_events")
    assert checkpoint is not None
    assert checkpoint["window"]["token"] == {"page": 2}
    run_cycle(job(SORTED, source, change_filter=(ChangesOnly(),)), outbox, clock=lambda: at(100))
    assert [e["id"] for e in data(outbox)] == [f"e{i}" for i in range(1, 8)]  # each once
    assert len(outbox.table("42", "last_status")) == 7
    [summary] = summaries(outbox)
    assert (summary["records_received"], summary["records_committed"], summary["cycles"]) == (7, 7, 2)


STATS = re.compile(
    r"Number of requests made: (\d+); Number of events received: (\d+); "
    r"Number of duplicated events filtered out: (\d+); Number of events generated and sent: (\d+);"
)


def stat_lines(caplog: pytest.LogCaptureFixture, *, partial: bool) -> list[tuple[int, ...]]:
    prefix = "(Partial) Statistics" if partial else "Statistics"
    return [
        tuple(int(n) for n in match.groups())
        for r in caplog.records
        if r.getMessage().startswith(prefix) and (match := STATS.search(r.getMessage()))
    ]


def test_a_completed_window_emits_one_summary_that_agrees_with_the_statistics_line(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    records = [rec("r1", at(10)), rec("r2", at(20)), rec("r3", at(20)), rec("late", at(150))]
    source = ListSource(records, page_size=2, unfiltered=True)
    run_cycle(job(UNSORTED, source, environment="prod"), outbox, clock=lambda: at(100))
    source.records.append(rec("r3", at(20)))  # the boundary record served again in the next window
    with caplog.at_level(logging.INFO):
        caplog.clear()
        run_cycle(job(UNSORTED, source, environment="prod"), outbox, clock=lambda: at(200))
    first, second = summaries(outbox)
    assert first == {
        "@summary": "vm_scans",
        "input_id": "42",
        "window_start": "2024-01-01T00:00:00Z",
        "window_end": "2024-01-01T00:01:40Z",
        "capped": False,
        "completed": True,
        "cycles": 1,
        "pages": 2,
        "requests": 2,
        "records_received": 4,
        "records_deduplicated": 0,
        "records_deferred": 1,
        "records_committed": 3,
        "@devo_pulling_id": first["@devo_pulling_id"],
        "environment": "prod",
    }
    [line] = stat_lines(caplog, partial=False)
    requests, received, duplicated, sent = line
    assert (second["requests"], second["records_received"]) == (requests, received)
    assert (second["records_deduplicated"], second["records_committed"]) == (duplicated, sent)
    assert (second["window_start"], second["window_end"], second["records_committed"]) == (
        "2024-01-01T00:00:20Z",
        "2024-01-01T00:03:20Z",
        1,
    )
    assert [e["id"] for e in data(outbox)] == ["r1", "r2", "r3", "late"]


def test_a_resumed_window_reports_the_whole_window(outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    source = ListSource([rec(f"e{i}", at(i)) for i in range(1, 8)], page_size=2, fail_on_page=2)
    with caplog.at_level(logging.INFO):
        caplog.clear()
        with pytest.raises(PullError):
            run_cycle(job(SORTED, source), outbox, clock=lambda: at(100))
        assert summaries(outbox) == []  # an unfinished window has no summary yet
        source.fail_on_page = None
        run_cycle(job(SORTED, source), outbox, clock=lambda: at(500))
    [summary] = summaries(outbox)
    assert (summary["window_end"], summary["cycles"], summary["pages"]) == ("2024-01-01T00:01:40Z", 2, 4)
    interrupted = stat_lines(caplog, partial=True)[1]  # the failed cycle's last committed page
    [final] = stat_lines(caplog, partial=False)
    whole = tuple(a + b for a, b in zip(interrupted, final, strict=True))
    assert whole == (
        summary["requests"],
        summary["records_received"],
        summary["records_deduplicated"],
        summary["records_committed"],
    )
    assert summary["records_committed"] == 7


def test_a_stopped_window_has_no_summary_until_it_completes(outbox: Outbox) -> None:
    import threading

    stop = threading.Event()
    stop.set()
    source = ListSource([rec(f"e{i}", at(i)) for i in range(1, 6)], page_size=2)
    run_cycle(job(SORTED, source), outbox, clock=lambda: at(100), stop=stop)
    assert summaries(outbox) == []
    run_cycle(job(SORTED, source), outbox, clock=lambda: at(100))
    [summary] = summaries(outbox)
    assert (summary["cycles"], summary["records_committed"]) == (2, 5)
