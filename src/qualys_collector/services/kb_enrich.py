"""The KnowledgeBase enrichment stage of host list detection: every detection gets its QID's brief under ``KB``.

A plain pipeline stage (:class:`~qualys_collector.engine.pipeline.Stage`), run on each page after the events
are built and before they are committed, in the thread that commits:

* each distinct QID of the page is looked up once: a small in-memory memo (cleared at every window start,
  so an update the ``knowledge_base`` service committed is seen from the next window on), else the KB cache
  (keyed table ``kb_cache``) read without taking the database's write lock;
* QIDs the cache does not know are fetched on demand, at most :data:`~qualys_collector.qualys.kb.IDS_PER_CALL`
  per call, through the input's one client (and so its API budget): on the first page of a window all of
  them (and the QIDs earlier windows left pending), on later pages only full batches. So a pull that meets N
  QIDs the cache lacks makes at most ceil(N / 500) KB calls, never one per detection or per page; what is
  left of a partial batch at the window's end is fetched on the next window's first page;
* a detection whose QID is not known when its page commits is delivered now, not held, with
  ``KB: {"status": "pending"}``; its QID waits in the keyed table ``kb_pending``. Delivered events are never
  sent again: later detections of that QID carry the fields;
* a KB call that fails (an outage, a cut answer, no KB permission) logs one warning with error 302 and the
  cause, and the rest of the window is delivered pending without further KB calls: enrichment never fails
  or holds the detection pull.

Briefs are committed into ``kb_cache`` in the page's transaction. Memory: the memo (at most
:data:`MEMO_SIZE` briefs of a few KiB) and less than one call's worth of QIDs, however many QIDs there are.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from itertools import islice
from typing import Any

import httpx

from qualys_collector.engine.pipeline import PageWork
from qualys_collector.engine.store import TableView, Transaction
from qualys_collector.errors import CollectorError, StopRequested
from qualys_collector.model import JSON, Event, json_text
from qualys_collector.qualys.detections import QID_HINT
from qualys_collector.qualys.kb import IDS_PER_CALL, fetch_briefs, path_for
from qualys_collector.qualys.vm import VmClient
from qualys_collector.services.knowledge_base import KB_CACHE, KB_PENDING

logger = logging.getLogger("qualys_collector.puller")

#: Briefs kept in memory between pages of a window.
MEMO_SIZE = 2048
#: Calls the first page of a window may spend on QIDs earlier windows left pending (10,000 QIDs).
BACKLOG_CALLS = 20
PENDING: JSON = {"status": "pending"}
NOT_FOUND: JSON = {"status": "not_found"}
#: Failures of a lookup that leave the detections pending (a stop request is not one of them).
LOOKUP_FAILURES = (CollectorError, httpx.HTTPError, OSError)

Lookup = Callable[[list[str]], dict[str, JSON]]


def _qid(event: Event) -> str | None:
    """The event's ``DETECTION.QID``: from its hints when it has them (its body is then never decoded)."""
    hints = event.hints
    if hints is not None and QID_HINT in hints:
        qid = hints[QID_HINT]
    else:
        detection = event.body.get("DETECTION")
        qid = detection.get("QID") if isinstance(detection, dict) else None
    return str(qid) if qid not in (None, "") else None


class KbEnrichment:
    """Adds ``KB`` to every detection event of a page (see the module docstring)."""

    name = "kb_enrichment"
    tables: tuple[str, ...] = (KB_CACHE, KB_PENDING)
    #: The tables are the knowledge_base service's: its reset clears them, a host_list_detection reset does not.
    owner = "knowledge_base"

    def __init__(self, lookup: Lookup, *, per_call: int = IDS_PER_CALL, memo_size: int = MEMO_SIZE) -> None:
        self.lookup = lookup
        self.per_call = per_call
        self.memo_size = memo_size
        self.memo: OrderedDict[str, JSON] = OrderedDict()
        #: QIDs met in this window that no call fetched yet (fewer than ``per_call`` between pages).
        self.waiting: dict[str, None] = {}
        #: The next page opens a window (the engine's windows end with a page whose token is ``None``).
        self.first_page = True
        #: A call failed in this window: the rest of it is delivered pending, without more calls.
        self.failed = False
        #: The pulling id (``@devo_pulling_id``) of the cycle the last page belonged to.
        self.cycle: Any = None

    def _known(self, qid: str, cache: TableView) -> JSON | None:
        brief = self.memo.get(qid)
        if brief is not None:
            self.memo.move_to_end(qid)
            return brief
        stored: Any = cache.get(qid)
        if isinstance(stored, dict):
            self._remember(qid, stored)
            return stored
        return None

    def _remember(self, qid: str, brief: JSON) -> None:
        self.memo[qid] = brief
        self.memo.move_to_end(qid)
        while len(self.memo) > self.memo_size:
            self.memo.popitem(last=False)

    def _fetch(self, qids: list[str]) -> dict[str, JSON]:
        """Briefs of ``qids`` in calls of ``per_call``; after a failure, what the calls before it got."""
        got: dict[str, JSON] = {}
        for start in range(0, len(qids), self.per_call):
            chunk = qids[start : start + self.per_call]
            try:
                found = self.lookup(chunk)
            except StopRequested:
                raise
            except LOOKUP_FAILURES as exc:
                self.failed = True
                cause = str(exc) if isinstance(exc, CollectorError) else f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "[PullError 302] KnowledgeBase lookup of %d QIDs failed (%s); the detections are delivered "
                    "now with KB.status pending and the next window fetches these QIDs again. Fix: nothing is "
                    "lost; if it repeats, check the KnowledgeBase API permission of the user, or turn "
                    "enrichment off (host_list_detection.enrich: false)",
                    len(qids) - start,
                    cause,
                )
                break
            for qid in chunk:
                got[qid] = found.get(qid, NOT_FOUND)
        return got

    def run(self, work: PageWork, tx: Transaction) -> None:
        """Look up, fetch what is missing, commit it with the page, and add ``KB`` to each event."""
        cache = tx.committed(KB_CACHE)
        if work.builder is not None:
            cycle: Any = work.builder.pulling_id
        else:
            cycle = work.events[0].body.get("@devo_pulling_id") if work.events else self.cycle
        if cycle != self.cycle:  # a new cycle (a window resumed after a failure too): calls are tried again
            self.cycle, self.failed, self.first_page = cycle, False, True
        if self.first_page:
            self.memo.clear()  # what the knowledge_base service committed since is read again
        page_qids = dict.fromkeys(q for q in (_qid(e) for e in work.events) if q is not None)
        found: dict[str, JSON] = {}
        fresh: list[str] = []
        for qid in page_qids:
            brief = self._known(qid, cache)
            if brief is not None:
                found[qid] = brief
            elif qid not in self.waiting:
                fresh.append(qid)
        to_fetch: list[str] = []
        stale: list[str] = []
        if not self.failed:
            self.waiting.update(dict.fromkeys(fresh))
            if self.first_page:
                backlog, stale = self._backlog(tx, cache)
                to_fetch = list(dict.fromkeys([*self.waiting, *backlog]))[: BACKLOG_CALLS * self.per_call]
                self.waiting = {}
            else:
                while len(self.waiting) >= self.per_call:
                    batch = list(islice(self.waiting, self.per_call))
                    for qid in batch:
                        del self.waiting[qid]
                    to_fetch += batch
        fetched = self._fetch(to_fetch) if to_fetch else {}
        if stale:  # only now: the first write takes the database's write lock, never held across a KB call
            pending = tx.table(KB_PENDING)
            for qid in stale:
                pending.delete(qid)
        if self.failed:
            self.waiting = {}  # they wait in kb_pending, not in memory
        if fetched:
            table, pending = tx.table(KB_CACHE), tx.table(KB_PENDING)
            for qid, brief in fetched.items():
                table.put(qid, brief)
                pending.delete(qid)
                self._remember(qid, brief)
            found.update(fetched)
        unfetched = [q for q in fresh if q not in fetched]
        if unfetched:
            pending = tx.table(KB_PENDING)
            pending.put_many(unfetched, 1)
        late = 0
        encoded: dict[str, str] = {}  # each brief's JSON, made once for the page's detections of its QID
        for event in work.events:
            key = _qid(event)
            if key is None:
                continue
            brief = found.get(key)
            if brief is None:
                late += 1
                brief = PENDING
            text = encoded.get(key)
            if text is None:
                text = encoded[key] = json_text(brief)
            event.add_field("KB", brief, encoded=text)
        work.counts["kb_pending"] += late
        self.first_page = work.page.token is None  # after a window's last page, the next page opens one
        if self.first_page:
            self.failed = False
            self.waiting = {}  # a partial batch left: in kb_pending, fetched by the next window's first page

    def _backlog(self, tx: Transaction, cache: TableView) -> tuple[list[str], list[str]]:
        """QIDs earlier windows left pending (at most :data:`BACKLOG_CALLS` calls' worth), and the pending rows
        whose QID the cache got meanwhile (the knowledge_base service committed it): the caller removes those
        after its KB call (reading here takes no lock)."""
        out, stale = [], []
        for qid, _value in tx.committed(KB_PENDING).items():
            if self._known(qid, cache) is not None:
                stale.append(qid)
            else:
                out.append(qid)
            if len(out) >= BACKLOG_CALLS * self.per_call:
                break
        return out, stale


def stages(client: VmClient, enrich: bool, kb_version: str) -> tuple[KbEnrichment, ...]:
    """The enrichment stage of host list detection (none with ``enrich: false``), its lookups through ``client``."""
    if not enrich:
        return ()
    path = path_for(kb_version)
    return (KbEnrichment(lambda qids: fetch_briefs(client, path, qids)),)
