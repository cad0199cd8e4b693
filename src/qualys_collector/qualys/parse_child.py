"""The parsing process of ``parse: processes`` (:mod:`~qualys_collector.services.hld_process` starts it).

It runs ``python -P -m qualys_collector.qualys.parse_child`` and loads only what parsing needs: the hardened
parser, the detection conversion, orjson. Not the HTTP client, the configuration, nor OpenSSL (``hashlib`` loads
libcrypto, 3.7 MB of every process), nor the parent's process plumbing; a test holds it to that.

One JSON line of arguments per answer in (the spooled answer, the file for its items, the RESULTS cap, hosts per
page), one JSON line out (``[error or null, characters replaced, [[logger, level, message], …]]``): what the
parser logged travels back and the collector logs it, in its own format, as the worker threads would. It exits
when its input closes, so it never outlives the collector, even one killed with SIGKILL.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from lxml import etree

from qualys_collector.errors import DataError
from qualys_collector.model import Record
from qualys_collector.observability.heap import return_large_blocks
from qualys_collector.qualys.detections import QID_HINT, converter
from qualys_collector.qualys.vm_hosts import AnswerItem, answer_items
from qualys_collector.qualys.xml import ByteStream, ForbiddenCharacters


class Parsed(NamedTuple):
    """What parsing one answer in a process gave: the message of the :class:`DataError` it raised (exceptions
    with extra constructor arguments do not travel back between processes intact), how many characters XML
    1.0 forbids it replaced (the collector logs the warning), and what it logged (the collector logs it)."""

    error: str | None
    replaced: int
    logged: tuple[tuple[str, int, str], ...] = ()


def parse_answer(
    xml_path: str,
    out_path: str,
    results_max_length: int | None,
    hosts_per_page: int,
    forget: Callable[[], object] | None = None,
) -> Parsed:
    """Runs in a parsing process: the answer at ``xml_path`` to lines of its items at ``out_path``.

    The answer is as Qualys sent it. Characters XML 1.0 forbids are replaced (U+FFFD) as in the worker threads,
    but only once the parser has refused the answer as it came: the answer is a file, so it is read again from its
    start, cleaned, into a new ``out_path``, and what the first reading logged is forgotten (``forget``). Almost
    every answer is clean, and looking for those characters cost 4-7 µs per detection (measured in
    ``bench/hld.py``'s answers), over a tenth of this process; libxml2 refuses each of them, raw or as a
    reference, so a clean answer never needs it (a test holds the parser to that). One difference from the
    threads: a reference written as text inside CDATA (``<![CDATA[&#x1;]]>``, not markup there) is kept as
    it came when nothing else in the answer is refused.

    A record is ``["r", key, qid]``, a tab, and the JSON of its data (made here, once: the collector
    builds the event from it by joining strings and never decodes it); the other items are ``[kind, value]``.
    A JSON array never holds a raw tab or newline (JSON escapes them), so the first tab of a line ends its head.
    """
    parsed = _parse_answer(xml_path, out_path, results_max_length, hosts_per_page, None)
    if parsed is not None:
        return parsed
    if forget is not None:
        forget()
    forbidden = ForbiddenCharacters(xml_path, warn=False)
    parsed = _parse_answer(xml_path, out_path, results_max_length, hosts_per_page, forbidden)
    assert parsed is not None  # with a cleaner, a syntax error is an answer too
    return parsed


def _parse_answer(
    xml_path: str,
    out_path: str,
    results_max_length: int | None,
    hosts_per_page: int,
    forbidden: ForbiddenCharacters | None,
) -> Parsed | None:
    """One reading of the answer (see :func:`parse_answer`): without ``forbidden``, ``None`` where the parser
    refused the bytes (they may hold characters XML forbids)."""
    dumps = orjson.dumps
    try:
        with open(xml_path, "rb") as source, open(out_path, "wb") as out:
            chunks = iter(partial(source.read, 1 << 20), b"")
            stream = ByteStream(chunks if forbidden is None else forbidden.chunks(chunks))
            host: Any = None
            host_json: Any = None
            for kind, value in answer_items(stream, converter(results_max_length), hosts_per_page):
                if kind == "r":
                    data = value.data
                    if data["HOST"] is not host:  # one host's records share its fields: their JSON is made once
                        host = data["HOST"]
                        host_json = orjson.Fragment(_data_json(host))
                    detection = data.get("DETECTION")
                    qid = detection.get("QID") if isinstance(detection, dict) else None
                    try:
                        body = dumps({**data, "HOST": host_json}, option=_OPTIONS)
                    except orjson.JSONEncodeError:  # pragma: no cover - XML text is always valid Unicode
                        body = _data_json(data)
                    line = (dumps(["r", value.key, qid]), b"\t", body, b"\n")
                    out.write(b"".join(line))
                else:
                    out.write(dumps([kind, value]) + b"\n")
    except DataError as exc:
        if forbidden is None and isinstance(exc.__cause__, etree.XMLSyntaxError):
            return None
        return Parsed(exc.message, forbidden.replaced if forbidden is not None else 0)
    return Parsed(None, forbidden.replaced if forbidden is not None else 0)


#: As :meth:`~qualys_collector.model.Event.to_json`: datetimes and dataclasses go to ``default=str``.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _data_json(data: Any) -> bytes:
    """``data`` as :meth:`~qualys_collector.model.Event.to_json` would write them."""
    try:
        return orjson.dumps(data, default=str, option=_OPTIONS)
    except orjson.JSONEncodeError:  # pragma: no cover - XML text is always valid Unicode
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def read_items(lines: Iterable[bytes]) -> Iterator[AnswerItem]:
    """The items a parsing process wrote (:func:`parse_answer`): records as JSON, never decoded here."""
    loads = orjson.loads
    for line in lines:
        head, tab, raw = line.partition(b"\t")
        item: list[Any] = loads(head)
        if tab:
            yield "r", Record(raw=raw[:-1].decode(), key=item[1], hints={QID_HINT: item[2]})
        else:
            yield item[0], item[1]


class Kept(logging.Handler):
    """Keeps what the parser logs (this process has no log output of its own) for the answer to the collector:
    the first :data:`KEPT` records of an answer, then one line saying how many more there were (memory stays
    bounded however many a hostile answer causes)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[str, int, str]] = []
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record's logger, level and message."""
        if len(self.records) < KEPT:
            self.records.append((record.name, record.levelno, record.getMessage()))
        else:
            self.dropped += 1

    def take(self) -> tuple[tuple[str, int, str], ...]:
        """The records of the answer just parsed; forget them."""
        kept = self.records
        if self.dropped:
            kept.append(("qualys_collector.qualys", logging.WARNING, f"... and {self.dropped} more such messages"))
        self.records, self.dropped = [], 0
        return tuple(kept)


#: Log records of one answer kept for the collector.
KEPT = 50


def main() -> None:
    """The parsing process: one JSON line of arguments per answer; one JSON line back."""
    return_large_blocks()
    kept = Kept()
    root = logging.getLogger("qualys_collector")
    root.addHandler(kept)
    root.setLevel(logging.INFO)
    root.propagate = False  # nothing reaches stderr through Python's last-resort handler
    for line in sys.stdin.buffer:
        xml_path, out_path, results_max_length, hosts_per_page = orjson.loads(line)
        try:
            parsed = parse_answer(xml_path, out_path, results_max_length, hosts_per_page, kept.take)
        except Exception as exc:  # noqa: BLE001 - said to the collector, which logs it with its number and fix
            where = Path(out_path).parent.parent
            message = f"the parsing process failed on its spool files in {where}: {type(exc).__name__}: {exc}"
            parsed = Parsed(f"{message} (free space there, or point TMPDIR at a directory with room)", 0)
        parsed = parsed._replace(logged=kept.take())
        sys.stdout.buffer.write(orjson.dumps(list(parsed)) + b"\n")
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
