"""``type: devo_http`` against a local ingestion server (``tests/helpers/ingest.py``: real HTTPS on 127.0.0.1
implementing Devo's stream URL form, with faults), first the sink alone, then the real command line.

The command-line cases run ``run --once`` against the simulator with two outputs: the ``devo_http`` output under
test and a file output whose lines are the pulled set; what the server stored is compared with that set event by
event (lost, extra copies, outbox depth). A canary token (from ``token_file``, or ``${ENV}``) must appear in no log
line, error, state file, file output or stored event.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from qualys_collector.config import build_config
from qualys_collector.engine.outbox import Outbox
from qualys_collector.errors import ConfigError
from qualys_collector.model import StoredEvent
from qualys_collector.simulator import SimConfig, Simulator
from qualys_collector.sinks.devo_http import ERR_REFUSED, ERR_TOO_LARGE, DevoHttpSink
from tests.conftest import REPO, record_reliability
from tests.helpers.ingest import IngestServer
from tests.helpers.kit import vm_input
from tests.helpers.rsyslog import Certs

pytestmark = [pytest.mark.integration]
CLI = [sys.executable, "-m", "qualys_collector"]
TOKEN = "CanaryTok3n0f32charsXq7Zk9Lm2Pw4"
DOMAIN = "qualys_tests"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return Certs.mint(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def server(certs: Certs) -> Iterator[IngestServer]:
    ingest = IngestServer(DOMAIN, TOKEN, cert=certs.server_cert, key=certs.server_key)
    ingest.start()
    yield ingest
    ingest.stop()


def sink(server: IngestServer, certs: Certs, **kw: Any) -> DevoHttpSink:
    return DevoHttpSink("devo", server.url, DOMAIN, TOKEN, hostname="h1", ca_bundle=certs.chain, **kw)


def events(tags: list[str], size: int = 40) -> list[StoredEvent]:
    return [StoredEvent(i + 1, tag, json.dumps({"n": i + 1, "pad": "x" * size})) for i, tag in enumerate(tags)]


# --- the sink alone, against the real server -------------------------------------------------------------


def test_requests_follow_the_documented_url_one_tag_each_gzip_in_order(server: IngestServer, certs: Certs) -> None:
    batch = events(["a.b.c", "a.b.c", "x.y.z", "a.b.c"])
    out = sink(server, certs)
    try:
        ack = out.deliver(batch)
    finally:
        out.close()
    assert ack.upto_seq == 4
    assert ack.error is None
    assert [(r.tag, r.host, r.status, r.events, r.gzip) for r in server.requests] == [
        ("a.b.c", "h1", 200, 2, True),
        ("x.y.z", "h1", 200, 1, True),
        ("a.b.c", "h1", 200, 1, True),
    ]  # runs of one tag, in order: never regrouped, so a prefix stays a prefix
    assert server.lines == [(e.tag, e.body) for e in batch]


def test_a_failed_request_confirms_exactly_the_prefix_before_it(server: IngestServer, certs: Certs) -> None:
    batch = events(["a.b.c", "a.b.c", "x.y.z", "a.b.c"])
    out = sink(server, certs)
    server.fault("pass")  # the first request passes
    server.fault("status", code=503)
    try:
        ack = out.deliver(batch)
    finally:
        out.close()
    assert ack.upto_seq == 2, "the two events of the first request are confirmed, nothing after the 503"
    assert ack.error is not None
    assert ack.error.code == 421
    assert "HTTP 503" in str(ack.error)
    assert len(server.requests) == 2, "after the failed request nothing more is sent"


def test_requests_stay_under_max_request_bytes(server: IngestServer, certs: Certs) -> None:
    batch = events(["a.b.c"] * 50, size=200)  # ~215 bytes a line
    out = sink(server, certs, max_request_bytes=2048)
    try:
        assert out.deliver(batch).upto_seq == 50
    finally:
        out.close()
    assert len(server.requests) >= 6
    assert all(r.events <= 2048 // 215 for r in server.requests)
    assert [body for _tag, body in server.lines] == [e.body for e in batch]


def test_an_event_over_the_limit_is_kept_with_its_number(server: IngestServer, certs: Certs) -> None:
    batch = [*events(["a.b.c"] * 2), StoredEvent(3, "a.b.c", json.dumps({"big": "y" * 3000}))]
    out = sink(server, certs, max_request_bytes=2048)
    try:
        ack = out.deliver(batch)
    finally:
        out.close()
    assert ack.upto_seq == 2
    assert ack.error is not None
    assert ack.error.code == ERR_TOO_LARGE
    assert "max_request_bytes" in str(ack.error)


def test_retry_after_is_read_and_the_token_never_printed(server: IngestServer, certs: Certs) -> None:
    server.fault("status", code=429, retry_after="7")
    out = sink(server, certs)
    try:
        ack = out.deliver(events(["a.b.c"]))
    finally:
        out.close()
    assert ack.error is not None
    assert ack.error.retry_after == 7.0
    assert "token!***" in str(ack.error)
    assert TOKEN not in str(ack.error)


def test_the_probe_checks_the_token_and_stores_nothing(server: IngestServer, certs: Certs) -> None:
    good = sink(server, certs)
    bad = DevoHttpSink("devo", server.url, DOMAIN, "Wr0ngTokenWr0ngTokenWr0ngToken12", ca_bundle=certs.chain)
    try:
        assert good.deliver([]).upto_seq is None
        with pytest.raises(Exception, match=r"\[DeliveryError 420\].*HTTP 401") as refused:
            bad.deliver([])
    finally:
        good.close()
        bad.close()
    assert "Wr0ngToken" not in str(refused.value)
    assert server.lines == []
    assert [r.status for r in server.requests] == [200, 401]


def test_an_untrusted_certificate_is_error_422(server: IngestServer, tmp_path: Path) -> None:
    other = Certs.mint(tmp_path / "other")
    out = DevoHttpSink("devo", server.url, DOMAIN, TOKEN, ca_bundle=other.chain)
    try:
        ack = out.deliver(events(["a.b.c"]))
    finally:
        out.close()
    assert ack.upto_seq is None
    assert re.search(r"\[DeliveryError 422\].*not trusted.*Fix: set ca_bundle", str(ack.error))
    assert server.lines == []


def test_config_needs_one_of_region_and_endpoint_and_masks_the_token(tmp_path: Path) -> None:
    def build(options: dict[str, Any]) -> object:
        raw = {
            "globals": {"persistence": {"config": {"directory_name": str(tmp_path)}}},
            "outputs": {"d": {"type": "devo_http", "config": {"domain": "x", "token": TOKEN, **options}}},
            "inputs": {"qualys": vm_input("https://qualysapi.qualys.eu", {"host_list": {}})},
        }
        return build_config(raw, warnings=[])

    assert build({"region": "eu"}) is not None
    for bad in ({}, {"region": "eu", "endpoint": "https://http-eu.devo.io"}, {"endpoint": "http://devo.example"}):
        with pytest.raises(ConfigError, match=r"outputs\.d") as error:
            build(bad)
        assert TOKEN not in str(error.value)


# --- the real command line ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """One simulated subscription for the module (real time: the CLI runs in its own process)."""
    simulator = Simulator(SimConfig(seed=11, hosts=600, detections_per_host=1, scans=12, activity_rows=150))
    yield simulator.start()
    simulator.stop()


def write_config(tmp_path: Path, url: str, server: IngestServer, certs: Certs, **devo: Any) -> Path:
    token_file = tmp_path / "devo.token"
    token_file.write_text(TOKEN + "\n")
    raw: dict[str, Any] = {
        "globals": {"persistence": {"config": {"directory_name": str(tmp_path / "state")}}},
        "outputs": {
            "devo": {
                "type": "devo_http",
                "config": {
                    "endpoint": server.url,
                    "domain": DOMAIN,
                    "token_file": str(token_file),
                    "ca_bundle": str(certs.chain),
                    **devo,
                },
            },
            "pulled": {"type": "file", "config": {"path": str(tmp_path / "pulled.jsonl")}},
        },
        "inputs": {
            "qualys": {
                "id": "h1",
                "credentials": {"base_url": url, "username": "demo", "password": "demo"},
                "services": {
                    "host_list": {"start_time_utc": "2020-01-01T00:00:00Z"},
                    "vm_scans": {"start_time_utc": "2020-01-01T00:00:00Z"},
                    "user_activity": {"start_time_utc": "2020-01-01T00:00:00Z"},
                },
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def pulled(tmp_path: Path) -> Counter[tuple[str, str]]:
    lines = (tmp_path / "pulled.jsonl").read_text().splitlines()
    return Counter((json.loads(x)["tag"], canonical(json.loads(x)["event"])) for x in lines)


def canonical(event: Any) -> str:
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def stored(server: IngestServer) -> Counter[tuple[str, str]]:
    return Counter((tag, canonical(json.loads(line))) for tag, line in server.lines)


def pending(tmp_path: Path, output: str) -> int:
    outbox = Outbox(tmp_path / "state")
    try:
        return outbox.pending(output)
    finally:
        outbox.close()


def run_once(cfg: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CLI, "run", "--once", "-c", str(cfg)],
        cwd=REPO,
        capture_output=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def assert_no_token(tmp_path: Path, server: IngestServer, done: subprocess.CompletedProcess[bytes]) -> None:
    leaks = [done.stdout, done.stderr, *(p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file())]
    leaks.append((tmp_path / "pulled.jsonl").read_bytes())
    leaks += [line.encode() for _tag, line in server.lines]
    assert all(TOKEN.encode() not in blob for blob in leaks), "the token leaked into a log, state file or event"


#: fault -> (its options, whether the faulted request may have been stored, i.e. the one duplicate allowed)
FAULTS: dict[str, tuple[dict[str, Any], bool]] = {
    "5xx": ({"kind": "status", "code": 500, "times": 2}, False),
    "503": ({"kind": "status", "code": 503, "times": 1}, False),
    "429-retry-after": ({"kind": "status", "code": 429, "times": 1, "retry_after": "2"}, False),
    "cut-mid-body": ({"kind": "cut", "times": 2}, False),
    "slow-past-timeout": ({"kind": "slow", "delay": 3.0, "times": 1}, True),
    "lost-answer": ({"kind": "lost_answer", "times": 1}, True),
}


@pytest.mark.reliability
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_cli_every_fault_loses_nothing_and_repeats_at_most_the_request_in_flight(
    tmp_path: Path, url: str, server: IngestServer, certs: Certs, name: str
) -> None:
    options, may_store = FAULTS[name]
    server.fault("pass", times=3)  # the probe and two requests pass, so the fault hits mid-drain
    server.fault(**options)
    cfg = write_config(tmp_path, url, server, certs, timeout_seconds=1)
    done = run_once(cfg)
    log = done.stderr.decode()
    assert done.returncode == 0, log[-3000:]
    server.settle()
    want, got = pulled(tmp_path), stored(server)
    lost, extra = want - got, got - want
    record_reliability(compared=sum(want.values()), lost=sum(lost.values()), duplicated=sum(extra.values()))
    assert sum(want.values()) > 700
    assert not lost, f"{sum(lost.values())} pulled events never stored"
    faulted = [r for r in server.requests if r.fault is not None]
    assert faulted, "the fault was never hit"
    assert re.search(r"\[DeliveryError 421\]", log), "the fault must be logged as a numbered error"
    if may_store:
        in_flight = sum(r.events for r in faulted)  # the one request whose answer was lost
        assert len(faulted) == 1
        assert sum(extra.values()) <= in_flight, "more repeated than the one request in flight"
    else:
        assert not extra, f"{sum(extra.values())} extra copies for a fault that stored nothing"
    assert pending(tmp_path, "devo") == 0
    assert_no_token(tmp_path, server, done)
    if name == "429-retry-after":
        after = server.requests.index(faulted[0]) + 1
        assert server.requests[after].at - faulted[0].at >= 1.9, "Retry-After: 2 was not honoured"


@pytest.mark.reliability
@pytest.mark.slow
@pytest.mark.parametrize("status", [401, 403])
def test_cli_a_refused_token_is_error_420_and_every_event_stays(
    tmp_path: Path, url: str, server: IngestServer, certs: Certs, status: int
) -> None:
    server.fault("status", code=status, times=-1)
    cfg = write_config(tmp_path, url, server, certs)
    done = run_once(cfg)
    log = done.stderr.decode()
    assert done.returncode != 0, "a refused token must not end a run as a success"
    assert re.search(rf"\[DeliveryError {ERR_REFUSED}\] .*HTTP {status}.*Fix: .*token", log), log[-2000:]
    assert "token!***" in log
    assert server.lines == []
    assert pending(tmp_path, "devo") == sum(pulled(tmp_path).values()) > 700
    assert_no_token(tmp_path, server, done)


@pytest.mark.slow
def test_cli_token_from_env_every_event_once(tmp_path: Path, url: str, server: IngestServer, certs: Certs) -> None:
    cfg = write_config(tmp_path, url, server, certs, max_request_bytes=64 * 1024)
    raw = yaml.safe_load(cfg.read_text())
    del raw["outputs"]["devo"]["config"]["token_file"]
    raw["outputs"]["devo"]["config"]["token"] = "${DEVO_TOKEN}"
    cfg.write_text(yaml.safe_dump(raw))
    done = run_once(cfg, env={"DEVO_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    want, got = pulled(tmp_path), stored(server)
    assert got == want, f"{sum((want - got).values())} lost, {sum((got - want).values())} extra"
    assert len({tag for tag, _ in got}) >= 3, "several tags, each posted under its own URL"
    posted = [r for r in server.requests if r.events]
    assert posted
    assert all(r.gzip and r.status == 200 and r.host for r in posted)
    assert pending(tmp_path, "devo") == 0
    assert_no_token(tmp_path, server, done)
