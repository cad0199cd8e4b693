"""Host detection answers parsed in separate processes.

Profiling the pull (bench/hld.py) showed one interpreter's lock as the limit: parsing and converting a
detection costs more than everything else the collector does with it, and threads cannot run it side by
side. So a batch worker thread keeps what needs the shared state (the HTTP client, its API budget, retries,
the plan) and hands the parsing to a process:

1. the thread streams the answer into a spool file (memory stays flat however large the answer);
2. a process parses the file with the same hardened parser and converter as the single-stream path and
   writes JSON Lines: ``["r", key, data]`` per record, ``["p", last_host_id]`` after every
   ``hosts_per_page`` hosts, ``["d", DATETIME]`` and ``["u", URL]`` as they occur;
3. the thread reads the lines back into the same pages, tokens and horizons as :func:`host_pages`.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from qualys_collector.errors import DataError
from qualys_collector.model import JSON, Page, Record
from qualys_collector.observability.heap import return_large_blocks
from qualys_collector.qualys.detections import converter
from qualys_collector.qualys.vm_hosts import HOSTS_PER_BATCH, AnswerItem, answer_items, host_pages

if TYPE_CHECKING:  # the parsing process runs this module: it needs the parser, not the HTTP client
    from qualys_collector.qualys.vm import VmClient


class ParseProcess:
    """One parsing process (``python -m qualys_collector.services.hld_process``), one request at a time: a
    JSON line of arguments in, a JSON line with ``null`` or an error message out. It exits when its input
    closes, so it never outlives the collector, even one killed with SIGKILL.

    A plain child process rather than ``concurrent.futures.ProcessPoolExecutor``: no manager thread and no
    finalisers closing descriptors in the collector, just two pipes per process.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qualys_collector.services.hld_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def parse(self, xml_path: str, out_path: str, results_max_length: int | None, hosts_per_page: int) -> str | None:
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
            raise DataError(f"the parsing process exited (code {self.proc.poll()}) while parsing a Qualys answer")
        answer: str | None = orjson.loads(line)
        return answer

    def close(self) -> None:
        """End the process (it exits on the end of its input)."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class ParsePool:
    """``processes`` parsing processes shared by the batch worker threads, each lent to one thread at a time."""

    def __init__(self, processes: int) -> None:
        self.processes = [ParseProcess() for _ in range(processes)]
        self._idle: queue.Queue[ParseProcess] = queue.Queue()
        for process in self.processes:
            self._idle.put(process)

    def parse(self, xml_path: str, out_path: str, results_max_length: int | None, hosts_per_page: int) -> str | None:
        """Parse in the next idle process; a process that died is replaced."""
        process = self._idle.get()
        try:
            return process.parse(xml_path, out_path, results_max_length, hosts_per_page)
        except DataError:
            process.close()
            self.processes = [p for p in self.processes if p is not process]
            process = ParseProcess()
            self.processes.append(process)
            raise
        finally:
            self._idle.put(process)

    def close(self) -> None:
        """End every process."""
        for process in self.processes:
            process.close()
        self.processes = []


def parse_answer(xml_path: str, out_path: str, results_max_length: int | None, hosts_per_page: int) -> str | None:
    """Runs in a parsing process: the answer at ``xml_path`` to JSON Lines of its items at ``out_path``.

    Returns ``None``, or the message of the :class:`DataError` the parse raised (exceptions with extra
    constructor arguments do not travel back between processes intact).
    """
    dumps = orjson.dumps
    try:
        with open(xml_path, "rb") as source, open(out_path, "wb") as out:
            for kind, value in answer_items(source, converter(results_max_length), hosts_per_page):
                item = ["r", value.key, value.data] if kind == "r" else [kind, value]
                out.write(dumps(item) + b"\n")
    except DataError as exc:
        return exc.message
    return None


def spooled_host_pages(
    client: VmClient,
    pool: ParsePool,
    path: str,
    params: dict[str, str],
    token: JSON | None,
    results_max_length: int | None,
    what: str,
) -> Iterator[Page]:
    """:func:`~qualys_collector.qualys.vm_hosts.host_pages` for host detections, parsed by ``pool``."""

    def read(request: dict[str, str]) -> Iterator[AnswerItem]:
        with tempfile.TemporaryDirectory(prefix="qualys-collector-") as spool:
            answer, items = Path(spool) / "answer.xml", Path(spool) / "items.jsonl"
            with client.open(path, request) as response, answer.open("wb") as out:
                shutil.copyfileobj(client.body(path, response), out, 1 << 20)
            error = pool.parse(str(answer), str(items), results_max_length, HOSTS_PER_BATCH)
            if error is not None:
                raise DataError(error)
            answer.unlink()
            with items.open("rb") as lines:
                for line in lines:
                    item: list[Any] = orjson.loads(line)
                    yield ("r", Record(data=item[2], key=item[1])) if item[0] == "r" else (item[0], item[1])

    return host_pages(client, path, params, token, converter(results_max_length), what, read)


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


def main() -> None:
    """The parsing process: one JSON line of arguments per answer; one JSON line back."""
    return_large_blocks()
    for line in sys.stdin.buffer:
        xml_path, out_path, results_max_length, hosts_per_page = orjson.loads(line)
        error = parse_answer(xml_path, out_path, results_max_length, hosts_per_page)
        sys.stdout.buffer.write(orjson.dumps(error) + b"\n")
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
