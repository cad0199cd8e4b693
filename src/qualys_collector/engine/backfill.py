"""Backfills: a past range ``[start, end)`` of one service, pulled beside the live service.

A backfill's state is a checkpoint under the input's backfill scope (``7@backfill``, see
:func:`~qualys_collector.engine.cycle.backfill_scope`) with ``until`` set to the range's end: the request
is that row, its progress is that row, and ``state show`` / ``state reset --backfill`` read and remove it.
Whichever process holds the state directory's lock pulls it: ``backfill`` itself when no collector runs, or
the running ``run``, which hosts every unfinished backfill it finds on the API budget of its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from qualys_collector.engine.checkpoint import Checkpoint
from qualys_collector.engine.cycle import BACKFILL_SUFFIX, backfill_scope
from qualys_collector.engine.outbox import Outbox
from qualys_collector.errors import BackfillError
from qualys_collector.model import format_seed_datetime

__all__ = ["BACKFILL_SUFFIX", "Backfill", "delivered", "pending", "read", "read_row", "request"]


@dataclass(frozen=True, slots=True)
class Backfill:
    """One backfill as the state database holds it."""

    input_id: str
    service: str
    start: datetime
    end: datetime
    #: How far it got: everything before ``value`` (and the window under way, page by page) is committed.
    value: datetime | None
    complete: bool

    @property
    def range(self) -> str:
        """``[start, end)`` as the command line wrote it."""
        return f"[{format_seed_datetime(self.start)}, {format_seed_datetime(self.end)})"

    def progress(self) -> float:
        """The share of the range behind the checkpoint, 0 to 1."""
        if self.complete or self.value is None:
            return 1.0 if self.complete else 0.0
        done = (self.value - self.start) / (self.end - self.start)
        return min(1.0, max(0.0, done))


def read_row(input_id: str, service: str, data: dict[str, object]) -> Backfill | None:
    """The backfill a stored checkpoint row describes (``None`` for a live checkpoint)."""
    checkpoint = Checkpoint.from_json(data)
    if checkpoint.until is None or checkpoint.start_time is None:
        return None
    return Backfill(input_id, service, checkpoint.start_time, checkpoint.until, checkpoint.value, checkpoint.complete)


def read(outbox: Outbox, input_id: str, service: str) -> Backfill | None:
    """The backfill of ``service`` of input ``input_id``, if one was requested."""
    data = outbox.load_checkpoint(backfill_scope(input_id), service)
    return None if data is None else read_row(input_id, service, data)


def pending(outbox: Outbox) -> list[Backfill]:
    """Every backfill of the state database whose range is not complete."""
    found = []
    for scope, service, data in outbox.checkpoints():
        if scope.endswith(BACKFILL_SUFFIX):
            backfill = read_row(scope.removesuffix(BACKFILL_SUFFIX), service, data)
            if backfill is not None and not backfill.complete:
                found.append(backfill)
    return found


def request(outbox: Outbox, input_id: str, service: str, start: datetime, end: datetime) -> Backfill:
    """Ask for ``[start, end)`` of ``service``: the same range is resumed (or found complete); a new range
    replaces a complete one; another range still under way is refused (604)."""
    existing = read(outbox, input_id, service)
    if existing is not None and (existing.start, existing.end) == (start, end):
        return existing
    if existing is not None and not existing.complete:
        raise BackfillError(
            f"a backfill of {service} for {existing.range} is under way ({existing.progress():.0%} done); "
            "one range per service at a time",
            code=604,
            fix=f"run it again with --from {format_seed_datetime(existing.start)} --to "
            f"{format_seed_datetime(existing.end)} to let it finish, or drop it (with the collector stopped): "
            f"qualys-collector state reset -c FILE --service {service} --backfill",
        )
    scope = backfill_scope(input_id)
    outbox.reset_checkpoint(scope, service)  # a finished range's boundary rows go with it
    fresh = Checkpoint.initial(start, start, until=end)
    outbox.commit(scope, service, [], fresh.to_json())
    return Backfill(input_id, service, start, end, start, complete=False)


def delivered(outbox: Outbox, backfill: Backfill) -> bool:
    """Whether the range is complete and none of its events waits in the outbox any more."""
    return backfill.complete and outbox.pending_from(backfill_scope(backfill.input_id), backfill.service) == 0
