"""Parallel host list detection: the window's host IDs (host list, ``details=None``, no truncation) cut
into batches pulled by several workers under the subscription's one API budget.

The plan (ID ranges), the finished batches and each unfinished batch's ``id_min`` travel in the page
token, committed with every page, so a crash resumes at the unfinished batches and re-pulls nothing
finished. A batch that keeps timing out is split in two. The last page carries a completeness summary
event (hosts expected vs received, detections, batches, splits, API calls, seconds) so the SIEM can
alarm on gaps.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx

from qualys_collector.config.schema import HostListDetectionOptions
from qualys_collector.errors import CollectorError, PullError
from qualys_collector.model import JSON, Page, Record, Window, format_seed_datetime, parse_seed_datetime
from qualys_collector.qualys.vm import VmClient
from qualys_collector.qualys.vm_hosts import host_pages, server_time, window_params
from qualys_collector.qualys.xml import iter_elements
from qualys_collector.services.hld_process import ParsePool, spooled_host_pages
from qualys_collector.services.host_list_detection import HostDetectionSource

logger = logging.getLogger("qualys_collector.puller")
SUMMARY_TAG = "vuln.qualys.collector.summary"
_DONE = object()


def cut(ids: list[int], size: int) -> list[list[int]]:
    """Consecutive ID ranges ``[first, last]`` of at most ``size`` listed hosts each."""
    return [[chunk[0], chunk[-1]] for chunk in (ids[i : i + size] for i in range(0, len(ids), size))]


class ParallelDetectionSource(HostDetectionSource):
    """``/api/<v>/fo/asset/host/vm/detection/`` in ID batches, several at a time."""

    def __init__(self, client: VmClient, options: HostListDetectionOptions) -> None:
        super().__init__(client, options)
        self.list_path = f"/api/{options.api_version}/fo/asset/host/"
        self.key = "asset/host/vm/detection"
        self._pool: ParsePool | None = None

    def parse_pool(self) -> ParsePool | None:
        """The parsing processes (``parse_processes``; started on first use, kept for the next cycles), or
        ``None`` to parse in the worker threads (the default)."""
        if self._pool is None and self.options.parse_processes:
            self._pool = ParsePool(self.options.parse_processes)
        return self._pool

    def close(self) -> None:
        """Stop the parsing processes."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def host_ids(self, window: Window) -> tuple[list[int], datetime | None]:
        """The IDs of hosts processed in the window (one call, IDs only), and Qualys' time of that answer."""
        params = {
            "action": "list",
            "details": "None",
            "truncation_limit": "0",
            **window_params(window.start, window.end),
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

    def batch_params(self, window: Window, batch: list[int]) -> dict[str, str]:
        """The detection request of one batch: the window's request narrowed to an ID range."""
        return {**self.params(window), "ids": f"{batch[0]}-{batch[1]}"}

    def pages(self, window: Window, token: JSON | None, extra: JSON) -> Iterator[Page]:
        """Pages from all batches as they arrive; each token is the whole plan's progress."""
        started = time.monotonic()
        before = self.client.total_requests
        state: dict[str, Any]
        if token and "plan" in token:
            state = {
                k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v) for k, v in token.items()
            }
        else:
            ids, listed_at = self.host_ids(window)
            state = {
                "plan": cut(ids, self.options.batch_size),
                "done": [],
                "partial": {},
                "expected": len(ids),
                "received": 0,
                "detections": 0,
                "splits": 0,
                "calls": 1,
                "listed_at": format_seed_datetime(listed_at) if listed_at else None,
            }
            logger.info(
                "%d hosts processed in the window, in %d batches of up to %d",
                len(ids),
                len(state["plan"]),
                self.options.batch_size,
            )
        listed = parse_seed_datetime(state["listed_at"]) if state.get("listed_at") else None
        todo: queue.Queue[int] = queue.Queue()
        for index in range(len(state["plan"])):
            if index not in state["done"]:
                todo.put(index)
        out: queue.Queue[Any] = queue.Queue(maxsize=2)
        stop = threading.Event()
        workers = self.options.max_workers or max(1, self.client.budget.limit(self.key))
        pool = self.parse_pool()
        lock = threading.Lock()
        threads = [
            threading.Thread(
                target=self._worker,
                args=(window, state, todo, out, stop, lock, pool),
                name=f"HLD-worker-{n}",
                daemon=True,
            )
            for n in range(min(workers, todo.qsize()))
        ]
        for thread in threads:
            thread.start()
        failure: BaseException | None = None
        try:
            finished = 0
            while finished < len(threads):
                item = out.get()
                if item is _DONE:
                    finished += 1
                    continue
                kind, index, payload = item
                if kind == "page":
                    page: Page = payload
                    state["received"] += len({r.data["HOST"]["ID"] for r in page.records})
                    state["detections"] += len(page.records)
                    if page.token is None:
                        state["done"].append(index)
                        state["partial"].pop(str(index), None)
                    else:
                        state["partial"][str(index)] = page.token["id_min"]
                    yield Page(page.records, token=_copy(state), requests=0, horizon=_earliest(listed, page.horizon))
                elif kind == "split":
                    state["done"].append(index)
                    state["partial"].pop(str(index), None)
                    state["splits"] += 1
                elif kind == "error" and failure is None:
                    failure = _batch_failure(state["plan"][index], index, len(state["plan"]), payload)
                    stop.set()
            if failure is not None:
                raise failure
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
        state["calls"] += self.client.total_requests - before
        summary = {
            "@summary": "host_list_detection",
            "window_start": format_seed_datetime(window.start),
            "window_end": format_seed_datetime(window.end),
            "hosts_expected": state["expected"],
            "hosts_received": state["received"],
            "detections": state["detections"],
            "batches": len(state["plan"]) - state["splits"],
            "split_batches": state["splits"],
            "api_calls": state["calls"],
            "seconds": round(time.monotonic() - started, 3),
        }
        tag = self.options.summary_tag or SUMMARY_TAG
        yield Page(
            [Record(data=summary, key=f"summary:{summary['window_end']}", tag=tag)],
            token=None,
            requests=self.client.total_requests - before,
            horizon=listed,
        )

    def _worker(
        self,
        window: Window,
        state: dict[str, Any],
        todo: queue.Queue[int],
        out: queue.Queue[Any],
        stop: threading.Event,
        lock: threading.Lock,
        pool: ParsePool | None,
    ) -> None:
        try:
            while not stop.is_set():
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                batch = state["plan"][index]
                resume = state["partial"].get(str(index))
                start = {"id_min": resume} if resume else None
                params = self.batch_params(window, batch)
                pages = (
                    host_pages(self.client, self.path, params, start, self.convert, "host detections")
                    if pool is None
                    else spooled_host_pages(
                        self.client, pool, self.path, params, start, self.options.results_max_length, "host detections"
                    )
                )
                try:
                    for page in pages:
                        if stop.is_set():
                            return
                        out.put(("page", index, page))
                except PullError as exc:
                    timed_out = isinstance(exc.__cause__, httpx.TimeoutException) or "Timeout" in exc.message
                    if timed_out and batch[1] > batch[0]:
                        middle = (batch[0] + batch[1]) // 2
                        halves = [[batch[0], middle], [middle + 1, batch[1]]]
                        logger.warning("Batch %s-%s timed out; splitting it in two", batch[0], batch[1])
                        with lock:
                            first = len(state["plan"])
                            state["plan"].extend(halves)
                        out.put(("split", index, None))
                        todo.put(first)
                        todo.put(first + 1)
                        continue
                    out.put(("error", index, exc))
                    return
                except Exception as exc:  # noqa: BLE001 - any failure fails the window, never a lost batch
                    out.put(("error", index, exc))
                    return
        finally:
            out.put(_DONE)


def _batch_failure(batch: list[int], index: int, count: int, exc: BaseException) -> CollectorError:
    """The numbered error that fails the window for a batch that failed with ``exc``.

    A collector error keeps its number and fix, with the batch named; anything else (a body that fails to
    decode, a full disk under the parsing spool) is logged with its traceback through the collector's
    logging and becomes a PullError 301: the batch stays unfinished, so the next cycle pulls it again.
    """
    where = f"batch {index + 1} of {count} (host IDs {batch[0]}-{batch[1]})"
    if isinstance(exc, CollectorError):
        exc.message = f"{exc.message} [{where}]"
        return exc
    logger.error("Host detection %s failed unexpectedly", where, exc_info=exc)
    failure = PullError(
        f"Host detection {where} failed: {type(exc).__name__}: {exc}",
        code=301,
        retryable=True,
        fix="nothing is lost: the window stays open and the next cycle pulls this batch from its last committed page",
    )
    failure.__cause__ = exc
    return failure


def _copy(state: dict[str, Any]) -> JSON:
    keys = ("expected", "received", "detections", "splits", "calls", "listed_at")
    return {
        "plan": [list(b) for b in list(state["plan"])],
        "done": list(state["done"]),
        "partial": dict(state["partial"]),
        **{k: state.get(k) for k in keys},
    }


def _earliest(first: datetime | None, second: datetime | None) -> datetime | None:
    if first is None or second is None:
        return first or second
    return min(first, second)


__all__ = ["ParallelDetectionSource", "cut"]
