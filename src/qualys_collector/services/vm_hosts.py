"""Reading host-paged XML (host list and host list detection): sorted by host ID, truncated by
``WARNING`` with ``id_min``, so a window resumes at any host boundary."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from qualys_collector.model import JSON, Page, Record, format_seed_datetime, parse_seed_datetime
from qualys_collector.qualys.paging import guard_progress, url_cursor
from qualys_collector.qualys.vm import VmClient
from qualys_collector.qualys.xml import element_to_value, iter_elements

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


def host_pages(
    client: VmClient,
    path: str,
    params: dict[str, str],
    token: JSON | None,
    convert: Callable[[dict[str, Any]], list[Record]],
    what: str,
) -> Iterator[Page]:
    """Pages of records from every host of a (possibly truncated) answer, resumable by host ID."""

    def fetch(start: JSON | None) -> Iterator[Page]:
        id_min = int(start["id_min"]) if start else None
        while True:
            request = dict(params)
            if id_min is not None:
                request["id_min"] = str(id_min)
            next_id: int | None = None
            batch: list[Record] = []
            hosts = 0
            last_id = (id_min or 1) - 1
            with client.open(path, request) as response:
                for tag, element in iter_elements(client.body(path, response), {"HOST", "URL", "DATETIME"}):
                    if tag == "DATETIME":
                        horizon[0] = server_time(element.text, horizon[0])
                        continue
                    if tag == "URL":
                        next_id = url_cursor(element.text or "", "id_min")
                        continue
                    host = element_to_value(element)
                    batch.extend(convert(host))
                    hosts += 1
                    last_id = int(host["ID"]) if str(host.get("ID", "")).isdigit() else last_id
                    if hosts % HOSTS_PER_BATCH == 0:
                        yield Page(batch, token={"id_min": last_id + 1}, horizon=horizon[0])
                        batch = []
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
