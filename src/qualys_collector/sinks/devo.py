"""``type: devo_platform``: Devo's relay over mutual TLS (or plain TCP to a Devo In-House Relay).

Three parts (see :mod:`qualys_collector.sinks.stream`): Devo's line framing (the SDK's own header,
``<14>Jan  1 00:00:00 HOST TAG: MESSAGE\\n``), a fresh connection per batch
(:mod:`qualys_collector.sinks.transport`: mutual TLS with the SDK's settings, bounded to ``tls_max_version``),
and our confirmation: a batch counts as delivered only when every line was written, our end was closed, and
the relay then closed its end cleanly, with no TLS alert and no reset, within ``confirm_timeout_seconds``.
The relay's own ``close_notify`` is not required (rsyslog's GnuTLS driver never sends one; Devo's SDK does
not wait for it either). On any doubt the batch stays in the outbox and is sent again.

This is the one module that imports ``devo`` (lazily: loading the configuration does not need it).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from qualys_collector.errors import DeliveryError
from qualys_collector.sinks.base import BuildContext, OutputBlock, OutputOptions, OutputType
from qualys_collector.sinks.certcheck import chain_problem
from qualys_collector.sinks.size import SYSLOG_MAX_EVENT_BYTES
from qualys_collector.sinks.stream import (
    ERR_CONFIRM,
    CloseThenPeerEof,
    Framing,
    LineFraming,
    OctetCountingFraming,
    StreamSink,
)
from qualys_collector.sinks.transport import ERR_CONNECT, TcpTransport, TlsTransport, TlsVersion

logger = logging.getLogger("qualys_collector.sender")

#: Output-side error numbers (the seeds number only input errors).
ERR_CERT_FILE, ERR_CERT_KEY, ERR_CERT_CHAIN = 400, 401, 402
__all__ = ["ERR_CERT_CHAIN", "ERR_CERT_FILE", "ERR_CERT_KEY", "ERR_CONFIRM", "ERR_CONNECT", "DevoSink"]


class DevoOutputOptions(OutputOptions):
    """``type: devo_platform``: the seeds' Devo relay settings (files relative to ``certs/``).

    ``type: TCP`` is plain syslog to a Devo In-House Relay on the customer's network (no certificates).
    """

    address: str = Field(min_length=1)
    port: int = Field(default=443, ge=1, le=65535)
    type: Literal["SSL", "TCP"] = "SSL"
    chain: str | None = Field(default=None, min_length=1, validate_default=True)
    cert: str | None = Field(default=None, min_length=1, validate_default=True)
    key: str | None = Field(default=None, min_length=1, validate_default=True)
    verify_tls: bool = True
    #: TLS 1.3 lets rsyslog's GnuTLS driver refuse our certificate after the handshake, invisibly (see
    #: ``sinks.transport``); 1.2 makes every refusal a failed handshake.
    tls_max_version: TlsVersion = "1.2"
    confirm_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    #: ``lf``: one message per line (Devo's relays); ``octet-counting``: RFC 5425/6587 length prefixes.
    framing: Literal["lf", "octet-counting"] = "lf"
    #: A longer message has its largest string fields shortened (``@truncated_fields``), never split.
    max_event_bytes: int = Field(default=SYSLOG_MAX_EVENT_BYTES, ge=4096)

    @field_validator("chain", "cert", "key")
    @classmethod
    def _needed_for_tls(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("type", "SSL") == "SSL":  # a missing file name, as pydantic says it
            raise PydanticCustomError("missing", "is required for type SSL")
        return value


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


#: The header of Devo's SDK (``Sender.compose_mem`` with its defaults: facility user, severity info, the fixed
#: date the SDK sends): ``<14>Jan  1 00:00:00 HOST TAG: ``. Written here rather than imported, because importing
#: the SDK loads pyOpenSSL and cryptography (10 MB of every collector's memory) for one format string; a test
#: compares it with the SDK's own for every tag the collector sends.
DEVO_HEADER = "<14>Jan  1 00:00:00 {hostname} {tag}: "


def devo_header(hostname: str) -> LineFraming:
    """Devo's line framing: the SDK's header for each tag."""
    return LineFraming(lambda tag: DEVO_HEADER.format(hostname=hostname, tag=tag).encode("utf-8"))


class DevoSink(StreamSink):
    """Devo line framing x mutual TLS (or plain TCP) x our close confirmation (certificates checked at build)."""

    def __init__(
        self,
        name: str,
        address: str,
        port: int,
        *,
        chain: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        verify_tls: bool = True,
        timeout: float = 30.0,
        hostname: str | None = None,
        tls_max_version: TlsVersion = "1.2",
        plain_tcp: bool = False,
        framing: Literal["lf", "octet-counting"] = "lf",
        max_event_bytes: int | None = SYSLOG_MAX_EVENT_BYTES,
    ) -> None:
        transport: TcpTransport
        if plain_tcp:
            transport = TcpTransport(name, address, port, timeout=timeout)
            logger.warning(
                "Output %s: type TCP sends events UNENCRYPTED and unauthenticated to %s; use it only for a "
                "Devo In-House Relay on your own network",
                name,
                transport.endpoint,
            )
        else:
            if chain is None or cert is None or key is None:
                raise DeliveryError(
                    f"output {name}: type SSL needs chain, cert and key",
                    code=ERR_CERT_FILE,
                    fix="set outputs.<name>.config.chain, cert and key (or type: TCP for an In-House Relay)",
                )
            if not verify_tls:
                logger.warning("Output %s: TLS verification of the Devo relay is OFF (verify_tls: false)", name)
            check_files(name, chain, cert, key)
            transport = TlsTransport(
                name,
                address,
                port,
                chain=chain,
                cert=cert,
                key=key,
                verify_tls=verify_tls,
                max_version=tls_max_version,
                timeout=timeout,
            )
        lines = devo_header(hostname or socket.gethostname())
        framed: Framing = OctetCountingFraming(lines) if framing == "octet-counting" else lines
        super().__init__(name, framed, transport, CloseThenPeerEof(timeout), max_event_bytes=max_event_bytes)
        self.address = transport.address

    @classmethod
    def from_config(cls, name: str, options: DevoOutputOptions, config_path: Path | None) -> DevoSink:
        """A sink from ``outputs.<name>.config``; files are relative to the ``certs/`` directory."""
        base = certs_dir(config_path)

        def resolve(value: str | None) -> Path | None:
            if value is None:
                return None
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
            timeout=options.confirm_timeout_seconds,
            tls_max_version=options.tls_max_version,
            plain_tcp=options.type == "TCP",
            framing=options.framing,
            max_event_bytes=options.max_event_bytes,
        )


def check_files(name: str, chain: Path, cert: Path, key: Path) -> None:
    """Missing files, a key that does not match the certificate, a certificate not issued by the chain."""
    for label, path in (("chain", chain), ("cert", cert), ("key", key)):
        if not path.is_file():
            raise DeliveryError(
                f"output {name}: the {label} file {path} does not exist",
                code=ERR_CERT_FILE,
                fix="download the certificate, key and chain from Devo (Administration > Credentials > "
                "X.509 Certificates) into the certs/ directory",
            )
        try:
            path.open("rb").close()
        except OSError as exc:
            raise DeliveryError(
                f"output {name}: the {label} file {path} cannot be read by the collector (uid {os.getuid()}): "
                f"{exc.strerror}",
                code=ERR_CERT_FILE,
                fix="make it readable by the collector's user; for the container (uid 10001), on the host in the "
                "directory that holds certs/: sudo chown 10001 certs/* && sudo chmod 600 certs/*",
            ) from None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        raise DeliveryError(
            f"output {name}: the key {key.name} does not match the certificate {cert.name} ({exc.reason})",
            code=ERR_CERT_KEY,
            fix="use the key downloaded together with this certificate",
        ) from None
    problem = chain_problem(chain, cert)  # in a process of its own: pyOpenSSL stays out of the collector's memory
    if problem is not None and problem[0] == "chain":
        raise DeliveryError(
            f"output {name}: the certificate {cert.name} is not signed by the chain {chain.name} ({problem[1]})",
            code=ERR_CERT_CHAIN,
            fix="use the chain.crt of the same Devo domain as the certificate",
        )
    if problem is not None and problem[0] == "check":  # the files were not looked at: say so, not "cannot read"
        raise DeliveryError(
            f"output {name}: {problem[1]}",
            code=ERR_CERT_FILE,
            fix="run the collector as installed (pip install, the image), whose interpreter has pyOpenSSL and this "
            "package; the message above is what the check said",
        )
    if problem is not None:
        raise DeliveryError(f"output {name}: cannot read the certificate files ({problem[1]})", code=ERR_CERT_FILE)


def build(name: str, output: DevoOutput, context: BuildContext) -> DevoSink:
    """The certificate files are checked here, before any connection (errors 400-402)."""
    return DevoSink.from_config(name, output.config, context.config_path)


OUTPUT = OutputType("devo_platform", DevoOutput, DevoOutputOptions, build)
