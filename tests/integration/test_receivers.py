"""The Devo output against receivers no one here wrote: rsyslog (OpenSSL and GnuTLS drivers), syslog-ng and
HAProxy terminating TLS in front of a plain-TCP rsyslog, each a real program on 127.0.0.1 with mutual TLS.

Every case runs the real command line (``run --once``) against the simulator with two outputs: the Devo output
under test and a file output, whose lines are the pulled set. What the receiver stored is compared with that set
event by event (distinct events, extra copies, outbox depth), not only counted.

A batch counts as delivered when the receiver closes cleanly after our close, with no alert and no reset: rsyslog's
GnuTLS driver (no ``close_notify``) confirms, a certificate refused after a TLS 1.3 handshake does not.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from qualys_collector.engine.outbox import Outbox
from qualys_collector.relay import free_port
from qualys_collector.simulator import SimConfig, Simulator
from tests.conftest import REPO, record_reliability
from tests.helpers.receivers import Haproxy, HoldingRelay, Receiver, RsyslogReceiver, SyslogNg
from tests.helpers.rsyslog import Certs

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CLI = [sys.executable, "-m", "qualys_collector"]

if not (SyslogNg.available() and Haproxy.available() and RsyslogReceiver.available()):
    pytest.fail(  # CI installs them; a developer machine without them must not look green
        "the receiver matrix needs rsyslog (with rsyslog-gnutls), haproxy and syslog-ng: run `bash .ci/run` as root",
        pytrace=False,
    )


class Topology:
    """A receiver the collector connects to, and the process that stores what arrives."""

    def __init__(self, front: Receiver, store: Receiver, extra: list[Receiver] | None = None) -> None:
        self.front, self.store, self.processes = front, store, [*(extra or []), front]

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def __enter__(self) -> Topology:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def rsyslog(driver: str) -> Callable[[Path, Certs], Topology]:
    def build(directory: Path, certs: Certs) -> Topology:
        server = RsyslogReceiver(directory / f"rsyslog-{driver}", certs, driver=driver)
        return Topology(server, server)

    return build


def syslog_ng(directory: Path, certs: Certs, tls12: bool = False, framing: str = "lf") -> Topology:
    server = SyslogNg(directory / "syslog-ng", certs, max_tls12=tls12, framing=framing)
    return Topology(server, server)


def haproxy(directory: Path, certs: Certs, tls12: bool = False) -> Topology:
    backend = RsyslogReceiver(directory / "backend", certs, driver=None)
    front = Haproxy(directory / "haproxy", certs, backend.port, max_tls12=tls12)
    return Topology(front, backend, extra=[backend])


RIGHT = {
    "rsyslog-ossl": rsyslog("ossl"),
    "rsyslog-gtls": rsyslog("gtls"),  # closes without close_notify: a clean TCP close is the confirmation
    "syslog-ng-network": syslog_ng,
    "syslog-ng-syslog": lambda d, c: syslog_ng(d, c, framing="octet-counting"),  # RFC 5425 octet counting
    "haproxy-rsyslog": haproxy,
}
#: Output options per cell (the rest keep the defaults).
OPTIONS: dict[str, dict[str, Any]] = {"syslog-ng-syslog": {"framing": "octet-counting"}}
#: Killed mid-batch, rsyslog's GnuTLS driver looks exactly like a good close (it never sends close_notify), so the
#: lines it had read and not stored are lost (measured: 380 of a batch); no TLS rule can see it (README, Guarantees).
KILLED = {name: build for name, build in RIGHT.items() if name != "rsyslog-gtls"}
#: A certificate from another CA is refused during the handshake in TLS 1.2, and after it in TLS 1.3 (syslog-ng
#: and HAProxy send the alert once our first bytes arrive): both must end without an acknowledgement. The ``-tls13``
#: cells let the collector offer TLS 1.3 (``tls_max_version: "1.3"``); the others keep the default, 1.2, which
#: rsyslog's GnuTLS driver needs (under 1.3 it refuses silently after the handshake: see ``sinks.transport``).
STRANGER = {
    "rsyslog-ossl": rsyslog("ossl"),
    "rsyslog-gtls": rsyslog("gtls"),
    "syslog-ng-network": syslog_ng,
    "syslog-ng-network-tls13": syslog_ng,
    "syslog-ng-network-tls12": lambda d, c: syslog_ng(d, c, tls12=True),
    "haproxy-rsyslog": haproxy,
    "haproxy-rsyslog-tls13": haproxy,
    "haproxy-rsyslog-tls12": lambda d, c: haproxy(d, c, tls12=True),
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """One simulated subscription for the module (real time: the CLI runs in its own process)."""
    simulator = Simulator(SimConfig(seed=5, hosts=2500, detections_per_host=1, scans=30, activity_rows=300))
    yield simulator.start()
    simulator.stop()


def config(tmp_path: Path, url: str, port: int, chain: Path, client: tuple[Path, Path], **devo: Any) -> Path:
    raw: dict[str, Any] = {
        "globals": {"persistence": {"config": {"directory_name": str(tmp_path / "state")}}},
        "outputs": {
            "devo": {
                "type": "devo_platform",
                "config": {
                    "address": "127.0.0.1",
                    "port": port,
                    "chain": str(chain),
                    "cert": str(client[0]),
                    "key": str(client[1]),
                    **devo,
                },
            },
            "pulled": {"type": "file", "config": {"path": str(tmp_path / "pulled.jsonl")}},
        },
        "inputs": {
            "qualys": {
                "id": "m1",
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


def pulled(tmp_path: Path) -> Counter[str]:
    """The pulled set: the file output's event bodies, in the compact JSON the Devo line carries."""
    lines = (tmp_path / "pulled.jsonl").read_text().splitlines()
    return Counter(json.dumps(json.loads(x)["event"], separators=(",", ":"), ensure_ascii=False) for x in lines)


def stored(receiver: Receiver, torn: list[str] | None = None) -> Counter[str]:
    """What the receiver stored; with ``torn``, lines that are no JSON are collected there instead of failing."""
    bodies: Counter[str] = Counter()
    for body in receiver.messages():
        try:
            bodies[json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False)] += 1
        except json.JSONDecodeError:
            if torn is None:
                raise
            torn.append(body)
    return bodies


def run_once(cfg: Path) -> subprocess.CompletedProcess[bytes]:
    """The real command line, one cycle of every service."""
    return subprocess.run([*CLI, "run", "--once", "-c", str(cfg)], cwd=REPO, capture_output=True, timeout=300)


def pending(tmp_path: Path, output: str) -> int:
    outbox = Outbox(tmp_path / "state")
    try:
        return outbox.pending(output)
    finally:
        outbox.close()


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_right_certificate_every_event_stored_once(tmp_path: Path, url: str, name: str) -> None:
    certs = Certs.mint(tmp_path / "certs")
    with RIGHT[name](tmp_path, certs) as topology:
        client = (certs.client_cert, certs.client_key)
        done = run_once(config(tmp_path, url, topology.front.port, certs.chain, client, **OPTIONS.get(name, {})))
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        want = pulled(tmp_path)
        got = stored(topology.store)
    assert len(want) > 2500
    record_reliability(compared=len(want), lost=len(want - got), duplicated=sum((got - want).values()))
    assert set(got) == set(want), f"{len(want - got)} pulled events not stored, {len(got - want)} stored not pulled"
    assert got == want, "an event was stored more often than it was pulled"  # identical activity rows stay two
    assert pending(tmp_path, "devo") == 0


@pytest.mark.parametrize("name", sorted(STRANGER))
def test_stranger_certificate_nothing_acknowledged(tmp_path: Path, url: str, name: str) -> None:
    certs = Certs.mint(tmp_path / "certs")
    stranger = Certs.mint(tmp_path / "stranger")  # the same names, issued by another CA
    chain = tmp_path / "both.crt"  # we trust the receiver; the receiver does not trust our issuer
    chain.write_bytes(certs.chain.read_bytes() + stranger.chain.read_bytes())
    with STRANGER[name](tmp_path, certs) as topology:
        tls = {"tls_max_version": "1.3"} if name.endswith("-tls13") else {}
        done = run_once(
            config(tmp_path, url, topology.front.port, chain, (stranger.client_cert, stranger.client_key), **tls)
        )
        got = stored(topology.store)
    log = done.stderr.decode() + done.stdout.decode()
    assert done.returncode != 0, "a refused certificate must not end a run as a success"
    assert re.search(r"\[DeliveryError 40[34]\]", log), "the refusal must be a numbered delivery error"
    assert not got, f"{sum(got.values())} events stored with a certificate the receiver refuses"
    want = pulled(tmp_path)
    assert pending(tmp_path, "devo") == sum(want.values()) > 2500, "a refused batch was acknowledged"


@pytest.mark.reliability
@pytest.mark.parametrize("name", sorted(KILLED))
def test_receiver_killed_mid_drain_and_restarted_loses_nothing(tmp_path: Path, url: str, name: str) -> None:
    certs = Certs.mint(tmp_path / "certs")
    with KILLED[name](tmp_path, certs) as topology:
        client = (certs.client_cert, certs.client_key)
        cfg = config(tmp_path, url, topology.front.port, certs.chain, client, **OPTIONS.get(name, {}))
        child = subprocess.Popen([*CLI, "run", "--once", "-c", str(cfg)], cwd=REPO, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(topology.store.messages()) < 1000 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.02)
        topology.front.kill()  # SIGKILL mid-drain: the batch in flight is neither stored whole nor confirmed
        time.sleep(0.5)
        topology.front.start()
        _, errors = child.communicate(timeout=300)
        assert child.returncode == 0, errors.decode()[-3000:]
        want = pulled(tmp_path)
        torn: list[str] = []  # HAProxy killed mid-line: its plain-TCP backend stores the line's first part
        got = stored(topology.store, torn)
    record_reliability(compared=len(want), lost=len(want - got), duplicated=sum((got - want).values()))
    assert set(got) == set(want), f"{len(want - got)} pulled events lost"
    assert sum((got - want).values()) <= 1000, "more than one batch of extra copies"
    assert len(torn) <= 1, f"{len(torn)} torn lines for one kill"
    assert pending(tmp_path, "devo") == 0


def test_a_relay_holding_connections_open_costs_at_most_one_batch_then_the_output_stops(
    tmp_path: Path, url: str
) -> None:
    """Written, never confirmed: probed with empty sessions instead of re-sent, then stopped, and said so."""
    certs = Certs.mint(tmp_path / "certs")
    relay = HoldingRelay(tmp_path / "holding", certs)
    relay.start()
    port = free_port()
    cfg = config(
        tmp_path, url, relay.port, certs.chain, (certs.client_cert, certs.client_key), confirm_timeout_seconds=1
    )
    raw = yaml.safe_load(cfg.read_text())
    raw["globals"]["metrics"] = {"port": port}
    cfg.write_text(yaml.safe_dump(raw))
    child = subprocess.Popen([*CLI, "run", "-c", str(cfg)], cwd=REPO, stderr=subprocess.PIPE)
    try:
        deadline, body = time.monotonic() + 180, {}
        while time.monotonic() < deadline and child.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                body = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).json()
                if any("delivery stopped" in problem for problem in body["problems"]):
                    break
            time.sleep(0.5)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        while time.monotonic() < deadline and sum(pulled(tmp_path).values()) < 2500:
            time.sleep(0.5)  # pulling goes on into the outbox (and the file output)
        child.send_signal(signal.SIGTERM)
        _, errors = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        relay.stop()
    log = errors.decode()
    assert body.get("ready") is False, body
    assert any("output devo: delivery stopped" in problem for problem in body["problems"]), body
    assert 'qualys_collector_output_halted{output="devo"} 1.0' in metrics
    assert log.count("[DeliveryError 408] output devo: delivery stopped") == 1, log[-3000:]
    want = pulled(tmp_path)
    got = stored(relay)
    assert sum(want.values()) > 2500
    assert not got - want, "stored events that were never pulled"
    assert sum(got.values()) - len(got) <= 1000, "more than one batch of extra copies"
    assert pending(tmp_path, "devo") == sum(want.values()), "an unconfirmed batch was acknowledged"


def test_plain_tcp_to_an_in_house_relay_stores_every_event_once_and_warns_on_start(tmp_path: Path, url: str) -> None:
    """``type: TCP`` (a Devo In-House Relay on the customer's network): plain rsyslog, no certificates."""
    with RsyslogReceiver(tmp_path / "in-house", Certs.mint(tmp_path / "certs"), driver=None) as relay:
        cfg = config(tmp_path, url, relay.port, Path("unused"), (Path("unused"), Path("unused")), type="TCP")
        raw = yaml.safe_load(cfg.read_text())
        for key in ("chain", "cert", "key"):
            del raw["outputs"]["devo"]["config"][key]
        cfg.write_text(yaml.safe_dump(raw))
        done = run_once(cfg)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        want = pulled(tmp_path)
        got = stored(relay)
    assert "Output devo: type TCP sends events UNENCRYPTED" in done.stderr.decode()
    assert len(want) > 2500
    assert got == want
    assert pending(tmp_path, "devo") == 0


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_an_event_of_400_kb_reaches_every_receiver_as_one_valid_json_line(tmp_path: Path, name: str) -> None:
    """Over ``max_event_bytes`` (256 KiB), the largest strings are cut, the line stays JSON and says so."""
    simulator = Simulator(SimConfig(seed=9, hosts=4, detections_per_host=2, results_bytes=400_000))
    big_url = simulator.start()
    certs = Certs.mint(tmp_path / "certs")
    try:
        with RIGHT[name](tmp_path, certs) as topology:
            client = (certs.client_cert, certs.client_key)
            cfg = config(tmp_path, big_url, topology.front.port, certs.chain, client, **OPTIONS.get(name, {}))
            raw = yaml.safe_load(cfg.read_text())
            raw["inputs"]["qualys"]["services"] = {"host_list_detection": {"start_time_utc": "2020-01-01T00:00:00Z"}}
            cfg.write_text(yaml.safe_dump(raw))
            done = run_once(cfg)
            assert done.returncode == 0, done.stderr.decode()[-3000:]
            lines = topology.store.messages()
    finally:
        simulator.stop()
    want = [json.loads(x)["event"] for x in (tmp_path / "pulled.jsonl").read_text().splitlines()]
    big = [event for event in want if len(json.dumps(event)) > 400_000]
    assert len(big) == 8, "the simulator's detections carry 400 KB RESULTS"
    got = [json.loads(line) for line in lines]  # one valid JSON object per stored line, none split
    assert len(got) == len(want)
    shortened = [event for event in got if "@truncated_fields" in event]
    assert len(shortened) == len(big)
    for event in shortened:
        assert len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()) < 256 * 1024
        assert any(
            path.endswith("RESULTS") and length >= 400_000 for path, length in event["@truncated_fields"].items()
        )
    assert "over max_event_bytes 262144: shortened" in done.stderr.decode()
