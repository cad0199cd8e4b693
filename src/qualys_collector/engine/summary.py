"""The summary event the engine emits when a window completes, for every service.

Its counters are kept in the window's progress (committed with every page), so a window that took
several cycles — interrupted, resumed after a crash — reports the whole window. A stage may add counters
of its own (``PageWork.counts``, summed over the window), and a source its running totals through
``Page.counters`` (host detection: hosts expected and received, batches…). A Devo
alert can then find any gap: windows follow each other without holes, and each says what it carried.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from qualys_collector.engine.checkpoint import WindowProgress
from qualys_collector.model import JSON, Event, Window, format_seed_datetime

#: The default tag of summary events (the one host list detection has always used).
SUMMARY_TAG = "vuln.qualys.collector.summary"

#: The engine's own counters in the window progress, and their names in the summary event.
COUNTERS = {
    "cycles": "cycles",
    "pages": "pages",
    "requests": "requests",
    "received": "records_received",
    "duplicates": "records_deduplicated",
    "deferred": "records_deferred",
    "committed": "records_committed",
}


def add_counts(progress: Mapping[str, int], counts: Mapping[str, int]) -> dict[str, int]:
    """The window's counters after one more page (or cycle)."""
    total = dict(progress)
    for name, value in counts.items():
        total[name] = total.get(name, 0) + int(value)
    return total


def summary_event(
    *,
    service: str,
    input_id: str,
    tag: str,
    window: Window,
    progress: WindowProgress,
    pulling_id: int,
    environment: str | None,
) -> Event:
    """The summary event of a completed window."""
    body: JSON = {
        "@summary": service,
        "input_id": input_id,
        "window_start": _fmt(window.start),
        "window_end": _fmt(window.end),
        "capped": window.capped,
        "completed": True,
    }
    body.update({public: int(progress.counters.get(name, 0)) for name, public in COUNTERS.items()})
    extra = {name: value for name, value in progress.counters.items() if name not in COUNTERS}  # a stage's own
    for name, value in {**extra, **progress.source_counters}.items():
        body.setdefault(name, value)  # never over the engine's figures
    body["@devo_pulling_id"] = pulling_id
    if environment:
        body["environment"] = environment
    return Event(tag=tag, body=body, key=f"summary:{service}:{body['window_end']}", time=window.end)


def _fmt(value: datetime) -> str:
    if value.microsecond:
        return value.isoformat().replace("+00:00", "Z")
    return format_seed_datetime(value)
