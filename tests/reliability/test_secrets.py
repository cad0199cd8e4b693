"""Canary secrets through every service and failure path: none may appear in a log line, an error, a
state row, an outbox row or an event. The log stream is the collector's own handler (with its filter)."""

from __future__ import annotations

import io
import logging
from datetime import timedelta
from pathlib import Path

import pytest

from qualys_collector.app import Collector
from qualys_collector.observability.logging import setup_logging
from qualys_collector.qualys.retry import RetryPolicy
from qualys_collector.simulator import Simulator
from qualys_collector.simulator.faults import parse_fault
from tests.conftest import SimFactory
from tests.helpers.kit import clients, fim_input, no_sleep, vm_input
from tests.helpers.kit import config as kit_config
from tests.helpers.vmsim import NOW, start_sim

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

PASSWORD = "Canary-P4ss-9f3e1"
SALT = "Canary-S4lt-77ab"
USER = "canary-user"


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    simulator = make_sim(
        seed=8,
        hosts=12,
        detections_per_host=3,
        scans=6,
        activity_rows=40,
        fim_events=60,
        fim_incidents=3,
        base=NOW - timedelta(days=2),
        span=timedelta(days=2),
        username=USER,
        password=PASSWORD,
    )
    simulator.issued_tokens = []  # type: ignore[attr-defined]
    issue = simulator.tokens.issue

    def recording(username: str, now: object) -> str:
        token = issue(username, now)  # type: ignore[arg-type]
        simulator.issued_tokens.append(token)  # type: ignore[attr-defined]
        return token

    simulator.tokens.issue = recording  # type: ignore[method-assign]
    return simulator


def config(url: str, state: Path, password: str) -> object:
    start = {"start_time_utc": "2026-05-29T00:00:00Z"}
    connection = {"max_attempts": 2, "max_retry_seconds": 5, "max_wait_seconds": 0.1}
    vm = {
        "vm_scans": start,
        "host_list": start,
        "user_activity": start,
        "host_list_detection": {**start, "obfuscation": [{"field": "HOST.IP", "action": "hash"}]},
    }
    fim = {
        "fim_events": {**start, "settle_lag_seconds": 0},
        "fim_incidents": {**start, "settle_lag_seconds": 0, "include_events": True},
    }
    login = {"id": "s", "username": USER, "password": password, "connection": connection}
    return kit_config(
        state,
        qualys=vm_input(url, vm, obfuscation_salt=SALT, **login),
        qualys_fim=fim_input(url, fim, auth_url=f"{url}/auth", **login),
    )


@pytest.mark.parametrize(
    "faults",
    [
        [],
        ["503:times=-1"],
        ["cut:after=400,times=-1"],
        ["409:code=1965,times=-1,wait=0"],
        ["expire_token:times=2"],
        ["429:times=-1,wait=0"],
        ["malformed:after=300,times=-1"],
        ["forbidden:times=-1"],
        ["wrong-password"],
    ],
    ids=["ok", "5xx", "cut", "409", "token-expiry", "429", "malformed", "forbidden", "bad-credentials"],
)
def test_no_secret_leaves(sim: Simulator, tmp_path: Path, faults: list[str]) -> None:
    stream = io.StringIO()
    setup_logging(debug=True, stream=stream)
    password = PASSWORD
    for spec in faults:
        if spec == "wrong-password":
            password = "Canary-Wr0ng-Pass-55"
        else:
            sim.faults.arm(parse_fault(spec))
    url = start_sim(sim)
    cfg = config(url, tmp_path / "state", password)
    policy = RetryPolicy(
        attempts=2, total_seconds=5, base_backoff=0.01, max_backoff=0.01, max_wait=0.01, concurrency_wait=0.01
    )
    collector = Collector(cfg, clock=sim.now, sleep=no_sleep, clients=clients(policy))  # type: ignore[arg-type]
    try:
        collector.run_once()
    finally:
        collector.close()
        logging.getLogger().handlers.clear()
    canaries = [PASSWORD, SALT, "Canary-Wr0ng-Pass-55", *sim.issued_tokens]  # type: ignore[attr-defined]
    assert len(canaries) >= 3
    logs = stream.getvalue()
    assert "Pull Started" in logs  # the logs were really captured
    stored = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir() if p.is_file())
    for canary in canaries:
        assert canary not in logs, f"{canary[:12]}… in the logs"
        assert canary.encode() not in stored, f"{canary[:12]}… in the state directory"
    if faults == []:
        assert b'"HOST"' in stored  # events were stored, and still nothing leaked
