"""Records without a usable time (no cursor): delivered as they came, each key once.

A service whose records carry their time in a field that may be missing or garbled (a FIM event's
``processedTime``, an activity-log row's ``Date``) delivers such a record rather than refuse its page on every
cycle, and passes its page's records through :func:`once_untimed` with a keyed table of its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from qualys_collector.model import Record, TablePrune, TableWrite, epoch_ms

#: How long the keys of records delivered without a usable time are remembered (:func:`once_untimed`).
UNTIMED_RETENTION = timedelta(days=460)


def once_untimed(
    records: list[Record], seen: Any, table: str, now: datetime
) -> tuple[list[Record], list[TableWrite | TablePrune]]:
    """``records`` with those that carry no cursor (no usable time) kept only the first time their key comes.

    Such a record is delivered as it came rather than refused (refused, it failed its page on every cycle), but
    no boundary remembers it: every window that covered it delivered it again (found by review of the FIM
    services: up to 14 copies of one event; a whole window again every cycle when no event had a time). Their keys
    go into the keyed table ``table`` with the page (``seen`` reads it), so a crash cannot deliver one twice either.
    """
    kept: list[Record] = []
    writes: dict[str, TableWrite] = {}
    stamp = epoch_ms(now)
    for record in records:
        if record.cursor is None and record.tag is None:  # the service's own records (not an incident's events)
            if record.key in writes or seen.get(record.key) is not None:
                continue
            writes[record.key] = TableWrite(table, record.key, stamp, stamp=stamp)
        kept.append(record)
    if not writes:
        return kept, []
    return kept, [*writes.values(), TablePrune(table, epoch_ms(now - UNTIMED_RETENTION))]
