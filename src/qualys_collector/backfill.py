"""The ``backfill`` command: pull a past range of one service beside the live collector.

Its arguments are checked first (600-603, before any network call). The request is then written into the
state database as the backfill's own checkpoint (scope ``<input id>@backfill``), and whichever process holds
the state directory's lock pulls it:

- no collector runs: this command takes the lock and pulls the range itself, window after window, then
  delivers, and exits 0 once the range is complete and delivered;
- a ``run`` holds the lock: it hosts the backfill (it looks for requests every few seconds) on the same
  Qualys client, so the same API budget, as its live services; this command waits, prints the progress,
  and exits 0 once the range is complete and its events delivered. Should that collector stop, this
  command takes the lock and goes on from the last committed page.

Either way the live checkpoint is never touched, and a crash (kill -9 included) resumes from the backfill's
own checkpoint on the next ``backfill`` or ``run``.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from qualys_collector.app import Collector
from qualys_collector.config.schema import CollectorConfig, FimInput, VmInput
from qualys_collector.engine import backfill as backfills
from qualys_collector.engine.outbox import Outbox
from qualys_collector.errors import BackfillError, StateError
from qualys_collector.model import SEED_DATETIME_FORMAT, format_seed_datetime, parse_seed_datetime, utcnow
from qualys_collector.services.catalog import BY_NAME
from qualys_collector.services.options import ServiceOptions

logger = logging.getLogger("qualys_collector")

#: How often a waiting ``backfill`` reads the progress a running collector commits.
POLL_SECONDS = 2.0


def parse_time(text: str, option: str) -> datetime:
    """``--from``/``--to`` in the seeds' format (603 otherwise)."""
    try:
        return parse_seed_datetime(text.strip())
    except ValueError:
        raise BackfillError(
            f"{option} {text!r} is not a UTC time in the format {SEED_DATETIME_FORMAT}",
            code=603,
            fix=f'write it like {option} "2024-01-01T00:00:00Z" (UTC, whole seconds, trailing Z)',
        ) from None


def resolve(config: CollectorConfig, service: str) -> tuple[str, VmInput | FimInput, ServiceOptions]:
    """The input and options of ``service`` (602 when unknown, not configured or not pulled by time window)."""
    entry = BY_NAME.get(service)
    if entry is None:
        raise BackfillError(
            f"there is no service named {service!r}",
            code=602,
            fix=f"use one of: {', '.join(BY_NAME)}",
        )
    if not entry.spec.windowed:
        raise BackfillError(
            f"{service} is not pulled by time window, so it has no past range to backfill",
            code=602,
            fix="backfill a time-windowed service (state reset pulls this one again from the start)",
        )
    block: VmInput | FimInput | None = getattr(config.inputs, entry.input)
    if block is None or service not in block.services:
        raise BackfillError(
            f"{service} is not configured: the configuration has no inputs.{entry.input}.services.{service} block",
            code=602,
            fix=f"add inputs.{entry.input}.services.{service} (with enabled: false it stays out of the live pull)",
        )
    return entry.input, block, block.services[service]


def check_range(service: str, options: ServiceOptions, start: datetime, end: datetime, now: datetime) -> None:
    """``--from`` before ``--to`` (600), and ``--to`` no later than now minus the settle lag (601)."""
    if end <= start:
        raise BackfillError(
            f"--to {format_seed_datetime(end)} is not after --from {format_seed_datetime(start)}",
            code=600,
            fix="give a --to later than --from (the range is [--from, --to): --from included, --to not)",
        )
    settled = now - timedelta(seconds=options.settle_lag_seconds)
    if end > settled:
        raise BackfillError(
            f"--to {format_seed_datetime(end)} is later than what Qualys has settled for {service} "
            f"(now {format_seed_datetime(now)} minus settle_lag_seconds {options.settle_lag_seconds})",
            code=601,
            fix=f"use a --to no later than {format_seed_datetime(settled)}: what follows is the live service's",
        )


def run_backfill(
    config: CollectorConfig,
    state_dir: Path | None,
    service: str,
    start_text: str,
    end_text: str,
    *,
    stop: threading.Event,
    clock: Any = utcnow,
    poll: float = POLL_SECONDS,
    **collector: Any,
) -> bool:
    """The whole command; True once the range is complete and delivered. ``collector`` are more
    :class:`Collector` arguments (tests: ``clients``, ``sleep``, ``sinks``...)."""
    start, end = parse_time(start_text, "--from"), parse_time(end_text, "--to")
    input_name, block, options = resolve(config, service)
    check_range(service, options, start, end, clock())
    state = config.state_dir(state_dir)
    outbox = Outbox(state)
    try:
        request = backfills.request(outbox, str(block.id), service, start, end)
    finally:
        outbox.close()
    live_start = options.start_time_utc
    if live_start is not None and start < live_start < end:
        logger.warning(
            "The backfill %s overlaps the live %s from its start_time_utc %s: events in [%s, %s) are delivered "
            "twice (those of the backfill with @backfill: true)",
            request.range,
            service,
            format_seed_datetime(live_start),
            format_seed_datetime(live_start),
            format_seed_datetime(end),
        )
    waiting = Waiting(state, str(block.id), service, request)
    try:
        return _pull_or_wait(
            config, state_dir, input_name, request, waiting, stop=stop, clock=clock, poll=poll, **collector
        )
    finally:
        waiting.close()


def _pull_or_wait(
    config: CollectorConfig,
    state_dir: Path | None,
    input_name: str,
    request: backfills.Backfill,
    waiting: Waiting,
    *,
    stop: threading.Event,
    clock: Any,
    poll: float,
    **collector: Any,
) -> bool:
    service, start, end = request.service, request.start, request.end
    while True:
        try:
            own = Collector(config, state_dir=state_dir, jobs=[], clock=clock, stop=stop, **collector)
        except StateError as exc:
            if exc.code != 503:
                raise
            own = None
            waiting.held_by(exc.message)
        if own is None:  # a running collector pulls it
            if waiting.done():
                return True
            if stop.wait(poll):
                raise unfinished(service, request, "this command was stopped while a running collector pulls it")
            continue
        try:
            stats = own.run_backfill(own.backfill_job(input_name, service, start, end))
        finally:
            own.close()
        if stats is None:
            raise unfinished(service, request, "a cycle failed (its error is logged above) or a stop")
        logger.info("Backfill of %s %s complete and delivered", service, request.range)
        return True


class Waiting:
    """What ``backfill`` says while a running collector pulls the range: who, how far, when it is done."""

    def __init__(self, state: Path, input_id: str, service: str, request: backfills.Backfill) -> None:
        self.state, self.input_id, self.service, self.request = state, input_id, service, request
        self.told = False
        self.shown = -1.0
        self.outbox: Outbox | None = None  # opened once (opening checks the whole database)

    def held_by(self, message: str) -> None:
        """Say once which collector pulls the backfill."""
        if not self.told:
            self.told = True
            logger.warning(
                "%s: that collector pulls the backfill of %s %s on its own API budget; waiting for it "
                "(this command may be stopped: the backfill goes on there)",
                message,
                self.service,
                self.request.range,
            )

    def done(self) -> bool:
        """Whether the range is complete and delivered (the progress is logged when it moved)."""
        if self.outbox is None:
            self.outbox = Outbox(self.state)
        now = backfills.read(self.outbox, self.input_id, self.service)
        done = now is not None and backfills.delivered(self.outbox, now)
        if now is not None and now.progress() != self.shown:
            self.shown = now.progress()
            logger.info("Backfill of %s %s: %.0f%% pulled", self.service, self.request.range, 100 * self.shown)
        if done:
            logger.info("Backfill of %s %s complete and delivered", self.service, self.request.range)
        return done

    def close(self) -> None:
        """Close the database opened to watch."""
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None


def unfinished(service: str, request: backfills.Backfill, why: str) -> BackfillError:
    """605: the range is not complete (its progress is kept)."""
    return BackfillError(
        f"the backfill of {service} {request.range} is not complete: {why}",
        code=605,
        fix="run the same backfill command again: it resumes from the last committed page (or a running "
        "collector finishes it; `qualys-collector state show` shows how far it got)",
    )
