"""How far Qualys' clock has run behind ours in a service's recent answers.

A record-mode window ends at ``now - settle_lag`` on our clock, then at Qualys' time minus the lag once a page
shows Qualys behind (:func:`~qualys_collector.engine.cycle.run_cycle`). A page's own ``Date`` is not enough when
answers come from nodes whose clocks disagree: a window answered by a node in step with ours ended on our clock,
in the future of the clock that stamps the records, and records indexed a few seconds after their time fell below
the next checkpoint (found by review: 929 of 1,188 FIM events lost when answers alternated between a node in step
and one 45 s behind). So each answer's offset is remembered for :data:`MEMORY`, and windows are planned, and cut,
on the most-behind offset remembered: a window ends a little earlier and nothing is lost.

An offset is taken when the page is read, after its answer arrived whole: a slow answer looks behind by the time
it took (the ``Date`` is stamped when it starts). That errs on the side that loses nothing: windows end that much
earlier for the memory, and records wait that much longer.

The most-behind offset and when it was seen go into the checkpoint with every page (:meth:`QualysClock.remembered`),
so a restarted collector plans its first window on it too (:meth:`QualysClock.recall`).

A ``Date`` more than :data:`IMPLAUSIBLE` behind ours (``Thu, 01 Jan 1970`` from a broken proxy) is not
remembered: it cuts its own page's window only, as before, so one broken answer does not hold a service back for
the whole memory.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta

#: How long an answer's offset is remembered.
MEMORY = timedelta(hours=1)
#: Offsets further behind than this are taken for a broken ``Date`` and not remembered.
IMPLAUSIBLE = timedelta(days=1)


class QualysClock:
    """The offsets (Qualys' time minus ours) of one service's answers within :data:`MEMORY`."""

    def __init__(self) -> None:
        self._seen: deque[tuple[datetime, timedelta]] = deque()

    def observe(self, ours: datetime, theirs: datetime) -> None:
        """An answer sent with Qualys' time ``theirs`` reached us at ``ours``."""
        offset = theirs - ours
        if offset < -IMPLAUSIBLE:
            return
        self._forget(ours)
        while self._seen and self._seen[-1][1] >= offset:  # a later answer at least as far behind supersedes it
            self._seen.pop()
        self._seen.append((ours, offset))

    def behind(self, ours: datetime) -> timedelta:
        """How far behind ours Qualys' clock was at most in the remembered answers (``0`` when never behind)."""
        self._forget(ours)
        return min(timedelta(0), self._seen[0][1]) if self._seen else timedelta(0)

    def remembered(self) -> tuple[datetime, timedelta] | None:
        """When the most-behind answer remembered was read and its offset; ``None`` when none was a second or more
        behind (an HTTP ``Date`` has whole seconds: a clock in step reads up to a second behind)."""
        if not self._seen or self._seen[0][1] > -timedelta(seconds=1):
            return None
        return self._seen[0]

    def recall(self, seen: datetime, offset: timedelta, ours: datetime) -> None:
        """What :meth:`remembered` said before a restart, into a memory that holds nothing yet."""
        if not self._seen and timedelta(0) <= ours - seen <= MEMORY and -IMPLAUSIBLE <= offset < timedelta(0):
            self._seen.append((seen, offset))

    def _forget(self, ours: datetime) -> None:
        while self._seen and ours - self._seen[0][0] > MEMORY:
            self._seen.popleft()
