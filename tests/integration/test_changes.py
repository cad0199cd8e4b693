"""``host_list_detection.emit: changes`` against the simulator's detection lifecycle: what the collector emits
equals the simulator's ground truth of every transition (each once, none missed), plus the snapshots."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from qualys_collector.engine.outbox import Outbox
from qualys_collector.services.host_list_detection import CHANGE_TABLE
from qualys_collector.simulator import Limits, Simulator
from tests.conftest import SimFactory
from tests.helpers.vmsim import NOW, Run, advance, start_sim

pytestmark = pytest.mark.integration

TAG = "vuln.qualys.hostdetections"
STEP_HOURS = 12  # a host is processed every 24 h: each processing falls in exactly one window


def lifecycle_sim(make_sim: SimFactory, hosts: int = 90) -> Simulator:
    return make_sim(
        seed=19,
        hosts=hosts,
        detections_per_host=6,
        base=NOW - timedelta(days=1),
        span=timedelta(days=1),
        host_interval=timedelta(hours=24),
        results_bytes=64,
        lifecycle=True,
        purged_fraction=0.08,
        lifecycle_days=30,
        vm_limits=Limits(rate=100_000, window=60, concurrency=2),
    )


def changes_run(sim: Simulator, tmp_path: Path, **options: Any) -> Run:
    block = {"emit": "changes", "snapshot_every_days": 5, "batch_size": 25, **options}
    return Run(sim=sim, url=start_sim(sim), state=tmp_path / "state", services={"host_list_detection": block})


def detection_events(run: Run) -> list[dict[str, Any]]:
    return [line["event"] for line in run.events() if line["tag"] == TAG]


def emitted_changes(events: list[dict[str, Any]]) -> Counter[tuple[str, str, str | None]]:
    """``(key, kind, status after)`` of every change event (snapshots left out; ``removed`` has no status)."""
    out: Counter[tuple[str, str, str | None]] = Counter()
    for event in events:
        change = event["@change"]
        if change["kind"] != "snapshot":
            status = None if change["kind"] == "removed" else event["DETECTION"]["STATUS"]
            out[(event["@detection_key"], change["kind"], status)] += 1
    return out


def test_thirty_days_of_churn_emit_exactly_the_ground_truth_transitions_plus_snapshots(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    sim = lifecycle_sim(make_sim)
    run = changes_run(sim, tmp_path)
    assert run.cycle()  # the first cycle in changes mode: a snapshot that seeds the state
    seeded = sim.now()
    first = detection_events(run)
    assert first
    assert {e["@change"]["kind"] for e in first} == {"snapshot"}
    assert {e["@detection_key"] for e in first} == sim.truth("host_list_detection")
    for _ in range(30 * 24 // STEP_HOURS):
        advance(sim, STEP_HOURS)
        assert run.cycle()
    events = detection_events(run)
    truth = Counter((key, kind, status) for _at, key, kind, status in sim.data.transitions(sim.now(), since=seeded))
    kinds = Counter(kind for _key, kind, _status in truth.elements())
    assert kinds["new"] > 20
    assert kinds["status"] > 100
    assert kinds["updated"] > 20
    assert kinds["removed"] > 10
    assert emitted_changes(events) == truth  # each transition once, none missed, nothing else
    # a snapshot every 5 days, the last one at the end: its events are the whole current state
    generations = sorted({e["@change"]["snapshot"] for e in events if "snapshot" in e["@change"]})
    assert len(generations) == 7
    last = [e for e in events if e["@change"].get("snapshot") == generations[-1] and e["@change"]["kind"] != "removed"]
    assert Counter(e["@detection_key"] for e in last) == Counter(sim.truth("host_list_detection"))
    # every event says what it was before: a status change names the previous status
    for event in events:
        change = event["@change"]
        if change["kind"] == "status":
            assert change["previous"]["STATUS"] != event["DETECTION"]["STATUS"]
            assert "STATUS" in change["changed"]
    # the state is one row per tracked detection (and the snapshot marker), nothing else
    outbox = Outbox(run.state)
    try:
        assert len(outbox.table("7", CHANGE_TABLE)) == len(sim.truth("host_list_detection")) + 1
    finally:
        outbox.close()


def test_all_mode_is_unchanged_and_switching_to_changes_seeds_with_one_snapshot(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    sim = lifecycle_sim(make_sim, hosts=30)
    run = changes_run(sim, tmp_path, emit="all", snapshot_every_days=None)
    assert run.cycle()
    advance(sim, STEP_HOURS)
    assert run.cycle()
    all_mode = detection_events(run)
    assert all_mode
    assert not any("@change" in e for e in all_mode)
    # switch to changes: the first cycle is a snapshot of everything, marked as such, and nothing is lost
    run.services["host_list_detection"].update(emit="changes", snapshot_every_days=5)
    advance(sim, STEP_HOURS)
    assert run.cycle()
    switched = detection_events(run)[len(all_mode) :]
    assert {e["@change"]["kind"] for e in switched} == {"snapshot"}
    assert {e["@detection_key"] for e in switched} == sim.truth("host_list_detection")
    seeded = sim.now()
    advance(sim, STEP_HOURS)
    assert run.cycle()
    advance(sim, STEP_HOURS)
    assert run.cycle()
    later = detection_events(run)[len(all_mode) + len(switched) :]
    truth = Counter((k, kind, s) for _at, k, kind, s in sim.data.transitions(sim.now(), since=seeded))
    truth.subtract({t: n for t, n in truth.items() if t[1] == "removed"})  # reported at the next snapshot
    assert emitted_changes(later) == +truth
    # and back to all: every detection of the processed hosts again, without @change
    run.services["host_list_detection"] = {"emit": "all", "batch_size": 25}
    advance(sim, STEP_HOURS)
    assert run.cycle()
    back = detection_events(run)[len(all_mode) + len(switched) + len(later) :]
    assert back
    assert not any("@change" in e for e in back)


def test_a_detection_no_longer_returned_for_a_returned_host_is_removed_at_once(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    sim = lifecycle_sim(make_sim, hosts=20)
    run = changes_run(sim, tmp_path, filters={"status": ["New", "Active", "Re-Opened"]})
    assert run.cycle()
    seeded = sim.now()
    for _ in range(8):
        advance(sim, STEP_HOURS)
        assert run.cycle()
    events = detection_events(run)
    # without Fixed in the filter, a fix makes the detection vanish from its host's answer: `removed`,
    # reason not_returned, in the window where its host was processed
    transitions = sim.data.transitions(sim.now(), since=seeded)
    fixed = {k for _at, k, kind, s in transitions if kind == "status" and s == "Fixed"}
    gone = {e["@detection_key"] for e in events if e["@change"].get("reason") == "not_returned"}
    assert gone
    assert gone <= fixed
    assert len(gone) >= 0.8 * len(fixed)  # the rest: hosts left with nothing matching (reported by the next snapshot)


def test_the_single_stream_path_emits_the_same_transitions(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = lifecycle_sim(make_sim, hosts=40)
    run = changes_run(sim, tmp_path, parallel=False, truncation_limit=7, snapshot_every_days=3)
    assert run.cycle()
    seeded = sim.now()
    for _ in range(6 * 24 // STEP_HOURS):
        advance(sim, STEP_HOURS)
        assert run.cycle()
    events = detection_events(run)
    truth = Counter((k, kind, s) for _at, k, kind, s in sim.data.transitions(sim.now(), since=seeded))
    assert sum(truth.values()) > 30
    assert emitted_changes(events) == truth
    assert len({e["@change"]["snapshot"] for e in events if "snapshot" in e["@change"]}) == 3
