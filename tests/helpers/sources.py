"""An in-memory page source for engine tests (the engine's only seam towards Qualys)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from qualys_collector.errors import PullError
from qualys_collector.model import Page, Record, Window


def rec(key: str, when: datetime | None, **data: Any) -> Record:
    return Record(data={"id": key, **data}, key=key, cursor=when)


@dataclass
class ListSource:
    """Serves records whose cursor is in the window, ``page_size`` per page; can fail on a given page."""

    records: list[Record]
    page_size: int = 2
    fail_on_page: int | None = None
    calls: list[tuple[Window, Any]] = field(default_factory=list)
    unfiltered: bool = False

    def pages(self, window: Window, token: dict[str, Any] | None, extra: dict[str, Any]) -> Iterator[Page]:
        self.calls.append((window, token))
        if self.unfiltered:
            matching = list(self.records)
        else:
            matching = [r for r in self.records if r.cursor is None or window.start <= r.cursor <= window.end]
        index = int(token["page"]) if token else 0
        while True:
            if self.fail_on_page is not None and index == self.fail_on_page:
                raise PullError("simulated failure", code=300, retryable=True)
            chunk = matching[index * self.page_size : (index + 1) * self.page_size]
            index += 1
            more = index * self.page_size < len(matching)
            yield Page(records=chunk, token={"page": index} if more else None)
            if not more:
                return
