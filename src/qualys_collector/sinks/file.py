"""``type: file``: JSON Lines on local disk, flushed and fsynced before the outbox forgets a batch."""

from __future__ import annotations

import contextlib
import logging
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
    json_lines,
)

logger = logging.getLogger("qualys_collector.sender")

#: Bytes read at a time, from the end, when looking for the last complete line.
TAIL_BLOCK = 1 << 16


class FileOutputOptions(OutputOptions):
    """``type: file``: JSON Lines, one ``{"tag": ..., "event": {...}}`` per line."""

    path: str | None = None


class FileOutput(OutputBlock):
    """An output of type ``file``."""

    type: Literal["file"]
    config: FileOutputOptions = FileOutputOptions()


class FileSink:
    """Appends ``{"tag": ..., "event": {...}}`` lines to one file.

    Before each batch the file at ``path`` is compared with the one held open (device and inode), as
    log shippers do: a file renamed or deleted by logrotate is closed and ``path`` opened (created)
    again, so no batch goes into the rotated file. On open, a last line without its newline (a write
    cut by kill -9; nothing of it was acknowledged, so the outbox still has those events) is cut off,
    and the batch that follows starts on a line of its own.
    """

    confirmation = Confirmation.FSYNC

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._file: IO[bytes] | None = None

    def _open(self) -> IO[bytes]:
        if self._file is not None and not self._same_file(self._file):
            logger.info("Output %s: %s was rotated or deleted; opening it again", self.name, self.path)
            self.close()
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                self._repair(fd)
            except OSError:
                os.close(fd)
                raise
            self._file = os.fdopen(fd, "ab")
        return self._file

    def _same_file(self, handle: IO[bytes]) -> bool:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(handle.fileno())
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    def _repair(self, fd: int) -> None:
        """Cut a torn last line (everything after the last newline) left by an interrupted write."""
        size = os.fstat(fd).st_size
        end = size
        while end > 0:
            start = max(0, end - TAIL_BLOCK)
            block = os.pread(fd, end - start, start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end < size:
            os.ftruncate(fd, end)
            os.fsync(fd)
            logger.warning(
                "Output %s: cut a torn last line of %d bytes from %s (an interrupted write; its events are "
                "still in the outbox and are written again whole)",
                self.name,
                size - end,
                self.path,
            )

    def deliver(self, batch: Sequence[StoredEvent]) -> Ack:
        """Write, flush and fsync; on failure cut the file back so no partial batch remains."""
        start: int | None = None
        try:
            handle = self._open()
            start = handle.seek(0, os.SEEK_END)
            handle.write(json_lines(batch).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            if self._file is not None and start is not None:
                with contextlib.suppress(OSError):
                    self._file.truncate(start)
            self.close()
            raise DeliveryError(
                f"output {self.name}: cannot write {self.path}: {exc.strerror}",
                code=405,
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
