"""The pull cycle against a real SQLite outbox and real file sinks."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qualys_collector.engine.cycle import Job, run_cycle
from qualys_collector.engine.outbox import Outbox
from qualys_collector.engine.source import CursorMode, ServiceSpec
from qualys_collector.engine.summary import SUMMARY_TAG
from qualys_collector.errors import DeliveryError, PullError
from qualys_collector.model import StoredEvent, epoch_ms
from qualys_collector.sinks.base import Ack
from qualys_collector.sinks.drain import Drainer
from qualys_collector.sinks.file import FileSink
from qualys_collector.sinks.memory import MemorySink
from tests.helpers.sources import ListSource, rec

pytestmark = pytest.mark.integration

T0 = datetime(2024, 1, 1, tzinfo=UTC)
UNSORTED = ServiceSpec("vm_scans", "vuln.qualys.vulnerabilities", "LAUNCH_DATETIME", CursorMode.RECORD)
SORTED = ServiceSpec("fim_events", "monitor.qualys.fim.event", "processedTime", CursorMode.RECORD, is_sorted=True)
WINDOWED = ServiceSpec("host_list", "vuln.qualys.hosts", None, CursorMode.WINDOW)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def job(spec: ServiceSpec, source: ListSource, **kw: object) -> Job:
    params: dict[str, object] = {"tag": spec.default_tag, "start_time": T0, "environment": "prod"}
    params.update(kw)
    return Job(input_name="qualys", input_id="42", spec=spec, source=source, **params)  # type: ignore[arg-type]


def outbox_data(outbox: Outbox) -> list[StoredEvent]:
    """The data events in the outbox (each completed window's summary event left out)."""
    outbox.register_outputs(["probe"])
    return [e for e in outbox.read("probe", 100_000) if e.tag != SUMMARY_TAG]


def outbox_ids(outbox: Outbox) -> list[str]:
    return [json.loads(e.body)["id"] for e in outbox_data(outbox)]


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "state")
    yield box  # type: ignore[misc]
    box.close()


def test_records_sharing_the_last_timestamp_across_two_cycles_arrive_exactly_once(outbox: Outbox) -> None:
    source = ListSource([rec("r1", at(10)), rec("r2", at(20)), rec("r3", at(20))])
    stats = run_cycle(job(UNSORTED, source), outbox, clock=lambda: at(100))
    assert (stats.received, stats.sent, stats.duplicates) == (3, 3, 0)
    checkpoint = outbox.load_checkpoint("42", "vm_scans")
    assert checkpoint is not None
    assert (checkpoint["last_event_time_str"], checkpoint["last_ids"]) == ("2024-01-01T00:00:20Z", ["r2", "r3"])
    # a late record with the same timestamp, and a newer one
    source.records += [rec("r4", at(20)), rec("r5", at(30))]
    stats = run_cycle(job(UNSORTED, source), outbox, clock=lambda: at(200))
    assert source.calls[-1][0].start == at(20)  # closed start: the boundary second is asked again
    assert (stats.received, stats.sent, stats.duplicates) == (4, 2, 2)
    stats = run_cycle(job(UNSORTED, source), outbox, clock=lambda: at(300))
    assert (stats.sent, stats.duplicates) == (0, 1)
    assert sorted(outbox_ids(outbox)) == ["r1", "r2", "r3", "r4", "r5"]


def test_events_carry_pulling_id_environment_and_tag(outbox: Outbox) -> None:
    source = ListSource([rec("a", at(1), name="x")])
    run_cycle(job(UNSORTED, source, tag="my.app.scans"), outbox, clock=lambda: at(100))
    [event] = outbox_data(outbox)
    assert event.tag == "my.app.scans"
    assert json.loads(event.body) == {
        "id": "a",
        "name": "x",
        "@devo_pulling_id": epoch_ms(at(100)),
        "environment": "prod",
    }


def test_records_at_or_after_the_frozen_end_wait_for_the_next_window(outbox: Outbox) -> None:
    source = ListSource([rec("early", at(10)), rec("edge", at(100)), rec("late", at(150))], unfiltered=True)
    stats = run_cycle(job(UNSORTED, source), outbox, clock=lambda: at(100))
    assert (stats.sent, stats.deferred) == (1, 2)
    stats = run_cycle(job(UNSORTED, source), outbox, clock=lambda: at(200))
    assert stats.sent == 2
    assert sorted(outbox_ids(outbox)) == ["early", "edge", "late"]


def test_a_sorted_service_checkpoints_every_page_and_resumes_after_a_failure(outbox: Outbox) -> None:
    records = [rec(f"e{i}", at(i)) for i in range(1, 8)]
    source = ListSource(records, page_size=2, fail_on_page=2)
    with pytest.raises(PullError):
        run_cycle(job(SORTED, source), outbox, clock=lambda: at(100))
    checkpoint = outbox.load_checkpoint("42", "fim_events")
    assert checkpoint is not None
    assert checkpoint["last_event_time_str"] == "2024-01-01T00:00:04Z"  # two pages committed
    assert checkpoint["window"]["token"] == {"page": 2}
    source.fail_on_page = None
    stats = run_cycle(job(SORTED, source), outbox, clock=lambda: at(500))
    assert source.calls[-1] == (source.calls[0][0], {"page": 2})  # same window, same end, from the token
    assert stats.sent == 3
    assert outbox_ids(outbox) == [f"e{i}" for i in range(1, 8)]
    final = outbox.load_checkpoint("42", "fim_events")
    assert final is not None
    assert "window" not in final
    assert (final["last_event_time_str"], final["last_ids"]) == ("2024-01-01T00:00:07Z", ["e7"])


def test_an_unsorted_service_keeps_the_floor_until_the_window_completes(outbox: Outbox) -> None:
    records = [rec("n3", at(30)), rec("n2", at(20)), rec("n1", at(10))]  # newest first, like the activity log
    source = ListSource(records, page_size=1, fail_on_page=1)
    with pytest.raises(PullError):
        run_cycle(job(UNSORTED, source), outbox, clock=lambda: at(100))
    checkpoint = outbox.load_checkpoint("42", "vm_scans")
    assert checkpoint is not None
    assert checkpoint["last_event_time_str"] == "2024-01-01T00:00:00Z"
    assert checkpoint["window"]["max_value"] == "2024-01-01T00:00:30Z"
    source.fail_on_page = None
    run_cycle(job(UNSORTED, source), outbox, clock=lambda: at(100))
    assert outbox_ids(outbox) == ["n3", "n2", "n1"]
    final = outbox.load_checkpoint("42", "vm_scans")
    assert final is not None
    assert final["last_event_time_str"] == "2024-01-01T00:00:30Z"


def test_a_window_service_advances_to_the_window_end(outbox: Outbox) -> None:
    source = ListSource([rec("h1", None), rec("h2", None)])
    run_cycle(job(WINDOWED, source, settle_lag=timedelta(seconds=30)), outbox, clock=lambda: at(100))
    checkpoint = outbox.load_checkpoint("42", "host_list")
    assert checkpoint is not None
    assert (checkpoint["last_event_time_str"], checkpoint["last_ids"]) == ("2024-01-01T00:01:10Z", [])
    run_cycle(job(WINDOWED, source, settle_lag=timedelta(seconds=30)), outbox, clock=lambda: at(200))
    assert source.calls[-1][0].start == at(70)


def test_a_capped_window_moves_even_when_empty(outbox: Outbox) -> None:
    source = ListSource([rec("x", at(7200))])
    spec_job = job(UNSORTED, source, max_span=timedelta(hours=1))
    run_cycle(spec_job, outbox, clock=lambda: at(3 * 3600))
    run_cycle(spec_job, outbox, clock=lambda: at(3 * 3600))
    run_cycle(spec_job, outbox, clock=lambda: at(3 * 3600))
    assert [c[0].start for c in source.calls] == [at(0), at(3600), at(7200)]
    assert outbox_ids(outbox) == ["x"]


def test_changing_start_time_resets_the_checkpoint_with_a_warning(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    source = ListSource([rec("a", at(10))])
    run_cycle(job(UNSORTED, source), outbox, clock=lambda: at(100))
    with caplog.at_level(logging.WARNING):
        run_cycle(job(UNSORTED, source, start_time=at(5)), outbox, clock=lambda: at(200))
    assert "Some changes have been detected and the persistence needs to be updated" in caplog.text
    assert "'start_time_str': '2024-01-01T00:00:00Z'" in caplog.text
    assert "'start_time_str': '2024-01-01T00:00:05Z'" in caplog.text
    assert source.calls[-1][0].start == at(5)
    assert outbox_ids(outbox) == ["a", "a"]  # a reset re-ingests, as the seed warns


def test_statistics_line_has_the_seed_shape(outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    source = ListSource([rec("a", at(10)), rec("b", at(11))])
    with caplog.at_level(logging.INFO):
        run_cycle(job(UNSORTED, source), outbox, clock=lambda: at(100))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Statistics for this pull cycle")]
    assert len(lines) == 1
    assert lines[0].startswith(f"Statistics for this pull cycle (@devo_pulling_id={epoch_ms(at(100))}):")
    assert (
        "Number of requests made: 1; Number of events received: 2; Number of duplicated events filtered out: 0; "
        "Number of events generated and sent: 2; Average of events per second: " in lines[0]
    )
    assert "Pull Started" in caplog.text
    assert "Fetching data From : 2024-01-01 00:00:00+00:00  To : 2024-01-01 00:01:40+00:00" in caplog.text


def fails_first(times: int, error: Exception) -> Callable[[Sequence[StoredEvent]], Ack]:
    """A handler that raises ``error`` for the first ``times`` batches, then confirms every batch."""
    left = [times]

    def handler(batch: Sequence[StoredEvent]) -> Ack:
        if left[0]:
            left[0] -= 1
            raise error
        return Ack.all(batch)

    return handler


def test_every_output_gets_every_event_and_rows_leave_only_when_all_confirmed(outbox: Outbox, tmp_path: Path) -> None:
    run_cycle(job(UNSORTED, ListSource([rec(f"k{i}", at(i)) for i in range(5)])), outbox, clock=lambda: at(100))
    committed = 5 + 1  # five records and the window's summary event
    file_sink = FileSink("file", tmp_path / "out.jsonl")
    flaky = MemorySink(fails_first(1, DeliveryError("receiver down")), name="devo")
    outbox.register_outputs(["file", "devo"])
    Drainer(outbox, file_sink, batch_size=2).run(threading.Event(), until_empty=True)
    file_sink.close()
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    data = [line for line in lines if line["tag"] != SUMMARY_TAG]
    assert [line["event"]["id"] for line in data] == [f"k{i}" for i in range(5)]
    assert {line["tag"] for line in data} == {"vuln.qualys.vulnerabilities"}
    assert len(lines) == committed
    assert outbox.pending() == committed  # the devo output has not confirmed yet
    drainer = Drainer(outbox, flaky)
    with pytest.raises(DeliveryError):
        drainer.drain_once()
    assert outbox.pending("devo") == committed
    assert drainer.drain_once() == committed
    assert outbox.pending() == 0
    assert len(flaky.events) == committed


def test_state_files_are_owner_only(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "st")
    box.close()
    assert (tmp_path / "st").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "st" / "qualys-collector.sqlite3").stat().st_mode & 0o777 == 0o600


def test_an_unexpected_sink_exception_never_kills_the_sender_thread(outbox: Outbox) -> None:
    run_cycle(job(UNSORTED, ListSource([rec(f"k{i}", at(i)) for i in range(5)])), outbox, clock=lambda: at(100))
    outbox.register_outputs(["odd"])
    sink = MemorySink(fails_first(1, ValueError("I/O operation on closed file")), name="odd")  # a library's surprise
    drainer = Drainer(outbox, sink, max_backoff=0.05)
    drainer.backoff_start = 0.01
    stop = threading.Event()
    thread = threading.Thread(target=drainer.run, args=(stop,), kwargs={"idle": 0.01})
    thread.start()
    deadline = time.monotonic() + 10
    while len(sink.events) < 6 and time.monotonic() < deadline:
        stop.wait(0.01)
    stop.set()
    thread.join(5)
    assert len(sink.events) == 6  # five records and the window's summary event
    assert drainer.stats.failures == 1
    assert outbox.pending("odd") == 0
