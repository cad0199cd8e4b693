"""Runs each enabled service every ``request_period_in_seconds``, one thread per service.

A failed cycle is logged with its numbered error and leaves the checkpoint at the last committed
page; the service tries again after its period. ``run_once`` runs one cycle of every job and reports
which succeeded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

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
    ) -> None:
        self.jobs = jobs
        self.outbox = outbox
        self.stop = stop
        self.clock = clock
        self.paused = paused or (lambda: False)
        self.observer = observer
        #: ``globals.outbox_max_bytes``: a cycle stops at the page that takes the outbox over it
        self.outbox_limit = outbox_limit
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
        threads = []
        for job in self.jobs:
            thread = threading.Thread(target=self._loop, args=(job,), name=f"Puller({job.label})", daemon=True)
            thread.start()
            threads.append(thread)
        return threads

    def _loop(self, job: Job) -> None:
        period = job.period.total_seconds()
        logger.info("Starting data collection every %d seconds", period)
        warned = False
        while not self.stop.is_set():
            if self.paused():
                if not warned:
                    logger.warning("The outbox is full: pulling is paused until outputs deliver (nothing is dropped)")
                    warned = True
                self.stop.wait(1.0)
                continue
            warned = False
            stats = self.cycle(job)
            if stats is not None and not stats.completed:
                continue  # interrupted by stop
            self.stop.wait(period)
