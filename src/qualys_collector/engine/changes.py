"""The change filter: a pipeline stage that lets through only what changed, with what it was before.

Per record key it keeps a small state (the fields that define the record's state, as a service's
:class:`ChangeModel` extracts them, plus a hash of the rest) in a keyed table of the state store, read
and written inside the page's transaction: the events of a page and the state they move commit
together, so a crash never emits a change twice and never loses one.

Each emitted event carries ``@change``: ``kind`` (``new``, ``status``, ``updated``, ``removed`` or
``snapshot``), ``previous`` (the stored values of the fields that changed, Qualys' names) and
``changed`` (their names; ``other`` when only the hash of the other fields moved).

Snapshots. A page with ``Page.snapshot`` set belongs to a full re-read of the source (generation ``G``,
an integer that grows with every snapshot): its unchanged records are emitted too, as ``snapshot``,
and every event of it carries ``@change.snapshot: G``, so the last snapshot's events plus the
changes after it rebuild a table of current state. Each key's row is stamped with the generation that
last saw it; when the page that ends snapshot ``G`` commits (its ``token`` is ``None``), rows stamped
below ``G`` were not returned by the full re-read: they are emitted as ``removed`` (``reason:
not_in_snapshot``: the host was purged, or nothing of it matches the filters any more) and forgotten,
at most :data:`SWEEP_PER_PAGE` per page, so memory stays flat however many disappear at once.

Groups. Records of one group (a host's detections) always arrive in one page; a key of a group present
in the page but absent from it was dropped by the source (``removed``, ``reason: not_returned``).

The first snapshot on an empty table (the first cycle in ``changes`` mode) seeds the state: every
record is ``snapshot``, none ``new``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qualys_collector.engine.pipeline import PageWork
from qualys_collector.engine.store import KeyedTable, Transaction
from qualys_collector.model import JSON, Event, Record

#: The table row holding the last completed snapshot's generation (no record key starts with ``~``).
META = "~meta"
#: Rows that a snapshot did not see, emitted as ``removed`` per page.
SWEEP_PER_PAGE = 1000


@dataclass(frozen=True)
class ChangeModel:
    """What a service says about the state of its records.

    ``fields`` are ``(name, code)`` pairs of the tracked fields, the status first; ``state(body)`` is the
    stored state of an event body (``{code: value}``, the hash of the other fields under ``"h"``);
    ``group(key)`` the prefix shared by the keys of a record's group (``None``: no groups);
    ``removed(key, state)`` the body of the ``removed`` event of a key that is gone.
    """

    fields: tuple[tuple[str, str], ...]
    state: Callable[[JSON], dict[str, Any]]
    group: Callable[[str], str | None]
    removed: Callable[[str, dict[str, Any]], JSON]

    def previous(self, state: dict[str, Any]) -> JSON:
        """A stored state under Qualys' names."""
        return {name: state[code] for name, code in self.fields if state.get(code) is not None}


class ChangeFilter:
    """The change-filter stage of one service (its keyed table is ``table``)."""

    name = "change_filter"

    def __init__(self, table: str, model: ChangeModel) -> None:
        self.table = table
        self.model = model
        self.tables: tuple[str, ...] = (table,)

    def run(self, work: PageWork, tx: Transaction) -> None:
        """Keep the events that changed, mark them, move the stored state."""
        table = tx.table(self.table)
        meta = table.get(META)
        generation = int(meta["generation"]) if isinstance(meta, dict) else None
        snapshot = work.page.snapshot
        current = snapshot if snapshot is not None else (generation or 0)
        seeding = snapshot is not None and generation is None
        kept: list[Event] = []
        groups: dict[str, set[str]] = {}
        for event in work.events:
            key = str(event.key)
            prefix = self.model.group(key)
            if prefix is not None:
                groups.setdefault(prefix, set()).add(key)
            new = self.model.state(event.body)
            old = table.get(key)
            change = self._change(old, new, seeding=seeding, snapshot=snapshot)
            stored = {**new, "g": current}
            if old != stored:
                table.put(key, stored, stamp=current)
            if change is None:
                work.counts["unchanged"] += 1
                continue
            work.counts[f"change_{change['kind']}"] += 1
            kept.append(Event(tag=event.tag, body={**event.body, "@change": change}, key=event.key, time=event.time))
        for prefix, present in groups.items():
            for key, state in table.with_prefix(prefix):
                if key not in present:
                    kept.append(self._removed(work, table, key, state, "not_returned", snapshot))
        if snapshot is not None and work.page.token is None:  # this page completes snapshot `snapshot`
            table.put(META, {"generation": snapshot})
            generation = snapshot
        if generation is not None:
            for key, state in table.stamped_below(generation, SWEEP_PER_PAGE):
                kept.append(self._removed(work, table, key, state, "not_in_snapshot", None))
        work.events = kept

    def _change(
        self, old: dict[str, Any] | None, new: dict[str, Any], *, seeding: bool, snapshot: int | None
    ) -> JSON | None:
        if old is None:
            change: JSON = {"kind": "snapshot" if seeding else "new", "previous": {}, "changed": []}
        else:
            changed = [name for name, code in self.model.fields if old.get(code) != new.get(code)]
            if old.get("h") != new.get("h"):
                changed.append("other")
            if not changed:
                if snapshot is None:
                    return None
                change = {"kind": "snapshot", "previous": {}, "changed": []}
            else:
                status = self.model.fields[0][0]
                previous = {name: old.get(code) for name, code in self.model.fields if old.get(code) != new.get(code)}
                kind = "status" if status in changed else "updated"
                change = {"kind": kind, "previous": previous, "changed": changed}
        if snapshot is not None:
            change["snapshot"] = snapshot
        return change

    def _removed(
        self, work: PageWork, table: KeyedTable, key: str, state: dict[str, Any], reason: str, snapshot: int | None
    ) -> Event:
        table.delete(key)
        work.counts["change_removed"] += 1
        change: JSON = {"kind": "removed", "reason": reason, "previous": self.model.previous(state), "changed": []}
        if snapshot is not None:
            change["snapshot"] = snapshot
        body = {**self.model.removed(key, state), "@change": change}
        if work.builder is None:  # pragma: no cover - the engine's pipeline always has one
            raise RuntimeError("the change filter needs the pipeline's event builder")
        return work.builder.build(Record(data=body, key=key))


__all__ = ["META", "SWEEP_PER_PAGE", "ChangeFilter", "ChangeModel"]
