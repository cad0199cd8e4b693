"""One API budget per Qualys subscription, shared by every service of an input.

It learns each API's concurrency limit from ``X-Concurrency-Limit-Limit``, pauses everyone when
``X-RateLimit-Remaining`` reaches 0 (for ``X-RateLimit-ToWait-Sec``), applies the user's own
``requests_limits``, and serves waiters first come, first served, so no service starves.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from qualys_collector.errors import StopRequested


@dataclass
class _Api:
    limit: int
    running: int = 0
    queue: deque[int] = field(default_factory=deque)


class ApiBudget:
    """Admits calls per API key within the learned and configured limits."""

    def __init__(
        self,
        *,
        initial_concurrency: int = 2,
        max_concurrency: int | None = None,
        calls_per_period: tuple[int, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.initial = max(1, initial_concurrency)
        self.cap = max_concurrency
        self.calls_per_period = calls_per_period
        self.clock = clock
        self._apis: dict[str, _Api] = {}
        self._cond = threading.Condition()
        self._ticket = 0
        self._not_before = 0.0
        self._recent: deque[float] = deque()

    def _api(self, key: str) -> _Api:
        api = self._apis.get(key)
        if api is None:
            api = self._apis[key] = _Api(limit=self._capped(self.initial))
        return api

    def _capped(self, limit: int) -> int:
        return max(1, min(limit, self.cap) if self.cap else limit)

    def _rate_delay(self, now: float) -> float:
        if self.calls_per_period is None:
            return 0.0
        calls, period = self.calls_per_period
        while self._recent and self._recent[0] <= now - period:
            self._recent.popleft()
        return 0.0 if len(self._recent) < calls else self._recent[0] + period - now

    @contextlib.contextmanager
    def slot(self, key: str, stop: threading.Event | None = None) -> Iterator[None]:
        """Hold one call slot of API ``key`` for the duration of the block (the whole response)."""
        with self._cond:
            self._ticket += 1
            ticket = self._ticket
            api = self._api(key)
            api.queue.append(ticket)
            try:
                while True:
                    now = self.clock()
                    delay = max(self._not_before - now, self._rate_delay(now))
                    first = api.queue[0] == ticket
                    if first and api.running < api.limit and delay <= 0:
                        break
                    if stop is not None and stop.is_set():
                        raise StopRequested(
                            f"Stop requested while waiting for a call slot of the Qualys API {key}",
                            fix="none needed: the checkpoint stays at the last committed page",
                        )
                    self._cond.wait(timeout=min(delay, 1.0) if delay > 0 else 1.0)
            finally:
                api.queue.remove(ticket)
                self._cond.notify_all()
            api.running += 1
            if self.calls_per_period is not None:
                self._recent.append(self.clock())
        try:
            yield
        finally:
            with self._cond:
                api.running -= 1
                self._cond.notify_all()

    def update(self, key: str, headers: Mapping[str, str]) -> None:
        """Learn from a response's rate and concurrency headers."""
        with self._cond:
            api = self._api(key)
            limit = _int(headers.get("X-Concurrency-Limit-Limit"))
            if limit:
                api.limit = self._capped(limit)
            remaining = _int(headers.get("X-RateLimit-Remaining"))
            to_wait = _int(headers.get("X-RateLimit-ToWait-Sec"))
            if remaining == 0 and to_wait:
                self._not_before = max(self._not_before, self.clock() + to_wait)
            self._cond.notify_all()

    def pause(self, seconds: float) -> None:
        """Hold every new call for ``seconds`` (after a 409/429)."""
        with self._cond:
            self._not_before = max(self._not_before, self.clock() + seconds)

    def limit(self, key: str) -> int:
        """The current concurrency limit of API ``key``."""
        with self._cond:
            return self._api(key).limit


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        return None
