"""One exception tree, grouped by what the caller must do.

::

    CollectorError                  numbered like the seeds' troubleshooting tables where they have a number
    ├── ConfigError                 bad configuration: exit 2 before any network call
    │     codes 1-3 are the seeds' InitVariablesError (start_time_utc)
    ├── SourceError                 Qualys answered badly or not at all
    │   ├── SetupError              100-103: authentication / permission; not retried in a loop
    │   └── PullError               300 (HTTP error) / 301 (anything else while pulling)
    │       │ .retryable            True when the caller may try again later (5xx, cut, 409...)
    │       └── PullTimeoutError    301: Qualys did not answer in time; a smaller request may succeed
    ├── DataError                   a payload we cannot parse (malformed XML/JSON/CSV) -> PullError 301 upstream
    ├── StateError                  500-505: the state directory is unusable (read-only, full, corrupt, in use)
    ├── BackfillError               600-605: a backfill's arguments (600-603, exit 2 before any network call),
    │                               another range under way (604), a range left unfinished (605)
    ├── StopRequested               SIGTERM/SIGINT ended a wait: not a failure; the checkpoint stays put
    └── DeliveryError               a sink could not confirm delivery; the outbox keeps the rows

Every message says what happened, where (service, key path, URL without secrets) and the fix.
Foreign exceptions are mapped at the seam that raised them and chained with ``from``.
"""

from __future__ import annotations

from typing import ClassVar

#: The seeds' error numbers and their type names, for the troubleshooting table and log lines.
ERROR_TYPES: dict[int, str] = {
    2: "InitVariablesError",
    3: "InitVariablesError",
    10: "ConfigError",
    11: "ConfigError",
    12: "ConfigError",
    13: "ConfigError",
    14: "ConfigError",
    15: "ConfigError",
    100: "SetupError",
    101: "SetupError",
    102: "SetupError",
    103: "SetupError",
    300: "PullError",
    301: "PullError",
    302: "PullError",
    400: "DeliveryError",
    401: "DeliveryError",
    402: "DeliveryError",
    403: "DeliveryError",
    404: "DeliveryError",
    405: "DeliveryError",
    406: "DeliveryError",
    407: "DeliveryError",
    408: "DeliveryError",
    420: "DeliveryError",
    421: "DeliveryError",
    422: "DeliveryError",
    423: "DeliveryError",
    500: "StateError",
    501: "StateError",
    502: "StateError",
    503: "StateError",
    504: "StateError",
    505: "StateError",
    600: "BackfillError",
    601: "BackfillError",
    602: "BackfillError",
    603: "BackfillError",
    604: "BackfillError",
    605: "BackfillError",
    900: "CollectorError",
}

#: The fix of a configuration error that did not name its own.
CONFIG_FIX = "correct it in the configuration file (every key: docs/configuration.md); nothing was sent to Qualys"


class CollectorError(Exception):
    """Root of every error this package raises on purpose."""

    kind: ClassVar[str] = "CollectorError"

    def __init__(self, message: str, *, code: int | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.fix = fix

    def headline(self) -> str:
        """The numbered message without its fix: a one-line reason (``/readyz``)."""
        head = f"[{ERROR_TYPES.get(self.code, self.kind)} {self.code}] " if self.code is not None else f"[{self.kind}] "
        return f"{head}{self.message}"

    def __str__(self) -> str:
        tail = f" Fix: {self.fix}" if self.fix else ""
        return f"{self.headline()}{tail}"


class ConfigError(CollectorError):
    """The configuration is invalid. Raised before any network call; the CLI exits with status 2."""

    kind = "ConfigError"

    def __init__(self, path: str, message: str, *, fix: str | None = None, code: int | None = None) -> None:
        """10: a key or value, 11: the file itself (missing, unreadable, not YAML/JSON), 12: an alias bomb,
        13: a Qualys parameter the service's ``api_version`` does not offer, 14: ``extra_params`` names a
        parameter the collector sends itself (or a typed option), 15: a combination Qualys refuses;
        1-3: the seeds' InitVariablesError (``start_time_utc``)."""
        super().__init__(f"{path}: {message}" if path else message, code=code or 10, fix=fix or CONFIG_FIX)
        self.path = path


class SourceError(CollectorError):
    """Qualys could not be read. ``retryable`` tells the engine whether a later attempt may succeed."""

    kind = "SourceError"
    retryable: bool = False


class SetupError(SourceError):
    """Authentication or permission failure (seed errors 100-103)."""

    kind = "SetupError"


class PullError(SourceError):
    """Failure while pulling (seed errors 300: HTTP error, 301: anything else)."""

    kind = "PullError"

    def __init__(self, message: str, *, code: int = 301, fix: str | None = None, retryable: bool = False) -> None:
        super().__init__(message, code=code, fix=fix)
        self.retryable = retryable


class PullTimeoutError(PullError):
    """Qualys did not answer within ``request_timeout_seconds`` (after the bounded retries): 301, retryable.

    A timeout, unlike other pull failures, may be cured by asking for less: a batch that times out is split.
    """

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message, code=301, fix=fix, retryable=True)


class DataError(CollectorError):
    """A Qualys payload could not be parsed (malformed or truncated XML, JSON or CSV)."""

    kind = "DataError"

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message, code=301, fix=fix)


class StateError(CollectorError):
    """The state directory or its database cannot be used.

    500 cannot write (read-only, full), 501 the database is empty or corrupt, 502 a stored row is not
    readable, 503 another collector holds the state directory, 504 written by a newer collector, 505 a bug.
    """

    kind = "StateError"
    #: Codes that no later cycle can get past: the collector stops instead of failing every cycle.
    FATAL = frozenset({501, 502, 503, 504, 505})

    def __init__(self, message: str, *, code: int = 500, fix: str | None = None) -> None:
        default = "check free disk space and that the state directory is writable; nothing was lost"
        super().__init__(message, code=code, fix=fix or (default if code == 500 else "see README's error table"))

    @property
    def fatal(self) -> bool:
        """Whether the state must be repaired before anything can run again."""
        return self.code in self.FATAL


class BackfillError(CollectorError):
    """A backfill cannot start or did not finish.

    600 ``--to`` is not after ``--from``, 601 ``--to`` is not yet settled (later than now minus the service's
    settle lag), 602 the service is unknown, not configured or not pulled by time window, 603 a date is not
    ``YYYY-MM-DDTHH:MM:SSZ``: all before any network call. 604 another range of the service is under way.
    605 the range was left unfinished (a cycle failed, or a stop): running the same command again resumes it.
    """

    kind = "BackfillError"
    #: Codes raised on the command's arguments, before any network call (the CLI exits 2 for them).
    USAGE = frozenset({600, 601, 602, 603, 604})

    def __init__(self, message: str, *, code: int, fix: str) -> None:
        super().__init__(message, code=code, fix=fix)


class StopRequested(CollectorError):
    """A stop was requested (SIGTERM/SIGINT) while the collector waited; raised out of the wait so the cycle ends
    at once, with the checkpoint at the last committed page."""

    kind = "Stopped"


class DeliveryError(CollectorError):
    """A sink could not confirm delivery. Nothing is removed from the outbox.

    400-404 the Devo output (certificates, connection, confirmation), 405 the file output cannot write,
    406 standard output is closed, 407 an output acknowledged what it was not given or failed unexpectedly,
    408 an output stopped re-sending a batch its relay would not confirm.
    420-423 the Devo HTTP output (refused, not confirmed, TLS not trusted, event too large).

    ``retry_after``: the receiver asked to wait that many seconds before the next try (HTTP ``Retry-After``).
    """

    kind = "DeliveryError"

    def __init__(
        self, message: str, *, code: int = 407, fix: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code, fix=fix)
        self.retry_after = retry_after
