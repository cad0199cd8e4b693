"""``fim_events`` -> ``monitor.qualys.fim.event``: FIM events windowed on ``processedTime``.

``processedTime`` is assigned when Qualys ingests an event, so a late event (old ``dateTime``) still
falls in a later window and is never skipped. Pages come sorted by ``processedTime`` then ``id``, so
the checkpoint (and the ``searchAfter`` position) moves after every page.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

from pydantic import Field, field_validator

from qualys_collector.engine.source import CursorMode, ServiceSpec, TableSpec
from qualys_collector.engine.untimed import once_untimed
from qualys_collector.model import JSON, Page, Record, SourceState, Window, content_key, parse_iso_datetime
from qualys_collector.qualys.fim import FimClient
from qualys_collector.qualys.fim_common import logger, qql_time, search_pages
from qualys_collector.services.options import ServiceEntry, ServiceOptions

#: Keys of records delivered without a usable time (:func:`~qualys_collector.engine.untimed.once_untimed`).
UNTIMED = "fim_untimed_event_ids"

SPEC = ServiceSpec(
    name="fim_events",
    default_tag="monitor.qualys.fim.event",
    cursor_field="processedTime",
    mode=CursorMode.RECORD,
    is_sorted=True,
    default_lookback=timedelta(days=1),
    tables=(TableSpec(UNTIMED),),
)


class FimEventsOptions(ServiceOptions):
    """``fim_events``."""

    settle_lag_seconds: int = Field(default=30, ge=0, le=86400)
    page_size: int = Field(default=1000, ge=1, le=1000)
    filter: str | None = None

    @field_validator("filter")
    @classmethod
    def _qql(cls, value: str | None) -> str | None:
        if value and re.search(r"\b(processedTime|dateTime)\b", value):
            raise ValueError(
                "the filter may not name processedTime or dateTime: the collector windows on processedTime "
                "itself; remove that part of the filter and use start_time_utc instead"
            )
        return value


PATH = "/fim/v2/events/search"
SORT = [{"processedTime": "asc"}, {"id": "asc"}]


def to_record(event: JSON) -> Record:
    """One event; its ``id`` is the key, its ``processedTime`` the cursor.

    An event without a usable ``processedTime`` (null, or not a date) is delivered as it came, with a warning,
    and moves no checkpoint: refusing it failed its page on every cycle, and nothing after it was ever delivered
    (found by review: 2,200 of 2,500, then exit 1 for ever). Without an ``id`` its key is a hash of its content.
    """
    raw_id = event.get("id")
    key = str(raw_id) if raw_id not in (None, "") else f"content:{content_key(event)}"
    when = event.get("processedTime")
    try:
        cursor = parse_iso_datetime(when) if isinstance(when, str) else None
    except ValueError:
        cursor = None
    if cursor is None:
        logger.warning(
            "FIM event %s has no usable processedTime (%s): delivered as it came; it does not move the checkpoint",
            key,
            repr(when)[:40],
        )
    return Record(data=event, key=key, cursor=cursor)


class FimEventsSource:
    """``POST /fim/v2/events/search`` over a ``processedTime`` window."""

    def __init__(self, client: FimClient, options: FimEventsOptions) -> None:
        self.client = client
        self.options = options

    def qql(self, window: Window) -> str:
        """The window filter, ANDed with the user's own filter."""
        span = f"processedTime: ['{qql_time(window.start)}'..'{qql_time(window.end)}']"
        return f"({self.options.filter}) and {span}" if self.options.filter else span

    def pages(self, window: Window, token: JSON | None, extra: SourceState) -> Iterator[Page]:
        """Keyset pages; each page's token is its last ``sortValues``."""
        self.client.check_token()
        before = self.client.requests
        after = token.get("searchAfter") if token else None
        sent = 0
        for events, last in search_pages(
            self.client, PATH, self.qql(window), SORT, self.options.page_size, after, "events"
        ):
            answered = self.client.server_time
            sent += len(events)
            more = len(events) == self.options.page_size
            logger.info(
                "Received %d fim_events events from the gateway (the statistics line counts those sent).", len(events)
            )
            records, writes = once_untimed([to_record(e) for e in events], extra.table(UNTIMED), UNTIMED, window.end)
            yield Page(
                records,
                token={"searchAfter": last} if more else None,
                requests=self.client.requests - before,
                horizon=answered,
                writes=writes,
            )
            before = self.client.requests


SERVICE = ServiceEntry(SPEC, "qualys_fim", FimEventsOptions, FimEventsSource)
