"""``type: devo_platform``: Devo's relay over mutual TLS, through Devo's own SDK (``devo-sdk``).

The SDK speaks Devo's wire format (``<14>Jan  1 00:00:00 HOST TAG: MESSAGE\\n``). What we do not take
from it is its idea of "sent": a batch counts as delivered only when every line was written, our end
of the stream was closed, and the relay closed its end in turn (it has read everything). The SDK's
own ``close()`` swallows failures of that handshake, and its buffered path empties the buffer even
when a send failed, so neither is used: on any doubt the batch stays in the outbox and is sent again.

This is the one module that imports ``devo``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devo.sender import DevoSenderException, Sender, SenderConfigSSL

from qualys_collector.config.schema import DevoOutputOptions
from qualys_collector.errors import DeliveryError
from qualys_collector.model import StoredEvent

logger = logging.getLogger("qualys_collector.sender")

#: Output-side error numbers (the seeds number only input errors).
ERR_CERT_FILE, ERR_CERT_KEY, ERR_CERT_CHAIN, ERR_CONNECT, ERR_CONFIRM = 400, 401, 402, 403, 404


def certs_dir(config_path: Path | None) -> Path:
    """The seed layout keeps ``certs/`` beside ``config/``; else ``certs/`` beside the config file."""
    if config_path is None:
        return Path("certs")
    parent = config_path.resolve().parent
    return parent.parent / "certs" if parent.name == "config" else parent / "certs"


class DevoSink:
    """Delivers outbox batches to a Devo relay and confirms each batch before acknowledging it."""

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
        timeout: float = 30.0,
        hostname: str | None = None,
    ) -> None:
        self.name = name
        self.address = (address, port)
        self.chain, self.cert, self.key = chain, cert, key
        self.verify_tls = verify_tls
        self.timeout = timeout
        self.hostname = hostname or socket.gethostname()
        self.sent_total = 0
        self.batches = 0
        if not verify_tls:
            logger.warning("Output %s: TLS verification of the Devo relay is OFF (verify_tls: false)", name)
        self.check_files()

    @classmethod
    def from_config(cls, name: str, options: DevoOutputOptions, config_path: Path | None) -> DevoSink:
        """A sink from ``outputs.<name>.config``; files are relative to the ``certs/`` directory."""
        base = certs_dir(config_path)

        def resolve(value: str) -> Path:
            path = Path(value)
            return path if path.is_absolute() else base / path

        return cls(
            name,
            options.address,
            options.port,
            chain=resolve(options.chain),
            cert=resolve(options.cert),
            key=resolve(options.key),
            verify_tls=options.verify_tls,
        )

    def check_files(self) -> None:
        """Missing files, a key that does not match the certificate, a certificate not issued by the chain."""
        for label, path in (("chain", self.chain), ("cert", self.cert), ("key", self.key)):
            if not path.is_file():
                raise DeliveryError(
                    f"output {self.name}: the {label} file {path} does not exist",
                    code=ERR_CERT_FILE,
                    fix="download the certificate, key and chain from Devo (Administration > Credentials > "
                    "X.509 Certificates) into the certs/ directory",
                )
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        try:
            context.load_cert_chain(certfile=str(self.cert), keyfile=str(self.key))
        except ssl.SSLError as exc:
            raise DeliveryError(
                f"output {self.name}: the key {self.key.name} does not match the certificate {self.cert.name} "
                f"({exc.reason})",
                code=ERR_CERT_KEY,
                fix="use the key downloaded together with this certificate",
            ) from None
        try:
            from OpenSSL import crypto  # pyOpenSSL comes with devo-sdk

            store = crypto.X509Store()
            for pem in _pem_blocks(self.chain.read_bytes()):
                store.add_cert(crypto.load_certificate(crypto.FILETYPE_PEM, pem))
            leaf = crypto.load_certificate(crypto.FILETYPE_PEM, self.cert.read_bytes())
            crypto.X509StoreContext(store, leaf).verify_certificate()
        except crypto.X509StoreContextError as exc:
            raise DeliveryError(
                f"output {self.name}: the certificate {self.cert.name} is not signed by the chain "
                f"{self.chain.name} ({exc})",
                code=ERR_CERT_CHAIN,
                fix="use the chain.crt of the same Devo domain as the certificate",
            ) from None
        except crypto.Error as exc:
            raise DeliveryError(
                f"output {self.name}: cannot read the certificate files ({exc})", code=ERR_CERT_FILE
            ) from None

    def _connect(self) -> Sender:
        config = SenderConfigSSL(
            address=self.address,
            key=str(self.key),
            cert=str(self.cert),
            chain=str(self.chain),
            check_hostname=self.verify_tls,
            verify_mode=ssl.CERT_REQUIRED if self.verify_tls else ssl.CERT_NONE,
        )
        try:
            return Sender(config=config, timeout=self.timeout, logger=logger)
        except DevoSenderException as exc:
            raise DeliveryError(
                f"output {self.name}: cannot connect to {self.address[0]}:{self.address[1]} ({exc})",
                code=ERR_CONNECT,
                fix="check address, port and network access to the Devo relay; events stay in the outbox",
            ) from exc

    def deliver(self, events: Sequence[StoredEvent]) -> None:
        """Send the batch on a fresh connection and confirm it by a clean close from the relay."""
        started = time.monotonic()
        sender = self._connect()
        try:
            for chunk in self._chunks(events):
                sender.send_raw(chunk)
            self._confirm(sender)
        except (DevoSenderException, OSError, ValueError) as exc:
            raise DeliveryError(
                f"output {self.name}: sending to {self.address[0]}:{self.address[1]} failed ({exc}); "
                f"the batch of {len(events)} events stays in the outbox",
                code=ERR_CONFIRM,
            ) from exc
        finally:
            _discard(sender)
        self.sent_total += len(events)
        self.batches += 1
        logger.debug("Output %s: %d events confirmed in %.3f s", self.name, len(events), time.monotonic() - started)

    def _chunks(self, events: Sequence[StoredEvent], size: int = 1 << 20) -> list[bytes]:
        """The batch as Devo lines (the SDK's own header), joined into chunks of about ``size`` bytes."""
        headers: dict[str, bytes] = {}
        chunks: list[bytes] = []
        parts: list[bytes] = []
        length = 0
        for event in events:
            header = headers.get(event.tag)
            if header is None:
                header = headers[event.tag] = Sender.compose_mem(event.tag, hostname=self.hostname).encode("utf-8")
            line = header + event.body.encode("utf-8") + b"\n"
            parts.append(line)
            length += len(line)
            if length >= size:
                chunks.append(b"".join(parts))
                parts, length = [], 0
        if parts:
            chunks.append(b"".join(parts))
        return chunks

    def _confirm(self, sender: Sender) -> None:
        """Close the TLS session, then wait for the relay to close the TCP connection cleanly.

        ``unwrap()`` alone is no proof: CPython reports success when ``SSL_shutdown`` returned 0
        twice, without the relay's ``close_notify`` (seen with a relay that had refused our client
        certificate after a TLS 1.3 handshake). The proof is what follows on the wire: a relay that
        read everything answers our ``close_notify`` by closing (clean EOF); one that had dropped the
        session answers our bytes with a reset.
        """
        sock: Any = sender.socket
        if sock is None:
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

    def close(self) -> None:
        """Nothing stays open between batches."""


def _discard(sender: Sender) -> None:
    sock = getattr(sender, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
        sender.socket = None


def _pem_blocks(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [block + marker for block in data.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]
