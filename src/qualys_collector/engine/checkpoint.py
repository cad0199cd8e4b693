"""The checkpoint of one service: the seed's ``last_event_time`` + ``last_ids``, plus window progress.

``value`` is the low-water mark: everything with a cursor below it was delivered, and so were the
records at exactly ``value`` whose keys are in ``ids``. ``window`` is set while a window is under way,
so that a crash resumes inside it (same frozen end, same page token) instead of starting over.
``until`` is set on a backfill's checkpoint only: the end of its range ``[start_time, until)``; the
backfill is complete once ``value`` reached it with no window under way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from qualys_collector.model import JSON, format_seed_datetime, parse_iso_datetime

PERSISTENCE_VERSION = 1


@dataclass(frozen=True, slots=True)
class WindowProgress:
    """A window under way: its bounds, where to resume, and the running maximum seen so far."""

    start: datetime
    end: datetime
    capped: bool = False
    token: JSON | None = None
    max_value: datetime | None = None
    max_ids: tuple[str, ...] = ()
    pages: int = 0
    horizon: datetime | None = None
    #: The engine's counters for the window so far (cycles, pages, requests, records…), for its summary.
    counters: dict[str, int] = field(default_factory=dict)
    #: The source's own running totals for the window (``Page.counters`` of its latest page).
    source_counters: JSON = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A service's persisted position."""

    start_time: datetime | None
    value: datetime | None
    ids: tuple[str, ...] = ()
    window: WindowProgress | None = None
    extra: JSON = field(default_factory=dict)
    until: datetime | None = None
    #: When the most-behind answer of the last hour was read, and how far behind ours Qualys' clock then was
    #: (:mod:`~qualys_collector.engine.qualys_clock`), so that a restart plans on it too.
    behind: tuple[datetime, timedelta] | None = None

    @classmethod
    def initial(
        cls, start_time: datetime | None, default_start: datetime, *, until: datetime | None = None
    ) -> Checkpoint:
        """A fresh checkpoint at the configured start (or the service's default look-back); ``until`` ends
        a backfill's range."""
        return cls(start_time=start_time, value=start_time or default_start, until=until)

    @property
    def complete(self) -> bool:
        """A backfill's checkpoint that reached the end of its range (always False for a live service)."""
        return self.until is not None and self.window is None and self.value is not None and self.value >= self.until

    def with_window(self, window: WindowProgress | None) -> Checkpoint:
        """A copy with ``window`` replaced."""
        return replace(self, window=window)

    def to_json(self) -> JSON:
        """The stored form; keys follow the seed's persistence names where they exist."""
        data: JSON = {
            "@persistence_version": PERSISTENCE_VERSION,
            "start_time_str": _fmt(self.start_time),
            "last_event_time_str": _fmt(self.value),
            "last_ids": list(self.ids),
        }
        if self.window is not None:
            w = self.window
            data["window"] = {
                "start": _fmt(w.start),
                "end": _fmt(w.end),
                "capped": w.capped,
                "token": w.token,
                "max_value": _fmt(w.max_value),
                "max_ids": list(w.max_ids),
                "pages": w.pages,
                "horizon": _fmt(w.horizon),
                "counters": dict(w.counters),
                "source_counters": dict(w.source_counters),
            }
        if self.extra:
            data["extra"] = self.extra
        if self.until is not None:
            data["until_str"] = _fmt(self.until)
        if self.behind is not None:
            data["qualys_behind"] = {"seen": _fmt(self.behind[0]), "seconds": self.behind[1].total_seconds()}
        return data

    @classmethod
    def from_json(cls, data: JSON) -> Checkpoint:
        """Inverse of :meth:`to_json`."""
        window = None
        if data.get("window"):
            w: dict[str, Any] = data["window"]
            window = WindowProgress(
                start=_parse(w["start"]) or _required(w["start"]),
                end=_parse(w["end"]) or _required(w["end"]),
                capped=bool(w.get("capped", False)),
                token=w.get("token"),
                max_value=_parse(w.get("max_value")),
                max_ids=tuple(w.get("max_ids") or ()),
                pages=int(w.get("pages", 0)),
                horizon=_parse(w.get("horizon")),
                counters={str(k): int(v) for k, v in (w.get("counters") or {}).items()},
                source_counters=dict(w.get("source_counters") or {}),
            )
        return cls(
            behind=_behind(data.get("qualys_behind")),
            start_time=_parse(data.get("start_time_str")),
            value=_parse(data.get("last_event_time_str")),
            ids=tuple(data.get("last_ids") or ()),
            window=window,
            extra=dict(data.get("extra") or {}),
            until=_parse(data.get("until_str")),
        )


def _behind(value: Any) -> tuple[datetime, timedelta] | None:
    """A stored ``qualys_behind``; ``None`` for one that is missing or damaged (it only ends windows earlier: without
    it the next answers measure Qualys' clock again)."""
    if not isinstance(value, dict):
        return None
    seconds = value.get("seconds")
    try:
        seen = _parse(value.get("seen"))
        offset = (
            timedelta(seconds=seconds) if isinstance(seconds, int | float) and not isinstance(seconds, bool) else None
        )
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None
    return (seen, offset) if seen is not None and offset is not None else None


def _fmt(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.microsecond:
        return value.isoformat().replace("+00:00", "Z")
    return format_seed_datetime(value)


def _parse(value: str | None) -> datetime | None:
    return None if value is None else parse_iso_datetime(value)


def _required(value: Any) -> datetime:
    raise ValueError(f"window bound missing in checkpoint: {value!r}")
