"""The Qualys FIM gateway client: a JWT from ``/auth`` renewed before it expires (and once on a 401),
and JSON search calls with table-driven retries.

The token lives only in memory and in the ``Authorization`` header; it is registered with the
redactor the moment it is issued.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Generator
from datetime import datetime
from typing import Any

import httpx

from qualys_collector.errors import PullError, SetupError, SourceError
from qualys_collector.qualys.http import (
    PROXY_AUTH_FIX,
    PROXY_FIX,
    ApiObserver,
    HttpSettings,
    make_client,
    proxy_failure,
    proxy_refusal,
    server_date,
)
from qualys_collector.qualys.retry import Action, RetryPolicy, resolve_gateway
from qualys_collector.redact import register_credentials, register_secret

logger = logging.getLogger("qualys_collector.setup")

#: Renew this long before ``exp`` (Qualys tokens live 4 hours).
RENEW_BEFORE = 300.0


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (not verified: we only need to know when to renew)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


class GatewayAuth(httpx.Auth):
    """Bearer JWT from the gateway's ``/auth``: fetched, attached, renewed before expiry, refreshed once on 401."""

    def __init__(
        self,
        token_url: str,
        username: str,
        password: str,
        *,
        clock: Callable[[], float] = time.time,
        observer: ApiObserver | None = None,
    ) -> None:
        register_credentials(username, password)
        self.token_url = token_url
        self._form = {"username": username, "password": password, "token": "true"}
        self.clock = clock
        self._token: str | None = None
        #: the configured proxy, named when it refuses the token request (407)
        self.proxy: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        self.observer = observer

    def token_request(self) -> httpx.Request:
        return httpx.Request("POST", self.token_url, data=self._form)

    def store(self, response: httpx.Response) -> None:
        response.read()
        if response.status_code == 201:
            token = response.text.strip()
            register_secret(token)
            self._token = token
            self._expires = token_expiry(token) or (self.clock() + 4 * 3600)
            if self.observer is not None:
                self.observer.token_issued()
            return
        refused = proxy_refusal(self.proxy, response.status_code)
        if refused is not None:
            raise SetupError(f"Error occurred while requesting a token: {refused}", code=100, fix=PROXY_AUTH_FIX)
        if response.status_code == 401:
            raise SetupError(
                "The tokens provided are incorrect. Please specify the correct credentials",
                code=101,
                fix="provide the correct username and password for the Qualys FIM API",
            )
        raise SetupError(
            f"Unexpected HTTP error occurred at the Qualys server. {response.status_code}",
            code=103,
            fix="check auth_url; if it is right, Qualys is failing: the collector tries again next cycle",
        )

    def valid(self) -> bool:
        """Whether the current token is good for at least ``RENEW_BEFORE`` more seconds."""
        return self._token is not None and self.clock() < self._expires - RENEW_BEFORE

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Attach a valid token; on a 401 renew once and resend."""
        with self._lock:
            if not self.valid():
                if self._token is None:
                    logger.info("First run of the collector. Generating new access token.")
                else:
                    logger.info("Access token expires soon. Generating a new access token.")
                self.store((yield self.token_request()))
            token = self._token
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            logger.warning("The gateway refused the access token (HTTP 401); renewing it once")
            with self._lock:
                if self._token == token:
                    self.store((yield self.token_request()))
                request.headers["Authorization"] = f"Bearer {self._token}"
            yield request


class FimClient:
    """One Qualys FIM subscription behind the API gateway.

    ``stop`` ends a 429 wait or a retry backoff at once (:class:`~qualys_collector.errors.StopRequested`).
    """

    def __init__(
        self,
        base_url: str,
        token_url: str,
        username: str,
        password: str,
        *,
        settings: HttpSettings | None = None,
        policy: RetryPolicy | None = None,
        stop: threading.Event | None = None,
        observer: ApiObserver | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = GatewayAuth(token_url, username, password, clock=clock, observer=observer)
        self.proxy = (settings or HttpSettings()).proxy
        self.auth.proxy = self.proxy
        self.http = make_client(settings or HttpSettings(), auth=self.auth)
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self._local = threading.local()
        self.stop = stop
        self.observer = observer

    @property
    def requests(self) -> int:
        """Requests made by the calling thread."""
        return int(getattr(self._local, "count", 0))

    @property
    def server_time(self) -> datetime | None:
        """Qualys' clock (HTTP ``Date``) at the last answer the calling thread received."""
        value: datetime | None = getattr(self._local, "server_time", None)
        return value

    def close(self) -> None:
        """Close connections."""
        self.http.close()

    def authenticate(self) -> None:
        """Fetch a token now (``check`` uses this); raises the seed's 101/103 errors."""
        try:
            self.auth.store(self.http.send(self.auth.token_request(), auth=None))
        except httpx.TransportError as exc:
            raise SetupError(
                f"Error occurred while requesting from the Qualys server. Error message: {type(exc).__name__}: {exc}",
                code=100,
                fix="check auth_url and network access to the Qualys gateway",
            ) from exc

    def check_token(self) -> None:
        """Log the seed's setup line when the token is still good."""
        if self.auth.valid():
            logger.info("Token is valid. Skipping the generation of new access token")

    def post(self, path: str, body: dict[str, Any], what: str) -> Any:
        """POST ``body`` as JSON and return the parsed answer, within the retry policy."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            self._local.count = self.requests + 1
            try:
                response = self.http.post(f"{self.base_url}{path}", json=body)
            except SourceError:
                raise
            except httpx.TransportError as exc:
                named = proxy_failure(self.proxy, exc)
                failure: SourceError = PullError(
                    f"Some error occurred while retrieving {what} from Qualys server. Error details: "
                    + (named or f"{type(exc).__name__}: {exc}"),
                    code=301,
                    retryable=True,
                    fix=PROXY_FIX if named else "check network access to the Qualys gateway; the collector retries",
                )
                wait = self.policy.backoff(attempt)
            else:
                if self.observer is not None:
                    self.observer.api_answer(path, response.status_code)
                self._local.server_time = server_date(response)
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError as exc:
                        failure = PullError(
                            f"Some error occurred while retrieving {what} from Qualys server. Error details: "
                            f"the answer is not valid JSON ({exc})",
                            code=301,
                            retryable=True,
                        )
                        wait = self.policy.backoff(attempt)
                else:
                    refused = proxy_refusal(self.proxy, response.status_code)
                    if refused is not None:
                        raise PullError(refused, code=300, fix=PROXY_AUTH_FIX)
                    failure, wait = self._resolve(response, what, attempt)
            self.policy.give_up_or_wait(failure, attempt, started, wait, self.stop, self.sleep)

    def _resolve(self, response: httpx.Response, what: str, attempt: int) -> tuple[SourceError, float]:
        resolution = resolve_gateway(response.status_code)
        summary = response.reason_phrase
        details = response.text[:300].strip()
        if resolution.action is Action.FAIL_PERMISSION:
            raise SetupError(
                f"The provided tokens are valid but they do not have the permission to get data ({details})",
                code=102,
                fix=resolution.fix,
            )
        if resolution.action is Action.REFRESH_TOKEN:
            raise SetupError(
                "The tokens provided are incorrect. Please specify the correct credentials "
                "(the gateway refused a freshly issued token)",
                code=101,
                fix=resolution.fix,
            )
        failure = PullError(
            f"HTTP Error occurred while retrieving {what} from Qualys server: HTTP {response.status_code} {summary} , "
            f"{details}",
            code=300,
            fix=resolution.fix,
            retryable=resolution.action in (Action.RETRY, Action.WAIT),
        )
        if resolution.action is Action.WAIT:
            told = response.headers.get("X-RateLimit-ToWait-Sec")
            return failure, self.policy.limit_wait(float(told) if told and told.isdigit() else None)
        if resolution.action is Action.RETRY:
            return failure, self.policy.backoff(attempt)
        raise failure
