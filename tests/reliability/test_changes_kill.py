"""kill -9 of the real collector at random moments while it pulls ``emit: changes`` over 15 simulated days of
churn, restarting it each time: the change events delivered equal the simulator's ground truth of every
transition — none lost, none twice."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import SimFactory, record_reliability
from tests.helpers.kit import file_output, raw_config, vm_input, write_config
from tests.helpers.vmsim import NOW, start_sim
from tests.integration.test_changes import STEP_HOURS, TAG, emitted_changes, lifecycle_sim

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]
DAYS = 15


def test_kills_at_random_points_of_changes_pulls_lose_and_repeat_no_transition(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    sim = lifecycle_sim(make_sim, hosts=100)
    url = start_sim(sim)
    block = {"emit": "changes", "snapshot_every_days": 5, "batch_size": 10, "truncation_limit": 4}
    raw = raw_config(
        tmp_path / "state",
        qualys=vm_input(url, {"host_list_detection": block}),
        outputs=file_output(tmp_path / "events.jsonl"),
    )
    path = write_config(tmp_path / "config.yaml", raw)
    end = NOW + timedelta(days=DAYS)
    child = [sys.executable, "-m", "tests.helpers.changes_child", str(path), url, end.isoformat(), str(STEP_HOURS)]
    rng = random.Random(19)
    kills = 0
    while True:
        proc = subprocess.Popen(child, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            code = proc.wait(rng.uniform(0.8, 3.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            kills += 1
            continue
        assert code == 0
        break
    assert kills >= 5, kills
    assert sim.now() == end
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    # a batch written but not confirmed before a kill is written again whole (the file output's at-least-once,
    # same bytes); a change emitted twice would come from another cycle, with another @devo_pulling_id
    events = [json.loads(line)["event"] for line in dict.fromkeys(lines) if json.loads(line)["tag"] == TAG]
    emitted = emitted_changes(events)
    truth = Counter((k, kind, s) for _at, k, kind, s in sim.data.transitions(end, since=NOW))
    lost = sum((truth - emitted).values())
    duplicated = sum((emitted - truth).values())
    record_reliability(compared=sum(truth.values()), lost=lost, duplicated=duplicated)
    assert (lost, duplicated) == (0, 0)
    assert emitted == truth
