"""``host_list_detection`` -> ``vuln.qualys.hostdetections``: one event per host x detection.

Two ways to read a window: one stream of host pages (``parallel: false``), or by default in batches: the
window's host IDs (host list, ``details=None``, no truncation) cut into ID ranges that the engine's batch
scheduler (:mod:`~qualys_collector.engine.batches`) pulls several at a time under the subscription's one
API budget. This module only describes the batches: the plan, how to pull one range from a resume token,
and the completeness counters on the last page, which the engine adds to the window's summary event, so the
SIEM can alarm on gaps.

Completeness is stated on what is knowable. Qualys leaves hosts with nothing matching the filters out of
the answer, so "hosts listed" minus "hosts with detections" is not a loss: those hosts sat in batches whose
answers were read to their end (``hosts_without_detections``). A batch that is not answered to its end
never produces a summary: its window fails with a numbered error and stays open until it is pulled. So
``complete`` (every batch answered, ``batches_answered == batches``) on a window's summary, and a summary
for every window, are what to alarm on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from qualys_collector.engine.batches import Batches, BatchProgress, pull_batches
from qualys_collector.engine.changes import ChangeFilter, ChangeModel
from qualys_collector.engine.pipeline import Stage
from qualys_collector.engine.source import CursorMode, ServiceSpec
from qualys_collector.model import JSON, Page, Window, format_seed_datetime, parse_seed_datetime
from qualys_collector.qualys.detections import (
    TRACKED_FIELDS,
    converter,
    detection_group,
    detection_state,
    removed_detection,
)
from qualys_collector.qualys.kb import DEFAULT_KB_VERSION
from qualys_collector.qualys.vm import VmClient
from qualys_collector.qualys.vm_hosts import host_pages, server_time, window_params
from qualys_collector.qualys.xml import iter_elements
from qualys_collector.services.hld_process import ParsePool, one_at_a_time_host_pages, spooled_host_pages
from qualys_collector.services.kb_enrich import stages as kb_stages
from qualys_collector.services.options import Flag, ServiceEntry, flag
from qualys_collector.services.vm_params import COMMON_OWNED, VERSION_PATTERN, DetectionParams, VmOptions

logger = logging.getLogger("qualys_collector.puller")
#: The service's own counters, kept in the page token beside the engine's batch progress.
COUNTERS = ("expected", "received", "detections", "calls", "listed_at")

SPEC = ServiceSpec(
    name="host_list_detection",
    default_tag="vuln.qualys.hostdetections",
    cursor_field="vm_processed (not returned; the window end is the checkpoint)",
    mode=CursorMode.WINDOW,
    default_lookback=timedelta(days=1),
)


#: Days between two snapshots in ``changes`` mode when ``snapshot_every_days`` is not set.
DEFAULT_SNAPSHOT_DAYS = 7
#: The keyed table of the detection states that ``emit: changes`` keeps.
CHANGE_TABLE = "hld_detection_state"

DetectionStatus = Literal["New", "Active", "Fixed", "Re-Opened"]
ALL_STATUSES: tuple[DetectionStatus, ...] = ("New", "Active", "Fixed", "Re-Opened")


class DetectionFilters(DetectionParams):
    """The seed's host list detection filters (its example's ``details`` is ignored), then typed Qualys parameters.

    The typed parameters are :class:`~qualys_collector.services.vm_params.DetectionParams`."""

    NOT_SENT = frozenset({"details"})

    status: list[DetectionStatus] = Field(default_factory=lambda: list(ALL_STATUSES))
    show_asset_id: Flag = 1
    show_tags: Flag = 0
    show_reopened_info: Flag = 0
    details: str | None = None

    _flags = field_validator("show_asset_id", "show_tags", "show_reopened_info", mode="before")(flag)

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class HostListDetectionOptions(VmOptions):
    """``host_list_detection``. ``enrich`` (default true) adds each detection's KnowledgeBase fields under ``KB``
    (README, "KnowledgeBase"), fetched on demand with the ``knowledge_base`` service's ``api_version``.

    ``emit: changes`` sends a detection only when it is new, its status changed or a tracked field changed
    (each event with ``@change``), a full ``snapshot`` every ``snapshot_every_days`` (default 7), and
    ``removed`` for detections that disappear (README, "Change-only detection stream").
    """

    KNOWN_VERSIONS = ("2.0", "3.0", "4.0", "5.0")
    OWNED = COMMON_OWNED | {"ids", "suppress_duplicated_data_from_csv"}
    OWNED_PREFIXES = ("vm_processed_", "detection_updated_")

    api_version: str = Field(default="5.0", pattern=VERSION_PATTERN)
    truncation_limit: int = Field(default=1000, ge=1, le=1_000_000)
    results_max_length: int | None = Field(default=None, ge=64)
    parallel: bool = True
    batch_size: int = Field(default=500, ge=1, le=1000)
    max_workers: int | None = Field(default=None, ge=1, le=64)
    #: ``processes`` (default): the batch workers spool each answer to a file and a parsing process turns it into
    #: the records' JSON (services/hld_process.py); ``threads``: each batch worker parses its answer as it
    #: streams; ``one_at_a_time``: answers are fetched side by side into spool files and parsed one at a time.
    parse: Literal["processes", "threads", "one_at_a_time"] = "processes"
    #: Parsing processes (``parse: processes``); default: one fewer than the machine's cores, 1 to 4. ``0`` parses
    #: in the worker threads (what ``parse_processes: 0`` meant before processes were the default).
    parse_processes: int | None = Field(default=None, ge=0, le=64)
    summary_tag: str | None = None
    filters: DetectionFilters = DetectionFilters()
    #: Each detection gets its QID's KnowledgeBase fields under ``KB`` (services/kb_enrich.py).
    enrich: bool = True
    # ``emit: changes`` (issue 19): what is emitted, and how often a full snapshot is taken
    emit: Literal["all", "changes"] = "all"
    snapshot_every_days: int | None = Field(default=None, ge=1, le=365)

    @model_validator(mode="after")
    def _parse(self) -> HostListDetectionOptions:
        if self.parse != "processes" and self.parse_processes:
            raise ValueError(
                f"parse_processes applies only with parse: processes (parse is {self.parse}); remove one of them"
            )
        return self

    @property
    def processes(self) -> int:
        """Parsing processes to run (0: parse in the batch workers)."""
        if self.parse != "processes":
            return 0
        if self.parse_processes is not None:
            return self.parse_processes
        return max(1, min(4, (os.cpu_count() or 2) - 1))

    @model_validator(mode="after")
    def _snapshots(self) -> HostListDetectionOptions:
        if self.snapshot_every_days is not None and self.emit != "changes":
            raise ValueError("snapshot_every_days applies only with emit: changes; remove it or set emit: changes")
        return self

    @property
    def snapshot_days(self) -> int:
        """Days between two snapshots in ``changes`` mode (7 unless set)."""
        return self.snapshot_every_days or DEFAULT_SNAPSHOT_DAYS

    @classmethod
    def config_warnings(cls, block: dict[str, Any], path: str) -> list[str]:
        """``filters.details`` is a host list filter the seed's example also puts here."""
        filters = block.get("filters")
        if isinstance(filters, dict) and "details" in filters:
            return [
                f"{path}.filters.details has no effect on host list detection (it is a host list filter); remove it"
            ]
        return []


class HostDetectionSource:
    """Pages of ``/api/<v>/fo/asset/host/vm/detection/?action=list``."""

    def __init__(self, client: VmClient, options: HostListDetectionOptions) -> None:
        self.client = client
        self.options = options
        self.path = f"/api/{options.api_version}/fo/asset/host/vm/detection/"
        self.convert = converter(options.results_max_length)

    def params(self, window: Window, *, full: bool = False) -> dict[str, str]:
        """The request for one window (``full``: every host processed before its end, for a snapshot)."""
        return {
            "action": "list",
            **self.options.filters.wire(),  # the seed's four and every typed parameter that is set
            **self.options.extra_params,
            "truncation_limit": str(self.options.truncation_limit),
            **_window_params(window, full=full),
        }

    def snapshot_of(self, window: Window, token: JSON | None, extra: JSON) -> int | None:
        """The snapshot generation this window pulls, or ``None`` (an incremental window).

        With ``emit: changes``, a window is a snapshot when none was taken yet or the last one (the
        checkpoint's ``last_snapshot``) is ``snapshot_every_days`` old at the window's end; a resumed window
        keeps what its first page decided (the ``snapshot`` of its token). The generation is the window's
        end in epoch seconds: it grows with every snapshot.
        """
        if self.options.emit != "changes":
            return None
        if token is not None:
            value = token.get("snapshot")
            return int(value) if value is not None else None
        last = extra.get("last_snapshot")
        if last and window.end - parse_seed_datetime(str(last)) < timedelta(days=self.options.snapshot_days):
            return None
        return int(window.end.timestamp())

    def pages(self, window: Window, token: JSON | None, extra: JSON) -> Iterator[Page]:
        """The window's detections, resumable at any host boundary."""
        snapshot = self.snapshot_of(window, token, extra)
        params = self.params(window, full=snapshot is not None)
        pages = host_pages(self.client, self.path, params, token, self.convert, "host detections")
        return (_marked(page, snapshot, window, extra) for page in pages)


def cut(ids: list[int], size: int) -> list[list[int]]:
    """Consecutive ID ranges ``[first, last]`` of at most ``size`` listed hosts each."""
    return [[chunk[0], chunk[-1]] for chunk in (ids[i : i + size] for i in range(0, len(ids), size))]


class BatchedDetectionSource(HostDetectionSource):
    """``/api/<v>/fo/asset/host/vm/detection/`` in ID batches, several at a time.

    The page token is the engine's batch progress (plan, finished batches, each unfinished batch's last
    ``id_min``) plus this service's counters, committed with every page.
    """

    def __init__(self, client: VmClient, options: HostListDetectionOptions) -> None:
        super().__init__(client, options)
        self.list_path = f"/api/{options.api_version}/fo/asset/host/"
        self.key = "asset/host/vm/detection"
        self._pool: ParsePool | None = None
        self._parse_lock = threading.Lock()

    def parse_pool(self) -> ParsePool | None:
        """The parsing processes (``parse: processes``, the default; started on first use, kept for the next
        cycles), or ``None`` to parse in the worker threads (``parse: threads``/``one_at_a_time``)."""
        if self._pool is None and self.options.processes:
            self._pool = ParsePool(self.options.processes)
        return self._pool

    def close(self) -> None:
        """Stop the parsing processes."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def host_ids(self, window: Window, *, full: bool = False) -> tuple[list[int], datetime | None]:
        """The IDs of hosts processed in the window (one call, IDs only), and Qualys' time of that answer."""
        params = {
            "action": "list",
            "details": "None",
            **self.options.filters.host_filters(),  # the same hosts as the detection requests ask for
            "truncation_limit": "0",
            **_window_params(window, full=full),
        }
        ids: list[int] = []
        horizon: datetime | None = None
        with self.client.open(self.list_path, params) as response:
            for tag, element in iter_elements(
                self.client.body(self.list_path, response), {"ID", "ID_RANGE", "DATETIME"}
            ):
                text = (element.text or "").strip()
                if tag == "DATETIME":
                    horizon = server_time(text, horizon)
                elif tag == "ID" and text.isdigit():
                    ids.append(int(text))
                elif tag == "ID_RANGE" and "-" in text:
                    low, high = (int(part) for part in text.split("-", 1))
                    ids.extend(range(low, high + 1))
        return sorted(set(ids)), horizon

    def batch_params(self, window: Window, batch: list[int], *, full: bool = False) -> dict[str, str]:
        """The detection request of one batch: the window's request narrowed to an ID range."""
        return {**self.params(window, full=full), "ids": f"{batch[0]}-{batch[1]}"}

    def pull(
        self, window: Window, pool: ParsePool | None, batch: list[int], token: Any, *, full: bool = False
    ) -> Iterator[Page]:
        """The pages of one batch, from its last committed ``id_min`` when resuming."""
        start = token if token is None or isinstance(token, dict) else {"id_min": token}  # older state: a bare id
        params = self.batch_params(window, batch, full=full)
        if pool is None and self.options.parse == "one_at_a_time":
            return one_at_a_time_host_pages(
                self.client, self._parse_lock, self.path, params, start, self.convert, "host detections"
            )
        if pool is None:
            return host_pages(self.client, self.path, params, start, self.convert, "host detections")
        return spooled_host_pages(
            self.client, pool, self.path, params, start, self.options.results_max_length, "host detections"
        )

    def pages(self, window: Window, token: JSON | None, extra: JSON) -> Iterator[Page]:
        """Pages from all batches as they arrive; each token is the whole plan's progress."""
        started = time.monotonic()
        before = self.client.total_requests
        snapshot = self.snapshot_of(window, token, extra)
        full = snapshot is not None
        if token and "plan" in token:
            progress = BatchProgress.from_json(token)
            counts: dict[str, Any] = {k: token.get(k) for k in COUNTERS}
        else:
            ids, listed_at = self.host_ids(window, full=full)
            progress = BatchProgress(plan=cut(ids, self.options.batch_size))
            counts = {
                "expected": len(ids),
                "received": 0,
                "detections": 0,
                "calls": 1,
                "listed_at": format_seed_datetime(listed_at) if listed_at else None,
            }
            logger.info(
                "%d hosts processed in the window, in %d batches of up to %d",
                len(ids),
                len(progress.plan),
                self.options.batch_size,
            )
        listed = parse_seed_datetime(counts["listed_at"]) if counts.get("listed_at") else None
        batches = Batches(
            pull=partial(self.pull, window, self.parse_pool(), full=full),  # the pool is started here, not in a worker
            remaining=_remaining,
            workers=self.options.max_workers or max(1, self.client.budget.limit(self.key)),
            what="host IDs",
        )
        counted = before  # the requests of every worker, counted here as pages arrive (the statistics lines)
        for item in pull_batches(batches, progress, self.client.stop):
            mark = {"snapshot": snapshot} if full else {}
            made, counted = self.client.total_requests - counted, self.client.total_requests
            if item.page is None:  # stop requested: commit the progress so far, the window stays open
                yield Page([], token={**item.progress, **counts, **mark}, requests=made, snapshot=snapshot)
                continue
            page = item.page
            counts["received"] += len({r.key.partition(":")[0] for r in page.records})  # "<host ID>:…"
            counts["detections"] += len(page.records)
            yield Page(
                page.records,
                token={**item.progress, **counts, **mark},
                requests=made,
                horizon=_earliest(listed, page.horizon),
                snapshot=snapshot,
            )
        counts["calls"] += self.client.total_requests - before
        answered = len(progress.done) - progress.splits  # batches whose answers were read to their end
        clean = max(0, counts["expected"] - counts["received"])
        # the engine's summary event of the window carries these beside its own counters
        counters = {
            "hosts_expected": counts["expected"],
            "hosts_received": counts["received"],
            "hosts_without_detections": clean,
            "detections": counts["detections"],
            "batches": progress.batches,
            "batches_answered": answered,
            "split_batches": progress.splits,
            "complete": answered == progress.batches,
            "api_calls": counts["calls"],
            "seconds": round(time.monotonic() - started, 3),
        }
        logger.info(
            "%d hosts listed, %d with detections, %d without any matching the filters (every batch answered "
            "to its end: not a gap)",
            counts["expected"],
            counts["received"],
            clean,
        )
        if full:
            counters["snapshot"] = snapshot
        yield _marked(
            Page([], token=None, requests=self.client.total_requests - counted, horizon=listed, counters=counters),
            snapshot,
            window,
            extra,
        )


def _window_params(window: Window, *, full: bool) -> dict[str, str]:
    """``vm_processed_after/_before`` of the window; only ``_before`` for a full pull (a snapshot)."""
    params = window_params(window.start, window.end)
    if full:
        del params["vm_processed_after"]
    return params


def _marked(page: Page, snapshot: int | None, window: Window, extra: JSON) -> Page:
    """A page of snapshot ``snapshot`` (unchanged when ``None``): its generation on the page and in its token
    (a resumed window stays a snapshot), and on the page that ends the window the checkpoint's
    ``last_snapshot``, committed with it."""
    if snapshot is None:
        return page
    if page.token is None:
        return replace(
            page, snapshot=snapshot, extra={**dict(extra), "last_snapshot": format_seed_datetime(window.end)}
        )
    return replace(page, snapshot=snapshot, token={**page.token, "snapshot": snapshot})


def _remaining(batch: list[int], token: Any) -> list[int]:
    """What is left of a batch after a page whose token resumes at ``id_min``."""
    id_min = token["id_min"] if isinstance(token, dict) else token
    return [max(batch[0], int(id_min)), batch[1]]


def _earliest(first: datetime | None, second: datetime | None) -> datetime | None:
    if first is None or second is None:
        return first or second
    return min(first, second)


def build(client: VmClient, options: HostListDetectionOptions) -> Any:
    """Batched, parallel pulls by default (``parallel: false`` reads the window as one stream)."""
    return BatchedDetectionSource(client, options) if options.parallel else HostDetectionSource(client, options)


def enrichment(client: VmClient, options: HostListDetectionOptions, services: Mapping[str, Any]) -> tuple[Any, ...]:
    """The KnowledgeBase enrichment stage (``enrich``), calling the KB version the input's ``knowledge_base``
    service uses (else the default)."""
    version = getattr(services.get("knowledge_base"), "api_version", DEFAULT_KB_VERSION)
    return kb_stages(client, options.enrich, version)


def change_filter(options: HostListDetectionOptions) -> tuple[Stage, ...]:
    """``emit: changes``: the change filter over the detection states (``emit: all``: none)."""
    if options.emit != "changes":
        return ()
    model = ChangeModel(TRACKED_FIELDS, detection_state, detection_group, removed_detection)
    return (ChangeFilter(CHANGE_TABLE, model),)


SERVICE = ServiceEntry(SPEC, "qualys", HostListDetectionOptions, build, enrich=enrichment, change_filter=change_filter)
