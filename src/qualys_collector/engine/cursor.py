"""Exact deduplication at the window boundary (the seed's method: last event time + ids at that time).

Closed start, open end. A record is a duplicate when its cursor is below the floor, or equal to the
running maximum with a key already seen there; a record at or beyond the window's frozen end is
deferred to the next window. Records without a cursor (services that window on a field Qualys does
not return) are admitted; the window bounds did the selection.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from datetime import datetime

logger = logging.getLogger(__name__)

#: Past this many keys sharing one timestamp, a warning says the boundary set is unusually large.
LARGE_BOUNDARY = 10_000


class Verdict(enum.Enum):
    """What to do with one record."""

    ADMIT = "admit"
    DUPLICATE = "duplicate"
    DEFERRED = "deferred"


class BoundaryCursor:
    """Admits each record once across pages, windows and restarts."""

    def __init__(
        self,
        floor: datetime | None,
        floor_ids: Iterable[str],
        end: datetime,
        *,
        max_value: datetime | None = None,
        max_ids: Iterable[str] = (),
    ) -> None:
        self.floor = floor
        self.floor_ids = frozenset(floor_ids)
        self.end = end
        if max_value is None or (floor is not None and max_value <= floor):
            self.max_value = floor
            self.max_ids = set(self.floor_ids) | (set(max_ids) if max_value == floor else set())
        else:
            self.max_value = max_value
            self.max_ids = set(max_ids)
        self._warned = False
        self._fresh: list[str] = []

    def take_fresh(self) -> list[str]:
        """The keys added at :attr:`max_value` since the last call (what the next commit must store)."""
        fresh, self._fresh = self._fresh, []
        return fresh

    def admit(self, cursor: datetime | None, key: str) -> Verdict:
        """Judge one record and, when admitted, remember it."""
        if cursor is None:
            return Verdict.ADMIT
        if self.floor is not None:
            if cursor < self.floor:
                return Verdict.DUPLICATE
            if cursor == self.floor and key in self.floor_ids:
                return Verdict.DUPLICATE
        if cursor >= self.end:
            return Verdict.DEFERRED
        if self.max_value is None or cursor > self.max_value:
            self.max_value = cursor
            self.max_ids = {key}
            self._fresh = [key]
        elif cursor == self.max_value:
            if key in self.max_ids:
                return Verdict.DUPLICATE
            self.max_ids.add(key)
            self._fresh.append(key)
            if len(self.max_ids) > LARGE_BOUNDARY and not self._warned:
                self._warned = True
                logger.warning(
                    "More than %d records share the timestamp %s; the boundary set kept for deduplication is large",
                    LARGE_BOUNDARY,
                    cursor.isoformat(),
                )
        return Verdict.ADMIT
