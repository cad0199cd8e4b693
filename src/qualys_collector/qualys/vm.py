"""The Qualys VM API client: Basic auth + ``X-Requested-With``, the shared API budget, table-driven
retries before the body, and resumable retries when a body breaks half-way.

Services never see credentials: they ask for a path and parameters and get a streaming body.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx

from qualys_collector.errors import DataError, PullError, PullTimeoutError, SetupError, SourceError
from qualys_collector.model import JSON, Page
from qualys_collector.qualys.budget import ApiBudget
from qualys_collector.qualys.http import (
    PROXY_AUTH_FIX,
    PROXY_FIX,
    ApiObserver,
    HttpSettings,
    earliest,
    make_client,
    proxy_failure,
    proxy_refusal,
    server_date,
)
from qualys_collector.qualys.retry import Action, Resolution, RetryPolicy, pause, resolve_vm
from qualys_collector.qualys.xml import (
    NOT_XML,
    ByteStream,
    ForbiddenCharacters,
    parse_error_document,
    root_tag,
    simple_return_items,
)
from qualys_collector.redact import register_credentials, sanitize_url

logger = logging.getLogger(__name__)

ERROR_ROOTS = ("SIMPLE_RETURN", "GENERIC_RETURN")
#: How much of a body may come before its root tag is known (comments, DOCTYPE) before it is refused.
SNIFF_LIMIT = 1 << 20
#: Mid-body failures worth another try from the last committed page.
MID_BODY = (DataError, httpx.TransportError)


class VmClient:
    """One Qualys VM subscription.

    ``stop`` (the collector's one stop event) ends every wait at once: the API budget's, a 409/429 wait and a
    retry backoff raise :class:`~qualys_collector.errors.StopRequested`. ``sleep`` replaces those waits in tests.
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: str,
        *,
        settings: HttpSettings | None = None,
        budget: ApiBudget | None = None,
        policy: RetryPolicy | None = None,
        stop: threading.Event | None = None,
        observer: ApiObserver | None = None,
        sleep: Callable[[float], None] | None = None,
        requested_with: str = "qualys-collector",
    ) -> None:
        register_credentials(username, password)
        self.base_url = base_url.rstrip("/")
        self.proxy = (settings or HttpSettings()).proxy
        self.http = make_client(settings or HttpSettings(), auth=httpx.BasicAuth(username, password))
        self.http.headers["X-Requested-With"] = requested_with
        self.budget = budget or ApiBudget()
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.stop = stop
        self.observer = observer
        self._local = threading.local()
        self.total_requests = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close connections."""
        self.http.close()

    @property
    def requests(self) -> int:
        """HTTP requests made by the calling thread (each service pulls in its own thread)."""
        return int(getattr(self._local, "count", 0))

    @property
    def server_time(self) -> datetime | None:
        """Qualys' clock (HTTP ``Date``) at the last answer the calling thread received."""
        value: datetime | None = getattr(self._local, "server_time", None)
        return value

    def _count(self) -> None:
        self._local.count = self.requests + 1
        with self._lock:
            self.total_requests += 1

    @contextlib.contextmanager
    def open(self, path: str, params: dict[str, str]) -> Iterator[httpx.Response]:
        """A 200 response to ``POST path`` whose body is still to be read.

        Errors before the body are resolved by the table: waits and retries within the policy's
        bounds, then :class:`SetupError` (101/102) or :class:`PullError` (300/301).
        """
        key = path.split("/fo/", 1)[-1].strip("/")
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            with self.budget.slot(key, self.stop):
                self._count()
                try:
                    response = self.http.send(
                        self.http.build_request("POST", f"{self.base_url}{path}", data=params), stream=True
                    )
                except httpx.TransportError as exc:
                    url = sanitize_url(self.base_url + path)
                    cause = f"ERROR: API Error. Cause: {type(exc).__name__} calling {url}"
                    fix = "check network access to the Qualys API server; the collector retries"
                    named = proxy_failure(self.proxy, exc)
                    if named is not None:
                        cause, fix = f"ERROR: API Error. Cause: {named} (calling {url})", PROXY_FIX
                    failure: SourceError = (
                        PullTimeoutError(cause, fix=fix)
                        if isinstance(exc, httpx.TimeoutException)
                        else PullError(cause, code=301, retryable=True, fix=fix)
                    )
                    failure.__cause__ = exc
                    wait = self.policy.backoff(attempt)
                else:
                    self.budget.update(key, response.headers)
                    self._local.server_time = server_date(response)
                    if self.observer is not None:
                        self.observer.api_answer(key, response.status_code)
                    if response.status_code == 200:
                        try:
                            yield response
                        finally:
                            response.close()
                        return
                    body = _read_small(response)
                    refused = proxy_refusal(self.proxy, response.status_code)
                    if refused is not None:
                        raise PullError(f"ERROR: API Error. Cause: {refused}", code=300, fix=PROXY_AUTH_FIX)
                    failure, wait = self._resolve(path, response, body, attempt)
            self.policy.give_up_or_wait(failure, attempt, started, wait, self.stop, self.sleep)

    def _resolve(self, path: str, response: httpx.Response, body: bytes, attempt: int) -> tuple[SourceError, float]:
        code, text = parse_error_document(body)
        resolution = resolve_vm(response.status_code, code)
        failure = self.error(path, response.status_code, code, text, resolution)
        if resolution.action is Action.WAIT:
            items = simple_return_items(body)
            told = _float(response.headers.get("X-RateLimit-ToWait-Sec")) or _float(items.get("SECONDS_TO_WAIT"))
            wait = self.policy.limit_wait(told if told else None)
            self.budget.pause(wait)
            return failure, wait
        if resolution.action is Action.RETRY:
            return failure, self.policy.backoff(attempt)
        raise failure

    def authenticate(self, version: str = "2.0") -> None:
        """One cheap authenticated call (the last minute of the activity log); raises 101/102/300."""
        path = f"/api/{version}/fo/activity_log/"
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
        params = {"action": "list", "truncation_limit": "1", "since_datetime": since}
        with self.open(path, params) as response:
            for _chunk in self.body(path, response):
                pass

    def error(self, path: str, status: int | None, code: int | None, text: str, resolution: Resolution) -> SourceError:
        """The numbered error for an answer."""
        cause = f"HTTP {status} from {path}" if status is not None else f"answer from {path}"
        if code is not None:
            cause += f" (CODE {code}: {text})"
        message = f"ERROR: API Error. Cause: {cause}"
        if resolution.action in (Action.FAIL_AUTH, Action.FAIL_PERMISSION):
            return SetupError(message, code=resolution.code, fix=resolution.fix)
        return PullError(
            message,
            code=resolution.code,
            fix=resolution.fix,
            retryable=resolution.action in (Action.RETRY, Action.WAIT),
        )

    def body(self, path: str, response: httpx.Response) -> ByteStream:
        """The response body as a stream; a Qualys error document sent with HTTP 200 is raised here."""
        return ByteStream(self.chunks(path, response))

    def chunks(self, path: str, response: httpx.Response, *, clean: bool = True) -> Iterator[bytes]:
        """The response body's chunks; a Qualys error document sent with HTTP 200 is raised here. ``clean``:
        characters XML 1.0 forbids are replaced (``False``: a parsing process replaces them, see
        :mod:`~qualys_collector.services.hld_process`)."""
        chunks = response.iter_bytes()
        head = b""
        tag: str | None = None
        for chunk in chunks:  # however the reads are cut: decide on the whole root tag name
            head += chunk
            tag = root_tag(head)
            if tag is not None:
                break
            if len(head) > SNIFF_LIMIT:
                raise DataError(f"no root element in the first {SNIFF_LIMIT} bytes of the answer from {path}")
        if tag in ERROR_ROOTS:
            body = head + b"".join(chunks)
            code, text = parse_error_document(body)
            raise self.error(path, response.status_code, code, text, resolve_vm(response.status_code, code))
        rest = _prepend(head, chunks)
        return rest if tag == NOT_XML or not clean else ForbiddenCharacters(path).chunks(rest)

    def resumable(
        self, fetch: Callable[[JSON | None], Iterator[Page]], token: JSON | None, what: str
    ) -> Iterator[Page]:
        """Run ``fetch(token)``; when a body breaks half-way, start again from the last page's token."""
        attempt = 0
        before = self.requests
        while True:
            try:
                for page in fetch(token):
                    spent = self.requests - before
                    before = self.requests
                    yield replace(page, requests=spent, horizon=earliest(page.horizon, self.server_time))
                    token = page.token
                    attempt = 0
            except MID_BODY as exc:
                attempt += 1
                detail = exc.message if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
                if attempt >= self.policy.attempts:
                    message = (
                        f"Some error occurred while retrieving {what} from Qualys server. Error details: {detail} "
                        f"(gave up after {attempt} attempts)"
                    )
                    fix = "the next cycle resumes from the last committed page"
                    if isinstance(exc, DataError) and exc.fix:  # the answer's own fix says what to look at
                        fix = exc.fix
                    if isinstance(exc, httpx.TimeoutException):
                        raise PullTimeoutError(message, fix=fix) from exc
                    raise PullError(message, code=301, retryable=True, fix=fix) from exc
                wait = self.policy.backoff(attempt)
                logger.warning("%s broke off (%s); resuming from the last committed page in %.1f s", what, detail, wait)
                pause(wait, self.stop, f"before resuming {what} ({detail})", self.sleep)
            else:
                return


def _read_small(response: httpx.Response, limit: int = 1 << 20) -> bytes:
    data = b""
    try:
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= limit:
                break
    except httpx.TransportError:
        pass
    finally:
        response.close()
    return data


def _prepend(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
