"""kill -9 at the two dangerous instants: before a page is committed, and after a sink wrote a batch
but before the outbox heard of it. Restarting must lose nothing and repeat at most that batch."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from qualys_collector.engine.outbox import DB_NAME
from qualys_collector.engine.summary import SUMMARY_TAG
from tests.conftest import REPO

pytestmark = pytest.mark.integration


def run_child(state: Path, out: Path, point: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.helpers.crash_child", str(state), str(out), point],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return proc.returncode


def delivered(out: Path) -> Counter[str]:
    """Delivered record ids (each completed window's summary event left out)."""
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return Counter(line["event"]["id"] for line in lines if line["tag"] != SUMMARY_TAG)


def test_killed_before_a_page_is_committed_then_the_page_is_pulled_again(tmp_path: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "out.jsonl"
    assert run_child(state, out, "before_commit:3") == -signal.SIGKILL
    assert run_child(state, out, "none:") == 0
    counts = delivered(out)
    assert set(counts) == {f"r{i}" for i in range(50)}
    assert max(counts.values()) == 1  # nothing committed twice, nothing lost


def test_killed_between_sink_write_and_outbox_delete_then_that_batch_is_sent_again(tmp_path: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "out.jsonl"
    assert run_child(state, out, "after_write:2") == -signal.SIGKILL
    assert run_child(state, out, "none:") == 0
    counts = delivered(out)
    assert set(counts) == {f"r{i}" for i in range(50)}
    repeated = sorted(k for k, n in counts.items() if n > 1)
    assert len(repeated) == 10  # exactly the one unconfirmed batch
    assert max(counts.values()) == 2


def test_killed_between_two_stages_then_the_page_and_its_table_rows_are_absent_and_pulled_again(
    tmp_path: Path,
) -> None:
    state, out = tmp_path / "state", tmp_path / "out.jsonl"
    assert run_child(state, out, "between_stages:2") == -signal.SIGKILL

    def rows() -> tuple[int, int, int]:
        with sqlite3.connect(state / DB_NAME) as db:
            seen = db.execute("SELECT COUNT(*) FROM kt_seen").fetchone()[0]
            events = db.execute("SELECT COUNT(*) FROM events WHERE tag = 'monitor.qualys.fim.event'").fetchone()[0]
            (data,) = db.execute("SELECT data FROM checkpoints").fetchone()
        return seen, events, json.loads(data)["window"]["token"]["page"]

    assert rows() == (20, 20, 2)  # two pages: their events and rows; nothing of the third page
    assert run_child(state, out, "none:") == 0
    counts = delivered(out)
    assert set(counts) == {f"r{i}" for i in range(50)}
    assert max(counts.values()) == 1
    with sqlite3.connect(state / DB_NAME) as db:
        assert db.execute("SELECT COUNT(*) FROM kt_seen").fetchone()[0] == 50
