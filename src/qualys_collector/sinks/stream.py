"""Syslog over a byte stream, in three parts a new output can recombine: framing x transport x confirmation.

- a :class:`Framing` turns one event into the bytes of one message (Devo's line: ``<14>... TAG: MSG\\n``);
- a :class:`Transport` opens a fresh connection per batch (mutual TLS today; plain TCP is one more class);
- a :class:`Confirmer` decides, after the last byte, whether the receiver has the batch.

:class:`StreamSink` joins them: connect, write the framed batch in chunks, confirm, close. Nothing
counts as delivered unless the confirmer said so; on any doubt the batch stays in the outbox.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from qualys_collector.errors import DeliveryError
from qualys_collector.model import StoredEvent
from qualys_collector.sinks.base import Ack, Confirmation

logger = logging.getLogger("qualys_collector.sender")

#: Output-side error numbers shared by every stream output (the seeds number only input errors).
ERR_CONNECT, ERR_CONFIRM = 403, 404

#: Bytes written per ``send`` call: the batch is joined into chunks of about this size.
CHUNK_BYTES = 1 << 20


class Framing(Protocol):
    """How one event becomes the bytes of one message on the stream."""

    def frame(self, event: StoredEvent) -> bytes:
        """The complete message for ``event``, delimiter or length prefix included."""
        ...


class Connection(Protocol):
    """One open connection of a transport."""

    @property
    def socket(self) -> socket.socket | None:
        """The socket (a ``ssl.SSLSocket`` for TLS), or ``None`` once dropped."""
        ...

    def send(self, data: bytes) -> None:
        """Write all of ``data``; raise ``OSError`` on failure."""
        ...

    def close(self) -> None:
        """Drop the connection (never raises)."""
        ...


class Transport(Protocol):
    """Opens connections to one receiver."""

    @property
    def endpoint(self) -> str:
        """``host:port``, for messages."""
        ...

    def connect(self) -> Connection:
        """A new connection; raise ``DeliveryError`` (``ERR_CONNECT``) when the receiver cannot be reached."""
        ...


class Confirmer(Protocol):
    """Decides whether the receiver has everything written on a connection."""

    kind: Confirmation

    def confirm(self, connection: Connection) -> None:
        """Return when the batch is confirmed; raise ``OSError`` saying why it is not."""
        ...


class LineFraming:
    """``header(tag) + body + "\\n"``: the syslog line Devo's relays read (one header per tag, cached)."""

    def __init__(self, header: Callable[[str], bytes]) -> None:
        self._header = header
        self._headers: dict[str, bytes] = {}

    def frame(self, event: StoredEvent) -> bytes:
        """One line; the body is JSON, so it holds no raw newline."""
        header = self._headers.get(event.tag)
        if header is None:
            header = self._headers[event.tag] = self._header(event.tag)
        return header + event.body.encode("utf-8") + b"\n"


class CloseNotifyThenEof:
    """Our TLS ``close_notify``, then the receiver's clean close of the TCP connection.

    ``unwrap()`` alone is no proof: CPython reports success when ``SSL_shutdown`` returned 0
    twice, without the relay's ``close_notify`` (seen with a relay that had refused our client
    certificate after a TLS 1.3 handshake). The proof is what follows on the wire: a relay that
    read everything answers our ``close_notify`` by closing (clean EOF); one that had dropped the
    session answers our bytes with a reset.
    """

    kind = Confirmation.TRANSPORT_CLOSE

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def confirm(self, connection: Connection) -> None:
        """Close the TLS session, then wait for the relay to close the TCP connection cleanly."""
        sock = connection.socket
        if not isinstance(sock, ssl.SSLSocket):
            raise OSError("the SDK dropped the connection")
        sock.setblocking(True)
        sock.settimeout(self.timeout)
        try:
            sock.unwrap()
        except (ssl.SSLError, OSError) as exc:
            raise OSError(f"the relay did not accept the end of the TLS session ({exc})") from exc
        raw = socket.socket(fileno=sock.fileno())
        raw.settimeout(self.timeout)
        try:
            while raw.recv(4096):
                pass  # anything the relay still sends before its FIN
        except TimeoutError as exc:
            raise OSError(f"the relay did not close the connection within {self.timeout:.0f} s") from exc
        except OSError as exc:
            raise OSError(f"the relay reset the connection instead of confirming ({exc})") from exc
        finally:
            raw.detach()


class StreamSink:
    """Delivers each batch on a fresh connection and acknowledges it only once the confirmer agrees."""

    def __init__(self, name: str, framing: Framing, transport: Transport, confirmer: Confirmer) -> None:
        self.name = name
        self.framing = framing
        self.transport = transport
        self.confirmer = confirmer
        self.confirmation = confirmer.kind
        self.sent_total = 0
        self.batches = 0

    def deliver(self, batch: Sequence[StoredEvent]) -> Ack:
        """Connect, write every message, confirm; the whole batch or nothing."""
        started = time.monotonic()
        connection = self.transport.connect()
        try:
            for chunk in self.chunks(batch):
                connection.send(chunk)
            self.confirmer.confirm(connection)
        except (OSError, ValueError) as exc:
            raise DeliveryError(
                f"output {self.name}: sending to {self.transport.endpoint} failed ({exc}); "
                f"the batch of {len(batch)} events stays in the outbox",
                code=ERR_CONFIRM,
            ) from exc
        finally:
            connection.close()
        self.sent_total += len(batch)
        self.batches += 1
        logger.debug("Output %s: %d events confirmed in %.3f s", self.name, len(batch), time.monotonic() - started)
        return Ack.all(batch)

    def chunks(self, batch: Sequence[StoredEvent], size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The framed batch, joined into chunks of about ``size`` bytes."""
        parts: list[bytes] = []
        length = 0
        for event in batch:
            message = self.framing.frame(event)
            parts.append(message)
            length += len(message)
            if length >= size:
                yield b"".join(parts)
                parts, length = [], 0
        if parts:
            yield b"".join(parts)

    def close(self) -> None:
        """Nothing stays open between batches."""
