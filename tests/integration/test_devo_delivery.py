"""Devo delivery against a real rsyslogd with mutual TLS on 127.0.0.1 (certificates minted per run)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from qualys_collector.app import Collector
from qualys_collector.config import build_config
from qualys_collector.engine.outbox import Outbox
from qualys_collector.errors import DeliveryError
from qualys_collector.model import Event, StoredEvent
from qualys_collector.sinks.devo import DevoSink
from qualys_collector.sinks.drain import Drainer
from tests.conftest import REPO, SimFactory, record_reliability
from tests.helpers.kit import fim_input, raw_config, vm_input, write_config
from tests.helpers.rsyslog import Certs, Rsyslog
from tests.helpers.vmsim import NOW, Run, start_sim

pytestmark = pytest.mark.integration

if not Rsyslog.available():  # CI installs it; a developer machine without it must not look green
    pytest.fail(
        "rsyslogd is not installed: run `bash .ci/run` (as root it installs rsyslog and rsyslog-openssl)", pytrace=False
    )


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs.mint(tmp_path / "certs")


@pytest.fixture
def relay(tmp_path: Path, certs: Certs) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path / "rsyslog", certs)
    server.start()
    yield server
    server.stop()


def sink(certs: Certs, relay: Rsyslog, **kw: Any) -> DevoSink:
    return DevoSink(
        "devo",
        "127.0.0.1",
        relay.port,
        chain=certs.chain,
        cert=certs.client_cert,
        key=certs.client_key,
        timeout=5.0,
        **kw,
    )


def fill(outbox: Outbox, n: int, tag: str = "vuln.qualys.hosts", start: int = 0) -> None:
    events = [Event(tag=tag, body={"n": i, "text": 'multi\nline ü "quoted"'}) for i in range(start, start + n)]
    outbox.commit("1", "host_list", events, {"@persistence_version": 1})


def test_pulled_events_arrive_once_with_tag_and_intact_json(
    make_sim: SimFactory, tmp_path: Path, certs: Certs, relay: Rsyslog
) -> None:
    sim = make_sim(
        seed=2, hosts=25, detections_per_host=3, scans=8, base=NOW - timedelta(days=2), span=timedelta(days=2)
    )
    r = Run(
        sim=sim,
        url=start_sim(sim),
        state=tmp_path / "state",
        services={
            "host_list_detection": {
                "start_time_utc": "2026-05-29T00:00:00Z",
                "filters": {"status": ["New", "Active", "Fixed", "Re-Opened"]},
            },
            "vm_scans": {"start_time_utc": "2026-05-29T00:00:00Z", "override_tag": "my.app.scans"},
        },
    )
    devo = sink(certs, relay)
    assert r.cycle(sinks=[devo])
    truth = sim.truth("host_list_detection", None, NOW)
    lines = relay.wait_for(len(truth) + len(sim.truth("vm_scans", None, NOW)) + 1)
    detections = [json.loads(x["message"]) for x in lines if x["tag"] == "vuln.qualys.hostdetections"]
    keys = Counter(d["@detection_key"] for d in detections)
    assert set(keys) == truth
    assert max(keys.values()) == 1
    scans = [json.loads(x["message"]) for x in lines if x["tag"] == "my.app.scans"]
    assert {s["REF"] for s in scans} == sim.truth("vm_scans", None, NOW)
    assert {x["tag"] for x in lines} == {
        "vuln.qualys.hostdetections",
        "my.app.scans",
        "vuln.qualys.collector.summary",
    }
    assert all("\n" not in x["message"] for x in lines)


def test_a_certificate_from_another_ca_is_refused_and_nothing_leaves_the_outbox(
    tmp_path: Path, certs: Certs, relay: Rsyslog
) -> None:
    other = trustme.CA()
    stranger = other.issue_cert("intruder.test")
    cert, key, chain = tmp_path / "x.crt", tmp_path / "x.key", tmp_path / "x-chain.crt"
    stranger.cert_chain_pems[0].write_to_path(str(cert))
    stranger.private_key_pem.write_to_path(str(key))
    other.cert_pem.write_to_path(str(chain))
    chain.write_bytes(chain.read_bytes() + certs.chain.read_bytes())  # trusts the relay, but rsyslog does not trust us
    outbox = Outbox(tmp_path / "state")
    outbox.register_outputs(["devo"])
    fill(outbox, 10)
    devo = DevoSink("devo", "127.0.0.1", relay.port, chain=chain, cert=cert, key=key, timeout=5.0)
    with pytest.raises(DeliveryError) as info:
        Drainer(outbox, devo).drain_once()
    assert info.value.code in (403, 404)
    assert outbox.pending("devo") == 10
    assert relay.lines() == []
    outbox.close()


@pytest.mark.slow
@pytest.mark.reliability
def test_every_confirmed_batch_is_already_in_the_relays_file_on_a_busy_machine(
    tmp_path: Path, certs: Certs, relay: Rsyslog
) -> None:
    """The sink's confirmation (the relay closes after our close_notify) must mean the lines are in the file.

    With rsyslog's in-memory main queue, 27 of 300 batches were confirmed under this load before any of
    their lines was written (another thread writes them later), so a relay restarted while the sink retried
    lost confirmed batches with the outbox empty. The relay's queue is now Direct (see :mod:`.relay`).
    """
    devo = sink(certs, relay)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]  # a busy machine
    late: list[int] = []
    try:
        for batch in range(150):
            devo.deliver(
                [StoredEvent(seq=n, tag="my.app.test", body=json.dumps({"b": batch, "n": n})) for n in range(50)]
            )
            if len(relay.lines()) < (batch + 1) * 50:  # read at once: no waiting for the relay to catch up
                late.append(batch)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    lines = relay.wait_for(150 * 50)
    record_reliability(compared=150 * 50, lost=150 * 50 - len(lines), duplicated=0)
    assert late == [], f"{len(late)} of 150 batches were confirmed before their lines reached the relay's file"
    assert len({x["message"] for x in lines}) == len(lines) == 150 * 50


@pytest.mark.slow
@pytest.mark.reliability
def test_one_batch_per_session_from_the_relays_first_write_each_confirmed_and_landed_once(
    tmp_path: Path, certs: Certs
) -> None:
    """The collector's pattern (one TLS session per batch, one after another) against freshly started relays,
    where the relay opens its output file: every batch is confirmed and every line lands once.

    Found by a one-in-ten failure of the delivery test: rsyslog 8.2302's ossl driver closes each session's
    socket twice; when the output file was opened between the two closes, the next session inherited its
    descriptor and rsyslog wrote received lines into it in plaintext (see :mod:`qualys_collector.relay`).
    """
    relays: list[Rsyslog] = []
    landed: Counter[tuple[int, ...]] = Counter()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]  # a busy machine
    try:
        for attempt in range(16):
            relay = Rsyslog(tmp_path / f"relay-{attempt}", certs)
            relays.append(relay)
            relay.start()
            devo = sink(certs, relay)
            devo.deliver([])  # the collector's start-up probe
            for batch in range(4):
                events = [
                    StoredEvent(seq=n, tag="my.app.test", body=json.dumps({"batch": batch, "n": n})) for n in range(50)
                ]
                devo.deliver(events)  # a DeliveryError here is the failure
            lines = relay.wait_for(4 * 50, timeout=5)
            counts = Counter(tuple(json.loads(x["message"]).values()) for x in lines)
            landed.update({(attempt, *key): n for key, n in counts.items()})
            assert len(counts) == 200, f"relay start {attempt}: {200 - len(counts)} confirmed lines never written"
            assert max(counts.values()) == 1
        total = 16 * 200
        record_reliability(compared=total, lost=total - len(landed), duplicated=sum(landed.values()) - len(landed))
    finally:  # rsyslogd takes a second to stop: all at once
        for burner in burners:
            burner.kill()
            burner.wait()
        stoppers = [threading.Thread(target=relay.stop) for relay in relays]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()


@pytest.mark.parametrize(
    ("problem", "code", "text"),
    [("missing", 400, "does not exist"), ("key", 401, "does not match"), ("chain", 402, "is not signed by the chain")],
)
def test_certificate_problems_are_numbered_errors_at_start(
    tmp_path: Path, certs: Certs, problem: str, code: int, text: str
) -> None:
    other = trustme.CA()
    kwargs = {"chain": certs.chain, "cert": certs.client_cert, "key": certs.client_key}
    if problem == "missing":
        kwargs["key"] = tmp_path / "nope.key"
    elif problem == "key":
        stray = other.issue_cert("x.test")
        stray.private_key_pem.write_to_path(str(tmp_path / "stray.key"))
        kwargs["key"] = tmp_path / "stray.key"
    else:
        other.cert_pem.write_to_path(str(tmp_path / "other-chain.crt"))
        kwargs["chain"] = tmp_path / "other-chain.crt"
    with pytest.raises(DeliveryError) as info:
        DevoSink("devo", "127.0.0.1", 1, **kwargs)  # type: ignore[arg-type]
    assert info.value.code == code
    assert text in str(info.value)


def test_one_tls_context_per_output_reused_by_every_batch_and_rebuilt_after_a_failure(
    tmp_path: Path, certs: Certs, relay: Rsyslog
) -> None:
    outbox = Outbox(tmp_path / "state")
    outbox.register_outputs(["devo"])
    devo = sink(certs, relay)
    drainer = Drainer(outbox, devo, batch_size=10)
    fill(outbox, 30)
    assert drainer.drain_once() == 10
    first = devo.transport.context()
    assert drainer.drain_once() == 10
    assert devo.transport.context() is first  # the second batch's session used the same context
    relay.stop()
    with pytest.raises(DeliveryError):
        drainer.drain_once()
    relay.start()
    assert drainer.drain_once() == 10
    assert devo.transport.context() is not first  # built again (the certificate files read again) after the failure
    assert len(relay.wait_for(30)) == 30
    outbox.close()


@pytest.mark.reliability
def test_relay_outage_loses_nothing_and_repeats_at_most_one_batch(tmp_path: Path, certs: Certs, relay: Rsyslog) -> None:
    outbox = Outbox(tmp_path / "state")
    outbox.register_outputs(["devo"])
    drainer = Drainer(outbox, sink(certs, relay), batch_size=100, max_backoff=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=drainer.run, args=(stop,), kwargs={"idle": 0.05})
    thread.start()
    try:
        fill(outbox, 300)
        first = relay.wait_for(300)
        assert len(first) == 300, (drainer.stats, drainer.last_error, outbox.pending("devo"))
        relay.stop()
        fill(outbox, 300, start=300)  # pulling goes on while the relay is down
        time.sleep(1.0)
        assert outbox.pending("devo") == 300
        assert drainer.stats.failures >= 1
        relay.start()
        lines = relay.wait_for(600, timeout=30)
    finally:
        stop.set()
        thread.join(10)
        outbox.close()
    counts = Counter(json.loads(x["message"])["n"] for x in lines)
    record_reliability(compared=600, lost=600 - len(counts), duplicated=sum(counts.values()) - len(counts))
    assert set(counts) == set(range(600))
    assert sum(counts.values()) - 600 <= 100


@pytest.mark.slow
@pytest.mark.reliability
def test_killed_mid_drain_and_restarted_loses_nothing(tmp_path: Path, certs: Certs, relay: Rsyslog) -> None:
    state = tmp_path / "state"
    outbox = Outbox(state)
    outbox.register_outputs(["devo"])
    fill(outbox, 20_000)
    outbox.close()
    args = [sys.executable, "-m", "tests.helpers.drain_child", str(state), str(relay.port), str(certs.directory)]
    child = subprocess.Popen(args, cwd=REPO)
    deadline = time.monotonic() + 30
    while len(relay.lines()) < 3000 and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert subprocess.run(args, cwd=REPO, check=False, timeout=120).returncode == 0
    lines = relay.wait_for(20_000, timeout=30)
    counts = Counter(json.loads(x["message"])["n"] for x in lines)
    record_reliability(compared=20_000, lost=20_000 - len(counts), duplicated=sum(counts.values()) - len(counts))
    assert set(counts) == set(range(20_000))
    assert sum(counts.values()) - 20_000 <= 1000  # at most the one unconfirmed batch


def test_devo_output_from_the_seed_config_layout(tmp_path: Path, certs: Certs, relay: Rsyslog) -> None:
    root = tmp_path / "devo-collectors" / "qualys"
    (root / "config").mkdir(parents=True)
    (root / "certs").mkdir()
    for name in ("chain.crt", "client.crt", "client.key"):
        (root / "certs" / name).write_bytes((certs.directory / name).read_bytes())
    raw = {
        "globals": {"persistence": {"config": {"directory_name": str(root / "state")}}},
        "outputs": {
            "devo_1": {
                "type": "devo_platform",
                "config": {
                    "address": "127.0.0.1",
                    "port": relay.port,
                    "type": "SSL",
                    "chain": "chain.crt",
                    "cert": "client.crt",
                    "key": "client.key",
                },
            }
        },
        "inputs": {
            "qualys": {
                "id": 1,
                "credentials": {"hostname": "qualysapi.qualys.com", "username": "u", "password": "p"},
                "services": {"host_list": {}},
            }
        },
    }
    config = build_config(raw, warnings=[]).model_copy(update={"source_path": root / "config" / "config.yaml"})
    collector = Collector(config, jobs=[])
    fill(collector.outbox, 5)
    assert collector.drain()
    collector.close()
    assert len(relay.wait_for(5)) == 5


def test_an_outputs_batch_size_is_the_events_per_delivery_batch(tmp_path: Path, certs: Certs, relay: Rsyslog) -> None:
    raw = raw_config(
        tmp_path / "state",
        qualys=vm_input("http://127.0.0.1:1", {"host_list": {}}),
        outputs={
            "devo": {
                "type": "devo_platform",
                "batch_size": 4,
                "config": {
                    "address": "127.0.0.1",
                    "port": relay.port,
                    "chain": str(certs.chain),
                    "cert": str(certs.client_cert),
                    "key": str(certs.client_key),
                },
            },
            "file": {"type": "file", "config": {"path": str(tmp_path / "out.jsonl")}},
        },
    )
    collector = Collector(build_config(raw, warnings=[]), jobs=[])
    fill(collector.outbox, 10)
    devo, file = collector.drainers
    assert devo.drain_once() == 4  # one batch: 4 events confirmed, 6 still pending for this output
    assert collector.outbox.pending("devo") == 6
    assert file.drain_once() == 10  # the default batch size (1,000) takes them all
    assert [devo.drain_once() for _ in range(3)] == [4, 2, 0]
    collector.close()
    assert len(relay.wait_for(10)) == 10


def test_check_command_reports_what_works(make_sim: SimFactory, tmp_path: Path, certs: Certs, relay: Rsyslog) -> None:
    from click.testing import CliRunner

    from qualys_collector.cli import main

    sim = make_sim(seed=1, hosts=3)
    url = sim.start()

    def config(password: str) -> Path:
        devo = {
            "address": "127.0.0.1",
            "port": relay.port,
            "chain": str(certs.chain),
            "cert": str(certs.client_cert),
            "key": str(certs.client_key),
        }
        raw = raw_config(
            tmp_path / "state",
            outputs={"devo_1": {"type": "devo_platform", "config": devo}},
            qualys=vm_input(url, {"host_list": {}}, id="1", password=password),
            qualys_fim=fim_input(url, {"fim_events": {}}, id="1", password=password),
        )
        return write_config(tmp_path / f"{password}.json", raw)

    good = CliRunner().invoke(main, ["check", "-c", str(config("demo"))])
    assert good.exit_code == 0, good.output
    assert good.output.count("OK    ") == 3
    bad = CliRunner().invoke(main, ["check", "-c", str(config("wrong-pass"))])
    assert bad.exit_code == 1
    assert "OK     output devo_1" in bad.output
    assert "FAILED input qualys: [SetupError 101]" in bad.output
    assert "FAILED input qualys_fim: [SetupError 101]" in bad.output
    assert relay.lines() == []  # nothing was sent
    assert sim.requests.get("/api/2.0/fo/activity_log/", 0) == 2


@pytest.mark.slow
def test_an_unreachable_relay_is_reported_at_start_and_pulling_goes_on(
    make_sim: SimFactory, tmp_path: Path, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.helpers.rsyslog import free_port

    sim = make_sim(seed=3, hosts=5, detections_per_host=2, base=NOW - timedelta(days=2), span=timedelta(days=2))
    r = Run(
        sim=sim,
        url=start_sim(sim),
        state=tmp_path / "state",
        services={"host_list": {"start_time_utc": "2026-05-29T00:00:00Z"}},
    )
    devo = DevoSink(
        "devo",
        "127.0.0.1",
        free_port(),
        chain=certs.chain,
        cert=certs.client_cert,
        key=certs.client_key,
        timeout=2.0,
    )
    collector = r.collector(sinks=[devo])
    assert not collector.run_once()  # delivery failed...
    assert "[DeliveryError 403] output devo: cannot connect to 127.0.0.1" in caplog.text
    # ...pulling did not: the hosts and the window's summary event
    assert collector.outbox.pending("devo") == len(sim.truth("host_list", None, NOW)) + 1
    collector.close()


def test_a_certificate_file_the_collector_cannot_read_is_a_numbered_error_naming_the_fix(
    tmp_path: Path, certs: Certs
) -> None:
    """A key another user copied with mode 0600 (the container's uid 10001 cannot read it): error 400 naming the
    file and the chown, not a traceback. As root the child gives up the capabilities that read anything."""
    for path in (certs.chain, certs.client_cert, certs.client_key):
        shutil.copyfile(path, tmp_path / path.name)
    key = tmp_path / certs.client_key.name
    key.chmod(0o600)
    prefix: list[str] = []
    if os.geteuid() == 0:
        os.chown(key, 65534, 65534)  # another user's file
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]
    else:
        key.chmod(0o000)
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from qualys_collector.errors import DeliveryError\n"
        "from qualys_collector.sinks.devo import DevoSink\n"
        "d = Path(sys.argv[1])\n"
        "try:\n"
        "    DevoSink('devo', '127.0.0.1', 1, chain=d / 'chain.crt', cert=d / 'client.crt', key=d / 'client.key')\n"
        "except DeliveryError as exc:\n"
        "    print(exc.code, exc)\n"
    )
    done = subprocess.run(
        [*prefix, sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]  # no traceback: a numbered error
    assert done.stdout.startswith(f"400 [DeliveryError 400] output devo: the key file {key} cannot be read"), done
    assert "chown 10001" in done.stdout  # the fix names the container's user
