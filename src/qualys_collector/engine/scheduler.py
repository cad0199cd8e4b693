"""Runs each enabled service every ``request_period_in_seconds``, one thread per service.

A failed cycle is logged with its numbered error and leaves the checkpoint at the last committed
page; the service tries again after its period. A cycle that completed a capped window to its end
(``max_window_seconds``: the service is behind) is followed by the next window at once, not after a
period; the API budget every call goes through is what bounds that pace. A backfill's thread ends
when its range is complete. ``run_once`` runs one cycle of every job and reports which succeeded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from qualys_collector.engine import backfill as backfills
from qualys_collector.engine.cycle import CycleStats, Job, run_cycle
from qualys_collector.engine.outbox import Outbox
from qualys_collector.errors import CollectorError, StateError, StopRequested
from qualys_collector.model import utcnow

logger = logging.getLogger("qualys_collector.puller")


class CycleObserver(Protocol):
    """What the scheduler reports (one observer from the composition root; see ``observability.observer``)."""

    def page(self, job: Job, stats: CycleStats) -> None:
        """A page of ``job`` was committed."""

    def cycle(self, job: Job, stats: CycleStats | None) -> None:
        """A cycle of ``job`` ended; ``None`` when it failed."""


class Scheduler:
    """Owns the puller threads."""

    def __init__(
        self,
        jobs: list[Job],
        outbox: Outbox,
        *,
        stop: threading.Event,
        clock: Callable[[], datetime] = utcnow,
        paused: Callable[[], bool] | None = None,
        observer: CycleObserver | None = None,
        outbox_limit: int | None = None,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self.jobs = jobs
        self.outbox = outbox
        self.stop = stop
        self.clock = clock
        self.paused = paused or (lambda: False)
        self.observer = observer
        #: ``globals.outbox_max_bytes``: a cycle stops at the page that takes the outbox over it
        self.outbox_limit = outbox_limit
        #: The wait between cycles: ``stop.wait`` (True once stopped); tests pass their own to count them.
        self.wait = wait or stop.wait
        self.threads: list[threading.Thread] = []
        self.results: dict[str, CycleStats | None] = {}
        #: the state error that stopped the collector, if one did
        self.fatal: StateError | None = None

    def cycle(self, job: Job) -> CycleStats | None:
        """One cycle of ``job``; ``None`` when it failed (the error is logged)."""
        stats: CycleStats | None = None
        on_page = self.observer.page if self.observer is not None else None
        try:
            stats = run_cycle(
                job, self.outbox, clock=self.clock, stop=self.stop, on_page=on_page, outbox_limit=self.outbox_limit
            )
        except StopRequested as exc:
            logger.warning("%s", exc.message)
            logger.warning("The window stays open: the checkpoint stays at the last committed page")
        except StateError as exc:
            if exc.fatal:  # no later cycle can get past it: stop rather than fail every period for ever
                logger.error("%s. The collector stops until the state is repaired.", exc)
                self.fatal = exc
                self.stop.set()
            else:
                logger.error("%s. The checkpoint stays at the last committed page.", exc)
        except CollectorError as exc:
            logger.error("%s. The checkpoint stays at the last committed page.", exc)
        except Exception as exc:
            logger.error(
                "[CollectorError 900] Unexpected failure in %s: %s: %s; the checkpoint stays at the last committed "
                "page. Fix: this is a bug: report it with this log",
                job.label,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        if self.observer is not None:
            self.observer.cycle(job, stats)
        return stats

    def run_once(self, jobs: list[Job] | None = None) -> bool:
        """One cycle of every job (or of ``jobs``), concurrently. True when every job's last cycle completed."""
        threads = [
            threading.Thread(target=self._once, args=(job,), name=f"Puller({job.label})", daemon=True)
            for job in (self.jobs if jobs is None else jobs)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return all(s is not None and s.completed for s in self.results.values()) and len(self.results) == len(self.jobs)

    def _once(self, job: Job) -> None:
        self.results[job.label] = self.cycle(job)

    def stopped_for_room(self) -> list[Job]:
        """The jobs whose last cycle stopped at the outbox limit (their windows resume once there is room)."""
        return [job for job in self.jobs if (s := self.results.get(job.label)) is not None and s.outbox_full]

    def start(self) -> list[threading.Thread]:
        """Start one looping thread per job; they end when ``stop`` is set."""
        return [self.host(job) for job in self.jobs]

    def host(self, job: Job) -> threading.Thread:
        """Start the looping thread of one more job (a backfill requested while running); its source is closed
        when the loop ends (a backfill's parsing processes do not wait for the collector's exit)."""

        def run() -> None:
            try:
                self.loop(job)
            finally:
                close = getattr(job.source, "close", None)
                if close is not None:
                    close()

        thread = threading.Thread(target=run, name=f"Puller({job.label})", daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def host_backfills(self, build: Callable[[backfills.Backfill], Job | None], poll: float) -> None:
        """Until stopped, every ``poll`` seconds: each unfinished backfill of the state database not yet seen gets
        a thread of its own, with the job ``build`` makes of it (``None``: not one this collector can pull)."""
        seen: set[tuple[str, str, datetime, datetime]] = set()
        while True:
            try:
                for request in backfills.pending(self.outbox):
                    key = (request.input_id, request.service, request.start, request.end)
                    if key not in seen:
                        seen.add(key)
                        job = build(request)
                        if job is not None:
                            self.host(job)
            except CollectorError as exc:
                logger.error("%s. Backfill requests are looked for again in %.0f s.", exc, poll)
            if self.stop.wait(poll):
                return

    def loop(self, job: Job, *, retry: bool = True) -> CycleStats | None:
        """Cycles of ``job`` until ``stop`` (a backfill: until its range is complete); the last cycle's figures.

        A failed cycle is tried again after the period, or with ``retry=False`` ends the loop (``None``).
        """
        period = job.period.total_seconds()
        if job.backfill:
            logger.info("Starting the backfill up to %s, window after window", job.until)
        else:
            logger.info("Starting data collection every %d seconds", period)
        warned = False
        stats: CycleStats | None = None
        while not self.stop.is_set():
            if self.paused():
                if not warned:
                    logger.warning("The outbox is full: pulling is paused until outputs deliver (nothing is dropped)")
                    warned = True
                self.stop.wait(1.0)
                continue
            warned = False
            stats = self.cycle(job)
            if stats is None and not retry:
                return None
            if stats is not None and not stats.completed:
                continue  # interrupted by stop
            if stats is not None and stats.done and job.backfill:
                logger.info("Backfill complete: %s up to %s", job.spec.name, job.until)
                return stats
            if stats is not None and stats.behind:
                logger.info("The service is behind (a capped window reached its end): the next window follows now")
                continue
            self.wait(period)
        return stats
