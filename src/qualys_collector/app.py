"""The composition root: builds clients, services, the outbox and sinks from a configuration."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from qualys_collector.config.schema import (
    DEFAULT_TAGS,
    CollectorConfig,
    DevoOutput,
    FileOutput,
    FimInput,
    ServiceOptions,
    StdoutOutput,
    VmInput,
)
from qualys_collector.engine.cycle import CycleStats, Job
from qualys_collector.engine.obfuscate import compile_rules
from qualys_collector.engine.outbox import Outbox
from qualys_collector.engine.scheduler import Scheduler
from qualys_collector.errors import CollectorError, ConfigError
from qualys_collector.model import utcnow
from qualys_collector.observability.memory import gc_line
from qualys_collector.observability.metrics import Metrics, serve
from qualys_collector.services.registry import load_all
from qualys_collector.sinks.base import Sink
from qualys_collector.sinks.drain import Drainer
from qualys_collector.sinks.file import FileSink
from qualys_collector.sinks.stdout import StdoutSink

logger = logging.getLogger("qualys_collector")

DEFAULT_OUTPUT = "file"
SENDER_STATS_EVERY = 300.0


def default_events_path(state_dir: Path) -> Path:
    """Where the default file output writes when the configuration has no outputs."""
    return state_dir / "events.jsonl"


def build_sinks(config: CollectorConfig, state_dir: Path) -> list[Sink]:
    """One sink per configured output (a file sink under the state directory when there is none)."""
    if not config.outputs:
        return [FileSink(DEFAULT_OUTPUT, default_events_path(state_dir))]
    sinks: list[Sink] = []
    for name, output in config.outputs.items():
        if isinstance(output, FileOutput):
            path = Path(output.config.path) if output.config.path else state_dir / f"{name}.jsonl"
            sinks.append(FileSink(name, path))
        elif isinstance(output, StdoutOutput):
            sinks.append(StdoutSink(name))
        elif isinstance(output, DevoOutput):
            from qualys_collector.sinks.devo import DevoSink

            sinks.append(DevoSink.from_config(name, output.config, config.source_path))
    return sinks


def build_client(input_name: str, block: VmInput | FimInput) -> Any:
    """The Qualys client of one input (one per subscription, shared by its services)."""
    if isinstance(block, VmInput):
        from qualys_collector.qualys.vm import VmClient

        return VmClient.from_config(block)
    from qualys_collector.qualys.fim import FimClient

    return FimClient.from_config(block)


def build_jobs(config: CollectorConfig) -> list[Job]:
    """One job per enabled service of each enabled input."""
    jobs: list[Job] = []
    for input_name in ("qualys", "qualys_fim"):
        block: VmInput | FimInput | None = getattr(config.inputs, input_name)
        if block is None or not block.enabled:
            continue
        client = None
        for service, options in block.services.items():
            if not options.enabled:
                continue
            entry = load_all().get(service)
            if entry is None:
                raise ConfigError(
                    f"inputs.{input_name}.services.{service}",
                    "this service is not available in this version",
                    fix="remove it from the configuration or upgrade qualys-collector",
                )
            if client is None:
                client = build_client(input_name, block)
            salt = block.obfuscation_salt.get_secret_value() if block.obfuscation_salt else None
            source = entry.build(client, options)
            jobs.append(make_job(input_name, block.id, block.environment, options, entry.spec, source, salt=salt))
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
) -> Job:
    """A job from a service's options (``salt`` keys the ``hash`` obfuscation rules)."""
    return Job(
        input_name=input_name,
        input_id=input_id,
        spec=spec,
        source=source,
        tag=options.override_tag or DEFAULT_TAGS.get(spec.name, spec.default_tag),
        start_time=options.start_time_utc,
        environment=environment,
        period=timedelta(seconds=options.request_period_in_seconds),
        settle_lag=timedelta(seconds=options.settle_lag_seconds),
        max_span=timedelta(seconds=options.max_window_seconds) if options.max_window_seconds else None,
        transform=compile_rules([(r.field, r.action) for r in options.obfuscation], salt),
    )


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
            results.append((f"output {sink.name}", True, "connection and confirmation work"))
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
    """A configured collector: outbox, sinks and jobs, run once or until stopped."""

    def __init__(
        self,
        config: CollectorConfig,
        *,
        state_dir: Path | None = None,
        clock: Callable[[], datetime] = utcnow,
        jobs: list[Job] | None = None,
        sinks: list[Sink] | None = None,
        on_cycle: Callable[[Job, CycleStats | None], None] | None = None,
        on_page: Callable[[Job, CycleStats], None] | None = None,
    ) -> None:
        self.config = config
        self.state_dir = config.state_dir(state_dir)
        self.outbox = Outbox(self.state_dir)
        self.sinks = sinks if sinks is not None else build_sinks(config, self.state_dir)
        self.outbox.register_outputs([s.name for s in self.sinks])
        self.jobs = jobs if jobs is not None else build_jobs(config)
        self.stop = threading.Event()
        self.drainers = [Drainer(self.outbox, sink) for sink in self.sinks]
        self.metrics: Metrics | None = None
        if config.globals.metrics is not None:
            self.metrics = self._wire_metrics(config.globals.metrics.delivery_stall_seconds)
            on_page, on_cycle = self._with_metrics(on_page, on_cycle)
        self.scheduler = Scheduler(
            self.jobs,
            self.outbox,
            stop=self.stop,
            clock=clock,
            paused=self.outbox_full,
            on_cycle=on_cycle,
            on_page=on_page,
        )

    def _wire_metrics(self, stall: float) -> Metrics:
        metrics = Metrics()
        metrics.readiness.periods = {job.spec.name: job.period.total_seconds() for job in self.jobs}
        metrics.readiness.delivery_stall_seconds = stall
        metrics.readiness.pending = self.outbox.pending
        metrics.readiness.outbox_full = self.outbox_full
        metrics.watch_outbox(lambda: {s.name: self.outbox.pending(s.name) for s in self.sinks}, self.outbox.size_bytes)
        for drainer in self.drainers:
            drainer.on_batch = metrics.delivery
        for job in self.jobs:
            client = getattr(job.source, "client", None)
            if client is not None:
                client.on_answer = lambda api, status: metrics.api_answer(_api_label(api), status)
                auth = getattr(client, "auth", None)
                if auth is not None and hasattr(auth, "on_token"):
                    auth.on_token = metrics.token_renewals.inc
        return metrics

    def _with_metrics(
        self,
        on_page: Callable[[Job, CycleStats], None] | None,
        on_cycle: Callable[[Job, CycleStats | None], None] | None,
    ) -> tuple[Callable[[Job, CycleStats], None], Callable[[Job, CycleStats | None], None]]:
        metrics = self.metrics
        assert metrics is not None

        def page(job: Job, stats: CycleStats) -> None:
            metrics.page(job.spec.name, stats.pulling_id, stats.received, stats.sent, stats.duplicates)
            if on_page is not None:
                on_page(job, stats)

        def cycle(job: Job, stats: CycleStats | None) -> None:
            if stats is not None:
                metrics.page(job.spec.name, stats.pulling_id, stats.received, stats.sent, stats.duplicates)
                metrics.cycle(job.spec.name, stats.pulling_id, stats.seconds, stats.completed)
            if on_cycle is not None:
                on_cycle(job, stats)

        return page, cycle

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
        ok = True
        for drainer in self.drainers:
            failures = 0
            while True:
                try:
                    if drainer.drain_once() == 0:
                        break
                except Exception as exc:  # noqa: BLE001 - any sink failure keeps the batch; logged, retried
                    failures += 1
                    logger.error("%s (attempt %d of %d)", exc, failures, attempts)
                    if failures >= attempts:
                        ok = False
                        break
                    self.stop.wait(min(2.0**failures, 10.0))
        return ok

    def run_once(self) -> bool:
        """Deliver what is pending, pull one cycle of every service while the senders deliver what each page
        commits, then deliver the rest. True if all succeeded."""
        self.probe_outputs()
        delivered_before = self.drain()
        pulled_all = threading.Event()
        senders = [
            threading.Thread(target=d.run, args=(pulled_all,), name=f"Sender({d.sink.name})", daemon=True)
            for d in self.drainers
        ]
        for thread in senders:
            thread.start()
        try:
            pulled = self.scheduler.run_once()
        finally:
            pulled_all.set()
            for thread in senders:
                thread.join()
        delivered = self.drain()
        for drainer in self.drainers:
            logger.info("%s", drainer.statistics_line())
        return delivered_before and pulled and delivered

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
        threads += self.scheduler.start()
        logger.info("%s", gc_line())
        while not self.stop.wait(SENDER_STATS_EVERY):
            logger.info("%s", gc_line())
            for drainer in self.drainers:
                logger.info(
                    "Number of available senders: 1, sender manager internal queue size: %d",
                    self.outbox.pending(drainer.sink.name),
                )
                logger.info("%s", drainer.statistics_line())
        for thread in threads:
            thread.join(timeout=60)
        if server is not None:
            server.shutdown()
            server.server_close()

    def close(self) -> None:
        """Close sinks, sources (parsing processes), Qualys clients and the outbox."""
        for sink in self.sinks:
            sink.close()
        for job in self.jobs:
            close = getattr(job.source, "close", None)
            if close is not None:
                close()
        clients = {id(c): c for c in (getattr(job.source, "client", None) for job in self.jobs) if c is not None}
        for client in clients.values():
            client.close()
        self.outbox.close()


def _api_label(api: str) -> str:
    """A low-cardinality API label: incident ids in FIM paths become ``{id}``."""
    return re.sub(r"/[0-9a-fA-F-]{16,}/", "/{id}/", api)
