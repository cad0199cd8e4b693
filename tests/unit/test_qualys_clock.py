"""The offsets of Qualys' clock a record-mode job remembers (engine/qualys_clock.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from qualys_collector.engine.qualys_clock import MEMORY, QualysClock

T = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def test_the_most_behind_answer_of_the_memory_counts_until_it_is_forgotten() -> None:
    clock = QualysClock()
    assert clock.behind(T) == timedelta(0)
    clock.observe(T, T - 45 * S)  # a node 45 s behind
    clock.observe(T + 10 * S, T + 10 * S)  # then one in step
    clock.observe(T + 20 * S, T + 5 * S)  # and one 15 s behind
    assert clock.behind(T + 30 * S) == -45 * S
    assert clock.behind(T + MEMORY + 5 * S) == -15 * S  # the 45 s answer is older than the memory
    assert clock.behind(T + MEMORY + 25 * S) == timedelta(0)
    clock.observe(T, T + 30 * S)  # ahead of ours: never planned ahead
    assert clock.behind(T) == timedelta(0)


def test_a_date_far_in_the_past_is_not_remembered() -> None:
    """A broken proxy's ``Thu, 01 Jan 1970`` would hold the service back for the whole memory; it cuts its own page
    only (engine/cycle.py)."""
    clock = QualysClock()
    clock.observe(T, datetime(1970, 1, 1, tzinfo=UTC))
    clock.observe(T, T - timedelta(days=2))
    assert clock.behind(T) == timedelta(0)
    clock.observe(T, T - timedelta(hours=2))  # two hours behind is a clock, not a broken header
    assert clock.behind(T) == -timedelta(hours=2)


def test_what_is_remembered_survives_a_restart_within_the_memory_only() -> None:
    clock = QualysClock()
    clock.observe(T, T - S / 2)  # in step (HTTP dates have whole seconds): nothing worth keeping
    assert clock.remembered() is None
    clock.observe(T + S, T - 44 * S)
    kept = clock.remembered()
    assert kept == (T + S, -45 * S)
    restarted = QualysClock()
    restarted.recall(*kept, T + 10 * S)
    assert restarted.behind(T + 10 * S) == -45 * S
    late = QualysClock()
    late.recall(*kept, T + MEMORY + 2 * S)  # the answer is older than the memory
    assert late.behind(T + MEMORY + 2 * S) == timedelta(0)
    future = QualysClock()
    future.recall(*kept, T - timedelta(days=1))  # seen "tomorrow": our clock was set back since; not kept for a day
    assert future.behind(T - timedelta(days=1)) == timedelta(0)
    busy = QualysClock()
    busy.observe(T + 5 * S, T - 5 * S)
    busy.recall(*kept, T + 10 * S)  # a memory that has its own answers keeps them
    assert busy.behind(T + 10 * S) == -10 * S


def test_a_damaged_offset_in_a_checkpoint_is_ignored() -> None:
    """It only ends windows earlier: a checkpoint whose ``qualys_behind`` cannot be read loads without it."""
    from qualys_collector.engine.checkpoint import Checkpoint

    base = Checkpoint(start_time=None, value=T, behind=(T, -45 * S)).to_json()
    assert Checkpoint.from_json(base).behind == (T, -45 * S)
    for damaged in (
        "x",
        {"seen": "garbage", "seconds": -3},
        {"seen": 5, "seconds": -3},
        {"seen": base["last_event_time_str"]},
        {"seen": base["last_event_time_str"], "seconds": float("inf")},
        {"seen": base["last_event_time_str"], "seconds": True},
        {"seen": None, "seconds": -3},
    ):
        assert Checkpoint.from_json({**base, "qualys_behind": damaged}).behind is None, damaged
        assert Checkpoint.from_json({**base, "qualys_behind": damaged}).value == T
