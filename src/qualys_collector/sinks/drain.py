"""Move events from the outbox to one sink, oldest first, acknowledging only what the sink confirmed.

This is the one delivery retry loop: :meth:`Drainer.run` retries a failed batch with doubling
backoff, for ever (``run_forever``'s senders) or for a bounded number of ``attempts`` (``run --once``);
a receiver's ``Retry-After`` (``DeliveryError.retry_after``) lengthens the wait, never shortens it.

Duplicates are bounded: a batch that was written but not confirmed (error 404: the relay may hold it) is
not simply sent again. First the sink must confirm an empty session (``deliver([])``, which writes no
event); only then is the batch re-sent, at most ``resend_limit`` times. A relay that never confirms (it
holds the connection open, or answers every close with an alert) thus gets at most one batch of extra
copies: after ``probe_limit`` unconfirmed probes, or a re-sent batch unconfirmed again, the output stops
(error 408, logged once, ``/readyz`` not ready with the reason, the ``output_halted`` gauge); the events
stay in the outbox and pulling goes on. A restart resumes delivery.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from qualys_collector.errors import DeliveryError
from qualys_collector.sinks.base import OutboxReader, Sink
from qualys_collector.sinks.stream import ERR_CONFIRM

logger = logging.getLogger("qualys_collector.sender")
#: The fix of an output that misbehaved (a bug in it, or in the collector).
UNEXPECTED_FIX = "nothing was lost: the events stay in the outbox and are sent again; if it repeats, report it"

#: The output stopped re-sending a batch the relay would not confirm.
ERR_HALTED = 408
#: A batch also ends before the event that would take its events' JSON past this many bytes (it holds at least
#: one event), so a batch's memory (bodies, framed lines, an HTTP body) follows this bound, not 1,000 events.
BATCH_BYTES = 4 << 20


class DeliveryObserver(Protocol):
    """What a drainer reports (one observer from the composition root; see ``observability.observer``)."""

    def delivery(self, output: str, count: int, ok: bool) -> None:
        """A batch of ``count`` events was confirmed by ``output`` (``ok``) or not."""

    def delivery_halted(self, output: str, reason: str) -> None:
        """``output`` stopped delivering (its events stay in the outbox) for ``reason``."""


@dataclass
class DrainStats:
    """Totals for the seed's sender statistics line."""

    total_sent: int = 0
    since_sent: int = 0
    since: float = field(default_factory=time.time)
    failures: int = 0


class Drainer:
    """Drains the outbox into ``sink``; never acknowledges what the sink did not confirm."""

    def __init__(
        self,
        outbox: OutboxReader,
        sink: Sink,
        *,
        batch_size: int = 1000,
        batch_bytes: int = BATCH_BYTES,
        max_backoff: float = 60.0,
        observer: DeliveryObserver | None = None,
        resend_limit: int = 1,
        probe_limit: int = 5,
    ) -> None:
        self.outbox = outbox
        self.sink = sink
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.max_backoff = max_backoff
        self.stats = DrainStats()
        self.last_error: DeliveryError | None = None
        self.observer = observer
        self.backoff_start = 1.0
        self.resend_limit = resend_limit
        self.probe_limit = probe_limit
        self.halted: DeliveryError | None = None
        self._unconfirmed = 0  # times in a row the oldest batch was written and not confirmed
        self._probes = 0  # unconfirmed empty sessions since then

    def drain_once(self) -> int:
        """Deliver one batch. Returns how many events were confirmed (0 when the outbox is empty).

        A sink that confirmed a prefix has that prefix acknowledged, then its reason for the rest is
        raised; a sink that confirmed nothing of a non-empty batch without saying why is a failure too.
        """
        batch = self.outbox.read(self.sink.name, self.batch_size, self.batch_bytes)
        if not batch:
            return 0
        try:
            ack = self.sink.deliver(batch)
        except DeliveryError:
            self._report(len(batch), ok=False)
            raise
        if ack.upto_seq is not None and ack.upto_seq > batch[-1].seq:
            self._report(len(batch), ok=False)
            raise DeliveryError(
                f"output {self.sink.name}: acknowledged seq {ack.upto_seq}, beyond its batch "
                f"(last seq {batch[-1].seq}); nothing is taken as delivered",
                fix=UNEXPECTED_FIX,
            )
        confirmed = ack.confirmed(batch)
        if confirmed:
            assert ack.upto_seq is not None
            self.outbox.ack(self.sink.name, ack.upto_seq)
            self._report(confirmed, ok=True)
            self.stats.total_sent += confirmed
            self.stats.since_sent += confirmed
            self.last_error = None
        if ack.error is not None or confirmed == 0:
            if confirmed < len(batch):
                self._report(len(batch) - confirmed, ok=False)
            raise ack.error or DeliveryError(
                f"output {self.sink.name}: confirmed none of {len(batch)} events; they stay in the outbox",
                fix="check the output's receiver; the batch is sent again",
            )
        return confirmed

    def attempt(self) -> int:
        """One step of the loop: :meth:`drain_once`, preceded by an empty probe after an unconfirmed batch."""
        if self._unconfirmed:
            try:
                self.sink.deliver([])
            except DeliveryError as exc:
                if exc.code == ERR_CONFIRM:
                    self._probes += 1
                    if self._probes >= self.probe_limit:
                        self._halt(exc, f"{self._probes} empty sessions in a row were not confirmed either")
                raise
            self._probes = 0
        try:
            sent = self.drain_once()
        except DeliveryError as exc:
            if exc.code == ERR_CONFIRM:
                self._unconfirmed += 1
                if self._unconfirmed > self.resend_limit:
                    self._halt(exc, f"the batch was written {self._unconfirmed} times and never confirmed")
            raise
        if sent:
            self._unconfirmed = self._probes = 0
        return sent

    def _halt(self, cause: DeliveryError, why: str) -> None:
        pending = self.outbox.pending(self.sink.name)
        self.halted = DeliveryError(
            f"output {self.sink.name}: delivery stopped: {why} (last: {cause}); re-sending would only add "
            f"copies at the relay, so the {pending} pending events stay in the outbox and pulling goes on",
            code=ERR_HALTED,
            fix="check the relay (it must close the connection after ours: no held-open connections, no TLS "
            "alerts; see README, Devo delivery) or raise confirm_timeout_seconds, then restart the collector",
        )
        logger.error("%s", self.halted)
        if self.observer is not None:
            self.observer.delivery_halted(self.sink.name, why)

    def _report(self, count: int, *, ok: bool) -> None:
        if self.observer is not None:
            self.observer.delivery(self.sink.name, count, ok)

    def run(
        self,
        stop: threading.Event,
        *,
        idle: float = 0.5,
        until_empty: bool = False,
        attempts: int | None = None,
    ) -> bool:
        """Drain until ``stop`` is set (or, with ``until_empty``, until nothing is pending).

        A failed batch is retried after a doubling backoff (``backoff_start`` .. ``max_backoff``, reset by
        a success). With ``attempts`` (``run --once``), the loop drains until nothing is pending or gives up
        after that many failures and returns False, the events staying in the outbox for the next run;
        ``stop`` then only cuts its waits short. Returns True when it ended without giving up.
        """
        backoff = self.backoff_start
        failures = 0
        until_empty = until_empty or attempts is not None
        while attempts is not None or not stop.is_set():
            if self.halted is not None:
                return False
            try:
                sent = self.attempt()
            except Exception as exc:  # a sender must never die: the batch stays, we retry
                failures += 1
                self.stats.failures += 1
                if isinstance(exc, DeliveryError):
                    self.last_error = exc
                    message = str(exc)
                else:
                    self.last_error = DeliveryError(
                        f"output {self.sink.name}: unexpected {type(exc).__name__}: {exc}", fix=UNEXPECTED_FIX
                    )
                    logger.exception("Output %s failed unexpectedly; the batch stays in the outbox", self.sink.name)
                    message = str(self.last_error)
                if self.halted is not None:
                    return False
                if attempts is not None and failures >= attempts:
                    logger.error("%s (attempt %d of %d); the events stay in the outbox", message, failures, attempts)
                    return False
                counted = f" (attempt {failures} of {attempts})" if attempts is not None else ""
                wait = max(backoff, self.last_error.retry_after or 0.0)  # the receiver's Retry-After, if longer
                logger.error("%s; retrying in %.0f s%s", message, wait, counted)
                stop.wait(wait)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = self.backoff_start
            if sent == 0:
                if until_empty:
                    return True
                stop.wait(idle)
        return True

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
