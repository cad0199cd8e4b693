"""Transports of the stream outputs: mutual TLS (Devo's relays) and plain TCP (a Devo In-House Relay).

Each opens one fresh connection per batch. The TLS context is the one Devo's SDK builds (the chain as the
trust anchors, our client certificate, TLS 1.2 at least) with one more bound: ``max_version``. It exists
because of a measurement: rsyslog's GnuTLS driver, under TLS 1.3, refuses a client certificate *after* the
handshake and then closes the connection the same way it closes after a good batch (no alert, no reset, no
``close_notify`` either way), so no rule on the wire can tell the two apart. Under TLS 1.2 the client
certificate is checked inside the handshake, and a refusal is a failed connect on every receiver tried.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
from pathlib import Path
from typing import Literal

from qualys_collector.errors import DeliveryError

#: Output-side error number for a receiver that cannot be reached (shared with ``sinks.stream``).
ERR_CONNECT = 403

TlsVersion = Literal["1.2", "1.3"]
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class SocketConnection:
    """One open connection over a (TLS or plain) socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock: socket.socket | None = sock

    @property
    def socket(self) -> socket.socket | None:
        """The socket (``ssl.SSLSocket`` for TLS), ``None`` once closed."""
        return self._sock

    def send(self, data: bytes) -> None:
        """Write all of ``data``."""
        if self._sock is None:
            raise OSError("the connection is closed")
        self._sock.sendall(data)

    def close(self) -> None:
        """Drop the connection (never raises)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


class TcpTransport:
    """Plain TCP: no encryption, no authentication (a relay on the customer's own network)."""

    def __init__(self, name: str, address: str, port: int, *, timeout: float = 30.0) -> None:
        self.name = name
        self.address = (address, port)
        self.timeout = timeout

    @property
    def endpoint(self) -> str:
        """``address:port``."""
        return f"{self.address[0]}:{self.address[1]}"

    def open_socket(self) -> socket.socket:
        """A connected TCP socket; ``DeliveryError`` 403 when the receiver cannot be reached."""
        try:
            return socket.create_connection(self.address, timeout=self.timeout)
        except OSError as exc:
            raise DeliveryError(
                f"output {self.name}: cannot connect to {self.endpoint} ({exc})",
                code=ERR_CONNECT,
                fix="check address, port and network access to the relay; events stay in the outbox",
            ) from exc

    def connect(self) -> SocketConnection:
        """A new TCP connection."""
        return SocketConnection(self.open_socket())

    def delivered(self, ok: bool) -> None:
        """Told after each batch whether the receiver confirmed it (plain TCP learns nothing from it)."""


class TlsTransport(TcpTransport):
    """Mutual TLS with our client certificate, the receiver verified against ``chain``.

    rsyslog's GnuTLS driver checks our certificate only after the handshake (in TLS 1.2 and 1.3) and, refusing
    it, just closes: no alert, and if it had read our lines, no reset either, exactly like its close after a
    good batch. So until the receiver has confirmed a batch on this output (and again after any failure), a
    new session first waits ``settle_seconds`` for such a close before sending anything.
    """

    def __init__(
        self,
        name: str,
        address: str,
        port: int,
        *,
        chain: Path,
        cert: Path,
        key: Path,
        verify_tls: bool = True,
        max_version: TlsVersion = "1.2",
        timeout: float = 30.0,
        settle_seconds: float = 0.5,
    ) -> None:
        super().__init__(name, address, port, timeout=timeout)
        self.chain, self.cert, self.key = chain, cert, key
        self.verify_tls = verify_tls
        self.max_version = max_version
        self.settle_seconds = settle_seconds
        self.accepted = False
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        """The output's client context: built once and reused by every batch's session (building one reads and
        parses the chain, certificate and key: ~2 % of the collector's CPU when it was built per batch), and
        built again after a failed handshake or an unconfirmed batch, so replaced certificate files are read."""
        if self._context is None:
            self._context = self.new_context()
        return self._context

    def new_context(self) -> ssl.SSLContext:
        """Devo SDK's client context, bounded to ``max_version``."""
        context = ssl.create_default_context(cafile=str(self.chain))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = _VERSIONS[self.max_version]
        context.check_hostname = self.verify_tls
        context.verify_mode = ssl.CERT_REQUIRED if self.verify_tls else ssl.CERT_NONE
        context.load_cert_chain(certfile=str(self.cert), keyfile=str(self.key))
        return context

    def connect(self) -> SocketConnection:
        """A fresh TLS session; a refused handshake is ``DeliveryError`` 403 naming the TLS reason.

        Ragged EOFs are not suppressed: the confirmation must tell a receiver's ``close_notify`` from a bare close.
        """
        context = self.context()
        sock = self.open_socket()
        try:
            tls = context.wrap_socket(sock, server_hostname=self.address[0], suppress_ragged_eofs=False)
            if not self.accepted:
                self.settle(tls)
            return SocketConnection(tls)
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            self._context = None
            reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else exc
            if isinstance(exc, TimeoutError):  # a relay that takes the connection and never answers: no certificate
                fix = (  # was looked at yet (review: the fix sent users to their certificates)
                    "the relay accepted the connection but did not answer the TLS handshake: check that the address "
                    "and port are the relay's TLS port and that it runs (a plain-TCP port, a stalled relay or a "
                    "firewall that drops packets does this); events stay in the outbox"
                )
            else:
                fix = (
                    "check that the certificate, key and chain are the ones Devo issued for this domain, "
                    "and the relay's address; events stay in the outbox"
                )
            raise DeliveryError(
                f"output {self.name}: the TLS handshake with {self.endpoint} failed ({reason})",
                code=ERR_CONNECT,
                fix=fix,
            ) from exc

    def settle(self, tls: ssl.SSLSocket) -> None:
        """Raise ``ssl.SSLError``/``OSError`` if the receiver ends the session within ``settle_seconds``."""
        ready, _, _ = select.select([tls], [], [], self.settle_seconds)
        if not ready:
            return
        tls.setblocking(False)
        try:
            while tls.recv(65536):
                pass  # nothing is expected from a syslog receiver; TLS 1.3 session tickets are read inside recv
            raise OSError("the receiver closed the session right after the handshake (it refuses our certificate?)")
        except ssl.SSLWantReadError:
            return
        except ssl.SSLEOFError as exc:
            raise OSError(
                "the receiver closed the session right after the handshake (it refuses our certificate?)"
            ) from exc
        finally:
            tls.setblocking(True)
            tls.settimeout(self.timeout)

    def delivered(self, ok: bool) -> None:
        """A confirmed batch shows the receiver accepts our certificate; a failure makes us look again (and read
        the certificate files again)."""
        self.accepted = ok
        if not ok:
            self._context = None
