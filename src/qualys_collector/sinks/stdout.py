"""``type: stdout``: JSON Lines on standard output (logs go to standard error)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Literal, TextIO

from qualys_collector.errors import DeliveryError
from qualys_collector.model import StoredEvent
from qualys_collector.sinks.base import (
    Ack,
    BuildContext,
    Confirmation,
    OutputBlock,
    OutputOptions,
    OutputType,
    json_lines,
)


class StdoutOutputOptions(OutputOptions):
    """``type: stdout``: JSON Lines on standard output."""


class StdoutOutput(OutputBlock):
    """An output of type ``stdout``."""

    type: Literal["stdout"]
    config: StdoutOutputOptions = StdoutOutputOptions()


class StdoutSink:
    """Writes each event as one JSON line to standard output."""

    confirmation = Confirmation.NONE

    def __init__(self, name: str, stream: TextIO | None = None) -> None:
        self.name = name
        self._stream = stream

    def deliver(self, batch: Sequence[StoredEvent]) -> Ack:
        """Write and flush; a closed pipe is a delivery failure."""
        stream = self._stream or sys.stdout
        try:
            stream.write(json_lines(batch))
            stream.flush()
        except (OSError, ValueError) as exc:
            raise DeliveryError(
                f"output {self.name}: standard output is closed ({exc})",
                code=406,
                fix="run the collector with its standard output open (a pipe whose reader stays), or use a file output",
            ) from exc
        return Ack.all(batch)

    def close(self) -> None:
        """Nothing to release."""


def build(name: str, output: StdoutOutput, context: BuildContext) -> StdoutSink:
    """Standard output needs no options."""
    return StdoutSink(name)


OUTPUT = OutputType("stdout", StdoutOutput, StdoutOutputOptions, build)
