"""What a service is: data about a Qualys data source, and the page source that reads it.

A service declares its name, default tag, cursor field and how its checkpoint moves; the page source
(built by the composition root from a Qualys client and the service) turns a window and a resume
token into pages of records. The engine needs nothing else.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from qualys_collector.model import JSON, Page, Window


class CursorMode(enum.Enum):
    """How a service's checkpoint advances."""

    #: The checkpoint follows the records' own cursor values (last event time + ids at that time).
    RECORD = "record"
    #: Qualys filters by a time it does not return; the checkpoint is the window's end.
    WINDOW = "window"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """The facts about one data source that the engine needs."""

    name: str
    default_tag: str
    cursor_field: str | None
    mode: CursorMode
    #: Records arrive in ascending cursor order, so the checkpoint may move after every page.
    is_sorted: bool = False
    #: Where a service without ``start_time_utc`` starts on its first run.
    default_lookback: timedelta = timedelta(days=1)


class PageSource(Protocol):
    """Reads one window of one service, page by page."""

    def pages(self, window: Window, token: JSON | None, extra: JSON) -> Iterator[Page]:
        """Yield the window's pages, starting after ``token`` when resuming.

        ``extra`` is the service's own state from the checkpoint (empty at first).
        """
        ...
