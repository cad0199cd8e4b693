"""Move events from the outbox to one sink, oldest first, acknowledging only confirmed batches."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from qualys_collector.errors import DeliveryError
from qualys_collector.sinks.base import OutboxReader, Sink

logger = logging.getLogger("qualys_collector.sender")


class DeliveryObserver(Protocol):
    """What a drainer reports (one observer from the composition root; see ``observability.observer``)."""

    def delivery(self, output: str, count: int, ok: bool) -> None:
        """A batch of ``count`` events was confirmed by ``output`` (``ok``) or not."""


@dataclass
class DrainStats:
    """Totals for the seed's sender statistics line."""

    total_sent: int = 0
    since_sent: int = 0
    since: float = field(default_factory=time.time)
    failures: int = 0


class Drainer:
    """Drains the outbox into ``sink``; never acknowledges a batch the sink did not confirm."""

    def __init__(
        self,
        outbox: OutboxReader,
        sink: Sink,
        *,
        batch_size: int = 1000,
        max_backoff: float = 60.0,
        observer: DeliveryObserver | None = None,
    ) -> None:
        self.outbox = outbox
        self.sink = sink
        self.batch_size = batch_size
        self.max_backoff = max_backoff
        self.stats = DrainStats()
        self.last_error: DeliveryError | None = None
        self.observer = observer
        self.backoff_start = 1.0

    def drain_once(self) -> int:
        """Deliver one batch. Returns how many events were confirmed (0 when the outbox is empty)."""
        batch = self.outbox.read(self.sink.name, self.batch_size)
        if not batch:
            return 0
        try:
            self.sink.deliver(batch)
        except DeliveryError:
            if self.observer is not None:
                self.observer.delivery(self.sink.name, len(batch), False)
            raise
        self.outbox.ack(self.sink.name, batch[-1].seq)
        if self.observer is not None:
            self.observer.delivery(self.sink.name, len(batch), True)
        self.stats.total_sent += len(batch)
        self.stats.since_sent += len(batch)
        self.last_error = None
        return len(batch)

    def run(self, stop: threading.Event, *, idle: float = 0.5, until_empty: bool = False) -> None:
        """Drain until ``stop`` is set (or, with ``until_empty``, until nothing is pending)."""
        backoff = self.backoff_start
        while not stop.is_set():
            try:
                sent = self.drain_once()
            except DeliveryError as exc:
                self.stats.failures += 1
                self.last_error = exc
                logger.error("%s; retrying in %.0f s", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            except Exception as exc:  # a sender thread must never die: the batch stays, we retry
                self.stats.failures += 1
                self.last_error = DeliveryError(f"output {self.sink.name}: unexpected {type(exc).__name__}: {exc}")
                logger.exception("Output %s failed unexpectedly; the batch stays in the outbox", self.sink.name)
                stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = self.backoff_start
            if sent == 0:
                if until_empty:
                    return
                stop.wait(idle)

    def statistics_line(self) -> str:
        """The seed's sender statistics line; resets the "since" counter."""
        now = time.time()
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.stats.since))
        line = (
            f"Standard - Total number of messages sent: {self.stats.total_sent}, messages sent since "
            f'"{since}+00:00": {self.stats.since_sent} (elapsed {now - self.stats.since:.3f} seconds)'
        )
        self.stats.since, self.stats.since_sent = now, 0
        return line
