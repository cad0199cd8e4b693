"""SIGTERM to the real collector process in the middle of a parallel host detection pull: it exits within
5 s (a container's grace period is 10 s), the checkpoint and the outbox are consistent, and a restart
delivers exactly the rest (compared with the simulator's ground truth)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qualys_collector.engine.outbox import DB_NAME
from qualys_collector.simulator import Limits
from tests.conftest import SimFactory, record_reliability
from tests.helpers.kit import file_output, raw_config, vm_input, write_config

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]
CLI = [sys.executable, "-m", "qualys_collector"]
DETECTION = "/api/5.0/fo/asset/host/vm/detection/"


@pytest.mark.parametrize("parse_processes", [0, 2])
def test_sigterm_mid_parallel_pull_exits_within_5_seconds_and_a_restart_delivers_the_rest(
    make_sim: SimFactory, tmp_path: Path, parse_processes: int
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    sim = make_sim(
        seed=37,
        hosts=3000,
        detections_per_host=2,
        base=now - timedelta(days=4),
        span=timedelta(days=2),
        host_interval=timedelta(days=3650),
        vm_limits=Limits(rate=100_000, window=60, concurrency=2),
    )
    url = sim.start()
    services = {
        "host_list_detection": {
            "start_time_utc": (now - timedelta(days=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "batch_size": 50,  # 60 batches: the workers fill the hand-over queue
            "max_workers": 2,
            "parse_processes": parse_processes,
        }
    }
    raw = raw_config(
        tmp_path / "state",
        qualys=vm_input(url, services, id="stop"),
        outputs=file_output(tmp_path / "events.jsonl", name="file"),
    )
    config = write_config(tmp_path / "config.json", raw)
    proc = subprocess.Popen([*CLI, "run", "-c", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while sim.requests.get(DETECTION, 0) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sim.requests.get(DETECTION, 0) >= 6, "the pull did not start"
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _out, err = proc.communicate(timeout=90)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err[-3000:]
    assert took < 5.0, f"exit took {took:.1f} s after SIGTERM"
    assert "Received SIGTERM" in err
    with sqlite3.connect(tmp_path / "state" / DB_NAME) as db:
        (stored,) = db.execute("SELECT data FROM checkpoints WHERE service = 'host_list_detection'").fetchone()
    progress = json.loads(stored)["window"]["token"]
    assert len(progress["done"]) < len(progress["plan"]), "the pull was over before SIGTERM"
    served = sim.requests.get(DETECTION, 0)

    resumed = subprocess.run(
        [*CLI, "run", "-c", str(config), "--once"], capture_output=True, text=True, timeout=180, check=False
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sim.requests.get(DETECTION, 0) - served <= len(progress["plan"]) - len(progress["done"])
    delivered = Counter(
        event["event"]["@detection_key"]
        for event in map(json.loads, (tmp_path / "events.jsonl").read_text().splitlines())
        if event["tag"] == "vuln.qualys.hostdetections"
    )
    truth = sim.truth("host_list_detection")
    duplicated = sum(delivered.values()) - len(delivered)
    record_reliability(compared=len(truth), lost=len(truth - set(delivered)), duplicated=duplicated)
    assert set(delivered) == truth
    assert duplicated == 0
