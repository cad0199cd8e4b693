"""One pull cycle of one service: window, pages, the page pipeline, and page-by-page commits.

Each page goes through the pipeline's stages (:mod:`qualys_collector.engine.pipeline`) inside one
transaction of the state store, which commits the page's events, its keyed-table writes and the
checkpoint that follows them together. The checkpoint never runs ahead of what was committed; a
failure leaves it at the last committed page, and the next cycle resumes inside the same window. The
page that completes a window also commits the window's summary event.

A backfill is a job with ``until`` set: it pulls ``[start_time, until)`` under its own state scope
(:func:`backfill_scope`: its own checkpoint and keyed-table rows, so the live checkpoint never moves), its
windows end at ``until`` at the latest and move the checkpoint to their end (what was asked was all of the
past range), and its events carry ``@backfill: true``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from qualys_collector.engine.checkpoint import Checkpoint, WindowProgress
from qualys_collector.engine.cursor import BoundaryCursor
from qualys_collector.engine.obfuscate import Obfuscation
from qualys_collector.engine.outbox import Outbox
from qualys_collector.engine.pipeline import EventBuilder, Pipeline, Stage
from qualys_collector.engine.qualys_clock import QualysClock
from qualys_collector.engine.source import CursorMode, PageSource, ServiceSpec
from qualys_collector.engine.store import Transaction
from qualys_collector.engine.summary import SUMMARY_TAG, add_counts, summary_event
from qualys_collector.engine.window import plan_window
from qualys_collector.model import JSON, Event, Page, SourceState, TablePrune, Window, epoch_ms, utcnow

logger = logging.getLogger("qualys_collector.puller")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def boundary_table(service: str) -> str:
    """The keyed table of a service's boundary keys: each key delivered at a cursor value, stamped with that
    value in microseconds. A page commit writes only the keys it added, and its checkpoint carries none, so
    a second holding 80,000 records costs O(records) per window, not every key rewritten on every page. A
    completed window's checkpoint still lists its boundary keys (``last_ids``, once per window)."""
    return f"boundary_{service}"


#: What a backfill's state scope adds to its input id (``7@backfill``): checkpoints and keyed-table rows of
#: a backfill live beside the live service's, never in them.
BACKFILL_SUFFIX = "@backfill"


def backfill_scope(input_id: str) -> str:
    """The state scope of an input's backfills."""
    return f"{input_id}{BACKFILL_SUFFIX}"


def _stamp(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


@dataclass
class Job:
    """Everything needed to pull one service of one input."""

    input_name: str
    input_id: str
    spec: ServiceSpec
    source: PageSource
    tag: str
    start_time: datetime | None = None
    environment: str | None = None
    period: timedelta = timedelta(seconds=60)
    settle_lag: timedelta = timedelta(0)
    max_span: timedelta | None = None
    obfuscation: Obfuscation | None = None
    #: The pipeline's slots: stages that enrich events, then stages that filter them by change.
    enrich: tuple[Stage, ...] = ()
    change_filter: tuple[Stage, ...] = ()
    summary_tag: str = SUMMARY_TAG
    #: ``globals.event_max_bytes``: larger events are shortened before the outbox (``None``: no bound)
    max_event_bytes: int | None = None
    #: The end of a backfill's range ``[start_time, until)``; ``None`` for the live service.
    until: datetime | None = None
    #: How far behind ours Qualys' clock ran in this job's recent answers (record-mode windows end by it).
    qualys_clock: QualysClock = field(default_factory=QualysClock, compare=False, repr=False)

    @property
    def label(self) -> str:
        """The seed's puller label: ``(input,id,service,predefined)`` (``backfill`` for a backfill)."""
        return f"{self.input_name},{self.input_id},{self.spec.name},{'backfill' if self.backfill else 'predefined'}"

    @property
    def backfill(self) -> bool:
        """Whether this job pulls a past range beside the live service."""
        return self.until is not None

    @property
    def scope(self) -> str:
        """Where the job's checkpoint and keyed-table rows live: the input id, or its backfill scope."""
        return backfill_scope(self.input_id) if self.backfill else self.input_id


@dataclass
class CycleStats:
    """Counters of one cycle, printed in the seed's statistics line."""

    pulling_id: int
    requests: int = 0
    received: int = 0
    duplicates: int = 0
    deferred: int = 0
    sent: int = 0
    pages: int = 0
    #: Summary events committed (one when the cycle completed its window); not in the seed's line.
    summaries: int = 0
    completed: bool = False
    #: The cycle stopped at a committed page because the outbox went over its size limit (the window stays open).
    outbox_full: bool = False
    #: The cycle completed a capped window to its end: the next window is due at once (the service is behind).
    behind: bool = False
    #: Nothing is left to pull now: the service is up to date, or a backfill reached the end of its range.
    done: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def committed(self) -> int:
        """Every event this cycle put in the outbox: the records' events and the window's summary."""
        return self.sent + self.summaries

    def add(self, counts: Mapping[str, int]) -> None:
        """One committed page's counters."""
        self.pages += counts.get("pages", 0)
        self.requests += counts.get("requests", 0)
        self.received += counts.get("received", 0)
        self.duplicates += counts.get("duplicates", 0)
        self.deferred += counts.get("deferred", 0)
        self.sent += counts.get("committed", 0)

    @property
    def seconds(self) -> float:
        """Seconds since the cycle started."""
        return time.monotonic() - self.started

    def line(self, *, partial: bool = False) -> str:
        """The seed's statistics line, verbatim in shape."""
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        prefix = "(Partial) " if partial else ""
        return (
            f"{prefix}Statistics for this pull cycle (@devo_pulling_id={self.pulling_id}):"
            f"Number of requests made: {self.requests}; Number of events received: {self.received}; "
            f"Number of duplicated events filtered out: {self.duplicates}; "
            f"Number of events generated and sent: {self.sent}; Average of events per second: {rate:.3f}."
        )


def load_checkpoint(job: Job, outbox: Outbox, now: datetime) -> Checkpoint:
    """The service's checkpoint, reset (and persisted) when ``start_time_utc`` changed.

    Declares the service's keyed tables first, and moves rows an older version kept in the checkpoint's
    ``extra`` into their table (one transaction).
    """
    for name in (*(t.name for t in job.spec.tables), boundary_table(job.spec.name)):
        outbox.declare(name, job.spec.name)
    for stage in (*job.enrich, *job.change_filter):  # a stage may use another service's table (``owner``)
        for name in stage.tables:
            outbox.declare(name, getattr(stage, "owner", None) or job.spec.name)
    configured = job.start_time
    stored = outbox.load_checkpoint(job.scope, job.spec.name)
    fresh = Checkpoint.initial(configured, now - job.spec.default_lookback, until=job.until)
    if stored is None:
        logger.info("No persisted data found; starting from %s", fresh.value)
        outbox.commit(job.scope, job.spec.name, [], fresh.to_json())
        return fresh
    logger.info("Data retrieved from the persistence: %s", _shown(stored))
    checkpoint = Checkpoint.from_json(stored)
    if checkpoint.start_time != configured or checkpoint.until != job.until:
        logger.warning(
            "Some changes have been detected and the persistence needs to be updated. "
            "Previous content: %s. New content: %s",
            _shown(stored),
            fresh.to_json(),
        )
        with outbox.transaction(job.scope) as tx:
            for table in job.spec.tables:
                tx.table(table.name).clear()
            tx.table(boundary_table(job.spec.name)).clear()
            tx.save_checkpoint(job.spec.name, fresh.to_json())
        logger.warning("Persistence has been updated successfully")
        return fresh
    return _migrate_extra(job, outbox, checkpoint)


def _shown(stored: JSON) -> JSON:
    """A checkpoint for the log: an old ``extra`` blob of ids is summarised, not printed whole."""
    extra = stored.get("extra")
    if not isinstance(extra, dict) or not any(isinstance(v, dict) and len(v) > 20 for v in extra.values()):
        return stored
    summary = {k: (f"<{len(v)} entries>" if isinstance(v, dict) and len(v) > 20 else v) for k, v in extra.items()}
    return {**stored, "extra": summary}


def _migrate_extra(job: Job, outbox: Outbox, checkpoint: Checkpoint) -> Checkpoint:
    """Move ``{key: stamp}`` blobs of the checkpoint's ``extra`` into the keyed tables that replace them."""
    legacy = [t for t in job.spec.tables if t.legacy_extra_key and t.legacy_extra_key in checkpoint.extra]
    if not legacy:
        return checkpoint
    extra = dict(checkpoint.extra)
    with outbox.transaction(job.scope) as tx:
        for spec in legacy:
            table = tx.table(spec.name)
            rows = extra.pop(str(spec.legacy_extra_key)) or {}
            for key, stamp in dict(rows).items():
                table.put(str(key), stamp, stamp=stamp if isinstance(stamp, int) else None)
            logger.info("Moved %d entries of the checkpoint into the state table %s", len(rows), spec.name)
        migrated = replace(checkpoint, extra=extra)
        tx.save_checkpoint(job.spec.name, migrated.to_json())
    return migrated


def run_cycle(
    job: Job,
    outbox: Outbox,
    *,
    clock: Callable[[], datetime] = utcnow,
    stop: threading.Event | None = None,
    on_page: Callable[[Job, CycleStats], None] | None = None,
    outbox_limit: int | None = None,
) -> CycleStats:
    """Pull one window (or the rest of an interrupted one). Raises the source's errors unchanged.

    With ``outbox_limit`` (``globals.outbox_max_bytes``) the outbox is measured after every committed page: once
    it is over the limit the cycle stops there, the window stays open at that page (``stats.outbox_full``), and
    the next cycle resumes after the page once delivery has made room. So the outbox exceeds its limit by at
    most one page, however large the window.
    """
    now = clock()
    stats = CycleStats(pulling_id=epoch_ms(now))
    checkpoint = load_checkpoint(job, outbox, now)
    if checkpoint.behind is not None:  # after a restart: what the answers before it showed of Qualys' clock
        job.qualys_clock.recall(*checkpoint.behind, now)
    progress = checkpoint.window
    if progress is not None:
        window = Window(start=progress.start, end=progress.end, capped=progress.capped)
        token = progress.token
        logger.info("Resuming the window interrupted after page %d", progress.pages)
    else:
        if checkpoint.value is None:  # pragma: no cover - initial() always sets a value
            raise ValueError("checkpoint without a start value")
        planned = _plan(job, checkpoint.value, now)
        if planned is None:
            logger.info("The backfill is complete" if checkpoint.complete else "The data is up to date!")
            stats.completed = True
            stats.done = job.until is None or checkpoint.complete
            return stats
        window, token = planned, None
        progress = WindowProgress(start=window.start, end=window.end, capped=window.capped)
    progress = replace(progress, counters=add_counts(progress.counters, {"cycles": 1}))
    logger.info("Pull Started")
    logger.info("Fetching data From : %s  To : %s", window.start, window.end)
    checkpoint, progress = _boundary_to_table(job, outbox, checkpoint, progress)
    boundary = outbox.table(job.scope, boundary_table(job.spec.name))
    floor_ids = boundary.keys_at(_stamp(checkpoint.value)) if checkpoint.value is not None else []
    max_ids = boundary.keys_at(_stamp(progress.max_value)) if progress.max_value is not None else []
    cursor = BoundaryCursor(checkpoint.value, floor_ids, window.end, max_value=progress.max_value, max_ids=max_ids)
    cursor.take_fresh()
    builder = EventBuilder(job.tag, stats.pulling_id, job.environment, job.obfuscation, backfill=job.backfill)
    pipeline = Pipeline.standard(
        cursor,
        builder,
        enrich=job.enrich,
        change_filter=job.change_filter,
        max_event_bytes=job.max_event_bytes,
        service=job.spec.name,
    )
    tables = {t.name: outbox.table(job.scope, t.name) for t in job.spec.tables}
    pages = job.source.pages(window, token, SourceState(checkpoint.extra, tables))
    completed = False
    for page in pages:
        lowered = _settled_end(job, window, cursor, page, clock())
        if lowered is not None:  # records at or past it are deferred: the next window asks for them again
            window, progress = replace(window, end=lowered), replace(progress, end=lowered)
            cursor.end = lowered
        with outbox.transaction(job.scope) as tx:
            work = pipeline.run(page, tx)
            apply_writes(tx, page)
            counts = {"pages": 1, "requests": page.requests, **work.counts}
            progress = _advance(progress, page, cursor, counts)
            if page.extra is not None:
                checkpoint = replace(checkpoint, extra=page.extra)
            events = work.events
            if page.token is None:
                new = _complete(job, checkpoint, window, cursor, progress.horizon)
                events = [*events, _summary(job, window, progress, stats.pulling_id)]
                stats.summaries += 1
                completed = True
            elif job.spec.is_sorted and job.spec.mode is CursorMode.RECORD:
                new = replace(checkpoint, value=cursor.max_value, ids=(), window=progress)
            else:
                new = checkpoint.with_window(progress)
            tx.add_events(job.spec.name, events)
            _store_boundary(tx, job, cursor, new)
            tx.save_checkpoint(job.spec.name, _with_clock(job, new).to_json())
        stats.add(counts)
        logger.info(stats.line(partial=True))
        if on_page is not None:
            on_page(job, stats)
        if completed:
            break
        if stop is not None and stop.is_set():
            logger.warning("Stop requested: the window stays open and resumes after page %d", progress.pages)
            return stats
        if outbox_limit is not None and (size := outbox.size_bytes()) > outbox_limit:
            logger.warning(
                "The outbox holds %d bytes, over globals.outbox_max_bytes (%d bytes): the window stops after page "
                "%d and resumes there once the outputs have delivered (nothing is dropped)",
                size,
                outbox_limit,
                progress.pages,
            )
            stats.outbox_full = True
            close = getattr(pages, "close", None)  # a generator's answer and batch workers end here, not in the GC
            if close is not None:
                close()
            return stats
    if not completed:
        new = _complete(job, checkpoint, window, cursor, progress.horizon)
        with outbox.transaction(job.scope) as tx:
            _store_boundary(tx, job, cursor, new)
            tx.add_events(job.spec.name, [_summary(job, window, progress, stats.pulling_id)])
            tx.save_checkpoint(job.spec.name, _with_clock(job, new).to_json())
        stats.summaries += 1
    stats.completed = True
    # a capped window cut short by Qualys' clock (``_settled_end``) is not behind: what follows has not settled yet,
    # and running again at once asked for the same empty window without end (review: 12,498 calls in 90 s)
    full = job.max_span is None or window.end - window.start >= job.max_span
    stats.behind = window.capped and full and new.value is not None and new.value >= window.end
    stats.done = new.complete
    if stats.deferred:
        logger.info("%d records at or after %s were left for the next window", stats.deferred, window.end)
    logger.info(stats.line())
    return stats


def _store_boundary(tx: Transaction, job: Job, cursor: BoundaryCursor, new: Checkpoint) -> None:
    """The keys this page added at the running maximum, and (once the checkpoint moved) fewer rows below it."""
    table = tx.table(boundary_table(job.spec.name))
    fresh = cursor.take_fresh()
    if fresh and cursor.max_value is not None:
        table.put_many(fresh, 1, stamp=_stamp(cursor.max_value))
    if new.value is not None and (new.window is None or new.value == new.window.max_value):
        table.prune(_stamp(new.value))  # keys below the checkpoint can never be asked about again


def _boundary_to_table(
    job: Job, outbox: Outbox, checkpoint: Checkpoint, progress: WindowProgress
) -> tuple[Checkpoint, WindowProgress]:
    """Keys a checkpoint lists inline (a completed window's ``last_ids``, or an older version's window) go
    into the table before the window's pages, whose checkpoints then list none."""
    if not checkpoint.ids and not progress.max_ids:
        return checkpoint, progress
    with outbox.transaction(job.scope) as tx:
        table = tx.table(boundary_table(job.spec.name))
        if checkpoint.value is not None:
            table.put_many(checkpoint.ids, 1, stamp=_stamp(checkpoint.value))
        if progress.max_value is not None:
            table.put_many(progress.max_ids, 1, stamp=_stamp(progress.max_value))
    moved = replace(progress, max_ids=())
    return replace(checkpoint, ids=(), window=moved if checkpoint.window is not None else None), moved


def _advance(progress: WindowProgress, page: Page, cursor: BoundaryCursor, counts: Mapping[str, int]) -> WindowProgress:
    """The window's progress once ``page`` is committed."""
    horizon = progress.horizon
    if page.horizon is not None and (horizon is None or page.horizon < horizon):
        horizon = page.horizon
    return replace(
        progress,
        token=page.token,
        max_value=cursor.max_value,
        pages=progress.pages + 1,
        horizon=horizon,
        counters=add_counts(progress.counters, counts),
        source_counters=dict(page.counters) if page.counters is not None else progress.source_counters,
    )


def _summary(job: Job, window: Window, progress: WindowProgress, pulling_id: int) -> Event:
    event = summary_event(
        service=job.spec.name,
        input_id=job.input_id,
        tag=job.summary_tag,
        window=window,
        progress=progress,
        pulling_id=pulling_id,
        environment=job.environment,
    )
    if job.backfill:
        event.body["@backfill"] = True
    return event


def _with_clock(job: Job, checkpoint: Checkpoint) -> Checkpoint:
    """``checkpoint`` with what the job's answers showed of Qualys' clock (record-mode jobs)."""
    if job.spec.mode is not CursorMode.RECORD:
        return checkpoint
    return replace(checkpoint, behind=job.qualys_clock.remembered())


def _plan(job: Job, start: datetime, now: datetime) -> Window | None:
    """The next window from ``start``: it ends at ``now`` minus the settle lag (a backfill's at its range's end at the
    latest), ``now`` being Qualys' time for a record-mode job when its answers of the last hour showed that clock
    behind ours (:mod:`.qualys_clock`; said when it moves the end)."""

    def plan(clock: datetime) -> Window | None:
        if job.until is not None:  # a backfill: its windows end at the end of its range at the latest
            return plan_window(start, min(clock - job.settle_lag, job.until), max_span=job.max_span)
        return plan_window(start, clock, settle_lag=job.settle_lag, max_span=job.max_span)

    behind = job.qualys_clock.behind(now) if job.spec.mode is CursorMode.RECORD else timedelta(0)
    planned = plan(now + behind)
    ours = plan(now) if behind < -timedelta(seconds=2) else None
    if ours is not None and (planned is None or planned.end < ours.end):
        logger.warning(
            "Qualys' clock is behind ours: this window ends at Qualys' time minus the settle lag (%s, not %s), "
            "%.0f s behind ours as the furthest-behind answer of the last hour showed it (the time it took to "
            "arrive included)",
            planned.end if planned is not None else "no window yet",
            ours.end,
            -behind.total_seconds(),
        )
    return planned


def _settled_end(job: Job, window: Window, cursor: BoundaryCursor, page: Page, ours: datetime) -> datetime | None:
    """A record-mode window's end cut to Qualys' own clock minus the settle lag, when a page shows that clock
    behind ours; ``None`` when the end stands.

    The window's end is planned on our clock (``now - settle_lag``), and a record-mode checkpoint becomes the newest
    record delivered. With Qualys' clock behind ours by more than the lag, that end lay in Qualys' future: records
    it makes searchable a few seconds after their time (why FIM waits 30 s) fell below the next checkpoint and were
    never asked for (found by review: 1,042 of 1,193 FIM events lost with Qualys 45 s behind). Each page carries
    Qualys' time when it answered (its ``Date``); before the page's records are judged, the end becomes that time
    minus the lag, so records past it are deferred to a later window, as records past our own end are.

    Answers from nodes whose clocks disagree, or a page without a ``Date``, are judged on the most-behind offset of
    the recent answers (``job.qualys_clock``, which this page's ``Date``, received at ``ours``, joins first).
    """
    if job.spec.mode is not CursorMode.RECORD:
        return None
    if page.horizon is not None:
        job.qualys_clock.observe(ours, page.horizon)
    remembered = ours + job.qualys_clock.behind(ours)
    theirs = remembered if page.horizon is None else min(page.horizon, remembered)
    settled = (theirs - job.settle_lag).replace(microsecond=0)
    if settled >= cursor.end:
        return None
    lowered = max(settled, window.start, *([cursor.max_value] if cursor.max_value is not None else []))
    if lowered >= cursor.end:
        return None
    # HTTP dates have whole seconds: a clock in step with ours can read up to a second behind, said only at INFO
    level = logging.WARNING if cursor.end - lowered > timedelta(seconds=2) else logging.INFO
    logger.log(
        level,
        "Qualys' clock (%s) is behind ours: this window ends at Qualys' time minus the settle lag (%s, not %s); "
        "later records wait for the next window",
        theirs,
        lowered,
        cursor.end,
    )
    return lowered


def _complete(
    job: Job, checkpoint: Checkpoint, window: Window, cursor: BoundaryCursor, horizon: datetime | None
) -> Checkpoint:
    """The checkpoint once a window is complete.

    A window-mode, capped or backfill checkpoint is the window's end, but never later than Qualys' own
    clock when it answered (``horizon``): if Qualys runs behind us, what it timestamps next may still fall
    before our end. A record-mode checkpoint that reached that far keeps its boundary ids.
    """
    spec = job.spec
    if spec.mode is CursorMode.WINDOW or window.capped or job.backfill:
        end = window.end
        settled = None if horizon is None else (horizon - job.settle_lag).replace(microsecond=0)
        if settled is not None and settled < end:
            logger.warning(
                "Qualys' clock (%s) is behind the window end (%s); the next window starts from Qualys' time%s",
                horizon,
                end,
                f" minus the settle lag ({settled})" if job.settle_lag else "",
            )
            end = max(settled, checkpoint.value or settled)
        if spec.mode is CursorMode.RECORD and cursor.max_value is not None and cursor.max_value >= end:
            return replace(checkpoint, value=cursor.max_value, ids=tuple(sorted(cursor.max_ids)), window=None)
        return replace(checkpoint, value=end, ids=(), window=None)
    return replace(
        checkpoint,
        value=cursor.max_value if cursor.max_value is not None else checkpoint.value,
        ids=tuple(sorted(cursor.max_ids)),
        window=None,
    )


def apply_writes(tx: Transaction, page: Page) -> None:
    """The page's keyed-table writes, in order, inside the page's transaction."""
    for write in page.writes:
        table = tx.table(write.table)
        if isinstance(write, TablePrune):
            table.prune(write.below)
        elif write.value is None:
            table.delete(write.key)
        else:
            table.put(write.key, write.value, stamp=write.stamp)
