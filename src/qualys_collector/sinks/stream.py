"""Syslog over a byte stream, in three parts a new output can recombine: framing x transport x confirmation.

- a :class:`Framing` turns one event into the bytes of one message (Devo's line: ``<14>... TAG: MSG\\n``);
- a :class:`Transport` opens a fresh connection per batch (mutual TLS today; plain TCP is one more class);
- a :class:`Confirmer` decides, after the last byte, whether the receiver has the batch.

:class:`StreamSink` joins them: connect, write the framed batch in chunks, confirm, close. Nothing
counts as delivered unless the confirmer said so; on any doubt the batch stays in the outbox.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Protocol

from qualys_collector.errors import DeliveryError
from qualys_collector.model import StoredEvent
from qualys_collector.sinks.base import Ack, Confirmation
from qualys_collector.sinks.size import shorten

logger = logging.getLogger("qualys_collector.sender")

#: Output-side error numbers shared by every stream output (the seeds number only input errors).
ERR_CONFIRM = 404

#: Bytes written per ``send`` call, at most: the largest TLS record's plaintext. Each chunk holds whole messages
#: only, so every TLS record ends on a message boundary; a sender killed mid-batch leaves the receiver whole
#: lines and an undecryptable partial record, never a torn line (a receiver stores a torn line as an event).
#: Only a message longer than this still spans records.
CHUNK_BYTES = 16_384


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

    def delivered(self, ok: bool) -> None:
        """Told after each batch whether the confirmer confirmed it."""
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


class OctetCountingFraming:
    """RFC 5425 / RFC 6587 octet counting: ``MSG-LEN SP MSG`` (syslog-ng's ``syslog()`` source requires it).

    The message is the line framing's, without its trailing newline.
    """

    def __init__(self, lines: LineFraming) -> None:
        self.lines = lines

    def frame(self, event: StoredEvent) -> bytes:
        """``b"<length> <header><body>"``."""
        message = self.lines.frame(event)[:-1]
        return b"%d %s" % (len(message), message)


class CloseThenPeerEof:
    """Our close, then the receiver's clean close of the connection, with no fatal alert and no reset.

    What counts is what the receiver does after our last byte: we send our TLS ``close_notify`` (if TLS)
    and half-close the TCP connection, then read until the receiver closes. A clean close confirms the
    batch, whether or not the receiver sent its own ``close_notify`` (rsyslog's GnuTLS driver does not;
    Devo's SDK does not wait for it either). A TLS alert (a client certificate refused after a TLS 1.3
    handshake arrives this way), a reset, or no close within ``timeout`` seconds is no confirmation.

    ``unwrap()`` is not used: it needs the receiver's ``close_notify``, and CPython reports success
    when ``SSL_shutdown`` returned 0 twice, even after a fatal alert.

    One thing is learnt per output: a receiver that has once answered our close with its own
    ``close_notify`` (every OpenSSL-based one here: rsyslog ``ossl``, syslog-ng, HAProxy) must do so
    every time. Killed mid-batch, such a receiver's kernel closes the TCP connection cleanly, without
    ``close_notify``, after the process had read lines it never stored (measured: 110 lost of a
    batch with syslog-ng); that close is no confirmation.
    """

    kind = Confirmation.TRANSPORT_CLOSE

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.peer_sends_close_notify = False

    def confirm(self, connection: Connection) -> None:
        """Close our end, then wait for the receiver to close its end cleanly."""
        sock = connection.socket
        if sock is None:
            raise OSError("the connection was dropped")
        deadline = time.monotonic() + self.timeout
        if isinstance(sock, ssl.SSLSocket) and _send_close_notify(sock):
            self.peer_sends_close_notify = True  # it had closed its TLS session already, cleanly
        raw = socket.socket(fileno=sock.fileno())
        try:
            raw.shutdown(socket.SHUT_WR)  # our FIN: the receiver has everything we will ever send
        except OSError as exc:
            raise OSError(f"the receiver reset the connection before our close ({exc})") from exc
        finally:
            raw.detach()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError(f"the receiver did not close the connection within {self.timeout:g} s")
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError as exc:
                raise OSError(f"the receiver did not close the connection within {self.timeout:g} s") from exc
            except ssl.SSLEOFError as exc:
                if self.peer_sends_close_notify:
                    raise OSError(
                        "the receiver closed without the close_notify it sends after a complete session "
                        "(it may have stopped mid-batch)"
                    ) from exc
                return self._no_reset(sock, deadline)  # no close_notify: a clean TCP end all the same
            except ssl.SSLZeroReturnError:
                self.peer_sends_close_notify = True
                return
            except ssl.SSLError as exc:
                raise OSError(f"the receiver ended the session with a TLS alert ({_alert(exc)})") from exc
            except OSError as exc:
                raise OSError(f"the receiver reset the connection instead of confirming ({exc})") from exc
            if not data:
                if isinstance(sock, ssl.SSLSocket):  # ragged EOFs raise (see transport): this was close_notify
                    self.peer_sends_close_notify = True
                return self._no_reset(sock, deadline)

    def _no_reset(self, sock: socket.socket, deadline: float) -> None:
        """The receiver's TCP took every byte we sent, and no reset followed its close.

        A receiver that closes *before* reading our bytes (rsyslog's GnuTLS driver refusing a certificate it
        checks after the handshake) answers them with a reset that may arrive just after its FIN; the kernel
        hands us the FIN first. So the end counts only once nothing we sent is unacknowledged and no reset
        is pending.
        """
        while True:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(f"the receiver reset the connection after closing it ({os.strerror(error)})")
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
            if struct.unpack_from("I", info, 24)[0] == 0:  # tcpi_unacked
                return
            if time.monotonic() > deadline:
                raise OSError(f"the receiver did not acknowledge our last bytes within {self.timeout:g} s")
            time.sleep(0.005)


def _send_close_notify(sock: ssl.SSLSocket) -> bool:
    """Send our ``close_notify`` without waiting for the receiver's; True if the receiver's had arrived.

    Without it, OpenSSL receivers answer our bare TCP close with a ``decode_error`` alert.
    """
    sock.setblocking(False)
    try:
        sock.unwrap()  # the first SSL_shutdown sends close_notify; the second wants to read and cannot
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    except ssl.SSLEOFError:
        return False  # the receiver already closed: what it said is read below
    except ssl.SSLError as exc:
        raise OSError(f"the receiver ended the session with a TLS alert ({_alert(exc)})") from exc
    except OSError as exc:
        raise OSError(f"the receiver reset the connection before our close ({exc})") from exc
    finally:
        sock.setblocking(True)
    return True  # both close_notify exchanged (the socket is plain TCP now); the TCP end follows


def _alert(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc).lower().replace("_", " ")


class StreamSink:
    """Delivers each batch on a fresh connection and acknowledges it only once the confirmer agrees."""

    def __init__(
        self,
        name: str,
        framing: Framing,
        transport: Transport,
        confirmer: Confirmer,
        *,
        max_event_bytes: int | None = None,
    ) -> None:
        self.name = name
        self.max_event_bytes = max_event_bytes
        self.truncated_total = 0
        self.framing = framing
        self.transport = transport
        self.confirmer = confirmer
        self.confirmation = confirmer.kind
        self.sent_total = 0
        self.batches = 0

    def deliver(self, batch: Sequence[StoredEvent]) -> Ack:
        """Connect, write every message, confirm; the whole batch or nothing."""
        started = time.monotonic()
        try:
            connection = self.transport.connect()
        except DeliveryError:
            self.transport.delivered(False)
            raise
        try:
            for chunk in self.chunks(batch):
                connection.send(chunk)
            self.confirmer.confirm(connection)
        except (OSError, ValueError) as exc:
            self.transport.delivered(False)
            raise DeliveryError(
                f"output {self.name}: sending to {self.transport.endpoint} failed ({exc}); "
                f"the batch of {len(batch)} events stays in the outbox",
                code=ERR_CONFIRM,
            ) from exc
        finally:
            connection.close()
        self.transport.delivered(True)
        self.sent_total += len(batch)
        self.batches += 1
        logger.debug("Output %s: %d events confirmed in %.3f s", self.name, len(batch), time.monotonic() - started)
        return Ack.all(batch)

    def chunks(self, batch: Sequence[StoredEvent], size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The framed batch as chunks of whole messages, each at most ``size`` bytes (a longer message alone)."""
        parts: list[bytes] = []
        length = 0
        for event in batch:
            message = self.framing.frame(event)
            if self.max_event_bytes is not None and len(message) > self.max_event_bytes:
                message = self.shortened(event, message)
            if parts and length + len(message) > size:
                yield b"".join(parts)
                parts, length = [], 0
            parts.append(message)
            length += len(message)
        if parts:
            yield b"".join(parts)

    def shortened(self, event: StoredEvent, message: bytes) -> bytes:
        """``event``'s message within ``max_event_bytes``: its largest strings cut (see ``sinks.size``)."""
        assert self.max_event_bytes is not None
        overhead = len(message) - len(event.body.encode("utf-8"))
        try:
            body, cut = shorten(event.body, self.max_event_bytes - overhead)
        except ValueError as exc:
            raise DeliveryError(
                f"output {self.name}: event seq {event.seq} ({event.tag}) cannot be shortened to "
                f"max_event_bytes {self.max_event_bytes} ({exc}); it stays in the outbox",
                code=ERR_CONFIRM,
                fix="raise max_event_bytes (and the receiver's message size limit)",
            ) from None
        self.truncated_total += 1
        logger.warning(
            "Output %s: event seq %d (%s) was %d bytes, over max_event_bytes %d: shortened %s "
            "(original lengths in @truncated_fields; %d events shortened so far)",
            self.name,
            event.seq,
            event.tag,
            len(message),
            self.max_event_bytes,
            ", ".join(cut),
            self.truncated_total,
        )
        return self.framing.frame(replace(event, body=body))

    def close(self) -> None:
        """Nothing stays open between batches."""
