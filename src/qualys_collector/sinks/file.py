"""``type: file``: JSON Lines on local disk, flushed and fsynced before the outbox forgets a batch."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal

from qualys_collector.errors import DeliveryError
from qualys_collector.model import StoredEvent
from qualys_collector.sinks.base import (
    Ack,
    BuildContext,
    Confirmation,
    OutputBlock,
    OutputOptions,
    OutputType,
    envelope,
)


class FileOutputOptions(OutputOptions):
    """``type: file``: JSON Lines, one ``{"tag": ..., "event": {...}}`` per line."""

    path: str | None = None


class FileOutput(OutputBlock):
    """An output of type ``file``."""

    type: Literal["file"]
    config: FileOutputOptions = FileOutputOptions()


class FileSink:
    """Appends ``{"tag": ..., "event": {...}}`` lines to one file."""

    confirmation = Confirmation.FSYNC

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._file: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._file = os.fdopen(fd, "ab")
        return self._file

    def deliver(self, batch: Sequence[StoredEvent]) -> Ack:
        """Write, flush and fsync; on failure cut the file back so no partial batch remains."""
        start: int | None = None
        try:
            handle = self._open()
            start = handle.seek(0, os.SEEK_END)
            handle.write("".join(envelope(e) for e in batch).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            if self._file is not None and start is not None:
                with contextlib.suppress(OSError):
                    self._file.truncate(start)
            self.close()
            raise DeliveryError(
                f"output {self.name}: cannot write {self.path}: {exc.strerror}",
                fix="free disk space or fix the file's permissions; the events stay in the outbox",
            ) from exc
        return Ack.all(batch)

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def build(name: str, output: FileOutput, context: BuildContext) -> FileSink:
    """``config.path``, else ``<state>/<name>.jsonl``."""
    path = Path(output.config.path) if output.config.path else context.state_dir / f"{name}.jsonl"
    return FileSink(name, path)


OUTPUT = OutputType("file", FileOutput, FileOutputOptions, build)
