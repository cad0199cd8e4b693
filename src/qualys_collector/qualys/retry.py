"""What to do with each Qualys answer, as a table, and the bounded retry loop that applies it.

Every retry is bounded by attempts and by total time; waits that Qualys asks for (409 1965,
429 ``X-RateLimit-ToWait-Sec``) are honoured, capped, and jittered.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from qualys_collector.errors import SourceError, StopRequested

logger = logging.getLogger("qualys_collector.qualys")
#: Jitter from its own generator: the global one is left alone (a test drawing random data in another thread saw
#: it change under its feet).
_JITTER = random.Random()  # noqa: S311 - jitter, not crypto


class Action(enum.Enum):
    """The caller's move."""

    RETRY = "retry"  # transient: back off and try again
    WAIT = "wait"  # the subscription's limits: wait what Qualys says, then try again
    REFRESH_TOKEN = "refresh_token"  # noqa: S105 - an action name; gateway 401: renew the JWT once, then try again
    FAIL_AUTH = "fail_auth"  # 101: credentials refused
    FAIL_PERMISSION = "fail_permission"  # 102: valid credentials, no permission
    FAIL = "fail"  # 300: a request Qualys will never accept as sent


@dataclass(frozen=True)
class Resolution:
    """An action plus the seed error number and the fix to print if it ends the pull."""

    action: Action
    code: int
    fix: str


FIX_AUTH = (
    "check the username and password; Qualys answers 'Bad Login/Password' also when the hostname is another "
    "platform's API server, or when the user lacks API access"
)
FIX_PERMISSION = "give this user the role the service needs (see README, Vendor setup)"
FIX_REQUEST = "this request is rejected by Qualys as sent; check the service's filters and api_version"

#: Qualys VM codes with a fixed meaning (match by CODE, never by TEXT).
VM_CODES: dict[int, Resolution] = {
    1960: Resolution(Action.WAIT, 300, "lower max_workers or leave other API clients fewer calls"),
    1965: Resolution(Action.WAIT, 300, "the subscription's API rate limit is reached; the collector waits"),
    1920: Resolution(Action.WAIT, 300, "another operation blocks this API; the collector waits"),
    999: Resolution(Action.RETRY, 300, "Qualys had an internal error; the collector retries"),
    2000: Resolution(Action.FAIL_AUTH, 101, FIX_AUTH),
    2001: Resolution(Action.FAIL_AUTH, 101, "the Qualys account has expired; renew it"),
    2003: Resolution(Action.FAIL_AUTH, 101, "complete the Qualys account registration"),
    2010: Resolution(Action.FAIL_AUTH, 101, FIX_AUTH),
}


def resolve_vm(status: int, code: int | None) -> Resolution:
    """Resolution of a Qualys VM answer by HTTP status and SIMPLE_RETURN code."""
    if code is not None and code in VM_CODES:
        return VM_CODES[code]
    if status == 401:
        return Resolution(Action.FAIL_AUTH, 101, FIX_AUTH)
    if status == 403:
        return Resolution(Action.FAIL_PERMISSION, 102, FIX_PERMISSION)
    if status in (409, 429):
        return Resolution(Action.WAIT, 300, "the subscription's API limits are reached; the collector waits")
    if status >= 500 or status == 408:
        return Resolution(Action.RETRY, 300, "Qualys is failing; the collector retries with backoff")
    return Resolution(Action.FAIL, 300, FIX_REQUEST)


def resolve_gateway(status: int) -> Resolution:
    """Resolution of a FIM gateway answer by HTTP status."""
    if status == 401:
        return Resolution(Action.REFRESH_TOKEN, 101, FIX_AUTH)
    if status == 403:
        return Resolution(Action.FAIL_PERMISSION, 102, "give this user FIM access in Qualys")
    if status == 429:
        return Resolution(Action.WAIT, 300, "the gateway's rate limit is reached; the collector waits")
    if status >= 500 or status == 408:
        return Resolution(Action.RETRY, 300, "the Qualys gateway is failing; the collector retries with backoff")
    return Resolution(Action.FAIL, 300, FIX_REQUEST)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the retry loop."""

    attempts: int = 6
    total_seconds: float = 1800.0
    base_backoff: float = 2.0
    max_backoff: float = 120.0
    max_wait: float = 3600.0
    concurrency_wait: float = 30.0

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter for ``attempt`` (1-based)."""
        ceiling = float(min(self.max_backoff, self.base_backoff * 2.0 ** (attempt - 1)))
        return ceiling / 2 + _JITTER.uniform(0, ceiling / 2)

    def give_up_or_wait(
        self,
        failure: SourceError,
        attempt: int,
        started: float,
        wait: float,
        stop: threading.Event | None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        """Raise ``failure`` once attempts or total time are spent; otherwise log and wait ``wait`` seconds
        (:func:`pause`: a stop ends the wait with :class:`StopRequested`)."""
        elapsed = time.monotonic() - started
        if attempt >= self.attempts or elapsed + wait > self.total_seconds:
            failure.message += f" (gave up after {attempt} attempts in {elapsed:.0f} s)"
            raise failure
        logger.warning("%s; retrying in %.1f s (attempt %d of %d)", failure.message, wait, attempt, self.attempts)
        pause(wait, stop, f"before retrying ({failure.message})", sleep)

    def limit_wait(self, seconds: float | None) -> float:
        """A wait Qualys asked for, capped, with a little jitter; ``concurrency_wait`` when it said nothing."""
        base = self.concurrency_wait if seconds is None else max(0.0, seconds)
        return min(self.max_wait, base + _JITTER.uniform(0, min(2.0, base / 10 + 0.1)))


def pause(seconds: float, stop: threading.Event | None, why: str, sleep: Callable[[float], None] | None = None) -> None:
    """Wait ``seconds`` on ``stop``; raise :class:`StopRequested` naming ``why`` if a stop comes first.

    ``sleep`` replaces the wait itself (tests pass one that returns at once); the stop is still checked on
    both sides of it.
    """
    if stop is None:
        (sleep or time.sleep)(seconds)
        return
    if not stop.is_set():
        if sleep is None:
            stop.wait(seconds)
        else:
            sleep(seconds)
    if stop.is_set():
        raise StopRequested(
            f"Stop requested while waiting {seconds:.1f} s {why}",
            fix="none needed: the checkpoint stays at the last committed page and the next run resumes there",
        )
