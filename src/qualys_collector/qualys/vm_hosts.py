"""Reading host-paged XML (host list and host list detection): sorted by host ID, truncated by
``WARNING`` with ``id_min``, so a window resumes at any host boundary."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from qualys_collector.model import JSON, Page, Record, format_seed_datetime, parse_seed_datetime
from qualys_collector.qualys.paging import guard_progress, url_cursor
from qualys_collector.qualys.xml import element_to_value, iter_elements

if TYPE_CHECKING:  # the parsing processes import this module: no HTTP client for them
    from qualys_collector.qualys.vm import VmClient

#: Hosts per page handed to the engine (one transaction each) within a larger response.
HOSTS_PER_BATCH = 200


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
    source: Any, convert: Callable[[dict[str, Any]], list[Record]], hosts_per_page: int = HOSTS_PER_BATCH
) -> Iterator[AnswerItem]:
    """The items of one host-paged XML answer (a binary stream), parsed and converted as they stream."""
    hosts = 0
    for tag, element in iter_elements(source, {"HOST", "URL", "DATETIME"}):
        if tag == "DATETIME" or tag == "URL":
            yield ("d" if tag == "DATETIME" else "u"), element.text or ""
            continue
        host = element_to_value(element)
        for record in convert(host):
            yield "r", record
        hosts += 1
        if hosts % hosts_per_page == 0 and str(host.get("ID", "")).isdigit():
            yield "p", int(host["ID"])


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
        while True:
            request = dict(params)
            if id_min is not None:
                request["id_min"] = str(id_min)
            next_id: int | None = None
            batch: list[Record] = []
            for kind, value in (read or streamed)(request):
                if kind == "r":
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
            id_min = next_id
            yield Page(batch, token={"id_min": next_id}, horizon=horizon[0])

    horizon: list[datetime | None] = [None]
    return client.resumable(fetch, token, what)


def server_time(text: str | None, current: datetime | None) -> datetime | None:
    """The earliest ``RESPONSE/DATETIME`` seen (Qualys' clock when it answered)."""
    try:
        value = parse_seed_datetime((text or "").strip())
    except ValueError:
        return current
    return value if current is None or value < current else current
