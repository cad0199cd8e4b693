"""Keyset paging over the FIM gateway's search endpoints (``sort`` + ``searchAfter``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from qualys_collector.errors import DataError
from qualys_collector.model import JSON
from qualys_collector.qualys.fim import FimClient

logger = logging.getLogger("qualys_collector.puller")


def qql_time(value: datetime) -> str:
    """A QQL date literal with milliseconds: ``2024-01-01T00:00:00.000Z``."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def search_pages(
    client: FimClient,
    path: str,
    qql: str,
    sort: list[dict[str, str]],
    page_size: int,
    search_after: list[Any] | None,
    what: str,
) -> Iterator[tuple[list[JSON], list[Any]]]:
    """``(hits' data, last sortValues)`` per page, past the 10,000-row offset window."""
    after = list(search_after or [])
    while True:
        body = {"filter": qql, "sort": json.dumps(sort), "pageSize": page_size, "searchAfter": after}
        hits = client.post(path, body, what)
        if not isinstance(hits, list):
            raise DataError(f"the gateway answered {what} search with {type(hits).__name__}, not a list")
        records = []
        for hit in hits:
            if not isinstance(hit, dict) or not isinstance(hit.get("data"), dict):
                raise DataError(f"a {what} search hit has no 'data' object: {str(hit)[:120]!r}")
            records.append(hit["data"])
        last = list(hits[-1].get("sortValues") or []) if hits else after
        if len(hits) < page_size:  # a short page ends the search, whatever its sortValues
            yield records, last
            return
        if len(last) < len(sort):
            raise DataError(
                f"the gateway returned a full {what} page whose last hit has {len(last)} sort value(s) for a sort on "
                f"{len(sort)} fields (sortValues {last!r}); continuing after it would skip the records that share its "
                "time. Stopping before the page is delivered",
                fix="check that requests reach the FIM gateway unchanged (a proxy that rewrites JSON bodies); "
                "nothing is lost: the next cycle resumes from the last committed page",
            )
        if not last or last == after:
            raise DataError(
                f"the gateway returned a full {what} page whose last hit cannot continue the search "
                f"(sortValues {last!r}, previous {after!r}); stopping to avoid a loop"
            )
        yield records, last
        after = last
