"""Log lines in the seeds' shape: ``2024-05-30T17:12:45.058    INFO Process::Thread -> message``.

Every handler carries the redacting filter, so no registered secret reaches a line.
``--log-format json`` emits one JSON object per line for machines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TextIO

from qualys_collector.redact import RedactingFilter


class SeedFormatter(logging.Formatter):
    """The seeds' format, UTC timestamps with milliseconds."""

    converter = staticmethod(time.gmtime)

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)7s %(processName)s::%(threadName)s -> %(message)s")
        self.datefmt = "%Y-%m-%dT%H:%M:%S"


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        data = {
            "time": f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "process": record.processName,
            "thread": record.threadName,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, ensure_ascii=False)


def setup_logging(*, debug: bool = False, fmt: str = "seed", stream: TextIO | None = None) -> None:
    """Send all logs to standard error (or ``stream``) in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else SeedFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("httpx", "httpcore", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
