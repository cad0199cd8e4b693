"""A full disk (a real RLIMIT_FSIZE: writes fail with EFBIG) and an unwritable state directory: a clear
error, no corrupted state, and a later run delivers everything."""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qualys_collector.simulator import Limits, Simulator
from tests.conftest import SimFactory, record_reliability
from tests.helpers.kit import file_output, raw_config, vm_input, write_config

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
CLI = [sys.executable, "-m", "qualys_collector"]


@pytest.fixture
def setup(make_sim: SimFactory, tmp_path: Path) -> tuple[Simulator, Path]:
    now = datetime.now(UTC).replace(microsecond=0)
    sim = make_sim(
        seed=31,
        hosts=80,
        detections_per_host=5,
        base=now - timedelta(days=1),
        span=timedelta(hours=23),
        host_interval=timedelta(days=3650),
        vm_limits=Limits(rate=100_000, window=60, concurrency=2),
    )
    url = sim.start()
    start = (now - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    services = {"host_list_detection": {"start_time_utc": start, "truncation_limit": 10}}
    raw = raw_config(
        tmp_path / "state",
        qualys=vm_input(url, services, id="d"),
        outputs=file_output(tmp_path / "out" / "events.jsonl"),
    )
    return sim, write_config(tmp_path / "config.yaml", raw)


def delivered(tmp_path: Path) -> Counter[str]:
    out = tmp_path / "out" / "events.jsonl"
    lines = out.read_text().splitlines() if out.exists() else []
    events = [json.loads(x) for x in lines]
    return Counter(e["event"]["@detection_key"] for e in events if e["tag"] == "vuln.qualys.hostdetections")


def mount_tmpfs(path: Path, options: str) -> bool:
    """A real filesystem of our own (root only): ``size=…`` for a full disk, ``ro`` for a read-only one."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, check=False)
    return done.returncode == 0


def umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=False)


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (160_000, 160_000))


@pytest.mark.slow
def test_a_full_disk_is_a_clear_error_and_corrupts_nothing(setup: tuple[Simulator, Path], tmp_path: Path) -> None:
    sim, config = setup
    state = tmp_path / "state"
    mounted = mount_tmpfs(state, "size=192k,mode=0700")
    try:
        full = subprocess.run(
            [*CLI, "run", "-c", str(config), "--once"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            preexec_fn=None if mounted else limit_file_size,
        )
        assert full.returncode == 1
        assert "[StateError 500]" in full.stderr
        assert "check free disk space" in full.stderr
        db = sqlite3.connect(state / "qualys-collector.sqlite3")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(state)], check=True)
        done = subprocess.run(
            [*CLI, "run", "-c", str(config), "--once"], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr[-1500:]
    finally:
        if mounted:
            umount(state)
    keys = delivered(tmp_path)
    truth = sim.truth("host_list_detection")
    record_reliability(compared=len(truth), lost=len(truth - set(keys)), duplicated=sum(keys.values()) - len(keys))
    assert set(keys) == truth
    assert sum(keys.values()) - len(keys) <= 1000


def test_a_read_only_state_directory_is_a_clear_error(setup: tuple[Simulator, Path], tmp_path: Path) -> None:
    sim, config = setup
    state = tmp_path / "state"
    mounted = mount_tmpfs(state, "ro,size=1m")
    if not mounted:  # not root: a directory we may not write
        state.chmod(0o500)
    try:
        run = subprocess.run(
            [*CLI, "run", "-c", str(config), "--once"], capture_output=True, text=True, timeout=120, check=False
        )
    finally:
        if mounted:
            umount(state)
        else:
            state.chmod(0o700)
    assert run.returncode == 1, run.stderr[-1500:]
    assert "[StateError 500] cannot open the state database" in run.stderr
    assert "make the state directory writable" in run.stderr
    assert sum(sim.requests.values()) == 0  # nothing was pulled that could not be stored
