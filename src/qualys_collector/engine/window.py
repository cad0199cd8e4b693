"""Window planning: from the checkpoint to an end frozen when the cycle starts."""

from __future__ import annotations

from datetime import datetime, timedelta

from qualys_collector.model import Window


def plan_window(
    start: datetime,
    now: datetime,
    *,
    settle_lag: timedelta = timedelta(0),
    max_span: timedelta | None = None,
) -> Window | None:
    """The next window ``[start, end)``; ``None`` when ``start`` has not yet settled.

    ``end = now - settle_lag`` (whole seconds), cut to ``start + max_span`` when a span is set (``capped`` then
    says the window ends before "now", so the next cycle can follow at once).
    """
    end = (now - settle_lag).replace(microsecond=0)  # Qualys filters take whole seconds
    capped = False
    if max_span is not None and end - start > max_span:
        end = start + max_span
        capped = True
    if end <= start:
        return None
    return Window(start=start, end=end, capped=capped)
