"""The file output against what happens to files on a real host: logrotate renames or deletes the file
under a running collector, and kill -9 lands in the middle of a write."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from qualys_collector.engine.outbox import Outbox
from qualys_collector.model import Event, StoredEvent
from qualys_collector.sinks.file import FileSink
from tests.conftest import REPO, record_reliability

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


def batch(start: int, n: int) -> list[StoredEvent]:
    return [StoredEvent(seq=i + 1, tag="a.b", body=json.dumps({"n": i})) for i in range(start, start + n)]


def numbers(path: Path) -> list[int]:
    return [json.loads(line)["event"]["n"] for line in path.read_text().splitlines()]


def test_a_file_rotated_by_rename_is_reopened_before_the_next_batch(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    sink = FileSink("file", out)
    sink.deliver(batch(0, 3))
    out.rename(tmp_path / "events.jsonl.1")  # logrotate's default: rename, then the writer reopens
    sink.deliver(batch(3, 2))
    sink.close()
    assert numbers(tmp_path / "events.jsonl.1") == [0, 1, 2]
    assert numbers(out) == [3, 4]
    assert out.stat().st_mode & 0o777 == 0o600


def test_a_deleted_file_is_created_again_before_the_next_batch(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    sink = FileSink("file", out)
    sink.deliver(batch(0, 3))
    out.unlink()
    sink.deliver(batch(3, 2))
    sink.deliver(batch(5, 1))
    sink.close()
    assert numbers(out) == [3, 4, 5]


def test_a_torn_last_line_is_cut_on_open_and_the_next_batch_starts_on_its_own_line(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    out.write_bytes(b'{"tag":"a.b","event":{"n":0}}\n{"tag":"a.b","eve')
    sink = FileSink("file", out)
    sink.deliver(batch(1, 2))  # the outbox still had event 1: it is written again, whole
    sink.close()
    assert numbers(out) == [0, 1, 2]


def test_kill_9_in_the_middle_of_a_write_leaves_whole_lines_only(tmp_path: Path) -> None:
    state, out = tmp_path / "state", tmp_path / "events.jsonl"
    # Batches of 8 events of ~1 MB, cut to ~4 events by the 4 MiB batch byte bound: one write of ~4 MB each.
    total, per_batch, pad = 40, 8, "x" * 1_000_000
    outbox = Outbox(state)
    outbox.register_outputs(["file"])
    outbox.commit("1", "bench", [Event(tag="a.b", body={"n": i, "pad": pad}) for i in range(total)], {})
    outbox.close()
    args = [sys.executable, "-m", "tests.helpers.file_child", str(state), str(out), str(per_batch)]
    torn = False
    kills = 0
    for _ in range(20):  # kill until a kill lands inside a write (nearly always the first time)
        before = out.stat().st_size if out.exists() else 0
        child = subprocess.Popen(args, cwd=REPO)
        deadline = time.monotonic() + 30
        while (out.stat().st_size if out.exists() else 0) < before + 1_000_000 and time.monotonic() < deadline:
            if child.poll() is not None:
                break
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += 1
        data = out.read_bytes()
        if data and not data.endswith(b"\n"):
            torn = True
            break
    assert torn, "no kill landed inside a write: the test proved nothing"
    assert subprocess.run(args, cwd=REPO, check=False, timeout=120).returncode == 0
    counts = Counter(numbers(out))  # every line parses: nothing was glued onto the torn one
    record_reliability(compared=total, lost=total - len(counts), duplicated=sum(counts.values()) - len(counts))
    assert set(counts) == set(range(total))
    assert sum(counts.values()) - total <= per_batch * kills  # each kill repeats at most the batch it cut
    box = Outbox(state)
    assert box.pending("file") == 0
    box.close()
