"""Value types shared by every layer: records, pages, events, and UTC time helpers.

All cursor values are timezone-aware UTC datetimes; the helpers here are the only place that parse
or format the wire formats (Qualys ``YYYY-MM-DDTHH:MM:SSZ``, FIM ``...SSS+0000``, epoch ms).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

SEED_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

JSON = dict[str, Any]

#: datetimes and dataclasses go to ``default=str`` as they do with ``json`` (same bytes either way).
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


@dataclass(frozen=True, slots=True)
class Record:
    """One record as a service parsed it from a Qualys answer.

    ``cursor`` is the record's value of the service's cursor field (``None`` for services that
    window on a field Qualys does not return); ``key`` identifies the record for deduplication;
    ``tag`` overrides the service's tag for records of another kind (incident events, summaries).
    """

    data: JSON
    key: str
    cursor: datetime | None = None
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class TableWrite:
    """A keyed-table write a page carries, committed in the page's transaction.

    ``value`` ``None`` deletes ``key``; ``stamp`` is an optional integer (such as a date in epoch ms)
    that a later :class:`TablePrune` compares.
    """

    table: str
    key: str
    value: Any
    stamp: int | None = None


@dataclass(frozen=True, slots=True)
class TablePrune:
    """Remove the rows of ``table`` whose stamp is below ``below`` (committed with the page)."""

    table: str
    below: int


@dataclass(frozen=True, slots=True)
class Page:
    """A batch of records and the token that resumes the pull right after it.

    ``token`` is ``None`` when this page ends the window. ``requests`` counts the HTTP requests
    spent to produce it (retries included), for the statistics line. ``extra``, when set, replaces
    the service's own small state kept in the checkpoint (committed with this page); ``writes`` are
    keyed-table changes committed with it. ``counters`` are the source's running totals for the
    window (the latest page's values replace earlier ones); the engine adds them to the window's
    summary event.
    """

    records: Sequence[Record]
    token: JSON | None = None
    requests: int = 1
    extra: JSON | None = None
    #: Qualys' own clock when it answered (``RESPONSE/DATETIME``): a window-mode checkpoint never
    #: moves past it, so records Qualys had not yet timestamped when asked are not skipped.
    horizon: datetime | None = None
    writes: Sequence[TableWrite | TablePrune] = ()
    counters: Mapping[str, Any] | None = None
    #: Set when the page belongs to a full re-read of the source (a snapshot): its generation, an integer
    #: that grows with every snapshot (a change filter marks the page's events and confirms their keys).
    snapshot: int | None = None


class TableReader(Protocol):
    """Read access to a keyed table of the state store (what was committed)."""

    def get(self, key: str) -> Any | None:
        """The value under ``key``, or ``None``."""
        ...


class SourceState(dict[str, Any]):
    """What a page source gets from the state store when a window starts: its small JSON state (the
    mapping itself, the checkpoint's ``extra``) and read access to the keyed tables it declared."""

    def __init__(self, extra: Mapping[str, Any] | None = None, tables: Mapping[str, TableReader] | None = None) -> None:
        super().__init__(extra or {})
        self.tables: Mapping[str, TableReader] = dict(tables or {})

    def table(self, name: str) -> TableReader:
        """The keyed table ``name`` (declared in the service's ``tables``)."""
        return self.tables[name]


@dataclass(frozen=True, slots=True)
class Window:
    """The half-open interval ``[start, end)`` a pull cycle asks for; ``end`` is fixed at cycle start."""

    start: datetime
    end: datetime
    capped: bool = False


@dataclass(slots=True)
class Event:
    """What enters the outbox: a Devo tag and the event body, with the record's key and cursor time
    (stored beside the body, so a row can be traced to its record without parsing it)."""

    tag: str
    body: JSON
    key: str | None = None
    time: datetime | None = None
    #: The body's JSON once a pipeline stage has made it (and checked its size); :meth:`to_json` returns it.
    text: str | None = None

    def to_json(self) -> str:
        """Compact one-line JSON of the body (newlines inside values are escaped by JSON).

        orjson is ten times faster than ``json`` here (it serialises every event); what it refuses
        (a lone surrogate from a JSON API, an integer beyond 64 bits) goes through ``json`` instead.
        """
        if self.text is not None:
            return self.text
        try:
            return orjson.dumps(self.body, default=str, option=_ORJSON_OPTIONS).decode()
        except orjson.JSONEncodeError:
            return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False, default=str)


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def parse_seed_datetime(value: str) -> datetime:
    """Parse ``%Y-%m-%dT%H:%M:%SZ`` (the seeds' and Qualys' format) into an aware UTC datetime."""
    return datetime.strptime(value, SEED_DATETIME_FORMAT).replace(tzinfo=UTC)


def format_seed_datetime(value: datetime) -> str:
    """Format an aware datetime as ``%Y-%m-%dT%H:%M:%SZ`` in UTC."""
    return value.astimezone(UTC).strftime(SEED_DATETIME_FORMAT)


def parse_iso_datetime(value: str) -> datetime:
    """Parse the ISO-8601 variants Qualys emits (``Z``, ``+0000``, fractions) into aware UTC."""
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    elif len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit():
        text = f"{text[:-2]}:{text[-2:]}"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def epoch_ms(value: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime."""
    return int(value.timestamp() * 1000)


def from_epoch_ms(value: int) -> datetime:
    """Aware UTC datetime from epoch milliseconds."""
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def content_key(data: Mapping[str, Any] | Sequence[Any]) -> str:
    """A stable key for a record without a natural id: SHA-256 of its canonical JSON."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the outbox hands it to a sink: its sequence number, tag and JSON body."""

    seq: int
    tag: str
    body: str
