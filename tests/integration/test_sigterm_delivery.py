"""SIGTERM while a batch waits for a receiver's confirmation: the collector exits within 5 s (compose's and
Kubernetes' grace periods), the unconfirmed batch stays in the outbox, and a restart delivers every event once."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from qualys_collector.engine.outbox import Outbox
from qualys_collector.simulator import SimConfig, Simulator
from tests.conftest import REPO
from tests.helpers.rsyslog import Certs, Rsyslog

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CLI = [sys.executable, "-m", "qualys_collector"]


class HoldingReceiver:
    """A TLS receiver that reads everything and never closes: a confirmation that never comes."""

    def __init__(self, certs: Certs) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.chain))
        self.context.load_cert_chain(str(certs.server_cert), str(certs.server_key))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = 0
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.hold, args=(raw,), daemon=True).start()

    def hold(self, raw: socket.socket) -> None:
        self.held.append(raw)
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                self.received += len(data)
        except (OSError, ssl.SSLError):
            pass
        time.sleep(3600)  # hold the TCP connection open after the client's close_notify

    def close(self) -> None:
        self.listener.close()
        for raw in self.held:
            raw.close()


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    simulator = Simulator(SimConfig(seed=8, hosts=400, detections_per_host=1))
    yield simulator
    simulator.stop()


def config(tmp_path: Path, url: str, port: int, certs: Certs) -> Path:
    raw: dict[str, Any] = {
        "globals": {"persistence": {"config": {"directory_name": str(tmp_path / "state")}}},
        "outputs": {
            "devo": {
                "type": "devo_platform",
                "config": {
                    "address": "127.0.0.1",
                    "port": port,
                    "chain": str(certs.chain),
                    "cert": str(certs.client_cert),
                    "key": str(certs.client_key),
                },
            }
        },
        "inputs": {
            "qualys": {
                "id": "t1",
                "credentials": {"base_url": url, "username": "demo", "password": "demo"},
                "services": {"host_list": {"start_time_utc": "2020-01-01T00:00:00Z"}},
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sigterm_while_a_batch_waits_for_confirmation_exits_within_5_s(tmp_path: Path, simulator: Simulator) -> None:
    sim = simulator.start()
    certs = Certs.mint(tmp_path / "certs")
    holder = HoldingReceiver(certs)
    try:
        cfg = config(tmp_path, sim, holder.port, certs)
        with subprocess.Popen([*CLI, "run", "-c", str(cfg)], cwd=REPO, stderr=subprocess.PIPE, text=True) as child:
            deadline = time.monotonic() + 60
            while holder.received < 10_000 and time.monotonic() < deadline:  # a batch written, now unconfirmed
                time.sleep(0.05)
            assert holder.received >= 10_000, "the collector never sent a batch"
            time.sleep(0.5)
            child.send_signal(signal.SIGTERM)
            started = time.monotonic()
            child.wait(60)
            took = time.monotonic() - started
            log = child.stderr.read() if child.stderr else ""
    finally:
        holder.close()
    assert took <= 5.0, f"exit took {took:.1f} s after SIGTERM:\n{log[-2000:]}"
    outbox = Outbox(tmp_path / "state")
    try:
        pending, total = outbox.pending("devo"), outbox.pending()
    finally:
        outbox.close()
    assert pending == total >= 400, "an unconfirmed batch left the outbox"
    relay = Rsyslog(tmp_path / "rsyslog", certs)
    relay.start()
    try:
        cfg = config(tmp_path, sim, relay.port, certs)
        done = subprocess.run([*CLI, "run", "--once", "-c", str(cfg)], cwd=REPO, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        lines = relay.wait_for(total)
        hosts = Counter(json.loads(x["message"])["ID"] for x in lines if x["tag"] == "vuln.qualys.hosts")
    finally:
        relay.stop()
    assert len(hosts) == 400
    assert set(hosts) == simulator.truth("host_list"), "not the simulator's ground truth"
    assert set(hosts.values()) == {1}, "an event was delivered twice"
