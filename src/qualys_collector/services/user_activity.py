"""``user_activity`` -> ``vuln.qualys.useractivitylog``: activity-log CSV rows, one event per row.

Rows have no id: a row's key is the hash of all its fields plus its occurrence number among identical
rows of the window, so two identical rows in one second are two events, and each arrives once.

A row is never refused (refused, it failed its answer on every cycle and nothing older was ever delivered:
review). One whose field count is not the header's keeps what it has (values past the header in
``@extra_fields``); one whose ``Date`` is not a date is delivered as it came, moves no checkpoint, and its key is
remembered (:func:`~qualys_collector.engine.untimed.once_untimed`) so the windows that cover it again skip it.
Each answer with such rows logs one warning per kind.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field

from qualys_collector.engine.source import CursorMode, ServiceSpec, TableSpec
from qualys_collector.engine.untimed import once_untimed
from qualys_collector.errors import DataError
from qualys_collector.model import (
    JSON,
    Page,
    Record,
    SourceState,
    Window,
    content_key,
    format_seed_datetime,
    parse_seed_datetime,
)
from qualys_collector.qualys.paging import guard_progress, url_cursor
from qualys_collector.qualys.vm import VmClient
from qualys_collector.services.options import ServiceEntry
from qualys_collector.services.vm_params import COMMON_OWNED, VERSION_PATTERN, VmOptions

logger = logging.getLogger("qualys_collector.puller")

#: Keys of rows delivered without a usable ``Date`` (:func:`~qualys_collector.engine.untimed.once_untimed`).
UNTIMED = "activity_untimed_rows"

SPEC = ServiceSpec(
    name="user_activity",
    default_tag="vuln.qualys.useractivitylog",
    cursor_field="Date",
    mode=CursorMode.RECORD,
    default_lookback=timedelta(days=1),
    tables=(TableSpec(UNTIMED),),
)


class UserActivityOptions(VmOptions):
    """``user_activity``."""

    KNOWN_VERSIONS = ("2.0",)
    OWNED = COMMON_OWNED | {"since_datetime", "until_datetime"}

    api_version: str = Field(default="2.0", pattern=VERSION_PATTERN)
    truncation_limit: int = Field(default=1000, ge=1, le=1_000_000)


BEGIN_BODY, END_BODY = "----BEGIN_RESPONSE_BODY_CSV", "----END_RESPONSE_BODY_CSV"
BEGIN_FOOTER = "----BEGIN_RESPONSE_FOOTER_CSV"


def parse_activity_csv(text: io.TextIOBase) -> Iterator[dict[str, Any] | int]:
    """Rows as dicts keyed by the header's names, then the footer's ``id_max`` (an int) if truncated.

    A row with more fields than the header keeps the rest in ``@extra_fields``; one with fewer, the names it has
    values for. The answer's end logs how many there were."""
    state = "before"
    header: list[str] = []
    odd = 0
    first_odd: list[str] = []
    for row in csv.reader(text):
        if not row or (len(row) == 1 and not row[0].strip()):  # a blank or whitespace-only line: no data; refused,
            continue  # it failed the answer on every cycle (review)
        first = row[0].strip() if len(row) == 1 else row[0]  # a marker line may carry trailing spaces or a CR
        if state == "before" and first == BEGIN_BODY:
            state = "header"
        elif state == "header" and first == END_BODY:  # an empty answer without its header line
            state = "after"
        elif state == "header":
            header, state = row, "body"
        elif state == "body" and first == END_BODY:
            state = "after"
            if odd:
                logger.warning(
                    "The activity log answered %d row(s) whose field count is not the header's %d (the first: %r): "
                    "delivered with the fields they have, values past the header's names in @extra_fields",
                    odd,
                    len(header),
                    first_odd,
                )
        elif state == "body":
            if len(row) == len(header):
                yield dict(zip(header, row, strict=True))
                continue
            odd += 1
            first_odd = first_odd or [f"{len(row)} fields", *row[:3]]
            item: dict[str, Any] = dict(zip(header, row, strict=False))
            if len(row) > len(header):
                item["@extra_fields"] = row[len(header) :]
            yield item
        elif state == "after" and first == BEGIN_FOOTER:
            state = "footer"
        elif state == "footer" and len(row) >= 3 and row[0] == "1980":
            yield url_cursor(row[-1], "id_max")
    if state in ("before", "header", "body"):
        raise DataError("activity log CSV ended before ----END_RESPONSE_BODY_CSV (truncated answer)")


class ActivitySource:
    """``/api/<v>/fo/activity_log/?action=list`` between ``since_datetime`` and a fixed ``until_datetime``."""

    def __init__(self, client: VmClient, options: UserActivityOptions) -> None:
        self.client = client
        self.options = options
        self.path = f"/api/{options.api_version}/fo/activity_log/"

    def pages(self, window: Window, token: JSON | None, extra: SourceState) -> Iterator[Page]:
        """Newest first, one page per answer, back in time with ``id_max``."""
        params = {
            "action": "list",
            "output_format": "CSV",
            "since_datetime": format_seed_datetime(window.start),
            "until_datetime": format_seed_datetime(window.end),
            **self.options.extra_params,
            "truncation_limit": str(self.options.truncation_limit),
        }

        def fetch(start: JSON | None) -> Iterator[Page]:
            id_max = int(start["id_max"]) if start else None
            seen: Counter[str] = Counter(start.get("seen", {}) if start else {})
            while True:
                request = dict(params) if id_max is None else {**params, "id_max": str(id_max)}
                records: list[Record] = []
                following: int | None = None
                untimed: list[str] = []
                with self.client.open(self.path, request) as response:  # utf-8-sig: a byte-order mark is no data
                    text = io.TextIOWrapper(
                        io.BufferedReader(self.client.body(self.path, response)), encoding="utf-8-sig", newline=""
                    )
                    for item in parse_activity_csv(text):
                        if isinstance(item, int):
                            following = item
                            continue
                        digest = content_key(list(item.values()))
                        seen[digest] += 1
                        key = f"{digest}#{seen[digest]}"
                        cursor = row_time(item.get("Date"))
                        if cursor is None:
                            untimed.append(repr(item.get("Date"))[:40])
                        records.append(Record(data=item, key=key, cursor=cursor))
                if untimed:
                    logger.warning(
                        "The activity log answered %d row(s) without a usable Date (the first: %s): delivered as they "
                        "came; they do not move the checkpoint",
                        len(untimed),
                        untimed[0],
                    )
                records, writes = once_untimed(records, extra.table(UNTIMED), UNTIMED, window.end)
                if following is None:
                    yield Page(records, token=None, writes=writes)
                    return
                guard_progress(id_max, following, ascending=False)
                id_max = following
                # identical rows share a timestamp and rows come newest first: only the last second can repeat
                last = records[-1].data.get("Date") if records else None
                tail = {r.key.rsplit("#", 1)[0] for r in records if r.data.get("Date") == last}
                seen = Counter({d: seen[d] for d in tail})
                yield Page(records, token={"id_max": following, "seen": dict(seen)}, writes=writes)

        return self.client.resumable(fetch, token, "user activity")


def row_time(value: Any) -> datetime | None:
    """A row's ``Date`` as a time; ``None`` for one that is missing or not in Qualys' format."""
    try:
        return parse_seed_datetime(value) if isinstance(value, str) else None
    except ValueError:
        return None


SERVICE = ServiceEntry(SPEC, "qualys", UserActivityOptions, ActivitySource)
