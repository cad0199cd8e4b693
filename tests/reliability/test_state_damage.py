"""A damaged state directory through the real CLI: a numbered StateError with the right fix, never a silent
fresh start, a traceback or an endless loop; and two collectors never share one state directory."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from qualys_collector.simulator import Limits, SimConfig, Simulator
from tests.helpers.vmsim import NOW

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
CLI = [sys.executable, "-m", "qualys_collector"]
DB = "qualys-collector.sqlite3"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Simulator, Path]]:
    sim = Simulator(
        SimConfig(seed=4, hosts=30, detections_per_host=2, base=NOW - timedelta(days=2)),
        vm_limits=Limits(rate=100_000, window=60),
    )
    url = sim.start()
    config = {
        "globals": {"persistence": {"config": {"directory_name": str(tmp_path / "state")}}},
        "inputs": {
            "qualys": {
                "id": "d1",
                "credentials": {"base_url": url, "username": "demo", "password": "demo"},
                "services": {"host_list": {"start_time_utc": "2020-01-01T00:00:00Z", "request_period_in_seconds": 60}},
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    yield sim, path
    sim.stop()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def first_run(config: Path) -> Path:
    done = cli("run", "-c", str(config), "--once")
    assert done.returncode == 0, done.stderr[-1500:]
    db = config.parent / "state" / DB
    assert db.stat().st_size > 4 * 4096
    return db


def empty(db: Path) -> None:
    db.write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def garbage_pages(db: Path) -> None:
    data = bytearray(db.read_bytes())
    data[4096:] = bytes((i * 131 + 7) % 251 for i in range(len(data) - 4096))  # every page after the header
    db.write_bytes(bytes(data))


def truncated(db: Path) -> None:
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2 + 100])


@pytest.mark.parametrize("damage", [empty, garbage_pages, truncated], ids=lambda f: f.__name__)
def test_a_damaged_database_stops_with_error_501_and_is_left_as_found(
    setup: tuple[Simulator, Path], damage: Callable[[Path], None]
) -> None:
    _sim, config = setup
    db = first_run(config)
    damage(db)
    before = db.read_bytes()
    started = time.monotonic()
    run = cli("run", "-c", str(config))  # the service loop, not --once: it must end by itself
    assert time.monotonic() - started < 30
    assert run.returncode == 1, run.stderr[-1500:]
    assert "[StateError 501]" in run.stderr
    assert "move it aside" in run.stderr
    assert "not yet delivered" in run.stderr  # says what moving it aside loses
    assert "Traceback" not in run.stderr
    assert "No persisted data found" not in run.stderr  # never a silent fresh start
    assert db.read_bytes() == before
    shown = cli("state", "show", "-c", str(config))
    assert shown.returncode == 1
    assert "[StateError 501]" in shown.stderr
    assert "Traceback" not in shown.stderr


def test_a_checkpoint_row_that_is_not_json_is_error_502_and_the_collector_stops(
    setup: tuple[Simulator, Path],
) -> None:
    _sim, config = setup
    db = first_run(config)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE checkpoints SET data = '{\"last_event_time_str\": 2024-' WHERE service = 'host_list'")
    conn.commit()
    conn.close()
    started = time.monotonic()
    run = cli("run", "-c", str(config))
    assert time.monotonic() - started < 30  # stops instead of failing every period for ever
    assert run.returncode == 1, run.stderr[-1500:]
    assert "[StateError 502]" in run.stderr
    assert "d1/host_list" in run.stderr
    assert "state reset" in run.stderr
    assert "Traceback" not in run.stderr
    shown = cli("state", "show", "-c", str(config))
    assert shown.returncode == 1
    assert "[StateError 502]" in shown.stderr
    assert "Traceback" not in shown.stderr
    reset = cli("state", "reset", "-c", str(config), "--service", "host_list")
    assert reset.returncode == 0, reset.stderr
    assert cli("run", "-c", str(config), "--once").returncode == 0


def test_a_missing_database_is_a_first_run(setup: tuple[Simulator, Path]) -> None:
    _sim, config = setup
    db = first_run(config)
    assert "No persisted data found" not in cli("run", "-c", str(config), "--once").stderr
    assert not Path(f"{db}.new").exists()  # built under a temporary name and moved into place


def test_a_second_collector_on_the_same_state_exits_naming_the_holder(setup: tuple[Simulator, Path]) -> None:
    _sim, config = setup
    holder = subprocess.Popen([*CLI, "run", "-c", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stderr is not None
        deadline = time.monotonic() + 60
        for line in holder.stderr:
            if "Statistics for this pull cycle" in line or time.monotonic() > deadline:
                break
        second = cli("run", "-c", str(config), "--once")
        reset = cli("state", "reset", "-c", str(config), "--service", "host_list")
        shown = cli("state", "show", "-c", str(config))  # reading is fine while it runs
        assert holder.poll() is None  # the first one runs on
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.communicate(timeout=60)
    assert second.returncode == 1, second.stderr[-1500:]
    assert f"[StateError 503] the state directory {config.parent / 'state'} is in use by another collector" in (
        second.stderr
    )
    assert f"(PID {holder.pid})" in second.stderr
    assert "its own state directory" in second.stderr
    assert "Pull Started" not in second.stderr
    assert reset.returncode == 1
    assert f"(PID {holder.pid})" in reset.stderr
    assert shown.returncode == 0, shown.stderr
    assert cli("run", "-c", str(config), "--once").returncode == 0  # free again once it stopped
