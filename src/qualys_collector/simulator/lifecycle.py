"""Detections with a lifecycle over simulated time, and the ground truth of every transition.

With ``SimConfig.lifecycle`` each host has ``detections_per_host`` detection *slots*. At every
processing of the host (every ``host_interval``) each slot takes one step of a small state machine,
drawn from an integer hash of ``(seed, host, slot, processing)`` — deterministic, nothing stored:

* absent → ``New`` (a new finding, ``NEW_RATE`` per processing);
* ``New`` → ``Active`` at the next processing (Qualys: found again);
* ``Active`` → ``Fixed`` (``FIX_RATE``; ``LAST_FIXED_DATETIME`` is that processing), or a severity change
  (``SEVERITY_RATE``), or a QDS change (``QDS_RATE``), or unchanged;
* ``Fixed`` → ``Re-Opened`` (``REOPEN_RATE``; ``LAST_REOPENED_DATETIME``, ``TIMES_REOPENED`` + 1);
* ``Re-Opened`` → ``Active`` at the next processing.

At the first processing 70 % of slots are present, most ``Active``, some ``Fixed``. Some hosts are
first processed later (new hosts), and ``purged_fraction`` of them are purged at a time within
``lifecycle_days``: from then on the host list and host list detection no longer return them.

:func:`transitions` lists every change an observer pulling every processing would see: ``new``,
``status``, ``updated`` (severity or QDS) at the processing's time, and ``removed`` for each present
detection of a purged host at its purge time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

#: Chances per processing (once a day by default): a finding appears on a free slot, an active one is fixed
#: (about two months to remediate), changes severity (a KnowledgeBase update), changes QDS (threat
#: intelligence), a fixed one is found again.
NEW_RATE = 0.01
FIX_RATE = 0.02
SEVERITY_RATE = 0.002
QDS_RATE = 0.01
REOPEN_RATE = 0.02
#: Share of hosts first processed during the simulated period instead of before it.
LATE_HOSTS = 0.05


def mix(x: int) -> int:
    """A 64-bit integer hash (the splitmix64 finaliser)."""
    x &= 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


@dataclass(frozen=True, slots=True)
class Slot:
    """One detection slot's state after a processing (``status`` ``None``: no detection)."""

    status: str | None = None
    severity: int = 0
    qds: int = 0
    fixed: int | None = None  # processing number of the last fix
    reopened: int | None = None  # processing number of the last re-opening
    times_reopened: int = 0
    found: int = 0  # processing number of the first detection


ABSENT = Slot()


def _unit(r: int) -> float:
    return (r % 1_000_003) / 1_000_003


def step(previous: Slot, r: int, k: int) -> Slot:
    """The slot after processing ``k`` (``r``: its hash for this slot and processing)."""
    u = _unit(r)
    if previous.status is None:
        if k == 0:
            if u >= 0.7:
                return ABSENT
            status = "Active" if (r >> 24) % 4 else "Fixed"
            return Slot(status, 1 + (r >> 32) % 5, 1 + (r >> 40) % 100, 0 if status == "Fixed" else None, None, 0, 0)
        if u < NEW_RATE:
            return Slot("New", 1 + (r >> 32) % 5, 1 + (r >> 40) % 100, None, None, 0, k)
        return ABSENT
    s = previous
    if s.status in ("New", "Re-Opened"):
        return Slot("Active", s.severity, s.qds, s.fixed, s.reopened, s.times_reopened, s.found)
    if s.status == "Active":
        if u < FIX_RATE:
            return Slot("Fixed", s.severity, s.qds, k, s.reopened, s.times_reopened, s.found)
        if u < FIX_RATE + SEVERITY_RATE:
            severity = 1 + (s.severity + (r >> 32) % 4) % 5  # always another value
            return Slot("Active", severity, s.qds, s.fixed, s.reopened, s.times_reopened, s.found)
        if u < FIX_RATE + SEVERITY_RATE + QDS_RATE:
            qds = 1 + (s.qds - 1 + 1 + (r >> 40) % 99) % 100  # always another value
            return Slot("Active", s.severity, qds, s.fixed, s.reopened, s.times_reopened, s.found)
        return s
    if u < REOPEN_RATE:  # Fixed
        return Slot("Re-Opened", s.severity, s.qds, s.fixed, k, s.times_reopened + 1, s.found)
    return s


class Lifecycle:
    """Slot states per host and processing, computed once and kept (a few bytes per slot and processing)."""

    def __init__(self, seed: int, slots: int) -> None:
        self.seed = seed
        self.slots = slots
        self._states: dict[int, list[tuple[Slot, ...]]] = {}

    def states(self, index: int, k: int) -> tuple[Slot, ...]:
        """Every slot of host ``index`` after its processing ``k``."""
        known = self._states.get(index)
        if known is None:
            known = []
        while len(known) <= k:
            n = len(known)
            before = known[-1] if known else (ABSENT,) * self.slots
            base = self.seed * 0x9E3779B97F4A7C15 + index * 0x100000001B3 + n * 0x51ED27
            known.append(tuple(step(before[j], mix(base + j * 0x2545F491), n) for j in range(self.slots)))
        self._states[index] = known  # replaced whole: a concurrent reader sees one list or the other
        return known[k]


def late_start(seed: int, index: int, days: int) -> timedelta | None:
    """How much later than the others host ``index`` is first processed (``None``: not late)."""
    r = mix(seed * 0x5851F42D4C957F2D + index * 0x14057B7EF767814F + 0x1A7E)
    if _unit(r) >= LATE_HOSTS:
        return None
    return timedelta(hours=24 + (r >> 20) % max(1, days * 24 - 24))


def purge_after(seed: int, index: int, fraction: float, days: int) -> timedelta | None:
    """When host ``index`` is purged, counted from the period's start (``None``: never)."""
    r = mix(seed * 0x2545F4914F6CDD1D + index * 0x9E3779B97F4A7C15 + 0x9A7E)
    if _unit(r) >= fraction:
        return None
    return timedelta(hours=36 + (r >> 20) % max(1, days * 24 - 36))


def detection_fields(slot: Slot, processed: datetime, first: datetime, interval: timedelta) -> dict[str, Any]:
    """The lifecycle part of one detection's fields (the rest is the dataset's)."""

    def at(k: int | None) -> datetime | None:
        return None if k is None else first + k * interval

    return {
        "STATUS": slot.status,
        "SEVERITY": slot.severity,
        "QDS": slot.qds,
        "FIRST_FOUND": at(slot.found),
        "LAST_FIXED": at(slot.fixed),
        "LAST_REOPENED": at(slot.reopened),
        "TIMES_REOPENED": slot.times_reopened,
    }


def diff(before: Slot, after: Slot) -> str | None:
    """The kind of change between two states of a slot, as a change filter names it."""
    if after.status is None:
        return None if before.status is None else "removed"
    if before.status is None:
        return "new"
    if before.status != after.status:
        return "status"
    if (before.severity, before.qds, before.fixed, before.reopened) != (
        after.severity,
        after.qds,
        after.fixed,
        after.reopened,
    ):
        return "updated"
    return None
