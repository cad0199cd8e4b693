"""The page pipeline: what happens to one page between its source and its commit.

Event building is plain data: :class:`EventBuilder` (tag, pulling id, environment, obfuscation rules) is a
frozen dataclass that pickles, so it can be sent to a child process and build the same events there.
The engine runs an ordered list of stages over each page inside the page's transaction — boundary
dedup, obfuscation (event building), a slot for enrichment, a slot for a change filter, the event size bound,
counters — so
whatever a stage writes to a keyed table commits with the page's events and checkpoint, or not at all.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from qualys_collector.engine.cursor import BoundaryCursor, Verdict
from qualys_collector.engine.obfuscate import Obfuscation
from qualys_collector.engine.store import Transaction
from qualys_collector.fit import shorten
from qualys_collector.model import Event, Page, Record, append_fields

logger = logging.getLogger("qualys_collector.puller")


@dataclass
class PageWork:
    """One page on its way through the stages: records still in play, the events built from them, and
    this page's counters (``received``, ``duplicates``, ``deferred``, ``committed``, and any a stage adds)."""

    page: Page
    records: list[Record]
    events: list[Event] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    #: The cycle's event builder, for a stage that makes events of its own (a change filter's ``removed``).
    builder: EventBuilder | None = None


class Stage(Protocol):
    """One step over a page. ``tables`` names the keyed tables it uses (declared before the first page)."""

    @property
    def name(self) -> str:
        """What logs and tests call the stage."""
        ...

    @property
    def tables(self) -> tuple[str, ...]:
        """The keyed tables the stage reads or writes."""
        ...

    def run(self, work: PageWork, tx: Transaction) -> None:
        """Transform ``work`` in place; keyed tables through ``tx.table(name)``."""
        ...


@dataclass(frozen=True, slots=True)
class EventBuilder:
    """Record -> event: obfuscation first (clear values never reach the outbox), then the pulling id and
    the environment, the tag (the record's own, else the service's), the record's key and cursor time.
    A backfill's events carry ``@backfill: true``."""

    tag: str
    pulling_id: int
    environment: str | None = None
    obfuscation: Obfuscation | None = None
    backfill: bool = False

    def build(self, record: Record, suffix: str | None = None) -> Event:
        """The outbox event of one admitted record.

        A record that arrives as JSON (``raw``, from a parsing process) without obfuscation rules becomes its
        event by joining strings: the same bytes as the body's JSON (tested), without decoding it. ``suffix``:
        :meth:`suffix`, when the caller builds many events.
        """
        raw = record.raw
        if raw is not None and self.obfuscation is None:
            end = self.suffix() if suffix is None else suffix
            return Event(
                record.tag or self.tag,
                text=append_fields(raw, end),
                key=record.key,
                time=record.cursor,
                hints=record.hints,
            )
        body = self.obfuscation(record.data) if self.obfuscation is not None else dict(record.data)
        body["@devo_pulling_id"] = self.pulling_id
        if self.backfill:
            body["@backfill"] = True
        if self.environment:
            body["environment"] = self.environment
        return Event(tag=record.tag or self.tag, body=body, key=record.key, time=record.cursor)

    def suffix(self) -> str:
        """What :meth:`build` appends to a record's JSON (:func:`~qualys_collector.model.append_fields`):
        ``,"@devo_pulling_id":N``, ``,"@backfill":true``, ``,"environment":"…"``."""
        suffix = f',"@devo_pulling_id":{orjson.dumps(self.pulling_id).decode()}'
        if self.backfill:
            suffix += ',"@backfill":true'
        if self.environment:
            suffix += f',"environment":{orjson.dumps(self.environment).decode()}'
        return suffix


class BoundaryDedup:
    """Drops records already delivered and defers those at or past the window's end."""

    name = "dedup"
    tables: tuple[str, ...] = ()

    def __init__(self, cursor: BoundaryCursor) -> None:
        self.cursor = cursor

    def run(self, work: PageWork, tx: Transaction) -> None:
        """Keep the admitted records."""
        kept: list[Record] = []
        for record in work.records:
            verdict = self.cursor.admit(record.cursor, record.key)
            if verdict is Verdict.ADMIT:
                kept.append(record)
            elif verdict is Verdict.DUPLICATE:
                work.counts["duplicates"] += 1
            else:
                work.counts["deferred"] += 1
        work.records = kept


@dataclass(frozen=True, slots=True)
class BuildEvents:
    """Obfuscation and event building, through the picklable :class:`EventBuilder`."""

    builder: EventBuilder
    name: str = "obfuscation"
    tables: tuple[str, ...] = ()

    def run(self, work: PageWork, tx: Transaction) -> None:
        """Records become events."""
        build, suffix = self.builder.build, self.builder.suffix()
        work.events = [build(record, suffix) for record in work.records]
        work.records = []


class FitEvents:
    """Events whose JSON is over ``max_bytes`` (``globals.event_max_bytes``) get their largest string fields
    shortened, with ``@truncated_fields``, before they enter the outbox: one event of hundreds of megabytes
    would otherwise cost that much (several times over) in every batch and output that carries it, and no
    Devo output could take it whole anyway. Each event's JSON is made here, once, and kept for the outbox."""

    name = "fit"
    tables: tuple[str, ...] = ()

    def __init__(self, max_bytes: int, service: str = "") -> None:
        self.max_bytes = max_bytes
        self.service = service

    def run(self, work: PageWork, tx: Transaction) -> None:
        """Every event's JSON, shortened where it is too large."""
        limit = self.max_bytes
        for event in work.events:
            text = event.to_json()
            if len(text) * 4 > limit and len(size := text.encode()) > limit:  # 4: the most bytes per character
                text, cut = shorten(text, limit)
                work.counts["events_shortened"] += 1
                logger.warning(
                    "Event %s of %s was %d bytes, over globals.event_max_bytes (%d): shortened %s (original "
                    "lengths in @truncated_fields)",
                    event.key,
                    self.service,
                    len(size),
                    limit,
                    ", ".join(sorted(cut)),
                )
            event.text = text


class CountCommitted:
    """The last stage: counts what the page commits."""

    name = "counters"
    tables: tuple[str, ...] = ()

    def run(self, work: PageWork, tx: Transaction) -> None:
        """``committed`` is what survived every stage."""
        work.counts["committed"] += len(work.events)


class Pipeline:
    """The ordered stages of one cycle of one service."""

    def __init__(self, stages: Sequence[Stage], builder: EventBuilder | None = None) -> None:
        self.stages = tuple(stages)
        self.builder = builder

    @classmethod
    def standard(
        cls,
        cursor: BoundaryCursor,
        builder: EventBuilder,
        *,
        enrich: Sequence[Stage] = (),
        change_filter: Sequence[Stage] = (),
        max_event_bytes: int | None = None,
        service: str = "",
    ) -> Pipeline:
        """Boundary dedup, obfuscation, the enrichment slot, the change-filter slot, the event size bound (with
        ``max_event_bytes``), counters."""
        fit: list[Stage] = [FitEvents(max_event_bytes, service)] if max_event_bytes else []
        return cls(
            [BoundaryDedup(cursor), BuildEvents(builder), *enrich, *change_filter, *fit, CountCommitted()], builder
        )

    @property
    def tables(self) -> tuple[str, ...]:
        """Every keyed table a stage uses."""
        return tuple(name for stage in self.stages for name in stage.tables)

    def run(self, page: Page, tx: Transaction) -> PageWork:
        """Every stage over ``page``, in order, inside ``tx``; an exception leaves nothing of the page."""
        work = PageWork(page=page, records=list(page.records), builder=self.builder)
        work.counts["received"] = len(page.records)
        for stage in self.stages:
            stage.run(work, tx)
        return work
