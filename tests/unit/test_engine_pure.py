"""Pure engine pieces: boundary cursor, window planning, checkpoint round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from qualys_collector.engine.checkpoint import Checkpoint, WindowProgress
from qualys_collector.engine.cursor import BoundaryCursor, Verdict
from qualys_collector.engine.window import plan_window

T0 = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=1)
END = T0 + timedelta(hours=1)


def test_given_ids_at_the_floor_when_they_come_again_then_they_are_duplicates() -> None:
    cursor = BoundaryCursor(T0, {"a", "b"}, END)
    assert cursor.admit(T0, "a") is Verdict.DUPLICATE
    assert cursor.admit(T0, "b") is Verdict.DUPLICATE
    assert cursor.admit(T0, "c") is Verdict.ADMIT
    assert cursor.admit(T0 - timedelta(seconds=1), "z") is Verdict.DUPLICATE


def test_given_a_record_at_the_frozen_end_then_it_is_deferred_not_lost() -> None:
    cursor = BoundaryCursor(T0, (), END)
    assert cursor.admit(END, "late") is Verdict.DEFERRED
    assert cursor.admit(END - timedelta(microseconds=1), "just-in") is Verdict.ADMIT
    assert cursor.max_value == END - timedelta(microseconds=1)


def test_the_running_maximum_keeps_every_id_sharing_it_and_restarts_when_it_moves() -> None:
    cursor = BoundaryCursor(T0, (), END)
    assert cursor.admit(T1, "x") is Verdict.ADMIT
    assert cursor.admit(T1, "y") is Verdict.ADMIT
    assert cursor.admit(T1, "x") is Verdict.DUPLICATE  # the same record served again on the next page
    assert (cursor.max_value, cursor.max_ids) == (T1, {"x", "y"})
    later = T1 + timedelta(seconds=5)
    assert cursor.admit(later, "z") is Verdict.ADMIT
    assert (cursor.max_value, cursor.max_ids) == (later, {"z"})
    assert cursor.admit(T1, "w") is Verdict.ADMIT  # unsorted services: an older record is still new


def test_resuming_a_window_restores_the_running_maximum() -> None:
    cursor = BoundaryCursor(T0, {"a"}, END, max_value=T1, max_ids={"q"})
    assert cursor.admit(T1, "q") is Verdict.DUPLICATE
    assert cursor.admit(T0, "a") is Verdict.DUPLICATE
    same = BoundaryCursor(T0, {"a"}, END, max_value=T0, max_ids={"b"})
    assert same.max_ids == {"a", "b"}


def test_records_without_cursor_are_always_admitted() -> None:
    cursor = BoundaryCursor(T0, (), END)
    assert cursor.admit(None, "k") is Verdict.ADMIT
    assert cursor.admit(None, "k") is Verdict.ADMIT


def test_window_end_is_now_minus_lag_and_capped_by_span() -> None:
    now = T0 + timedelta(days=3)
    window = plan_window(T0, now, settle_lag=timedelta(seconds=30))
    assert window is not None
    assert (window.start, window.end, window.capped) == (T0, now - timedelta(seconds=30), False)
    capped = plan_window(T0, now, max_span=timedelta(days=1))
    assert capped is not None
    assert (capped.end, capped.capped) == (T0 + timedelta(days=1), True)
    assert plan_window(now, now + timedelta(seconds=10), settle_lag=timedelta(seconds=30)) is None


def test_checkpoint_round_trips_through_json() -> None:
    progress = WindowProgress(
        start=T0, end=END, capped=True, token={"id_min": 7}, max_value=T1, max_ids=("a",), pages=3
    )
    checkpoint = Checkpoint(start_time=T0, value=T0, ids=("x", "y"), window=progress, extra={"pending": ["s/1"]})
    data = checkpoint.to_json()
    assert data["last_event_time_str"] == "2024-01-01T12:00:00Z"
    assert data["@persistence_version"] == 1
    assert Checkpoint.from_json(data) == checkpoint
    fractional = Checkpoint(start_time=None, value=T0 + timedelta(milliseconds=250))
    assert Checkpoint.from_json(fractional.to_json()) == fractional


def test_event_json_is_byte_for_byte_what_the_json_module_writes() -> None:
    """Events are serialised with orjson for speed; the bytes must not change, including what orjson
    refuses (a lone surrogate, an integer beyond 64 bits) and what goes through ``default=str``."""
    import json

    from qualys_collector.model import Event

    bodies: list[dict[str, object]] = [
        {"text": 'Ünïcödé ✓ 漢字 \n\t"x" \\ \u2028 \x00 ]]>', "n": None, "f": 1.5, "l": [1, "2", {"b": True}]},
        {"when": datetime(2024, 1, 1, 12, 30, tzinfo=UTC)},
        {"big": 2**70},
        {"lone": "\ud800"},
    ]
    for body in bodies:
        expected = json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)
        assert Event(tag="t", body=body).to_json() == expected


def test_window_counters_round_trip_through_json() -> None:
    """A resumed window's summary counts the whole window: its counters travel in the checkpoint."""
    progress = WindowProgress(
        start=T0, end=END, counters={"cycles": 2, "received": 7}, source_counters={"hosts_expected": 90}
    )
    checkpoint = Checkpoint(start_time=T0, value=T0, window=progress)
    data = checkpoint.to_json()
    assert data["window"]["counters"] == {"cycles": 2, "received": 7}
    assert Checkpoint.from_json(data) == checkpoint
