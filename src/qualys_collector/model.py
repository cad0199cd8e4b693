"""Value types shared by every layer: records, pages, events, and UTC time helpers.

All cursor values are timezone-aware UTC datetimes; the helpers here are the only place that parse
or format the wire formats (Qualys ``YYYY-MM-DDTHH:MM:SSZ``, FIM ``...SSS+0000``, epoch ms).
"""

from __future__ import annotations

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


class Record:
    """One record as a service parsed it from a Qualys answer.

    ``cursor`` is the record's value of the service's cursor field (``None`` for services that
    window on a field Qualys does not return); ``key`` identifies the record for deduplication;
    ``tag`` overrides the service's tag for records of another kind (incident events, summaries).

    A record made in a parsing process arrives as ``raw``, the JSON of its data (what ``orjson`` makes of it,
    none of the event builder's keys in it), with ``hints``: the few values of the data that a pipeline stage
    reads (``DETECTION.QID`` for KnowledgeBase enrichment), so that its event is built by joining strings and
    nothing decodes it. ``data`` decodes ``raw`` the first time it is read.
    """

    __slots__ = ("_data", "cursor", "hints", "key", "raw", "tag")

    def __init__(
        self,
        data: JSON | None = None,
        key: str = "",
        cursor: datetime | None = None,
        tag: str | None = None,
        *,
        raw: str | None = None,
        hints: Mapping[str, Any] | None = None,
    ) -> None:
        if data is None and raw is None:
            raise ValueError("a record needs its data or their JSON (raw)")
        self._data = data
        self.key = key
        self.cursor = cursor
        self.tag = tag
        self.raw = raw
        self.hints = hints

    @property
    def data(self) -> JSON:
        """The record's fields (decoded from ``raw`` on first use)."""
        if self._data is None:
            assert self.raw is not None
            self._data = orjson.loads(self.raw)
        return self._data

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (self.data, self.key, self.cursor, self.tag) == (other.data, other.key, other.cursor, other.tag)

    __hash__ = None  # type: ignore[assignment]  # mutable data: as the dataclass it replaces

    def __repr__(self) -> str:
        return f"Record(data={self.data!r}, key={self.key!r}, cursor={self.cursor!r}, tag={self.tag!r})"


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


class Event:
    """What enters the outbox: a Devo tag and the event body, with the record's key and cursor time
    (stored beside the body, so a row can be traced to its record without parsing it).

    An event built from a record's ``raw`` JSON holds only its JSON (``text``) and the record's ``hints``:
    :meth:`add_field` appends a field to that JSON as ``orjson`` would to the body, byte for byte; reading
    ``body`` decodes the JSON and drops it (the caller may change the body; :meth:`to_json` makes it again).
    """

    __slots__ = ("_body", "hints", "key", "tag", "text", "time")

    def __init__(
        self,
        tag: str,
        body: JSON | None = None,
        key: str | None = None,
        time: datetime | None = None,
        text: str | None = None,
        *,
        hints: Mapping[str, Any] | None = None,
    ) -> None:
        if body is None and text is None:
            raise ValueError("an event needs its body or its JSON (text)")
        self.tag = tag
        self._body = body
        self.key = key
        self.time = time
        #: The body's JSON once a pipeline stage has made it (and checked its size); :meth:`to_json` returns it.
        self.text = text
        self.hints = hints

    @property
    def body(self) -> JSON:
        """The event's fields (decoded from ``text`` on first use, which then no longer stands for them)."""
        if self._body is None:
            assert self.text is not None
            self._body = orjson.loads(self.text)
            self.text = None
        return self._body

    @body.setter
    def body(self, value: JSON) -> None:
        self._body = value
        self.text = None

    def add_field(self, name: str, value: Any, *, encoded: str | None = None) -> None:
        """``body[name] = value`` for a field the body does not have yet (it goes last, as in a dict).

        ``encoded``: ``value``'s JSON, when the caller made it once for many events."""
        if self._body is not None:
            self._body[name] = value
            self.text = None
            return
        assert self.text is not None
        field = f",{orjson.dumps(name).decode()}:{json_text(value) if encoded is None else encoded}"
        self.text = append_fields(self.text, field)

    def to_json(self) -> str:
        """Compact one-line JSON of the body (newlines inside values are escaped by JSON).

        orjson is ten times faster than ``json`` here (it serialises every event); what it refuses
        (a lone surrogate from a JSON API, an integer beyond 64 bits) goes through ``json`` instead.
        """
        if self.text is not None:
            return self.text
        return json_text(self._body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.tag, self._fields(), self.key, self.time) == (other.tag, other._fields(), other.key, other.time)

    def _fields(self) -> JSON:
        """The body, decoded from the JSON if need be without replacing it (comparing keeps the JSON)."""
        if self._body is not None:
            return self._body
        assert self.text is not None
        fields: JSON = orjson.loads(self.text)
        return fields

    __hash__ = None  # type: ignore[assignment]  # mutable body: as the dataclass it replaces

    def __repr__(self) -> str:
        shown = self._body if self._body is not None else self.text
        return f"Event(tag={self.tag!r}, body={shown!r}, key={self.key!r}, time={self.time!r})"


def append_fields(text: str, fields: str) -> str:
    """The JSON object ``text`` with ``fields`` (``,"name":value…``) added last, as a dict would write them."""
    return f"{{{fields[1:]}}}" if text == "{}" else f"{text[:-1]}{fields}}}"


def json_text(value: Any) -> str:
    """Compact one-line JSON as events are written: orjson, else ``json`` (same separators) for what it refuses."""
    try:
        return orjson.dumps(value, default=str, option=_ORJSON_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


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
    import hashlib  # here: it loads OpenSSL's libcrypto (3.7 MB), which the parsing processes never need

    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the outbox hands it to a sink: its sequence number, tag and JSON body."""

    seq: int
    tag: str
    body: str
