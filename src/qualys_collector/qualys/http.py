"""The HTTP seam: one ``httpx.Client`` per input, with TLS, proxy and timeouts from the config."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Protocol

import httpx

from qualys_collector import __version__

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
    """An HTTP client that verifies TLS unless told otherwise (and then says so on every start)."""
    verify: ssl.SSLContext | bool = True
    if not settings.verify_tls:
        logger.warning("TLS verification towards Qualys is OFF (verify_tls: false); use this only for testing")
        verify = False
    elif settings.ca_bundle:
        verify = ssl.create_default_context(cafile=settings.ca_bundle)
    return httpx.Client(
        auth=auth,
        verify=verify,
        proxy=settings.proxy,
        timeout=httpx.Timeout(settings.timeout, connect=min(30.0, settings.timeout)),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )


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
