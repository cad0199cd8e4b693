"""``type: stdout``: JSON Lines on standard output (logs go to standard error)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from qualys_collector.errors import DeliveryError
from qualys_collector.model import StoredEvent
from qualys_collector.sinks.base import envelope


class StdoutSink:
    """Writes each event as one JSON line to standard output."""

    def __init__(self, name: str, stream: TextIO | None = None) -> None:
        self.name = name
        self._stream = stream

    def deliver(self, events: Sequence[StoredEvent]) -> None:
        """Write and flush; a closed pipe is a delivery failure."""
        stream = self._stream or sys.stdout
        try:
            stream.write("".join(envelope(e) for e in events))
            stream.flush()
        except (OSError, ValueError) as exc:
            raise DeliveryError(f"output {self.name}: standard output is closed ({exc})") from exc

    def close(self) -> None:
        """Nothing to release."""
