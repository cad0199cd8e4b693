"""A soak of the real ``run`` (not ``--once``) against a misbehaving relay: shared by ``bench/soak_relays.py``
(10 minutes per relay) and its shortened test (``tests/integration/test_soak_relays.py``).

Each relay gets its own collector process with two outputs: the Devo output under test and a file output whose
lines are the pulled set. The simulator keeps producing data (hosts re-processed every few minutes), so every
cycle pulls new events while the relay misbehaves. At the end the collector's ``/readyz`` and ``/metrics`` are
read, it is stopped with SIGTERM, and what the relay stored is compared with the pulled set event by event.

The relays (what users run in front of Devo, and how each misbehaves):

- ``no-close-notify``: rsyslog's GnuTLS driver, which stores every line and ends each session without a TLS
  ``close_notify``: a clean close still confirms; every event stored once, the output ready.
- ``holds-open``: a relay that stores every line and never closes after our close: nothing is ever confirmed,
  at most one batch of extra copies, then error 408, ``/readyz`` "delivery stopped", ``output_halted`` = 1.
- ``refuses-cert-*``: a client certificate from another CA: rsyslog GnuTLS (refuses by closing after the
  handshake), rsyslog OpenSSL (refuses inside a TLS 1.2 handshake), syslog-ng under TLS 1.3 (an alert after
  the handshake). Nothing stored, nothing acknowledged, ``/readyz`` "nothing delivered ... (last: [DeliveryError
  403] ...)".
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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from qualys_collector.engine.outbox import Outbox
from qualys_collector.relay import Certs, free_port
from qualys_collector.simulator import SimConfig
from tests.helpers.receivers import HoldingRelay, Receiver, RsyslogReceiver, SyslogNg

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "qualys_collector"]
BATCH = 1000  # the drainer's batch size: "one batch" of extra copies
START = "2020-01-01T00:00:00Z"


def soak_simulation(seed: int = 11) -> SimConfig:
    """A subscription whose hosts are processed again every 5 minutes: each cycle pulls new events."""
    return SimConfig(
        seed=seed, hosts=600, detections_per_host=1, scans=30, activity_rows=300, host_interval=timedelta(minutes=5)
    )


@dataclass(frozen=True)
class Relay:
    """How to start one misbehaving relay, and what the collector must make of it."""

    build: Callable[[Path, Certs], Receiver]
    stranger: bool = False  # our client certificate is issued by a CA the relay does not trust
    devo: dict[str, Any] = field(default_factory=dict)  # more options of the Devo output
    expect: str = "delivers"  # "delivers" (every event once), "halts" (error 408), "refuses" (nothing stored)


RELAYS: dict[str, Relay] = {
    "no-close-notify": Relay(lambda d, c: RsyslogReceiver(d, c, driver="gtls")),
    "holds-open": Relay(HoldingRelay, expect="halts"),
    "refuses-cert-gtls": Relay(lambda d, c: RsyslogReceiver(d, c, driver="gtls"), stranger=True, expect="refuses"),
    "refuses-cert-ossl": Relay(lambda d, c: RsyslogReceiver(d, c, driver="ossl"), stranger=True, expect="refuses"),
    "refuses-cert-tls13": Relay(SyslogNg, stranger=True, devo={"tls_max_version": "1.3"}, expect="refuses"),
}


@dataclass
class SoakResult:
    """What one soak found."""

    relay: str
    expect: str
    seconds: float
    pulled: int  # events in the pulled set (the file output)
    distinct: int  # distinct events in it
    stored: int  # lines of events the relay stored
    missing: int  # pulled events the relay did not store
    extra: int  # copies the relay stored beyond what was pulled
    foreign: int  # stored events that were never pulled
    pending: int  # events still in the Devo output's outbox
    ready: bool | None
    problems: list[str]
    halted_gauge: float | None
    errors: Counter[str]  # "[DeliveryError 408]" -> how many ERROR lines carry it
    exit_code: int | None
    exit_seconds: float
    cpu_seconds: float  # the collector process's user + system CPU over the whole run
    log_tail: str

    def failures(self) -> list[str]:
        """Every expectation this soak broke (empty: it held)."""
        bad = []
        if self.pulled == 0:
            bad.append("nothing was pulled")
        if self.foreign:
            bad.append(f"{self.foreign} stored events were never pulled")
        if self.extra > BATCH:
            bad.append(f"{self.extra} extra copies: more than one batch ({BATCH})")
        if self.exit_code != 0 or self.exit_seconds > 5:
            bad.append(f"SIGTERM: exit {self.exit_code} after {self.exit_seconds:.1f} s (want 0 within 5 s)")
        output = [p for p in self.problems if p.startswith("output devo:")]
        if self.expect == "delivers":
            if self.missing or self.pending:
                bad.append(f"{self.missing} pulled events not stored, {self.pending} still pending")
            if output:
                bad.append(f"the output is reported not ready: {output}")
        else:
            if self.ready is not False or not output:
                bad.append(f"/readyz does not report the output not ready: ready={self.ready} {self.problems}")
            if self.pending != self.pulled:
                bad.append(f"{self.pulled - self.pending} events acknowledged that the relay never confirmed")
        if self.expect == "halts":
            if self.halted_gauge != 1.0:
                bad.append(f"output_halted gauge is {self.halted_gauge}, not 1")
            if self.errors["[DeliveryError 408]"] != 1:
                bad.append(f"error 408 logged {self.errors['[DeliveryError 408]']} times, not once")
            if not any("delivery stopped" in p for p in output):
                bad.append(f"/readyz does not say delivery stopped: {output}")
        if self.expect == "refuses":
            if self.stored:
                bad.append(f"{self.stored} events stored with a certificate the relay refuses")
            if not any(re.search(r"\(last: \[DeliveryError 40[34]\]", p) for p in output):
                bad.append(f"/readyz does not name the refusal's error number: {output}")
        return bad

    def line(self) -> str:
        """One line for the bench's output."""
        verdict = "ok" if not self.failures() else "FAILED"
        errors = " ".join(f"{k}x{v}" for k, v in sorted(self.errors.items())) or "-"
        reason = " | ".join(p for p in self.problems if p.startswith("output devo:")) or "-"
        return (
            f"{self.relay:<19} {verdict:<6} {self.seconds:4.0f} s  pulled {self.pulled:5d} ({self.distinct} distinct)"
            f"  stored {self.stored:5d}  missing {self.missing:5d}  extra {self.extra:4d}  pending {self.pending:5d}"
            f"  ready {self.ready}  halted {self.halted_gauge}  errors {errors}  exit {self.exit_code}"
            f" in {self.exit_seconds:.1f} s  cpu {self.cpu_seconds:.1f} s  reason: {reason}"
        )


def _config(directory: Path, url: str, relay: Relay, port: int, certs: Certs, metrics_port: int, **tune: Any) -> Path:
    client = Certs.mint(directory / "stranger") if relay.stranger else certs
    chain = certs.chain
    if relay.stranger:  # we trust the relay; the relay does not trust our issuer
        chain = directory / "both.crt"
        chain.write_bytes(certs.chain.read_bytes() + client.chain.read_bytes())
    period = tune.get("period", 30)
    services = {
        name: {"start_time_utc": START, "request_period_in_seconds": period}
        for name in ("host_list", "vm_scans", "user_activity")
    }
    raw: dict[str, Any] = {
        "globals": {
            "persistence": {"config": {"directory_name": str(directory / "state")}},
            "metrics": {"port": metrics_port, "delivery_stall_seconds": tune.get("stall", 300.0)},
        },
        "outputs": {
            "devo": {
                "type": "devo_platform",
                "config": {
                    "address": "127.0.0.1",
                    "port": port,
                    "chain": str(chain),
                    "cert": str(client.client_cert),
                    "key": str(client.client_key),
                    "confirm_timeout_seconds": tune.get("confirm_timeout", 30.0),
                    **relay.devo,
                },
            },
            "pulled": {"type": "file", "config": {"path": str(directory / "pulled.jsonl")}},
        },
        "inputs": {
            "qualys": {
                "id": "soak",
                "credentials": {"base_url": url, "username": "demo", "password": "demo"},
                "services": services,
            }
        },
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _compact(events: list[Any]) -> Counter[str]:
    return Counter(json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in events)


def soak(name: str, directory: Path, url: str, seconds: float, **tune: Any) -> SoakResult:
    """Run the collector against relay ``name`` for ``seconds``, then stop it and compare.

    ``tune``: ``period`` (each service's request period, s), ``stall`` (``delivery_stall_seconds``) and
    ``confirm_timeout`` (``confirm_timeout_seconds``); the defaults are the product's, but a 30 s period.
    """
    relay = RELAYS[name]
    directory.mkdir(parents=True, exist_ok=True)
    certs = Certs.mint(directory / "certs")
    receiver = relay.build(directory / "relay", certs)
    receiver.start()
    metrics_port = free_port()
    config = _config(directory, url, relay, receiver.port, certs, metrics_port, **tune)
    log = directory / "collector.log"
    body: dict[str, Any] = {}
    metrics = ""
    started = time.monotonic()
    try:
        with log.open("wb") as errors:
            child = subprocess.Popen([*CLI, "run", "-c", str(config)], cwd=REPO, stderr=errors)
        try:
            time.sleep(seconds)
            cpu = psutil.Process(child.pid).cpu_times()
            with contextlib.suppress(httpx.HTTPError, ValueError):
                body = httpx.get(f"http://127.0.0.1:{metrics_port}/readyz", timeout=10).json()
                metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            child.send_signal(signal.SIGTERM)
            asked = time.monotonic()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(60)
            exit_seconds = time.monotonic() - asked
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
        soaked = time.monotonic() - started
    finally:
        receiver.stop()
    text = log.read_text(encoding="utf-8", errors="replace")
    pulled_path = directory / "pulled.jsonl"
    pulled_lines = (
        [json.loads(x)["event"] for x in pulled_path.read_text().splitlines()] if pulled_path.exists() else []
    )
    got = _compact([json.loads(body) for body in receiver.messages()])
    outbox = Outbox(directory / "state")
    try:
        pending = outbox.pending("devo")
        # The pulled set is what the pull committed: the file output's lines plus what it had not written yet
        # when SIGTERM came (the two outputs drain side by side; the file may lag by a page at the stop).
        unwritten = [json.loads(e.body) for e in outbox.read("pulled", outbox.pending("pulled") + 1)]
    finally:
        outbox.close()
    want = _compact(pulled_lines + unwritten)
    gauge = re.search(r'^qualys_collector_output_halted\{output="devo"\} (\S+)$', metrics, re.MULTILINE)
    return SoakResult(
        relay=name,
        expect=relay.expect,
        seconds=soaked,
        pulled=sum(want.values()),
        distinct=len(want),
        stored=sum(got.values()),
        missing=sum((want - got).values()),
        extra=sum((got - want).values()),
        foreign=len(set(got) - set(want)),
        pending=pending,
        ready=body.get("ready"),
        problems=list(body.get("problems", [])),
        halted_gauge=float(gauge[1]) if gauge else None,
        errors=Counter(m[1] for m in re.finditer(r" ERROR .*?(\[DeliveryError \d+\])", text)),
        exit_code=child.returncode,
        exit_seconds=exit_seconds,
        cpu_seconds=cpu.user + cpu.system,
        log_tail=text[-3000:],
    )
