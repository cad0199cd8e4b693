"""Host detection answers parsed in separate processes (``parse: processes``, the default).

Profiling the pull (bench/hld.py) showed one interpreter's lock as the limit: parsing and converting a
detection costs more than everything else the collector does with it, threads cannot run it side by side, and
threads that parse at once cost more CPU than one (the same bytes in two threads took 2.2x the CPU). So a batch
worker thread keeps what needs the shared state (the HTTP client, its API budget, retries, the plan) and hands
the parsing to a process:

1. the thread writes the answer as it arrives into a spool file (memory stays flat however large the answer);
2. a process replaces the characters XML 1.0 forbids, parses the file with the same hardened parser and
   converter as the single-stream path, and writes one line per item: for a record its key, its QID and the
   JSON of its data (each host's fields serialised once for all its detections), ``["p", last_host_id]``
   after every ``hosts_per_page`` hosts, ``["d", DATETIME]`` and ``["u", URL]`` as they occur;
3. the thread reads the lines back into the same pages, tokens and horizons as :func:`host_pages`; the
   records keep their JSON, and the engine builds each event by joining strings
   (:meth:`~qualys_collector.engine.pipeline.EventBuilder.build`): nothing is decoded again in the collector.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from qualys_collector import children
from qualys_collector.errors import DataError
from qualys_collector.model import JSON, Page, Record
from qualys_collector.qualys.detections import converter
from qualys_collector.qualys.parse_child import Parsed, read_items
from qualys_collector.qualys.vm_hosts import HOSTS_PER_BATCH, AnswerItem, answer_items, host_pages
from qualys_collector.qualys.xml import ByteStream, ForbiddenCharacters, warn_replaced

if TYPE_CHECKING:  # the parsing process runs this module: it needs the parser, not the HTTP client
    from qualys_collector.qualys.vm import VmClient


#: The largest answer spooled for a parsing process (bytes of XML); a larger one is parsed in its batch worker's
#: thread. So the spool files of ``max_workers`` answers in flight stay within a bound on disk (README, Bounded
#: resources): an answer, then its items, which are at most about 1.3 times as large.
SPOOL_BYTES = 32 << 20


#: The module a parsing process runs (what its command line shows).
CHILD_MODULE = "qualys_collector.qualys.parse_child"


#: Spool directories are ``<TMPDIR>/qualys-collector-<pid>-<random>``: a collector killed with SIGKILL leaves its
#: own, and the next one removes them (:func:`sweep_spools`).
SPOOL_PREFIX = "qualys-collector-"


def sweep_spools(directory: Path | None = None) -> int:
    """Remove the spool directories of collectors that no longer run (killed before they could); how many."""
    removed = 0
    for entry in Path(directory or tempfile.gettempdir()).glob(f"{SPOOL_PREFIX}*-*"):
        pid = entry.name[len(SPOOL_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or not entry.is_dir() or entry.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its collector still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


class ParseProcess:
    """One parsing process (``python -m qualys_collector.qualys.parse_child``), one request at a time: a
    JSON line of arguments in, a JSON line with ``null`` or an error message out. It exits when its input
    closes, so it never outlives the collector, even one killed with SIGKILL.

    A plain child process rather than ``concurrent.futures.ProcessPoolExecutor``: no manager thread and no
    finalisers closing descriptors in the collector, just two pipes per process.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module (see qualys_collector.children)
            children.command(CHILD_MODULE),
            env=children.environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def parse(self, xml_path: str, out_path: str, results_max_length: int | None, hosts_per_page: int) -> Parsed:
        """:func:`parse_answer` in the process."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        try:
            self.proc.stdin.write(orjson.dumps([xml_path, out_path, results_max_length, hosts_per_page]) + b"\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:
            line = b""
        if not line:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(1)
            raise DataError(f"the parsing process exited (code {self.proc.poll()}) while parsing a Qualys answer")
        error, replaced, logged = orjson.loads(line)
        return Parsed(error, int(replaced), tuple((str(n), int(level), str(text)) for n, level, text in logged))

    def close(self) -> None:
        """End the process (it exits on the end of its input)."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(2)  # it ends at once unless it is in the middle of an answer nobody waits for
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class ParsePool:
    """``processes`` parsing processes shared by the batch worker threads, each lent to one thread at a time."""

    def __init__(self, processes: int) -> None:
        sweep_spools()
        self.processes = [ParseProcess() for _ in range(processes)]
        self.closed = False
        self._idle: queue.Queue[ParseProcess] = queue.Queue()
        for process in self.processes:
            self._idle.put(process)

    def parse(self, xml_path: str, out_path: str, results_max_length: int | None, hosts_per_page: int) -> Parsed:
        """Parse in the next idle process. A process found dead before it was asked is replaced and the answer
        given to the new one; one that dies while parsing is replaced and the :class:`DataError` raised (the
        batch is retried from its last committed page)."""
        process = self._idle.get()
        try:
            if process.proc.poll() is not None and not self.closed:  # died while idle: the answer is not lost
                process = self._replace(process)
            return process.parse(xml_path, out_path, results_max_length, hosts_per_page)
        except DataError:
            if not self.closed:
                process = self._replace(process)
            raise
        finally:
            self._idle.put(process)

    def _replace(self, process: ParseProcess) -> ParseProcess:
        process.close()
        fresh = ParseProcess()
        self.processes = [*(p for p in self.processes if p is not process), fresh]
        return fresh

    def close(self) -> None:
        """End every process (none is started after this)."""
        self.closed = True
        for process in self.processes:
            process.close()
        self.processes = []


def spooled_host_pages(
    client: VmClient,
    pool: ParsePool,
    path: str,
    params: dict[str, str],
    token: JSON | None,
    results_max_length: int | None,
    what: str,
) -> Iterator[Page]:
    """:func:`~qualys_collector.qualys.vm_hosts.host_pages` for host detections, parsed by ``pool``.

    An answer larger than :data:`SPOOL_BYTES` is parsed in this thread instead (what was spooled, then the rest
    as it streams), so the spool files on disk stay bounded whatever the size of an answer.
    """
    convert = converter(results_max_length)

    def read(request: dict[str, str]) -> Iterator[AnswerItem]:
        with tempfile.TemporaryDirectory(prefix=f"{SPOOL_PREFIX}{os.getpid()}-") as spool:
            answer, items = Path(spool) / "answer.xml", Path(spool) / "items.jsonl"
            with client.open(path, request) as response:
                chunks = client.chunks(path, response, clean=False)  # the process replaces forbidden characters
                if not _spool(chunks, answer):
                    with answer.open("rb") as head:
                        rest = itertools.chain(iter(partial(head.read, 1 << 20), b""), chunks)
                        yield from answer_items(ByteStream(ForbiddenCharacters(path).chunks(rest)), convert)
                    return
            parsed = pool.parse(str(answer), str(items), results_max_length, HOSTS_PER_BATCH)
            for name, level, message in parsed.logged:  # as the worker threads log it when they parse
                logging.getLogger(name).log(level, "%s", message)
            if parsed.replaced:
                warn_replaced(path, parsed.replaced)
            answer.unlink()
            if items.exists():  # what was parsed before an error too: its pages are delivered, as when streaming
                with items.open("rb") as lines:
                    yield from read_items(lines)
            if parsed.error is not None:
                raise DataError(parsed.error)

    return host_pages(client, path, params, token, convert, what, read)


def _spool(chunks: Iterator[bytes], target: Path, limit: int | None = None) -> bool:
    """Write ``chunks`` to ``target``: ``True`` once they ended, ``False`` (the rest left in ``chunks``) once more
    than ``limit`` bytes (:data:`SPOOL_BYTES`) were written."""
    limit = SPOOL_BYTES if limit is None else limit
    written = 0
    with target.open("wb") as out:
        for chunk in chunks:
            out.write(chunk)
            written += len(chunk)
            if written > limit:
                return False
    return True


def one_at_a_time_host_pages(
    client: VmClient,
    lock: threading.Lock,
    path: str,
    params: dict[str, str],
    token: JSON | None,
    convert: Callable[[dict[str, Any]], list[Record]],
    what: str,
) -> Iterator[Page]:
    """:func:`~qualys_collector.qualys.vm_hosts.host_pages` with the answers fetched side by side and parsed one at a
    time: each answer is streamed into a spool file (memory stays flat), then parsed and converted while ``lock``
    is held, so no two threads of the interpreter parse at once (``parse: one_at_a_time``)."""

    def read(request: dict[str, str]) -> Iterator[AnswerItem]:
        with tempfile.TemporaryFile(prefix="qualys-collector-") as spool:
            with client.open(path, request) as response:
                shutil.copyfileobj(client.body(path, response), spool, 1 << 20)
            spool.seek(0)
            with lock:
                yield from answer_items(spool, convert)

    return host_pages(client, path, params, token, convert, what, read)
