"""Bounded resources: the outbox limit holds inside a window, and pages and delivery batches are bounded by
bytes as well as by counts (so memory does not follow the size of an event)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from qualys_collector.engine.checkpoint import Checkpoint
from qualys_collector.errors import DeliveryError
from qualys_collector.model import StoredEvent
from qualys_collector.simulator import Limits, Simulator
from qualys_collector.sinks.base import Ack
from qualys_collector.sinks.memory import MemorySink
from tests.conftest import SimFactory, record_reliability
from tests.helpers.vmsim import NOW, Run, start_sim

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

START = "2026-05-28T00:00:00Z"
LIMIT = 1 << 20


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    # 300 hosts x 8 detections x ~2.3 KB: about 6 MB of events in one window, six times the outbox limit
    return make_sim(
        seed=11,
        hosts=300,
        detections_per_host=8,
        results_bytes=2000,
        base=NOW - timedelta(days=2),
        span=timedelta(days=2),
        vm_limits=Limits(rate=100_000, window=60, concurrency=2),
    )


def _wait_quiet(sim: Simulator, seconds: float, deadline: float) -> None:
    """Until the simulator has seen no request for ``seconds`` (or ``deadline``)."""
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = sum(sim.requests.values())
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_the_outbox_limit_stops_a_window_at_a_committed_page_and_it_resumes_after_delivery(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 16 item 11: with a 1 MiB limit one window used to fill the outbox with all of its pages (43 MB in
    the review; 6 MB here) because the limit was only checked between cycles."""
    services = {"host_list_detection": {"start_time_utc": START, "truncation_limit": 10, "batch_size": 50}}
    r = Run(sim=sim, url=start_sim(sim), state=tmp_path / "state", services=services)
    base = r.config()
    config = base.model_copy(update={"globals": base.globals.model_copy(update={"outbox_max_bytes": LIMIT})})
    up = threading.Event()

    def handler(batch: Sequence[StoredEvent]) -> Ack:
        if not up.is_set():
            raise DeliveryError("relay down")
        return Ack.all(batch)

    relay = MemorySink(handler, name="relay")
    collector = r.collector(config, sinks=[relay])
    for drainer in collector.drainers:
        drainer.backoff_start = drainer.max_backoff = 0.2
    thread = threading.Thread(target=collector.run_forever, daemon=True)
    sizes: list[int] = []
    with caplog.at_level(logging.WARNING):
        thread.start()
        deadline = time.monotonic() + 60
        _wait_quiet(sim, 2.0, deadline)
        sizes.append(collector.outbox.size_bytes())
        stored = collector.outbox.load_checkpoint("7", "host_list_detection")
        assert stored is not None
        assert Checkpoint.from_json(stored).window is not None  # the window is open at a committed page
        up.set()
        truth = sim.truth("host_list_detection", None, NOW)
        while len({e.seq for e in relay.events}) < len(truth) + 1 and time.monotonic() < deadline:
            sizes.append(collector.outbox.size_bytes())
            time.sleep(0.05)
    collector.stop.set()
    thread.join(30)
    collector.close()
    page = 10 * 8 * 2600  # one answer of 10 hosts: what a page commits at most here
    assert max(sizes) <= LIMIT + 2 * page, f"the outbox reached {max(sizes)} bytes with a limit of {LIMIT}"
    assert f"globals.outbox_max_bytes ({LIMIT} bytes)" in caplog.text
    got = Counter(str(_key(e)) for e in relay.events if e.tag == "vuln.qualys.hostdetections")
    record_reliability(
        compared=len(truth), lost=len(truth - set(got)), duplicated=sum(n - 1 for n in got.values() if n > 1)
    )
    assert set(got) == truth
    assert max(got.values()) == 1  # nothing dropped, nothing twice


def _key(event: StoredEvent) -> str:
    return str(json.loads(event.body)["@detection_key"])


def test_run_once_stops_at_the_limit_while_delivery_fails_and_resumes_the_window_when_it_works(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``run --once``: an output that is down leaves the window open at the limit (not the whole window in the
    outbox); a slow output that works lets the run resume each stopped window after delivering, to its end."""
    services = {"host_list_detection": {"start_time_utc": START, "truncation_limit": 10, "batch_size": 50}}
    r = Run(sim=sim, url=start_sim(sim), state=tmp_path / "state", services=services)
    base = r.config()
    config = base.model_copy(update={"globals": base.globals.model_copy(update={"outbox_max_bytes": LIMIT})})
    truth = sim.truth("host_list_detection", None, NOW)

    def down(batch: Sequence[StoredEvent]) -> Ack:
        raise DeliveryError("relay down")

    collector = r.collector(config, sinks=[MemorySink(down, name="relay")])
    for drainer in collector.drainers:
        drainer.backoff_start = drainer.max_backoff = 0.05
    try:
        assert not collector.run_once()
        size = collector.outbox.size_bytes()
        pending = collector.outbox.pending()
    finally:
        collector.close()
    assert size <= LIMIT + 2 * 10 * 8 * 2600, size
    assert 0 < pending < len(truth) // 3  # a part of the window, not all of it

    def slow(batch: Sequence[StoredEvent]) -> Ack:
        time.sleep(0.02)  # slower than pulling: the outbox fills while it delivers
        return Ack.all(batch)

    relay = MemorySink(slow, name="relay")
    collector = r.collector(config, sinks=[relay])
    try:
        with caplog.at_level(logging.INFO):
            assert collector.run_once()
    finally:
        collector.close()
    assert "resuming 1 window(s) stopped at its limit" in caplog.text
    got = Counter(_key(e) for e in relay.events if e.tag == "vuln.qualys.hostdetections")
    assert set(got) == truth
    assert max(got.values()) == 1


def test_an_event_over_event_max_bytes_is_shortened_before_the_outbox_and_says_what_was_cut(
    make_sim: SimFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The outbox's own bound on one event: ``globals.event_max_bytes`` (16 MiB by default; 64 KiB here)."""
    sim = make_sim(seed=2, hosts=6, detections_per_host=2, results_bytes=300_000, base=NOW - timedelta(days=1))
    services = {"host_list_detection": {"start_time_utc": START, "filters": {"status": ["New", "Active", "Fixed"]}}}
    r = Run(sim=sim, url=start_sim(sim), state=tmp_path / "state", services=services)
    base = r.config()
    config = base.model_copy(update={"globals": base.globals.model_copy(update={"event_max_bytes": 64 << 10})})
    relay = MemorySink(name="relay")
    collector = r.collector(config, sinks=[relay])
    try:
        with caplog.at_level(logging.WARNING):
            assert collector.run_once()
    finally:
        collector.close()
    detections = [e for e in relay.events if e.tag == "vuln.qualys.hostdetections"]
    assert {_key(e) for e in detections} == sim.truth("host_list_detection", None, NOW)
    for event in detections:
        assert len(event.body.encode()) <= 64 << 10
        body = json.loads(event.body)
        cut = body["@truncated_fields"]
        assert list(cut) == ["DETECTION.RESULTS"]
        assert 299_000 < cut["DETECTION.RESULTS"] <= 300_000  # its length as parsed (surrounding whitespace trimmed)
        assert body["DETECTION"]["RESULTS"].startswith("Package\tInstalled Version")
    assert f"over globals.event_max_bytes ({64 << 10}): shortened DETECTION.RESULTS" in caplog.text
    summary = json.loads(next(e.body for e in relay.events if e.tag == "vuln.qualys.collector.summary"))
    assert summary["events_shortened"] == len(detections)
