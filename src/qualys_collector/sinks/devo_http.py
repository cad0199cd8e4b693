"""``type: devo_http``: Devo's HTTP ingestion API in stream mode, acknowledged by Devo itself (HTTP 2xx).

What Devo documents (Devo Docs, "HTTP endpoint", devodocs.atlassian.net/wiki/spaces/latest/pages/94658823
and its earlier versions, read in December 2026):

- URL: ``<endpoint>/<mode>/<domain>/token!<token>/<host>/<tag>``; ``mode`` is ``event`` (one event per request,
  in the query string) or ``stream`` (many events in the body of a POST; ``Content-Encoding: gzip`` accepted).
  We use ``stream``: one POST per run of events with the same tag, one event per line.
- Endpoints per Devo Cloud region: US ``https://http-us.devo.io``, US3 ``https://http-us3.devo.io``, Europe
  ``https://http-eu.devo.io``, Canada ``https://http-ca.devo.io``, APAC ``https://collector-ap.devo.io:8443``
  (Singapore) and ``https://collector-ap2.devo.io:8443`` (Sydney). ``region:`` picks one, ``endpoint:`` any URL.
- The token is generated in Devo (Administration > Credentials > Tokens), "a 32-character alphanumeric string".
- "a limit of 32 MB when you use this sending method": ``max_request_bytes`` (default and maximum 32 MiB) bounds
  the body *before* compression, so a request is under the limit however Devo counts it.
- Response codes: 2xx "upon receiving a request, and this does not mean the request is completed yet"
  (``/stream`` answers 200 OK). A 2xx is therefore Devo's receipt, the one application-level
  acknowledgement Devo offers; it is what this output takes as delivered.

Our reading of the other statuses (Devo documents no table): 429, 5xx, timeouts and cut connections are
retried by the drain's one retry loop, which honours ``Retry-After``; any other 4xx (401/403 a wrong or revoked
token, 404 a wrong endpoint or domain, 413 a body too large) is error 420 naming the status and the fix, the
events staying in the outbox. The token is part of the URL path, so no URL is ever printed unmasked: every
message uses :meth:`DevoHttpSink.shown_url` (``token!***``), and the token is registered for log masking.
"""

from __future__ import annotations

import email.utils
import logging
import socket
import ssl
import time
import zlib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr, model_validator

from qualys_collector import __version__
from qualys_collector.errors import DeliveryError
from qualys_collector.model import StoredEvent
from qualys_collector.redact import register_secret, scrub
from qualys_collector.sinks.base import Ack, BuildContext, Confirmation, OutputBlock, OutputOptions, OutputType

logger = logging.getLogger("qualys_collector.sender")

#: Error numbers of this output: Devo refused (4xx), not confirmed (retried), TLS not trusted, event too large.
ERR_REFUSED, ERR_NOT_CONFIRMED, ERR_TLS, ERR_TOO_LARGE = 420, 421, 422, 423

#: Devo's documented limit per request.
MAX_REQUEST_BYTES = 32 * 1024 * 1024

#: Devo Cloud's HTTP ingestion endpoints by region (see the module docstring for the source).
REGIONS: dict[str, str] = {
    "us": "https://http-us.devo.io",
    "us3": "https://http-us3.devo.io",
    "eu": "https://http-eu.devo.io",
    "ca": "https://http-ca.devo.io",
    "ap": "https://collector-ap.devo.io:8443",
    "ap2": "https://collector-ap2.devo.io:8443",
}

#: The start-up probe posts an empty body (no event) under this tag: it checks the endpoint, TLS and the token.
PROBE_TAG = "my.app.qualys.probe"

#: At most this long is waited for a ``Retry-After`` (a longer ask is cut to it, and said so).
MAX_RETRY_AFTER = 3600.0

#: What to do per refused status (any other 4xx gets the generic fix).
FIXES: dict[int, str] = {
    400: "Devo could not read the request; check domain, hostname and the tags (lowercase, dot-separated)",
    401: "the token is wrong or revoked: create a token in Devo (Administration > Credentials > Tokens) for "
    "this domain and put it in token / token_file",
    403: "the token does not allow this domain or these tags: widen the token's target tables in Devo, or use "
    "the token of this domain",
    404: "the URL does not exist: check endpoint (or region) and domain",
    413: "the request is larger than Devo accepts: lower max_request_bytes",
}


class DevoHttpOutputOptions(OutputOptions):
    """``type: devo_http``: Devo's HTTP ingestion API (stream mode), acknowledged by Devo (HTTP 2xx).

    Exactly one of ``region`` (Devo Cloud: us, us3, eu, ca, ap, ap2) and ``endpoint`` (a URL). ``token``
    from ``${ENV}`` or ``token_file`` (masked everywhere, also in the URL it travels in). ``max_request_bytes``
    bounds each request's body before gzip (at most 32 MiB, Devo's limit). ``ca_bundle`` is relative to the
    config file; ``verify_tls: false`` logs a warning on every start.
    """

    region: Literal["us", "us3", "eu", "ca", "ap", "ap2"] | None = None
    endpoint: str | None = None
    domain: str = Field(min_length=1, pattern=r"^[^/\s]+$")
    token: SecretStr
    hostname: str | None = Field(default=None, min_length=1, pattern=r"^[^/\s]+$")
    max_request_bytes: int = Field(default=MAX_REQUEST_BYTES, ge=1024, le=MAX_REQUEST_BYTES)
    gzip_level: int = Field(default=6, ge=1, le=9)
    timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    verify_tls: bool = True
    ca_bundle: str | None = None

    @model_validator(mode="after")
    def _one_endpoint(self) -> DevoHttpOutputOptions:
        if (self.region is None) == (self.endpoint is None):
            raise ValueError(
                "set exactly one of region (us, us3, eu, ca, ap, ap2) and endpoint (a URL such as "
                "https://http-eu.devo.io)"
            )
        if self.endpoint is not None:
            url = httpx.URL(self.endpoint)
            if url.scheme not in ("https", "http") or not url.host:
                raise ValueError(f"endpoint must be an https:// URL such as https://http-eu.devo.io, got {url}")
            if url.scheme == "http" and url.host not in ("127.0.0.1", "localhost", "::1"):
                raise ValueError("endpoint must use https:// (http:// only for 127.0.0.1): the token is in the URL")
        if not self.token.get_secret_value().strip() or any(c in self.token.get_secret_value() for c in "/ \t\n"):
            raise ValueError("token must be the token string Devo generated (no spaces or slashes)")
        return self


class DevoHttpOutput(OutputBlock):
    """An output of type ``devo_http``."""

    type: Literal["devo_http"]
    config: DevoHttpOutputOptions


class DevoHttpSink:
    """Posts each run of same-tag events as gzip'd lines; acknowledges the prefix Devo answered 2xx for."""

    confirmation = Confirmation.APPLICATION_ACK

    def __init__(
        self,
        name: str,
        endpoint: str,
        domain: str,
        token: str,
        *,
        hostname: str | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        gzip_level: int = 6,
        timeout: float = 60.0,
        verify_tls: bool = True,
        ca_bundle: Path | None = None,
    ) -> None:
        register_secret(token)
        self.name = name
        self.endpoint = endpoint.rstrip("/")
        self.domain = domain
        self._token = token
        self.hostname = hostname or socket.gethostname() or "-"
        self.max_request_bytes = max_request_bytes
        self.gzip_level = gzip_level
        self.timeout = timeout
        self.requests = 0
        self.sent_total = 0
        verify: ssl.SSLContext | bool = True
        if not verify_tls:
            logger.warning(
                "Output %s: TLS verification of %s is OFF (verify_tls: false); use this only for testing",
                name,
                self.endpoint,
            )
            verify = False
        elif ca_bundle is not None:
            if not ca_bundle.is_file():
                raise DeliveryError(
                    f"output {name}: the ca_bundle file {ca_bundle} does not exist",
                    code=ERR_TLS,
                    fix="point ca_bundle at the PEM file of the CA that signed the endpoint's certificate",
                )
            verify = ssl.create_default_context(cafile=str(ca_bundle))
        self._client = httpx.Client(
            verify=verify,
            timeout=httpx.Timeout(timeout),
            trust_env=False,
            follow_redirects=False,
            headers={"User-Agent": f"qualys-collector/{__version__}"},
        )

    def url(self, tag: str) -> str:
        """The stream URL for ``tag`` (holds the token: never print it, print :meth:`shown_url`)."""
        return self._url(tag, _part(self._token))

    def shown_url(self, tag: str) -> str:
        """The stream URL for ``tag`` with the token masked."""
        return self._url(tag, "***")

    def _url(self, tag: str, token: str) -> str:
        return f"{self.endpoint}/stream/{_part(self.domain)}/token!{token}/{_part(self.hostname)}/{_part(tag)}"

    def requests_of(self, batch: Sequence[StoredEvent]) -> Iterator[tuple[str, list[StoredEvent], bytes]]:
        """The batch cut into requests, in order: runs of one tag, each body at most ``max_request_bytes``."""
        tag: str | None = None
        events: list[StoredEvent] = []
        lines: list[bytes] = []
        size = 0
        for event in batch:
            line = event.body.encode("utf-8") + b"\n"
            if len(line) > self.max_request_bytes:
                if events:
                    yield tag or "", events, b"".join(lines)
                raise DeliveryError(
                    f"output {self.name}: event seq {event.seq} is {len(line):,} bytes, more than "
                    f"max_request_bytes ({self.max_request_bytes:,}); it and the events after it stay in the outbox",
                    code=ERR_TOO_LARGE,
                    fix="raise max_request_bytes (at most 32 MiB, Devo's limit) or cap the event's size "
                    "(results_max_length)",
                )
            if events and (event.tag != tag or size + len(line) > self.max_request_bytes):
                yield tag or "", events, b"".join(lines)
                events, lines, size = [], [], 0
            tag = event.tag
            events.append(event)
            lines.append(line)
            size += len(line)
        if events:
            yield tag or "", events, b"".join(lines)

    def deliver(self, batch: Sequence[StoredEvent]) -> Ack:
        """POST each request in order; the first one not answered 2xx ends the batch there.

        ``deliver([])`` (the start-up probe) posts an empty body: nothing is ingested, but the endpoint,
        its certificate and the token are checked.
        """
        if not batch:
            self._post(PROBE_TAG, b"", count=0)
            return Ack.nothing()
        confirmed: int | None = None
        try:
            for tag, events, body in self.requests_of(batch):
                try:
                    self._post(tag, body, count=len(events))
                except DeliveryError as exc:
                    return Ack(confirmed, exc)
                confirmed = events[-1].seq
                self.sent_total += len(events)
        except DeliveryError as exc:  # an event over the limit: what came before it is confirmed
            return Ack(confirmed, exc)
        return Ack(confirmed)

    def _post(self, tag: str, body: bytes, *, count: int) -> None:
        """One request; returns on 2xx, else raises the numbered error (with ``retry_after`` when asked)."""
        shown = self.shown_url(tag)
        compressor = zlib.compressobj(self.gzip_level, zlib.DEFLATED, 31)  # 31: a gzip member
        data = compressor.compress(body) + compressor.flush()
        started = time.monotonic()
        try:
            response = self._client.post(
                self.url(tag),
                content=data,
                headers={"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"},
            )
            response.read()
        except httpx.TimeoutException as exc:
            raise self._not_confirmed(
                shown, count, f"no answer within {self.timeout:g} s ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            if _is_tls_verification(exc):
                raise DeliveryError(
                    f"output {self.name}: the certificate of {self.endpoint} is not trusted ({_reason(exc)}); "
                    f"{_events(count)} stay in the outbox",
                    code=ERR_TLS,
                    fix="set ca_bundle to the CA that signed it (a TLS-inspecting proxy's CA, for example)",
                ) from None
            raise self._not_confirmed(shown, count, f"{type(exc).__name__}: {_reason(exc)}") from None
        status = response.status_code
        self.requests += 1
        if 200 <= status < 300:
            logger.debug(
                "Output %s: %d events confirmed by %s (HTTP %d, %d bytes gzip'd, %.3f s)",
                self.name,
                count,
                shown,
                status,
                len(data),
                time.monotonic() - started,
            )
            return
        if status == 429 or status >= 500 or status == 408:
            raise self._not_confirmed(
                shown, count, f"HTTP {status} {response.reason_phrase}", retry_after=_retry_after(response)
            )
        raise DeliveryError(
            f"output {self.name}: Devo refused the request to {shown} with HTTP {status} "
            f"{response.reason_phrase}{_said(response)}; {_events(count)} stay in the outbox",
            code=ERR_REFUSED,
            fix=FIXES.get(status, "read the status Devo answered; check endpoint, domain, token and tags"),
        )

    def _not_confirmed(self, shown: str, count: int, why: str, *, retry_after: float | None = None) -> DeliveryError:
        asked = "" if retry_after is None else f", Devo asks to retry after {retry_after:g} s"
        return DeliveryError(
            f"output {self.name}: {shown} did not confirm {_events(count)} ({scrub(why)}{asked}); "
            "they stay in the outbox and are sent again",
            code=ERR_NOT_CONFIRMED,
            fix="nothing if it passes: the request is retried with backoff; if it lasts, check network access "
            "to the endpoint and Devo's status page",
            retry_after=retry_after,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def _part(value: str) -> str:
    """One URL path segment."""
    return quote(value, safe="!.-_~")


def _events(count: int) -> str:
    return "the probe's empty request" if count == 0 else f"{count} events"


def _reason(exc: BaseException) -> str:
    """The exception's text with secrets masked (httpx's texts hold no URL, but be sure)."""
    return scrub(str(exc) or type(exc).__name__)


def _said(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")[:200]
    return f" ({scrub(text)})" if text else ""


def _is_tls_verification(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), capped at :data:`MAX_RETRY_AFTER`."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def build(name: str, output: DevoHttpOutput, context: BuildContext) -> DevoHttpSink:
    """``region`` or ``endpoint``; ``ca_bundle`` relative to the config file's directory."""
    options = output.config
    endpoint = options.endpoint or REGIONS[options.region or "us"]
    ca_bundle = None
    if options.ca_bundle:
        ca_bundle = Path(options.ca_bundle)
        if not ca_bundle.is_absolute() and context.config_path is not None:
            ca_bundle = context.config_path.resolve().parent / ca_bundle
    return DevoHttpSink(
        name,
        endpoint,
        options.domain,
        options.token.get_secret_value(),
        hostname=options.hostname,
        max_request_bytes=options.max_request_bytes,
        gzip_level=options.gzip_level,
        timeout=options.timeout_seconds,
        verify_tls=options.verify_tls,
        ca_bundle=ca_bundle,
    )


OUTPUT = OutputType("devo_http", DevoHttpOutput, DevoHttpOutputOptions, build)
