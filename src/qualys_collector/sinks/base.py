"""The sink contract, and the part of the outbox a drain needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from qualys_collector.model import StoredEvent


class Sink(Protocol):
    """A destination. ``deliver`` returns only once every event given is confirmed delivered.

    On any failure it raises :class:`~qualys_collector.errors.DeliveryError`; the caller then keeps the
    events in the outbox and tries again later.
    """

    name: str

    def deliver(self, events: Sequence[StoredEvent]) -> None:
        """Deliver ``events`` in order, or raise ``DeliveryError``."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


class OutboxReader(Protocol):
    """What a drain needs from the outbox."""

    def read(self, output: str, limit: int) -> list[StoredEvent]:
        """Events not yet acknowledged by ``output``, oldest first."""
        ...

    def ack(self, output: str, upto_seq: int) -> None:
        """Record that ``output`` delivered everything up to ``upto_seq``."""
        ...

    def pending(self, output: str | None = None) -> int:
        """How many events ``output`` has not acknowledged."""
        ...


def envelope(event: StoredEvent) -> str:
    """One JSON Lines record: ``{"tag": "<devo tag>", "event": {...}}`` (the body is already JSON)."""
    tag = event.tag.replace("\\", "\\\\").replace('"', '\\"')
    return f'{{"tag":"{tag}","event":{event.body}}}\n'
