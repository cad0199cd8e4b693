"""``type: devo_platform``: Devo's relay over mutual TLS, through Devo's own SDK (``devo-sdk``).

Three parts (see :mod:`qualys_collector.sinks.stream`): Devo's line framing (the SDK's own header,
``<14>Jan  1 00:00:00 HOST TAG: MESSAGE\\n``), the SDK's mutual-TLS connection, and our confirmation.
What we do not take from the SDK is its idea of "sent": a batch counts as delivered only when every
line was written, our end of the stream was closed, and the relay closed its end in turn (it has read
everything). The SDK's own ``close()`` swallows failures of that handshake, and its buffered path
empties the buffer even when a send failed, so neither is used: on any doubt the batch stays in the
outbox and is sent again.

This is the one module that imports ``devo`` (lazily: loading the configuration does not need it).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from qualys_collector.errors import DeliveryError
from qualys_collector.sinks.base import BuildContext, OutputBlock, OutputOptions, OutputType
from qualys_collector.sinks.stream import ERR_CONFIRM, ERR_CONNECT, CloseNotifyThenEof, LineFraming, StreamSink

logger = logging.getLogger("qualys_collector.sender")

#: Output-side error numbers (the seeds number only input errors).
ERR_CERT_FILE, ERR_CERT_KEY, ERR_CERT_CHAIN = 400, 401, 402
__all__ = ["ERR_CERT_CHAIN", "ERR_CERT_FILE", "ERR_CERT_KEY", "ERR_CONFIRM", "ERR_CONNECT", "DevoSink"]


class DevoOutputOptions(OutputOptions):
    """``type: devo_platform``: the seeds' Devo relay settings (files relative to ``certs/``)."""

    address: str = Field(min_length=1)
    port: int = Field(default=443, ge=1, le=65535)
    type: Literal["SSL"] = "SSL"
    chain: str = Field(min_length=1)
    cert: str = Field(min_length=1)
    key: str = Field(min_length=1)
    verify_tls: bool = True


class DevoOutput(OutputBlock):
    """An output of type ``devo_platform``."""

    type: Literal["devo_platform"]
    config: DevoOutputOptions


def certs_dir(config_path: Path | None) -> Path:
    """The seed layout keeps ``certs/`` beside ``config/``; else ``certs/`` beside the config file."""
    if config_path is None:
        return Path("certs")
    parent = config_path.resolve().parent
    return parent.parent / "certs" if parent.name == "config" else parent / "certs"


def devo_header(hostname: str) -> LineFraming:
    """Devo's line framing: the SDK's ``compose_mem`` header for each tag."""
    from devo.sender import Sender

    return LineFraming(lambda tag: Sender.compose_mem(tag, hostname=hostname).encode("utf-8"))


class SdkConnection:
    """A connection opened by the SDK's ``Sender``; its failures surface as ``OSError``."""

    def __init__(self, sender: Any) -> None:
        self.sender = sender

    @property
    def socket(self) -> socket.socket | None:
        """The SDK's TLS socket."""
        sock: socket.socket | None = self.sender.socket
        return sock

    def send(self, data: bytes) -> None:
        """The SDK's raw send (no framing of its own)."""
        from devo.sender import DevoSenderException

        try:
            self.sender.send_raw(data)
        except DevoSenderException as exc:
            raise OSError(str(exc)) from exc

    def close(self) -> None:
        """Close the socket without the SDK's ``close()`` (which would hide a failed handshake)."""
        sock = getattr(self.sender, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
            self.sender.socket = None


class DevoTlsTransport:
    """Mutual TLS to a Devo relay through the SDK (``SenderConfigSSL``), one connection per batch."""

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
    ) -> None:
        self.name = name
        self.address = (address, port)
        self.chain, self.cert, self.key = chain, cert, key
        self.verify_tls = verify_tls
        self.timeout = timeout

    @property
    def endpoint(self) -> str:
        """``address:port``."""
        return f"{self.address[0]}:{self.address[1]}"

    def connect(self) -> SdkConnection:
        """A fresh TLS session with our client certificate."""
        from devo.sender import DevoSenderException, Sender, SenderConfigSSL

        config = SenderConfigSSL(
            address=self.address,
            key=str(self.key),
            cert=str(self.cert),
            chain=str(self.chain),
            check_hostname=self.verify_tls,
            verify_mode=ssl.CERT_REQUIRED if self.verify_tls else ssl.CERT_NONE,
        )
        try:
            return SdkConnection(Sender(config=config, timeout=self.timeout, logger=logger))
        except DevoSenderException as exc:
            raise DeliveryError(
                f"output {self.name}: cannot connect to {self.endpoint} ({exc})",
                code=ERR_CONNECT,
                fix="check address, port and network access to the Devo relay; events stay in the outbox",
            ) from exc

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


class DevoSink(StreamSink):
    """Devo line framing x the SDK's mutual TLS x our close confirmation (certificates checked at build)."""

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
        transport = DevoTlsTransport(
            name, address, port, chain=chain, cert=cert, key=key, verify_tls=verify_tls, timeout=timeout
        )
        super().__init__(name, devo_header(hostname or socket.gethostname()), transport, CloseNotifyThenEof(timeout))
        self.address = transport.address
        if not verify_tls:
            logger.warning("Output %s: TLS verification of the Devo relay is OFF (verify_tls: false)", name)
        transport.check_files()

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


def build(name: str, output: DevoOutput, context: BuildContext) -> DevoSink:
    """The certificate files are checked here, before any connection (errors 400-402)."""
    return DevoSink.from_config(name, output.config, context.config_path)


OUTPUT = OutputType("devo_platform", DevoOutput, DevoOutputOptions, build)


def _pem_blocks(data: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [block + marker for block in data.split(marker) if b"-----BEGIN CERTIFICATE-----" in block]
