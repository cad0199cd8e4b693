"""``fim_incidents`` -> ``monitor.qualys.fim.incident``: incidents windowed on ``lastUpdatedBy.date``.

Windowing on the last update (not the creation) means a status or approval change re-emits the
incident, so the SIEM sees it close; ``id`` + ``lastUpdatedBy.date`` is the key. With
``include_events`` each incident's events are pulled once, when the incident is first seen: the ids of
incidents whose events were pulled live in the keyed table ``fim_incident_ids`` (id -> creation date,
pruned past Qualys' retention), written in the same transaction as the events.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field

from qualys_collector.engine.source import CursorMode, ServiceSpec, TableSpec
from qualys_collector.engine.untimed import once_untimed
from qualys_collector.model import (
    JSON,
    Page,
    Record,
    SourceState,
    TablePrune,
    TableWrite,
    Window,
    content_key,
    epoch_ms,
    from_epoch_ms,
)
from qualys_collector.qualys.fim import FimClient
from qualys_collector.qualys.fim_common import logger, search_pages
from qualys_collector.services.options import ServiceEntry, ServiceOptions

#: Keys of records delivered without a usable time (:func:`~qualys_collector.engine.untimed.once_untimed`).
UNTIMED = "fim_untimed_incident_keys"

SPEC = ServiceSpec(
    name="fim_incidents",
    default_tag="monitor.qualys.fim.incident",
    cursor_field="lastUpdatedBy.date",
    mode=CursorMode.RECORD,
    is_sorted=True,
    default_lookback=timedelta(days=1),
    tables=(
        TableSpec("fim_incident_ids", legacy_extra_key="events_pulled"),
        TableSpec(UNTIMED),
    ),
)


class FimIncidentsOptions(ServiceOptions):
    """``fim_incidents``."""

    settle_lag_seconds: int = Field(default=30, ge=0, le=86400)
    page_size: int = Field(default=1000, ge=1, le=1000)
    window_field: Literal["lastUpdatedBy.date", "createdBy.date"] = "lastUpdatedBy.date"
    include_events: bool = False
    events_tag: str | None = None


PATH = "/fim/v3/incidents/search"
EVENTS_TAG = "monitor.qualys.fim.incident_event"
#: Qualys keeps incidents for 15 months; the "events already pulled" memory is pruned past that.
RETENTION = timedelta(days=460)
PULLED = "fim_incident_ids"


def field_ms(incident: JSON, dotted: str) -> int | None:
    """An epoch-ms date field such as ``lastUpdatedBy.date``; ``None`` when it is missing or not a number."""
    value: Any = incident
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class FimIncidentsSource:
    """``POST /fim/v3/incidents/search`` (and optionally each incident's events)."""

    def __init__(self, client: FimClient, options: FimIncidentsOptions) -> None:
        self.client = client
        self.options = options
        self.field = options.window_field
        self.events_tag = options.events_tag or EVENTS_TAG

    def pages(self, window: Window, token: JSON | None, extra: SourceState) -> Iterator[Page]:
        """Incidents in ``[start, end]`` by the window field, sorted by it then ``id``."""
        self.client.check_token()
        before = self.client.requests
        qql = f"{self.field}: ['{epoch_ms(window.start)}'..'{epoch_ms(window.end)}']"
        sort: list[dict[str, str]] = [{self.field: "asc"}, {"id": "asc"}]
        pulled = extra.table(PULLED)
        after = token.get("searchAfter") if token else None
        size = self.options.page_size
        retained_since = epoch_ms(window.end - RETENTION)  # older pulled-incident ids are pruned
        for incidents, last in search_pages(self.client, PATH, qql, sort, size, after, "incidents"):
            answered = self.client.server_time  # before the incidents' event searches
            records: list[Record] = []
            writes: dict[str, TableWrite] = {}
            for incident in incidents:
                when = field_ms(incident, self.field)
                if when is None:  # delivered as it came: refused, it failed its page on every cycle (review)
                    key = f"{incident.get('id')}@content:{content_key(incident)}"
                    logger.warning(
                        "FIM incident %s has no epoch-ms %s: delivered as it came; it does not move the checkpoint",
                        incident.get("id"),
                        self.field,
                    )
                    records.append(Record(data=incident, key=key))
                else:
                    records.append(
                        Record(data=incident, key=f"{incident.get('id')}@{when}", cursor=from_epoch_ms(when))
                    )
                incident_id = str(incident.get("id"))
                if self.options.include_events and incident_id not in writes and pulled.get(incident_id) is None:
                    records.extend(self._events(incident_id))
                    created = field_ms(incident, "createdBy.date") or when or epoch_ms(window.end)
                    writes[incident_id] = TableWrite(PULLED, incident_id, created, stamp=created)
            logger.info(
                "Received %d fim_incidents and %d of their events from the gateway (the statistics line counts those "
                "sent).",
                len(incidents),
                len(records) - len(incidents),
            )
            more = len(incidents) == size
            records, untimed = once_untimed(records, extra.table(UNTIMED), UNTIMED, window.end)
            pulled_writes: list[TableWrite | TablePrune] = (
                [*writes.values(), TablePrune(PULLED, retained_since)] if self.options.include_events else []
            )
            yield Page(
                records,
                token={"searchAfter": last} if more else None,
                requests=self.client.requests - before,
                writes=[*untimed, *pulled_writes],
                horizon=answered,
            )
            before = self.client.requests

    def _events(self, incident_id: str) -> list[Record]:
        path = f"/fim/v2/incidents/{incident_id}/events/search"
        sort = [{"dateTime": "asc"}, {"id": "asc"}]
        out = []
        for events, _last in search_pages(self.client, path, "", sort, 1000, None, "incident events"):
            out += [Record(data=e, key=f"{incident_id}:{e.get('id')}", tag=self.events_tag) for e in events]
        return out


SERVICE = ServiceEntry(SPEC, "qualys_fim", FimIncidentsOptions, FimIncidentsSource)
