"""``knowledge_base`` -> ``vuln.qualys.kb``: one event per KnowledgeBase VULN modified in the window.

``/api/<v>/fo/knowledge_base/vuln/?action=list`` with ``last_modified_after`` / ``last_modified_before`` =
the engine's window (modified by the service or by a user: new CVEs, CVSS, threat intelligence, fixes;
``published_after`` would miss every update, as Sentinel's users found). The first window reaches back
30 years, i.e. the whole KB (hundreds of MB, streamed; ``start_time_utc`` limits it). The KB has no
``truncation_limit``, but its DTD allows a ``RESPONSE/WARNING`` with a next-page URL: it is followed by its
``id_min``. The answer is sorted by QID, so a body cut half-way resumes with ``id_min`` after the last
committed page.

Every page also writes its VULNs' briefs into the KB cache (keyed table ``kb_cache``, QID -> the fields
detections need, see :func:`~qualys_collector.qualys.kb.brief`) in the same transaction as its events,
and clears those QIDs from ``kb_pending`` (QIDs detections met before the cache knew them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field, field_validator

from qualys_collector.engine.source import CursorMode, ServiceSpec, TableSpec
from qualys_collector.errors import DataError
from qualys_collector.model import JSON, Page, Record, TableWrite, Window
from qualys_collector.qualys.kb import brief, path_for, vulns
from qualys_collector.qualys.paging import ANSWER_FIX, guard_progress
from qualys_collector.qualys.vm import VmClient
from qualys_collector.qualys.vm_hosts import window_params
from qualys_collector.services.options import Flag, ServiceEntry, ServiceOptions, flag

logger = logging.getLogger("qualys_collector.puller")

#: QID -> brief (``status: ok``) or ``status: not_found`` (asked for by QID, not in the answer).
KB_CACHE = "kb_cache"
#: QIDs met in detections before the cache knew them (value: 1), fetched on demand by the enrichment stage.
KB_PENDING = "kb_pending"
#: VULNs per page (one transaction each).
VULNS_PER_PAGE = 200

SPEC = ServiceSpec(
    name="knowledge_base",
    default_tag="vuln.qualys.kb",
    cursor_field="last_modified (the window end is the checkpoint)",
    mode=CursorMode.WINDOW,
    default_lookback=timedelta(days=365 * 30),
    tables=(TableSpec(KB_CACHE), TableSpec(KB_PENDING)),
)


class KnowledgeBaseOptions(ServiceOptions):
    """``knowledge_base``: one event per KnowledgeBase VULN modified in the window (the first window: the whole
    KB); it fills the KB cache that ``host_list_detection``'s enrichment reads. ``api_version``: 2.0, 3.0 or
    4.0 (no 5.0 exists); the other keys are Qualys' own parameters of the list call."""

    api_version: Literal["2.0", "3.0", "4.0"] = "4.0"  # DEFAULT_KB_VERSION
    #: The KB changes a few times a day; Qualys' Express/Consultant levels allow 50 calls a day per API.
    request_period_in_seconds: int = Field(default=14400, ge=1, le=86400 * 7)
    details: Literal["Basic", "All"] = "All"
    show_disabled_flag: Flag = 1
    show_supported_modules_info: Flag = 1
    show_pci_reasons: Flag = 0

    _flags = field_validator("show_disabled_flag", "show_supported_modules_info", "show_pci_reasons", mode="before")(
        flag
    )


class KnowledgeBaseSource:
    """Pages of ``/api/<v>/fo/knowledge_base/vuln/?action=list`` for one modification window."""

    def __init__(self, client: VmClient, options: KnowledgeBaseOptions) -> None:
        self.client = client
        self.options = options
        self.path = path_for(options.api_version)

    def params(self, window: Window) -> dict[str, str]:
        """The request for one window (one second early, as the other windowed VM services)."""
        o = self.options
        edges = window_params(window.start, window.end)
        return {
            "action": "list",
            "details": o.details,
            "show_disabled_flag": str(o.show_disabled_flag),
            "show_supported_modules_info": str(o.show_supported_modules_info),
            "show_pci_reasons": str(o.show_pci_reasons),
            "last_modified_after": edges["vm_processed_after"],
            "last_modified_before": edges["vm_processed_before"],
        }

    def pages(self, window: Window, token: JSON | None, extra: JSON) -> Iterator[Page]:
        """The window's VULNs, :data:`VULNS_PER_PAGE` per page, resumable by QID."""
        params = self.params(window)
        horizon: list[datetime | None] = [None]

        def fetch(start: JSON | None) -> Iterator[Page]:
            id_min = int(start["id_min"]) if start else None
            batch: list[Record] = []
            sorted_upto: int | None = None  # the last QID of an ascending run from the start
            ascending = True
            while True:
                request = dict(params)
                if id_min is not None:
                    request["id_min"] = str(id_min)
                cut: list[int | None] = [None]
                for vuln in vulns(self.client, self.path, request, horizon, cut):
                    qid = int(str(vuln["QID"]))
                    if id_min is not None and qid < id_min:  # id_min did not reach Qualys: each answer would repeat
                        raise DataError(
                            f"Qualys answered QID {qid}, below the id_min={id_min} asked: the paging parameter did not "
                            "reach Qualys or was not honoured; stopping so that no QID is delivered twice",
                            fix=ANSWER_FIX,
                        )
                    if ascending and sorted_upto is not None and qid <= sorted_upto:
                        ascending = False  # resuming by id_min would skip: later pages resume where this run began
                        logger.warning("The KnowledgeBase answer is not sorted by QID (%d after %d)", qid, sorted_upto)
                    if ascending:
                        sorted_upto = qid
                    modified = vuln.get("LAST_SERVICE_MODIFICATION_DATETIME") or vuln.get("PUBLISHED_DATETIME") or ""
                    batch.append(Record(data=vuln, key=f"{qid}@{modified}"))
                    if len(batch) >= VULNS_PER_PAGE:
                        # while sorted, resume after this page; once not, from where this request began
                        resume = {"id_min": sorted_upto + 1} if ascending and sorted_upto else {"id_min": id_min or 0}
                        yield _page(batch, resume, horizon[0])
                        batch = []
                following = cut[0]
                if following is None:  # the answer's end, not a next-page WARNING: the window is done
                    yield _page(batch, None, horizon[0])
                    return
                guard_progress(id_min, following, ascending=True)
                id_min = following
                yield _page(batch, {"id_min": following}, horizon[0])
                batch = []

        return self.client.resumable(fetch, token, "KnowledgeBase vulnerabilities")


def _page(records: list[Record], token: JSON | None, horizon: datetime | None) -> Page:
    """A page of VULN events with their cache rows (same transaction)."""
    writes: list[TableWrite] = []
    for record in records:
        qid = str(record.data["QID"])
        writes.append(TableWrite(KB_CACHE, qid, brief(record.data)))
        writes.append(TableWrite(KB_PENDING, qid, None))
    return Page(records, token=token, horizon=horizon, writes=writes)


SERVICE = ServiceEntry(SPEC, "qualys", KnowledgeBaseOptions, KnowledgeBaseSource)
