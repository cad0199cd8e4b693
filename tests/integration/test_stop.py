"""The collector's one stop event ends every wait: the FIM gateway's 429 wait inside a real collector, and
the API budget's pause that a 409 leaves behind. Without it each of these waits 600 s."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from qualys_collector.errors import StopRequested
from qualys_collector.qualys.budget import ApiBudget
from qualys_collector.qualys.retry import RetryPolicy
from qualys_collector.simulator import Limits
from qualys_collector.simulator.faults import parse_fault
from tests.conftest import SimFactory
from tests.helpers.vmsim import NOW, Run, start_sim

pytestmark = pytest.mark.integration
EVENTS = "/fim/v2/events/search"


def test_stop_ends_a_gateway_429_wait_and_the_next_run_resumes(
    make_sim: SimFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sim = make_sim(
        seed=3, fim_events=300, base=NOW - timedelta(days=2), span=timedelta(days=2), fim_limits=Limits(10_000, 60)
    )
    services = {"fim_events": {"start_time_utc": "2026-05-28T00:00:00Z", "page_size": 50, "settle_lag_seconds": 0}}
    r = Run(sim=sim, url=start_sim(sim), state=tmp_path / "state", services=services, input="qualys_fim")
    r.sleep = None  # real waits: only the stop may end them
    r.policy = RetryPolicy(attempts=4, total_seconds=3600, max_wait=3600)
    collector = r.collector()
    sim.faults.arm(parse_fault("429:wait=600,times=-1"))
    result: list[bool] = []
    puller = threading.Thread(target=lambda: result.append(collector.run_once()), daemon=True)
    with caplog.at_level(logging.WARNING):
        puller.start()
        while sim.statuses.get(f"{EVENTS} 429", 0) < 1 and puller.is_alive():
            puller.join(0.02)
        collector.stop.set()
        puller.join(5)
    assert not puller.is_alive(), "the 600 s wait did not end on stop"
    collector.close()
    assert result == [False]  # the cycle did not complete...
    assert "Stop requested while waiting" in caplog.text
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]  # ...and that is not an error
    sim.faults.clear()
    assert r.cycle()
    ids = Counter(e["event"]["id"] for e in r.events() if e["tag"] == "monitor.qualys.fim.event")
    assert set(ids) == sim.truth("fim_events", None, NOW)
    assert max(ids.values()) == 1


def test_stop_ends_the_budget_pause_left_by_a_409() -> None:
    budget = ApiBudget()
    budget.pause(600)  # what a 1965 answer leaves: nobody calls this API for 600 s
    stop = threading.Event()
    raised: list[BaseException] = []

    def call() -> None:
        try:
            with budget.slot("asset/host", stop):
                pass
        except StopRequested as exc:
            raised.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(0.3)
    assert caller.is_alive()  # it is waiting out the pause
    stop.set()
    caller.join(5)
    assert not caller.is_alive()
    assert len(raised) == 1
    assert "Stop requested while waiting for a call slot of the Qualys API asset/host" in str(raised[0])
