"""The HTTP seam: one ``httpx.Client`` per input, with TLS, proxy and timeouts from the config.

httpx's timeouts bound each read, so a server that trickles its answer (one byte every few seconds)
never trips them. Every request here also has a total deadline, ``request_timeout_seconds`` from its
start to its body's last byte: each socket read and write waits at most what is left of it, and a
request past it fails with ``ReadTimeout`` naming the deadline.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import unquote

import httpcore
import httpx

from qualys_collector import __version__
from qualys_collector.redact import register_credentials, sanitize_url

logger = logging.getLogger(__name__)

USER_AGENT = f"qualys-collector/{__version__}"


class ApiObserver(Protocol):
    """What a Qualys client reports (one observer from the composition root; see ``observability.observer``)."""

    def api_answer(self, api: str, status: int) -> None:
        """Qualys answered a call to ``api`` with HTTP ``status``."""

    def token_issued(self) -> None:
        """The FIM gateway issued an access token."""


@dataclass(frozen=True)
class HttpSettings:
    """Connection settings of one input."""

    verify_tls: bool = True
    ca_bundle: str | None = None
    proxy: str | None = None
    timeout: float = 300.0


def make_client(settings: HttpSettings, *, auth: httpx.Auth | None = None) -> httpx.Client:
    """An HTTP client that verifies TLS unless told otherwise (and then says so on every start), and gives
    every request a total deadline of ``settings.timeout`` seconds."""
    verify: ssl.SSLContext | bool = True
    if not settings.verify_tls:
        logger.warning("TLS verification towards Qualys is OFF (verify_tls: false); use this only for testing")
        verify = False
    elif settings.ca_bundle:
        verify = ssl.create_default_context(cafile=settings.ca_bundle)
    if settings.proxy:
        proxy = httpx.URL(settings.proxy)
        if proxy.password:  # masked in its Proxy-Authorization form too, should a proxy echo it
            register_credentials(unquote(proxy.username), unquote(proxy.password))
    else:
        _say_environment_proxies_are_not_used()
    return httpx.Client(
        auth=auth,
        transport=DeadlineTransport(settings.timeout, verify=verify, proxy=settings.proxy),
        timeout=httpx.Timeout(settings.timeout, connect=min(30.0, settings.timeout)),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )


#: Proxy variables other HTTP clients read from the environment; the collector reads ``connection.proxy`` only.
ENVIRONMENT_PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")
_said: set[str] = set()


def _say_environment_proxies_are_not_used() -> None:
    """A warning, once per variable, when the environment sets a proxy that ``connection.proxy`` does not: curl,
    pip and most HTTP clients would go through it, the collector goes to Qualys directly (a host that can reach
    Qualys only through that proxy then fails with "cannot connect", far from the reason). Its value may hold the
    proxy's password: it is never logged."""
    for name in ENVIRONMENT_PROXIES:
        if os.environ.get(name) and name not in _said:
            _said.add(name)
            logger.warning(
                "%s is set in the environment, but the collector does not read proxies from the environment: it "
                "connects to Qualys directly. To go through that proxy, set connection.proxy in the input's config",
                name,
            )


_deadline = threading.local()


def _left(timeout: float | None) -> float | None:
    """``timeout`` cut to what is left of the calling thread's request deadline; past it, ReadTimeout."""
    at: float | None = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout(_deadline_message())
    return left if timeout is None else min(timeout, left)


def _deadline_message() -> str:
    seconds = float(getattr(_deadline, "seconds", 0.0))
    return f"no complete answer within the request deadline of {seconds:g} s (request_timeout_seconds)"


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every wait ends with the request's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return self._inner.read(max_bytes, _left(timeout))
        except httpcore.ReadTimeout as exc:
            if getattr(_deadline, "at", None) is not None and time.monotonic() >= _deadline.at:
                raise httpcore.ReadTimeout(_deadline_message()) from exc
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, _left(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync backend with deadline-bound streams."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_tcp(host, port, _left(timeout), local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._inner.connect_unix_socket(path, _left(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose requests each end within ``seconds``, body included."""

    def __init__(self, seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds = seconds
        pool = self._pool
        if not hasattr(pool, "_network_backend"):  # pragma: no cover - an httpcore that moved its seam
            raise RuntimeError("httpcore's connection pool has no _network_backend: the request deadline needs it")
        pool._network_backend = _DeadlineBackend()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Start the calling thread's deadline; the body, read later in this thread, is bound by it until closed."""
        at = time.monotonic() + self.seconds
        _deadline.at, _deadline.seconds = at, self.seconds
        try:
            response = super().handle_request(request)
        except BaseException:
            _end_deadline(at)
            raise
        if isinstance(response.stream, httpx.SyncByteStream):
            response.stream = _DeadlineBody(response.stream, at)
        return response


def _end_deadline(at: float) -> None:
    if getattr(_deadline, "at", None) == at:
        _deadline.at = None


class _DeadlineBody(httpx.SyncByteStream):
    """A response body that ends its request's deadline when it is closed."""

    def __init__(self, inner: httpx.SyncByteStream, at: float) -> None:
        self._inner = inner
        self._at = at

    def __iter__(self) -> Iterator[bytes]:
        yield from self._inner

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            _end_deadline(self._at)


def server_date(response: httpx.Response) -> datetime | None:
    """Qualys' clock when it answered, from the HTTP ``Date`` header (``None`` when absent or unreadable)."""
    header = response.headers.get("Date")
    if not header:
        return None
    try:
        value = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def earliest(first: datetime | None, second: datetime | None) -> datetime | None:
    """The earlier of two optional times."""
    if first is None or second is None:
        return first if second is None else second
    return min(first, second)


#: The fix when a request failed on its way through the configured proxy.
PROXY_FIX = (
    "check connection.proxy: that the proxy runs and accepts this host, lets it reach the Qualys API server "
    "(CONNECT for https), and its user and password (http://user:password@host:port)"
)
PROXY_AUTH_FIX = (
    "the proxy wants credentials it did not get or refused: write them into connection.proxy "
    "(http://user:password@host:port, or password from ${ENV}); Qualys' own credentials are not the problem"
)


def proxy_failure(proxy: str | None, exc: httpx.TransportError) -> str | None:
    """A sentence naming the proxy when ``exc`` happened on the way to or through it (``None`` without one)."""
    if not proxy:
        return None
    where = sanitize_url(proxy)
    if isinstance(exc, httpx.ProxyError):
        return f"the proxy {where} refused the tunnel to Qualys ({exc})"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"cannot connect to the proxy {where} ({type(exc).__name__}: {exc})"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return f"the proxy {where} dropped the connection before Qualys answered ({type(exc).__name__}: {exc})"
    return None


def proxy_refusal(proxy: str | None, status: int) -> str | None:
    """The sentence for an HTTP 407 from the proxy (``None`` for any other answer)."""
    if status != 407:
        return None
    where = sanitize_url(proxy) if proxy else "between us and Qualys"
    return f"HTTP 407 Proxy Authentication Required from the proxy {where}; Qualys was not reached"
