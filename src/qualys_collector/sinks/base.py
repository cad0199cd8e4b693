"""The sink contract: what an output confirmed, how it confirms, and what it needs to be built.

A sink's ``deliver(batch)`` returns an :class:`Ack`: the highest sequence number the destination
confirmed. A sink may confirm a prefix of the batch (an HTTP output whose third request failed
confirms the first two); the drain then forgets exactly that prefix and offers the rest again.
Each sink declares its :class:`Confirmation` kind, so "delivered" always means something stated.

An output type (``outputs.<name>.type``) is one module in this package that owns its options model
and a builder (:class:`OutputType`); :mod:`qualys_collector.sinks.registry` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from qualys_collector.errors import DeliveryError
from qualys_collector.model import StoredEvent


class Confirmation(StrEnum):
    """What makes a batch count as delivered, per sink."""

    APPLICATION_ACK = "application acknowledgement"  # the receiver said so (HTTP 2xx, RELP)
    TRANSPORT_CLOSE = "transport close"  # every byte written, our close, then the peer's clean close
    FSYNC = "fsync"  # written and fsynced to a local file
    NONE = "none"  # written and flushed; nothing can confirm more (standard output)


@dataclass(frozen=True)
class Ack:
    """What a sink confirmed of a batch: everything up to ``upto_seq`` (``None``: nothing).

    ``error`` says why the rest of the batch was not confirmed, when a sink confirmed only a prefix:
    the drain forgets the prefix, then treats the error as a failed delivery (logged, retried later).
    """

    upto_seq: int | None
    error: DeliveryError | None = None

    @classmethod
    def all(cls, batch: Sequence[StoredEvent]) -> Ack:
        """The whole batch is confirmed (an empty batch confirms nothing, and is no failure)."""
        return cls(batch[-1].seq if batch else None)

    @classmethod
    def nothing(cls, error: DeliveryError | None = None) -> Ack:
        """Nothing of the batch is confirmed."""
        return cls(None, error)

    def covers(self, event: StoredEvent) -> bool:
        """Whether ``event`` is confirmed by this acknowledgement."""
        return self.upto_seq is not None and event.seq <= self.upto_seq

    def confirmed(self, batch: Sequence[StoredEvent]) -> int:
        """How many events of ``batch`` (in outbox order) this acknowledgement confirms."""
        return sum(1 for event in batch if self.covers(event))


class Sink(Protocol):
    """A destination: ``deliver`` returns what the destination confirmed, or raises ``DeliveryError``.

    On an exception nothing of the batch counts as confirmed; the events stay in the outbox and are
    offered again later. ``deliver([])`` is the start-up probe: connect and confirm, send nothing.
    """

    name: str
    confirmation: Confirmation

    def deliver(self, batch: Sequence[StoredEvent]) -> Ack:
        """Deliver ``batch`` in order; return what was confirmed, or raise ``DeliveryError``."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


class OutboxReader(Protocol):
    """What a drain needs from the outbox."""

    def read(self, output: str, limit: int, max_bytes: int | None = None) -> list[StoredEvent]:
        """Events not yet acknowledged by ``output``, oldest first: at most ``limit``, and (with ``max_bytes``)
        no more bytes of JSON than that unless one event alone is larger."""
        ...

    def ack(self, output: str, upto_seq: int) -> None:
        """Record that ``output`` delivered everything up to ``upto_seq``."""
        ...

    def pending(self, output: str | None = None) -> int:
        """How many events ``output`` has not acknowledged."""
        ...


class OutputOptions(BaseModel):
    """Base of every output's options: unknown keys are errors (as everywhere in the configuration)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


#: Events per delivery batch unless ``outputs.<name>.batch_size`` says otherwise.
DEFAULT_BATCH_SIZE = 1000


class OutputBlock(OutputOptions):
    """One ``outputs.<name>`` block: ``type``, its ``config``, and ``batch_size`` (events per delivery batch: the
    bound on copies re-sent after a batch written but not confirmed).

    Each output type narrows ``type`` to its literal and adds ``config``. ``batch_size`` is the events read from
    the outbox per delivery batch. A batch is acknowledged whole or not at all, so it is also the duplicate
    bound: a batch written but not confirmed is re-sent at most once, at most ``batch_size`` copies. Larger
    batches mean fewer sessions (one TLS handshake each) per event.
    """

    type: str
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=100_000)


@dataclass(frozen=True)
class BuildContext:
    """What a builder may use besides its own options: the state directory and the config file's path."""

    state_dir: Path
    config_path: Path | None = None


@dataclass(frozen=True)
class OutputType:
    """One ``outputs.<name>.type``: its block model (``type`` + ``config``), options model and builder."""

    name: str
    block: type[OutputBlock]
    options: type[OutputOptions]
    build: Callable[[str, Any, BuildContext], Sink]


def envelope(event: StoredEvent) -> str:
    """One JSON Lines record: ``{"tag": "<devo tag>", "event": {...}}`` (the body is already JSON)."""
    tag = event.tag.replace("\\", "\\\\").replace('"', '\\"')
    return f'{{"tag":"{tag}","event":{event.body}}}\n'


def json_lines(batch: Sequence[StoredEvent]) -> str:
    """A batch as the JSON Lines the file and stdout outputs write: one :func:`envelope` per event."""
    return "".join(envelope(event) for event in batch)
