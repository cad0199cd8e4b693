"""Reading host-paged XML (host list and host list detection): sorted by host ID, truncated by
``WARNING`` with ``id_min``, so a window resumes at any host boundary."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from qualys_collector.errors import DataError
from qualys_collector.model import JSON, Page, Record, format_seed_datetime, parse_seed_datetime
from qualys_collector.qualys.paging import ANSWER_FIX, guard_progress, url_cursor
from qualys_collector.qualys.xml import element_to_value, iter_elements

logger = logging.getLogger("qualys_collector.qualys")

if TYPE_CHECKING:  # the parsing processes import this module: no HTTP client for them
    from qualys_collector.qualys.vm import VmClient

#: Hosts per page handed to the engine (one transaction each) within a larger response.
HOSTS_PER_BATCH = 200
#: Answer bytes per page: a page also ends at the first host boundary after this much XML, so a page's memory
#: (its records, their events and JSON) follows this bound, not ``HOSTS_PER_BATCH`` times the size of a host
#: (hosts with megabytes of RESULTS each made 200-host pages of gigabytes). Several pages are in flight at once
#: (``ahead`` handed over, one per batch worker being read, one in the page stages): 2 MiB took the collector's
#: peak RSS at 500k detections from 128 to 117 MB against 4 MiB, at no CPU cost measurable (bench/hld.py A/B); at
#: 1 MiB it was 108 MB but about 4 % more CPU (twice the page stages and commits).
PAGE_BYTES = 2 << 20


def window_params(start: datetime, end: datetime) -> dict[str, str]:
    """``vm_processed_after``/``_before`` for ``[start, end)``.

    Qualys compares these strictly [I], so the request starts one second early (timestamps are whole seconds).
    """
    return {
        "vm_processed_after": format_seed_datetime(start - timedelta(seconds=1)),
        "vm_processed_before": format_seed_datetime(end),
    }


#: What reading one answer yields: ``("r", Record)`` per record, ``("p", last host ID)`` where a page may end,
#: ``("d", RESPONSE/DATETIME text)`` and ``("u", WARNING/URL text)``.
AnswerItem = tuple[str, Any]


def answer_items(
    source: Any,
    convert: Callable[[dict[str, Any]], list[Record]],
    hosts_per_page: int = HOSTS_PER_BATCH,
    page_bytes: int = PAGE_BYTES,
) -> Iterator[AnswerItem]:
    """The items of one host-paged XML answer (a binary stream), parsed and converted as they stream.

    A page may end (``"p"``) after every ``hosts_per_page`` hosts, and after the first host that ends at least
    ``page_bytes`` of the answer after the previous page boundary (bytes the parser has read from ``source``).
    """
    hosts = 0
    position = _reader_position(source)
    boundary = position()
    previous: int | None = None
    ordered = True
    for tag, element in iter_elements(source, {"HOST", "URL", "DATETIME"}):
        if tag == "DATETIME" or tag == "URL":
            yield ("d" if tag == "DATETIME" else "u"), element.text or ""
            continue
        host = element_to_value(element)
        number = host_number(host.get("ID") if isinstance(host, dict) else None)
        if number is not None and previous is not None and number <= previous:
            if number == previous:
                raise DataError(
                    f"Qualys answered host {number} twice in a row; stopping so that it is not delivered twice",
                    fix=ANSWER_FIX,
                )
            if ordered:  # a real answer (XSOAR's test data) lists 143111841 before 10112200
                logger.warning(
                    "The answer is not sorted by host ID (%d after %d): it ends no more pages, so a break resumes "
                    "from the last page before this host",
                    number,
                    previous,
                )
                ordered = False  # a page after this would resume past hosts of lower IDs still to come
        previous = number if number is not None else previous
        for record in convert(host):
            yield "r", record
        hosts += 1
        read = position()
        if (hosts % hosts_per_page == 0 or read - boundary >= page_bytes) and number is not None and ordered:
            hosts, boundary = 0, read
            yield "p", number


def host_number(host_id: Any) -> int | None:
    """A host ID as a number; ``None`` for one that is not a string of ASCII digits (not checked, no page ends)."""
    if isinstance(host_id, str) and host_id.isascii() and host_id.isdigit():
        return int(host_id)
    return None


def _reader_position(source: Any) -> Callable[[], int]:
    """How many bytes of ``source`` have been read: a :class:`~qualys_collector.qualys.xml.ByteStream` counts
    them, a file knows its offset; anything else counts as nothing (pages then end by host count only)."""
    if hasattr(source, "bytes_read"):
        return lambda: int(source.bytes_read)
    if hasattr(source, "tell"):
        return lambda: int(source.tell())
    return lambda: 0


def host_pages(
    client: VmClient,
    path: str,
    params: dict[str, str],
    token: JSON | None,
    convert: Callable[[dict[str, Any]], list[Record]],
    what: str,
    read: Callable[[dict[str, str]], Iterator[AnswerItem]] | None = None,
) -> Iterator[Page]:
    """Pages of records from every host of a (possibly truncated) answer, resumable by host ID.

    ``read(request)`` yields one answer's items; by default the answer is parsed as it streams in this
    thread (:mod:`~qualys_collector.services.hld_process` reads it through a parsing process instead).
    """

    def streamed(request: dict[str, str]) -> Iterator[AnswerItem]:
        with client.open(path, request) as response:
            yield from answer_items(client.body(path, response), convert)

    def fetch(start: JSON | None) -> Iterator[Page]:
        id_min = int(start["id_min"]) if start else None
        asked = AskedHosts()
        while True:
            request = dict(params)
            if id_min is not None:
                request["id_min"] = str(id_min)
            asked.ask(request)
            host = "\0"  # no key starts with it: the first record is checked
            next_id: int | None = None
            batch: list[Record] = []
            for kind, value in (read or streamed)(request):
                if kind == "r":
                    if not value.key.startswith(host):  # a record of the next host (keys start with its ID)
                        host = value.key.partition(":")[0] + ":"
                        asked.check(host[:-1])
                    batch.append(value)
                elif kind == "p":
                    yield Page(batch, token={"id_min": value + 1}, horizon=horizon[0])
                    batch = []
                elif kind == "d":
                    horizon[0] = server_time(value, horizon[0])
                else:
                    next_id = url_cursor(value, "id_min")
            if next_id is None:
                yield Page(batch, token=None, horizon=horizon[0])
                return
            guard_progress(id_min, next_id, ascending=True)
            asked.follow(next_id)
            id_min = next_id
            yield Page(batch, token={"id_min": next_id}, horizon=horizon[0])

    horizon: list[datetime | None] = [None]
    return client.resumable(fetch, token, what)


class AskedHosts:
    """The host IDs the requests of one pull asked for (``ids`` as one range, from ``id_min``), to check each host
    answered.

    Qualys answers only those. A host outside them, or a next-page URL whose ``id_min`` is not after the last host
    answered, means a parameter did not reach Qualys or was not honoured (a proxy that drops a form body, a stand-in
    server, a URL that names the last host instead of the next): delivering it would send hosts already delivered,
    or another batch's, again on every request, so the answer is refused (a :class:`DataError`).
    """

    def __init__(self) -> None:
        self.request: dict[str, str] = {}
        self.low: int = 0
        self.high: int | None = None
        self.last: int | None = None  # the last host of the answer so far (in its order), for :meth:`follow`

    def ask(self, request: dict[str, str]) -> None:
        """The next request of the pull."""
        self.request = request
        self.low, self.high = 0, None
        low, dash, high = request.get("ids", "").partition("-")
        first, last = host_number(low.strip()), host_number(high.strip())
        if dash and first is not None and last is not None:
            self.low, self.high = first, last
        elif not dash and first is not None:
            self.low = self.high = first
        id_min = host_number(request.get("id_min", ""))
        if id_min is not None:
            self.low = max(self.low, id_min)

    def check(self, host_id: str) -> None:
        """Refuse ``host_id`` if the request did not ask for it (IDs that are not numbers are not checked)."""
        number = host_number(host_id)
        if number is None:
            return
        if number < self.low or (self.high is not None and number > self.high):
            asked = ", ".join(f"{name}={self.request[name]}" for name in ("ids", "id_min") if name in self.request)
            raise DataError(
                f"Qualys answered host {number}, outside what was asked ({asked}): a paging parameter did not "
                "reach Qualys or was not honoured; stopping so that no host is delivered twice",
                fix=ANSWER_FIX,
            )
        self.last = number

    def follow(self, id_min: int) -> None:
        """Refuse a next-page URL whose ``id_min`` does not start after the last host answered (its page's token
        would make the next request, or a resume from it, send that host again)."""
        if self.last is not None and id_min <= self.last:
            raise DataError(
                f"Qualys' next-page URL asks for id_min={id_min}, not after host {self.last} it has just answered; "
                "stopping so that no host is delivered twice",
                fix=ANSWER_FIX,
            )


def server_time(text: str | None, current: datetime | None) -> datetime | None:
    """The earliest ``RESPONSE/DATETIME`` seen (Qualys' clock when it answered)."""
    try:
        value = parse_seed_datetime((text or "").strip())
    except ValueError:
        return current
    return value if current is None or value < current else current
