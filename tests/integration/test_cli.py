"""The real command line in real processes against the simulator: exit codes, log lines, signals, kill -9."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from qualys_collector.engine.outbox import Outbox
from qualys_collector.engine.summary import SUMMARY_TAG
from qualys_collector.model import parse_iso_datetime
from qualys_collector.simulator import Limits, Simulator
from qualys_collector.simulator.faults import parse_fault
from tests.conftest import SimFactory
from tests.helpers.kit import file_output, fim_input, raw_config, vm_input
from tests.helpers.kit import write_config as write_file
from tests.helpers.vmsim import NOW

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "qualys_collector"]
SEED_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} +(INFO|WARNING|ERROR|DEBUG) \S+::\S+ -> .+")


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    # real time here: the CLI runs in its own process with the wall clock
    return make_sim(
        seed=11,
        hosts=60,
        detections_per_host=5,
        fim_events=3000,
        fim_incidents=5,
        vm_limits=Limits(rate=100_000, window=60, concurrency=2),
    )


def write_config(tmp_path: Path, url: str, services: dict[str, Any], fim: dict[str, Any] | None = None) -> Path:
    raw = raw_config(
        tmp_path / "state",
        qualys=vm_input(url, services, id="c1"),
        qualys_fim=fim_input(url, fim, id="c1") if fim else None,
        outputs=file_output(tmp_path / "events.jsonl"),
    )
    return write_file(tmp_path / "config.yaml", raw)


def events(tmp_path: Path) -> list[dict[str, Any]]:
    """Delivered data lines (each completed window's summary event left out)."""
    path = tmp_path / "events.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [line for line in lines if line["tag"] != SUMMARY_TAG]


START = {"start_time_utc": "2020-01-01T00:00:00Z"}


def window_end(tmp_path: Path, service: str) -> datetime:
    """The end of the last window the collector pulled (a WINDOW-mode checkpoint is that end)."""
    outbox = Outbox(tmp_path / "state")
    try:
        checkpoint = outbox.load_checkpoint("c1", service)
    finally:
        outbox.close()
    assert checkpoint is not None
    return parse_iso_datetime(checkpoint["last_event_time_str"])


def test_run_once_logs_the_seed_lines_and_exits_0(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, sim.start(), {"host_list": START})
    done = subprocess.run(
        [*CLI, "run", "-c", str(config), "--once"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines
    assert all(SEED_LINE.match(line) for line in lines), [x for x in lines if not SEED_LINE.match(x)][:3]
    assert any("Puller(qualys,c1,host_list,predefined) -> Pull Started" in line for line in lines)
    assert any("-> Statistics for this pull cycle (@devo_pulling_id=" in line for line in lines)
    assert {e["event"]["ID"] for e in events(tmp_path)} == sim.truth(
        "host_list", None, window_end(tmp_path, "host_list")
    )
    assert done.stdout == ""
    shown = subprocess.run([*CLI, "state", "show", "-c", str(config)], capture_output=True, text=True, check=True)
    assert "c1/host_list:" in shown.stdout
    reset = subprocess.run(
        [*CLI, "state", "reset", "-c", str(config), "--service", "host_list"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Checkpoint of c1/host_list reset" in reset.stderr


def test_json_logs_and_failure_exit_code(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(tmp_path, sim.start(), {"host_list": START})
    sim.faults.arm(parse_fault("400:code=1905,times=-1"))
    done = subprocess.run(
        [*CLI, "run", "-c", str(config), "--once", "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    records = [json.loads(line) for line in done.stderr.splitlines()]
    errors = [r for r in records if r["level"] == "ERROR"]
    assert errors
    assert "[PullError 300]" in errors[0]["message"]
    assert {"time", "level", "process", "thread", "logger", "message"} <= set(errors[0])


@pytest.mark.slow
def test_sigterm_stops_after_the_current_page(sim: Simulator, tmp_path: Path) -> None:
    sim.faults.arm(parse_fault("slow:delay=0.05,times=-1,path=detection"))
    config = write_config(tmp_path, sim.start(), {"host_list_detection": {**START, "truncation_limit": 5}})
    proc = subprocess.Popen([*CLI, "run", "-c", str(config)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while sim.requests.get("/api/5.0/fo/asset/host/vm/detection/", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    _out, err = proc.communicate(timeout=60)
    assert time.monotonic() - asked <= 5.0, "SIGTERM mid-page must end the process within 5 s"
    assert proc.returncode == 0, err
    assert "Received SIGTERM: stopping after the current page" in err
    sim.faults.clear()
    again = subprocess.run(
        [*CLI, "run", "-c", str(config), "--once"], capture_output=True, text=True, timeout=120, check=False
    )
    assert again.returncode == 0, again.stderr
    keys = Counter(e["event"]["@detection_key"] for e in events(tmp_path) if e["tag"] == "vuln.qualys.hostdetections")
    assert set(keys) == sim.truth("host_list_detection", None, window_end(tmp_path, "host_list_detection"))
    assert max(keys.values()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["409:code=1965,wait=600,times=-1", "409:code=1960,times=-1"])
def test_sigterm_interrupts_a_409_wait_within_5_s(sim: Simulator, tmp_path: Path, fault: str) -> None:
    """Qualys asks for a long wait (1965: 600 s; 1960: the 30 s concurrency wait) mid-window; SIGTERM ends it."""
    sim.faults.arm(parse_fault("slow:delay=0.05,times=-1,path=detection"))
    config = write_config(tmp_path, sim.start(), {"host_list_detection": {**START, "truncation_limit": 5}})
    proc = subprocess.Popen([*CLI, "run", "-c", str(config), "--once"], stderr=subprocess.PIPE, text=True)
    path = "/api/5.0/fo/asset/host/vm/detection/"
    deadline = time.monotonic() + 60
    while sim.requests.get(path, 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    sim.faults.arm(parse_fault(f"{fault},path=detection"))
    while sim.statuses.get(f"{path} 409", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.statuses.get(f"{path} 409", 0) >= 1
    time.sleep(0.5)  # the collector is now waiting as Qualys told it to
    asked = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        pytest.fail(f"still running 5 s after SIGTERM:\n{err[-2000:]}")
    assert time.monotonic() - asked < 5
    assert proc.returncode == 1, err  # --once: the cycle did not complete
    assert "Received SIGTERM: stopping after the current page" in err
    assert "Stop requested while waiting" in err
    assert " ERROR " not in err, err  # a requested stop is not an error
    committed = Counter(e["event"]["@detection_key"] for e in events(tmp_path))
    assert committed  # pages before the 409 were committed and delivered
    outbox = Outbox(tmp_path / "state")
    try:
        assert outbox.pending() == 0  # what was committed before the stop was delivered
    finally:
        outbox.close()
    sim.faults.clear()
    again = subprocess.run(
        [*CLI, "run", "-c", str(config), "--once"], capture_output=True, text=True, timeout=120, check=False
    )
    assert again.returncode == 0, again.stderr
    assert "Resuming the window interrupted after page" in again.stderr  # the checkpoint kept the open window
    keys = Counter(e["event"]["@detection_key"] for e in events(tmp_path) if e["tag"] == "vuln.qualys.hostdetections")
    assert set(keys) == sim.truth("host_list_detection", None, window_end(tmp_path, "host_list_detection"))
    assert max(keys.values()) == 1


@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.parametrize("kill_after", [2, 5, 9])
def test_kill_9_mid_pull_then_restart_loses_nothing(sim: Simulator, tmp_path: Path, kill_after: int) -> None:
    sim.faults.arm(parse_fault("slow:delay=0.02,times=-1"))
    url = sim.start()
    config = write_config(
        tmp_path,
        url,
        {"host_list_detection": {**START, "truncation_limit": 4}},
        fim={"fim_events": {**START, "page_size": 200, "settle_lag_seconds": 0}},
    )
    proc = subprocess.Popen([*CLI, "run", "-c", str(config), "--once"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while sum(sim.requests.values()) < kill_after and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    sim.faults.clear()
    done = subprocess.run(
        [*CLI, "run", "-c", str(config), "--once"], capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr
    got = events(tmp_path)
    detections = Counter(e["event"]["@detection_key"] for e in got if e["tag"] == "vuln.qualys.hostdetections")
    fim_ids = Counter(e["event"]["id"] for e in got if e["tag"] == "monitor.qualys.fim.event")
    assert set(detections) == sim.truth("host_list_detection", None, window_end(tmp_path, "host_list_detection"))
    pulled_until = datetime.fromtimestamp(max(e["event"]["@devo_pulling_id"] for e in got) / 1000, tz=UTC).replace(
        microsecond=0
    )
    assert set(fim_ids) >= sim.truth("fim_events", None, pulled_until - timedelta(seconds=1))
    assert set(fim_ids) <= sim.truth("fim_events", None, pulled_until + timedelta(seconds=1))
    # delivery is at-least-once only across the one unconfirmed batch; pulling never repeats a page
    assert max(detections.values()) <= 2
    assert sum(detections.values()) - len(detections) + sum(fim_ids.values()) - len(fim_ids) <= 1000


def test_validate_and_bad_config_exit_2_before_any_request(sim: Simulator, tmp_path: Path) -> None:
    url = sim.start()
    config = write_config(tmp_path, url, {"host_list": {"start_time_utc": "2999-01-01T00:00:00Z"}})
    done = subprocess.run(
        [*CLI, "run", "-c", str(config), "--once"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert "[InitVariablesError 3]" in done.stderr
    assert "inputs.qualys.services.host_list.start_time_utc" in done.stderr
    assert sum(sim.requests.values()) == 0
    assert NOW  # the frozen clock of other tests is not used here
