"""Faults inside the workers of a parallel host detection pull, against the real simulator: a batch that
fails in any way fails its window (checkpoint unmoved for that batch, a numbered error naming it), its
traceback goes through the collector's logging, and the next cycle delivers exactly the ground truth."""

from __future__ import annotations

import logging
import re
import threading
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from qualys_collector.engine.cycle import CycleStats, Job
from qualys_collector.engine.outbox import Outbox
from qualys_collector.simulator import Limits, Simulator
from qualys_collector.simulator.faults import parse_fault
from tests.conftest import SimFactory, record_reliability
from tests.helpers.kit import Recorder
from tests.helpers.vmsim import NOW, Run, start_sim

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

START = "2026-05-28T00:00:00Z"
ALL = {"status": ["New", "Active", "Fixed", "Re-Opened"]}


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(
        seed=23,
        hosts=60,
        detections_per_host=3,
        base=NOW - timedelta(days=2),
        span=timedelta(days=2),
        host_interval=timedelta(days=3650),  # each host processed once
        vm_limits=Limits(rate=10_000, window=60, concurrency=2),
    )


@pytest.fixture
def thread_crashes(monkeypatch: pytest.MonkeyPatch) -> list[threading.ExceptHookArgs]:
    """Exceptions that escaped a thread to ``threading.excepthook`` (raw output, no secret filter)."""
    seen: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", seen.append)
    return seen


@pytest.mark.parametrize("parse_processes", [0, 1])
def test_an_undecodable_answer_in_one_batch_fails_the_window_and_the_rerun_delivers_the_rest(
    sim: Simulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    thread_crashes: list[threading.ExceptHookArgs],
    parse_processes: int,
) -> None:
    """``httpx.DecodingError`` (a gzip body that is not gzip) is not a transport error: before, the worker
    died of it, the consumer took its end marker for success and the window completed without the batch."""
    options = {
        "start_time_utc": START,
        "filters": ALL,
        "batch_size": 10,
        "max_workers": 2,
        "parse_processes": parse_processes,
    }
    r = Run(sim=sim, url=start_sim(sim), state=tmp_path / "state", services={"host_list_detection": options})
    sim.faults.arm(parse_fault("bad_gzip:path=detection,times=1"))
    with caplog.at_level(logging.INFO):
        assert not r.cycle(), "a batch failed: the cycle must fail"
    assert not thread_crashes, [str(c.exc_value) for c in thread_crashes]
    truth = sim.truth("host_list_detection", None, NOW)
    first = r.keys("vuln.qualys.hostdetections", "@detection_key")
    assert set(first) < truth, "the failed batch's detections cannot have been delivered"
    assert not [e for e in r.events(summaries=True) if e["tag"] == "vuln.qualys.collector.summary"], (
        "the window did not complete"
    )
    [failure] = [rec for rec in caplog.records if rec.levelno == logging.ERROR and "[PullError 301]" in rec.message]
    assert "DecodingError" in failure.message
    named = re.search(r"batch (\d) of 6 \(host IDs \d+-\d+\)", failure.message)
    assert named, failure.message
    outbox = Outbox(tmp_path / "state")
    try:
        stored = outbox.load_checkpoint("7", "host_list_detection")
    finally:
        outbox.close()
    assert stored is not None
    assert stored["last_event_time_str"] == "2026-05-28T00:00:00Z"  # the window stays open ...
    if "window" in stored:  # ... after what other batches committed, the failed batch unfinished
        assert int(named.group(1)) - 1 not in stored["window"]["token"]["done"]
    traced = [rec for rec in caplog.records if rec.exc_info or rec.exc_text]
    assert traced, "the traceback goes through the collector's logging"
    assert any("DecodingError" in (rec.exc_text or "") for rec in traced)

    assert r.cycle()
    keys = r.keys("vuln.qualys.hostdetections", "@detection_key")
    assert set(keys) == truth
    assert max(keys.values()) == 1
    [summary] = [e["event"] for e in r.events(summaries=True) if e["tag"] == "vuln.qualys.collector.summary"]
    assert summary["hosts_expected"] == summary["hosts_received"] == 60
    record_reliability(compared=len(truth), lost=len(truth - set(keys)), duplicated=sum(keys.values()) - len(keys))


def test_a_batch_that_times_out_after_committed_pages_is_split_from_the_committed_point(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    """Before, the halves of a timed-out batch started at the batch's first host: every page already
    committed was pulled and delivered again (``hosts_received > hosts_expected``)."""
    sim = make_sim(
        seed=31,
        hosts=40,
        detections_per_host=2,
        base=NOW - timedelta(days=2),
        span=timedelta(days=2),
        host_interval=timedelta(days=3650),
        vm_limits=Limits(rate=10_000, window=60, concurrency=20),  # slow answers must not turn into 409s
    )
    options = {
        "start_time_utc": START,
        "filters": ALL,
        "batch_size": 40,  # one batch ...
        "truncation_limit": 5,  # ... of eight answers, one page each
        "max_workers": 1,
    }
    r = Run(sim=sim, url=start_sim(sim), state=tmp_path / "state", services={"host_list_detection": options})
    armed: list[int] = []

    def on_page(job: Job, stats: CycleStats) -> None:
        if not armed:  # the first page is committed: the next answers of the batch time out, every attempt
            armed.append(stats.pages)
            sim.faults.arm(parse_fault(f"slow:delay=1,times={r.policy.attempts},path=detection"))

    collector = r.collector(recorder=Recorder(on_page))
    for client in collector.clients:
        client.http.timeout = httpx.Timeout(0.5)
    try:
        assert collector.run_once()
    finally:
        collector.close()
    assert armed
    keys = r.keys("vuln.qualys.hostdetections", "@detection_key")
    truth = sim.truth("host_list_detection", None, NOW)
    record_reliability(compared=len(truth), lost=len(truth - set(keys)), duplicated=sum(keys.values()) - len(keys))
    assert set(keys) == truth
    assert max(keys.values()) == 1, f"{sum(keys.values()) - len(keys)} detections delivered twice"
    [summary] = [e["event"] for e in r.events(summaries=True) if e["tag"] == "vuln.qualys.collector.summary"]
    assert summary["split_batches"] == 1
    assert summary["hosts_expected"] == summary["hosts_received"] == 40
    assert summary["detections"] == len(truth)


def test_hosts_without_detections_are_reported_as_such_not_as_a_gap(make_sim: SimFactory, tmp_path: Path) -> None:
    """Qualys leaves hosts with nothing matching the filters out of host list detection. Before, the summary
    only said ``hosts_expected`` 60 vs ``hosts_received`` 40, which reads as 20 hosts lost; now it says the
    20 were listed in batches answered to their end and carried no detection, and that the window is complete."""
    sim = make_sim(
        seed=41,
        hosts=60,
        detections_per_host=2,
        base=NOW - timedelta(days=2),
        span=timedelta(days=2),
        host_interval=timedelta(days=3650),
        clean_every=3,  # 20 hosts without any detection
        vm_limits=Limits(rate=10_000, window=60, concurrency=2),
    )
    options = {"start_time_utc": START, "batch_size": 10, "max_workers": 2, "truncation_limit": 4}
    r = Run(sim=sim, url=start_sim(sim), state=tmp_path / "state", services={"host_list_detection": options})
    assert r.cycle()
    listed = sim.truth("host_list", None, NOW)
    truth = sim.truth("host_list_detection", None, NOW)
    with_detections = {key.split(":", 1)[0] for key in truth}
    assert len(listed) == 60
    assert len(with_detections) == 40
    keys = r.keys("vuln.qualys.hostdetections", "@detection_key")
    assert set(keys) == truth
    [summary] = [e["event"] for e in r.events(summaries=True) if e["tag"] == "vuln.qualys.collector.summary"]
    assert summary["hosts_expected"] == 60
    assert summary["hosts_received"] == 40
    assert summary["hosts_without_detections"] == 20
    assert summary["batches_answered"] == summary["batches"] == 6
    assert summary["complete"] is True
