"""The composition root: builds clients, services, the outbox and sinks from a configuration."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from qualys_collector.config.schema import (
    CollectorConfig,
    Connection,
    FimInput,
    VmInput,
)
from qualys_collector.engine import backfill as backfills
from qualys_collector.engine.cycle import CycleStats, Job
from qualys_collector.engine.obfuscate import compile_rules
from qualys_collector.engine.outbox import Outbox
from qualys_collector.engine.pipeline import Stage
from qualys_collector.engine.scheduler import Scheduler
from qualys_collector.engine.store import StateLock
from qualys_collector.engine.summary import SUMMARY_TAG
from qualys_collector.errors import CollectorError
from qualys_collector.model import utcnow
from qualys_collector.observability.memory import gc_line
from qualys_collector.observability.metrics import Metrics, MetricsObserver, serve
from qualys_collector.observability.observer import Observer, Observers
from qualys_collector.qualys.budget import ApiBudget
from qualys_collector.qualys.http import HttpSettings
from qualys_collector.qualys.retry import RetryPolicy
from qualys_collector.services.catalog import BY_NAME
from qualys_collector.services.options import ServiceOptions
from qualys_collector.sinks.base import DEFAULT_BATCH_SIZE, BuildContext, Sink
from qualys_collector.sinks.drain import Drainer
from qualys_collector.sinks.file import FileSink
from qualys_collector.sinks.registry import build_sink

logger = logging.getLogger("qualys_collector")

DEFAULT_OUTPUT = "file"
SENDER_STATS_EVERY = 300.0
#: Seconds the threads get to finish after a stop (SIGTERM) before the process exits without them. Safe by
#: construction: a page and its checkpoint, and an acknowledgement, are each one transaction, so a thread
#: left behind loses only uncommitted work (an unconfirmed batch stays in the outbox and is sent again).
STOP_GRACE_SECONDS = 4.0
#: How often a running collector looks in the state database for backfills to host (``backfill`` asks there).
BACKFILL_POLL_SECONDS = 5.0


def default_events_path(state_dir: Path) -> Path:
    """Where the default file output writes when the configuration has no outputs."""
    return state_dir / "events.jsonl"


def build_sinks(config: CollectorConfig, state_dir: Path) -> list[Sink]:
    """One sink per configured output (a file sink under the state directory when there is none)."""
    if not config.outputs:
        return [FileSink(DEFAULT_OUTPUT, default_events_path(state_dir))]
    context = BuildContext(state_dir=state_dir, config_path=config.source_path)
    return [build_sink(name, output, context) for name, output in config.outputs.items()]


def batch_size(config: CollectorConfig, output: str) -> int:
    """``outputs.<output>.batch_size`` (the default for an output the configuration does not list)."""
    block = config.outputs.get(output) if config.outputs else None
    return block.batch_size if block is not None else DEFAULT_BATCH_SIZE


def http_settings(connection: Connection) -> HttpSettings:
    """``inputs.<input>.connection`` as the HTTP seam's settings."""
    c = connection
    return HttpSettings(c.verify_tls, c.ca_bundle, c.proxy, c.request_timeout_seconds)


def retry_policy(connection: Connection) -> RetryPolicy:
    """``inputs.<input>.connection``'s retry bounds."""
    c = connection
    return RetryPolicy(attempts=c.max_attempts, total_seconds=c.max_retry_seconds, max_wait=c.max_wait_seconds)


def build_client(
    input_name: str,
    block: VmInput | FimInput,
    *,
    stop: threading.Event | None = None,
    observer: Observer | None = None,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], datetime] = utcnow,
    policy: RetryPolicy | None = None,
) -> Any:
    """The Qualys client of one input (one per subscription, shared by its services), from the settings the
    input's block describes: the clients never read the configuration themselves.

    ``stop`` ends its waits, ``observer`` hears its answers; ``sleep``, ``clock`` (the FIM token's expiry) and
    ``policy`` (instead of the configured retry bounds) are for tests.
    """
    if isinstance(block, VmInput):
        from qualys_collector.qualys.vm import VmClient

        limits = block.requests_limits
        return VmClient(
            block.credentials.api_url,
            block.credentials.username,
            block.credentials.password.get_secret_value(),
            settings=http_settings(block.connection),
            budget=ApiBudget(calls_per_period=(limits.max_calls, limits.period_seconds) if limits else None),
            policy=policy or retry_policy(block.connection),
            stop=stop,
            observer=observer,
            sleep=sleep,
        )
    from qualys_collector.qualys.fim import FimClient

    return FimClient(
        block.credentials.base_url,
        block.credentials.token_url,
        block.credentials.username,
        block.credentials.password.get_secret_value(),
        settings=http_settings(block.connection),
        policy=policy or retry_policy(block.connection),
        stop=stop,
        observer=observer,
        sleep=sleep,
        clock=lambda: clock().timestamp(),
    )


#: ``(input_name, block, *, stop, observer, sleep, clock) -> client``: :func:`build_client` or a test's own.
ClientFactory = Callable[..., Any]


def build_jobs(
    config: CollectorConfig,
    *,
    stop: threading.Event | None = None,
    observer: Observer | None = None,
    clock: Callable[[], datetime] = utcnow,
    sleep: Callable[[float], None] | None = None,
    clients: ClientFactory = build_client,
) -> list[Job]:
    """One job per enabled service of each enabled input, their clients made by ``clients``."""
    jobs: list[Job] = []
    for input_name in ("qualys", "qualys_fim"):
        block: VmInput | FimInput | None = getattr(config.inputs, input_name)
        if block is None or not block.enabled:
            continue
        client = None
        for service, options in block.services.items():
            if not options.enabled:
                continue
            entry = BY_NAME[service]  # the configuration accepts only the catalog's services
            if client is None:
                client = clients(input_name, block, stop=stop, observer=observer, sleep=sleep, clock=clock)
            salt = block.obfuscation_salt.get_secret_value() if block.obfuscation_salt else None
            source = entry.build(client, options)
            enrich = entry.enrich(client, options, block.services) if entry.enrich is not None else ()
            environment = block.environment
            job = make_job(input_name, block.id, environment, options, entry.spec, source, salt=salt, enrich=enrich)
            job.change_filter = entry.change_filter(options) if entry.change_filter is not None else ()
            job.max_event_bytes = config.globals.event_max_bytes
            jobs.append(job)
    return jobs


def make_job(
    input_name: str,
    input_id: str,
    environment: str | None,
    options: ServiceOptions,
    spec: Any,
    source: Any,
    *,
    salt: str | None = None,
    enrich: tuple[Stage, ...] = (),
) -> Job:
    """A job from a service's options (``salt`` keys the ``hash`` obfuscation rules; ``enrich``: the service's
    enrichment stages)."""
    return Job(
        input_name=input_name,
        input_id=input_id,
        spec=spec,
        source=source,
        tag=options.override_tag or spec.default_tag,
        start_time=options.start_time_utc,
        environment=environment,
        period=timedelta(seconds=options.request_period_in_seconds),
        settle_lag=timedelta(seconds=options.settle_lag_seconds),
        max_span=timedelta(seconds=options.max_window_seconds) if options.max_window_seconds else None,
        obfuscation=compile_rules([(r.field, r.action) for r in options.obfuscation], salt),
        summary_tag=getattr(options, "summary_tag", None) or SUMMARY_TAG,
        enrich=enrich,
    )


def backfill_job(
    config: CollectorConfig, input_name: str, service: str, start: datetime, end: datetime, client: Any
) -> Job:
    """The job that pulls ``[start, end)`` of ``service`` (configured under ``input_name``) through ``client``,
    the input's one client, so the backfill spends the same API budget as the live services."""
    block: VmInput | FimInput = getattr(config.inputs, input_name)
    options = block.services[service]
    entry = BY_NAME[service]
    salt = block.obfuscation_salt.get_secret_value() if block.obfuscation_salt else None
    job = make_job(
        input_name, block.id, block.environment, options, entry.spec, entry.build(client, options), salt=salt
    )
    return dataclasses.replace(job, start_time=start, until=end)


def input_named(config: CollectorConfig, input_id: str, service: str) -> str | None:
    """The configured input (``qualys`` or ``qualys_fim``) with id ``input_id`` and a block for ``service``."""
    for name in ("qualys", "qualys_fim"):
        block: VmInput | FimInput | None = getattr(config.inputs, name)
        if block is not None and str(block.id) == input_id and service in block.services:
            return name
    return None


def check(config: CollectorConfig, state_dir: Path | None = None) -> list[tuple[str, bool, str]]:
    """Try each output's connection and each input's authentication; pull nothing."""
    results: list[tuple[str, bool, str]] = []
    try:
        sinks = build_sinks(config, config.state_dir(state_dir))
    except CollectorError as exc:
        return [("outputs", False, str(exc))]
    for sink in sinks:
        try:
            sink.deliver([])
            results.append((f"output {sink.name}", True, f"connection and confirmation work ({sink.confirmation})"))
        except CollectorError as exc:
            results.append((f"output {sink.name}", False, str(exc)))
        finally:
            sink.close()
    for input_name in ("qualys", "qualys_fim"):
        block: VmInput | FimInput | None = getattr(config.inputs, input_name)
        if block is None or not block.enabled:
            continue
        client = build_client(input_name, block)
        try:
            client.authenticate()
            results.append((f"input {input_name}", True, "authentication works"))
        except CollectorError as exc:
            results.append((f"input {input_name}", False, str(exc)))
        finally:
            client.close()
    return results


class Collector:
    """A configured collector: outbox, sinks and jobs, run once or until stopped.

    One stop event (:attr:`stop`, set on SIGTERM/SIGINT) and one observer reach everything built here: the
    scheduler, every Qualys client (and so its retry and API-budget waits) and every drainer. ``observer`` is
    the caller's (the demo's progress table, a test's counters); with ``globals.metrics`` the metrics observer
    hears the same events. ``clock``, ``sleep`` and ``clients`` are passed to :func:`build_jobs` (tests);
    ``jobs`` replaces it altogether (engine tests with their own sources; ``[]`` for a lone backfill).
    ``stop`` is the caller's stop event (the ``backfill`` command's), ``wait`` the scheduler's wait between
    cycles (tests count them).
    """

    def __init__(
        self,
        config: CollectorConfig,
        *,
        state_dir: Path | None = None,
        clock: Callable[[], datetime] = utcnow,
        jobs: list[Job] | None = None,
        sinks: list[Sink] | None = None,
        observer: Observer | None = None,
        sleep: Callable[[float], None] | None = None,
        clients: ClientFactory = build_client,
        stop: threading.Event | None = None,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self.config = config
        self.state_dir = config.state_dir(state_dir)
        self.stop = stop or threading.Event()
        self.grace_deadline: float | None = None  # set when a stop is first seen by join()
        self._clock, self._sleep = clock, sleep
        self.metrics: Metrics | None = None
        observers = [observer] if observer is not None else []
        if config.globals.metrics is not None:
            self.metrics = Metrics()
            observers.append(MetricsObserver(self.metrics))
        self.observer = Observers(*observers)
        self.lock = StateLock(self.state_dir)  # before the database: a second collector stops here
        try:
            self.outbox = Outbox(self.state_dir)
        except BaseException:
            self.lock.release()
            raise
        self.sinks = sinks if sinks is not None else build_sinks(config, self.state_dir)
        self.outbox.register_outputs([s.name for s in self.sinks])
        self.clients: list[Any] = []
        by_input: dict[str, Any] = {}

        def client(input_name: str, *args: Any, **kwargs: Any) -> Any:
            """One client per input, whoever asks (live jobs, backfills): one API budget per subscription."""
            if input_name not in by_input:
                by_input[input_name] = clients(input_name, *args, **kwargs)
                self.clients.append(by_input[input_name])
            return by_input[input_name]

        self._client = client
        self.backfills: list[Job] = []
        self.jobs = (
            jobs
            if jobs is not None
            else build_jobs(config, stop=self.stop, observer=self.observer, clock=clock, sleep=sleep, clients=client)
        )
        self.drainers = [
            Drainer(self.outbox, sink, observer=self.observer, batch_size=batch_size(config, sink.name))
            for sink in self.sinks
        ]
        if self.metrics is not None and config.globals.metrics is not None:
            self._watch(self.metrics, config.globals.metrics.delivery_stall_seconds)
        self.scheduler = Scheduler(
            self.jobs,
            self.outbox,
            stop=self.stop,
            clock=clock,
            paused=self.outbox_full,
            observer=self.observer,
            outbox_limit=config.globals.outbox_max_bytes,
            wait=wait,
        )

    def _watch(self, metrics: Metrics, stall: float) -> None:
        """What ``/readyz`` and the outbox gauges read."""
        metrics.readiness.periods = {job.spec.name: job.period.total_seconds() for job in self.jobs}
        metrics.readiness.delivery_stall_seconds = stall
        metrics.readiness.pending = self.outbox.pending
        metrics.readiness.outbox_full = self.outbox_full
        metrics.watch_outbox(lambda: {s.name: self.outbox.pending(s.name) for s in self.sinks}, self.outbox.size_bytes)
        drainers = {drainer.sink.name: drainer for drainer in self.drainers}

        def last_error(output: str) -> str | None:
            error = drainers[output].last_error if output in drainers else None
            return error.headline() if error is not None else None

        metrics.readiness.last_error = last_error
        for sink in self.sinks:  # 0 until an output stops (error 408): a scrape sees every output's gauge
            metrics.halted.labels(sink.name).set(0)

    def probe_outputs(self) -> bool:
        """Try each output once at start-up (an empty, confirmed batch); log a numbered error, never exit."""
        ok = True
        for sink in self.sinks:
            try:
                sink.deliver([])
            except CollectorError as exc:
                ok = False
                logger.error("%s. Pulling continues into the outbox; delivery is retried.", exc)
        return ok

    def outbox_full(self) -> bool:
        """Back-pressure: pause pulling while the outbox is over its size limit."""
        return self.outbox.size_bytes() > self.config.globals.outbox_max_bytes

    def drain(self, *, attempts: int = 3) -> bool:
        """Deliver everything pending to every sink. False if a sink kept failing (events stay)."""
        results = [drainer.run(self.stop, attempts=attempts) for drainer in self.drainers]
        return all(results)

    def run_once(self) -> bool:
        """Deliver what is pending, pull one cycle of every service while the senders deliver what each page
        commits, then deliver the rest. True if all succeeded."""

        def complete() -> bool:  # every job's last cycle completed its window (resumed ones included)
            results = self.scheduler.results
            return all(s is not None and s.completed for s in results.values()) and len(results) == len(self.jobs)

        return self._pull_and_deliver(self.scheduler.run_once, complete)

    def backfill_job(self, input_name: str, service: str, start: datetime, end: datetime) -> Job:
        """The job of one backfill, on the input's one client (built with this collector's stop and observer)."""
        block = getattr(self.config.inputs, input_name)
        client = self._client(
            input_name, block, stop=self.stop, observer=self.observer, sleep=self._sleep, clock=self._clock
        )
        job = backfill_job(self.config, input_name, service, start, end, client)
        self.backfills.append(job)
        return job

    def run_backfill(self, job: Job) -> CycleStats | None:
        """Deliver what is pending, pull ``job``'s windows back to back (a failed cycle ends it) while the senders
        deliver, then deliver the rest. The last cycle's figures when the range is complete and delivered."""
        last: list[CycleStats | None] = [None]

        def loop() -> None:
            last[0] = self.scheduler.loop(job, retry=False)

        def pull(_resume: list[Job] | None) -> bool:
            puller = threading.Thread(target=loop, name=f"Puller({job.label})", daemon=True)  # the seed's log label
            puller.start()
            self.join([puller])
            return last[0] is not None and last[0].done

        return last[0] if self._pull_and_deliver(pull) else None

    def _pull_and_deliver(
        self, pull: Callable[[list[Job] | None], bool], complete: Callable[[], bool] | None = None
    ) -> bool:
        """Deliver what is pending; ``pull`` (all jobs, then again only the windows that stopped at the outbox
        limit, once delivery made room) while the senders deliver; then deliver the rest. ``complete``, if given,
        says at the end whether the pull completed (else ``pull``'s last answer)."""
        self.probe_outputs()
        delivered_before = self.drain()
        jobs: list[Job] | None = None
        while True:
            pulled_all = threading.Event()
            senders = [
                threading.Thread(target=d.run, args=(pulled_all,), name=f"Sender({d.sink.name})", daemon=True)
                for d in self.drainers
            ]
            for thread in senders:
                thread.start()
            try:
                pulled = pull(jobs)
            finally:
                pulled_all.set()
                self.join(senders)
            if self.stop.is_set():
                # Deliver what the pull committed, but only within the stop's grace: a relay that holds its
                # confirmation must not hold the exit (the batch stays in the outbox and is sent again).
                final = threading.Thread(target=self.drain, name="Sender(final)", daemon=True)
                final.start()
                self.join([final])
                logger.warning("Stopped: %d events stay in the outbox for the next run", self.outbox.pending())
                return False
            delivered = self.drain()
            jobs = self.scheduler.stopped_for_room()
            if not jobs or not delivered or self.outbox_full():
                break  # a window that stopped at the outbox limit resumes in this run only once delivery made room
            logger.info("The outputs delivered the outbox: resuming %d window(s) stopped at its limit", len(jobs))
        if complete is not None:
            pulled = complete()
        for drainer in self.drainers:
            logger.info("%s", drainer.statistics_line())
        return delivered_before and pulled and delivered

    def hosted_job(self, request: backfills.Backfill) -> Job | None:
        """The job of a backfill found in the state database, or ``None`` when this configuration lacks it."""
        input_name = input_named(self.config, request.input_id, request.service)
        if input_name is None:
            logger.warning(
                "The backfill of %s/%s %s is not hosted here: this configuration has no such service under that "
                "input id (a backfill run with this collector stopped pulls it)",
                request.input_id,
                request.service,
                request.range,
            )
            return None
        logger.info("Hosting the backfill of %s %s", request.service, request.range)
        return self.backfill_job(input_name, request.service, request.start, request.end)

    def run_forever(self) -> None:
        """Pull and deliver until :attr:`stop` is set (SIGTERM/SIGINT)."""
        self.probe_outputs()
        server = None
        if self.metrics is not None and self.config.globals.metrics is not None:
            options = self.config.globals.metrics
            server = serve(self.metrics, options.address, options.port)
            logger.info("Metrics on http://%s:%d/metrics (/healthz, /readyz)", options.address, server.server_port)
        threads = [
            threading.Thread(target=d.run, args=(self.stop,), name=f"Sender({d.sink.name})", daemon=True)
            for d in self.drainers
        ]
        for thread in threads:
            thread.start()
        self.scheduler.start()
        watcher = threading.Thread(
            target=self.scheduler.host_backfills, args=(self.hosted_job, BACKFILL_POLL_SECONDS), daemon=True
        )
        watcher.start()
        threads.append(watcher)
        logger.info("%s", gc_line())
        while not self.stop.wait(SENDER_STATS_EVERY):
            logger.info("%s", gc_line())
            for drainer in self.drainers:
                logger.info(
                    "Number of available senders: 1, sender manager internal queue size: %d",
                    self.outbox.pending(drainer.sink.name),
                )
                logger.info("%s", drainer.statistics_line())
        self.join([*threads, *self.scheduler.threads])
        if server is not None:
            server.shutdown()
            server.server_close()

    def join(self, threads: list[threading.Thread]) -> None:
        """Wait for ``threads``; once :attr:`stop` is set, at most :data:`STOP_GRACE_SECONDS` more in all (one
        grace per stop, shared by every join)."""
        for thread in threads:
            while thread.is_alive():
                if self.grace_deadline is None and self.stop.is_set():
                    self.grace_deadline = time.monotonic() + STOP_GRACE_SECONDS
                if self.grace_deadline is not None and time.monotonic() >= self.grace_deadline:
                    break
                thread.join(0.1)
        busy = [thread.name for thread in threads if thread.is_alive()]
        if busy:
            logger.warning(
                "Exiting while %s still busy; what they had not committed is redone on the next start",
                ", ".join(busy),
            )

    def close(self) -> None:
        """Close sinks, sources (parsing processes), the Qualys clients built here and the outbox."""
        for sink in self.sinks:
            sink.close()
        for job in [*self.jobs, *self.backfills]:
            close = getattr(job.source, "close", None)
            if close is not None:
                close()
        for client in self.clients:
            client.close()
        self.outbox.close()
        self.lock.release()
