"""What the engine needs from a service: data about a Qualys data source, and the page source that reads it.

A service declares its name, default tag, cursor field and how its checkpoint moves; the page source
(built by the composition root from a Qualys client and the service) turns a window and a resume
token into pages of records. The engine needs nothing else. The protocol lives here, in the engine,
so the engine never imports a service: each module under ``services/`` implements it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from qualys_collector.model import JSON, Page, SourceState, Window


class CursorMode(enum.Enum):
    """How a service's checkpoint advances."""

    #: The checkpoint follows the records' own cursor values (last event time + ids at that time).
    RECORD = "record"
    #: Qualys filters by a time it does not return; the checkpoint is the window's end.
    WINDOW = "window"


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A keyed table of the state store that a service declares (created once, cleared by its reset)."""

    name: str
    #: The checkpoint ``extra`` key in which an older version kept these rows as ``{key: epoch-ms stamp}``;
    #: the engine moves them into the table once, in one transaction with the checkpoint.
    legacy_extra_key: str | None = None


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
    #: Keyed tables the page source reads (``extra.table(name)``) and writes (``Page.writes``).
    tables: tuple[TableSpec, ...] = ()
    #: Qualys selects its records by a time window, so a past range can be asked for (``backfill``).
    windowed: bool = True


class PageSource(Protocol):
    """Reads one window of one service, page by page."""

    def pages(self, window: Window, token: JSON | None, extra: SourceState) -> Iterator[Page]:
        """Yield the window's pages, starting after ``token`` when resuming.

        ``extra`` is the service's own state from the checkpoint (empty at first), a mapping that also
        reads the keyed tables the service declared (``extra.table(name).get(key)``).
        """
        ...
