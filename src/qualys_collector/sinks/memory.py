"""A sink in memory whose ``handler`` decides what is confirmed (like httpx's ``MockTransport``).

For tests and tools, never configured as an output: ``MemorySink()`` confirms every batch;
``MemorySink(handler)`` calls ``handler(batch)``, which returns the :class:`Ack` (all, a prefix,
nothing with a reason) or raises, e.g. ``DeliveryError`` for a receiver that is down.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from qualys_collector.model import StoredEvent
from qualys_collector.sinks.base import Ack, Confirmation

Handler = Callable[[Sequence[StoredEvent]], Ack]


def accept_all(batch: Sequence[StoredEvent]) -> Ack:
    """The default handler: every batch is confirmed whole."""
    return Ack.all(batch)


class MemorySink:
    """Keeps every batch offered (:attr:`batches`) and every event confirmed (:attr:`events`)."""

    def __init__(
        self,
        handler: Handler = accept_all,
        *,
        name: str = "memory",
        confirmation: Confirmation = Confirmation.APPLICATION_ACK,
    ) -> None:
        self.name = name
        self.confirmation = confirmation
        self.handler = handler
        self.batches: list[list[StoredEvent]] = []
        self.events: list[StoredEvent] = []
        self.closed = False

    def deliver(self, batch: Sequence[StoredEvent]) -> Ack:
        """Offer ``batch`` to the handler; keep what it confirmed."""
        self.batches.append(list(batch))
        ack = self.handler(batch)
        self.events += [event for event in batch if ack.covers(event)]
        return ack

    def close(self) -> None:
        """Mark closed (the events stay readable)."""
        self.closed = True
