"""Prometheus metrics, ``/healthz`` and ``/readyz`` (``globals.metrics: {address, port}``).

Counters are fed by :class:`MetricsObserver`, the observer the composition root passes to the scheduler,
the Qualys clients and the drainers (cycles, API answers, token renewals, deliveries), so none of them
depends on this module. Outbox depth and size are read from SQLite at scrape time.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from qualys_collector.observability.observer import Observer

if TYPE_CHECKING:
    from qualys_collector.engine.cycle import CycleStats, Job

PREFIX = "qualys_collector"


@dataclass
class Readiness:
    """What ``/readyz`` checks: every service cycled within 3x its period, deliveries not stalled."""

    periods: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    last_cycle: dict[str, float] = field(default_factory=dict)
    delivery_stall_seconds: float = 300.0
    last_delivery_ok: dict[str, float] = field(default_factory=dict)
    pending: Callable[[str], int] = lambda _output: 0
    outbox_full: Callable[[], bool] = lambda: False
    halted: dict[str, str] = field(default_factory=dict)
    #: The last error of an output that failed (its numbered message, no fix), named in a stall's reason.
    last_error: Callable[[str], str | None] = lambda _output: None

    def problems(self, now: float | None = None) -> list[str]:
        """Why the collector is not ready (empty when it is)."""
        now = time.time() if now is None else now
        found = []
        for service, period in self.periods.items():
            last = self.last_cycle.get(service, self.started)
            if now - last > 3 * period:
                found.append(f"{service}: no completed cycle for {now - last:.0f} s (period {period:.0f} s)")
        for output, last_ok in self.last_delivery_ok.items():
            if now - last_ok > self.delivery_stall_seconds and self.pending(output) > 0:
                error = self.last_error(output)
                cause = f" (last: {error})" if error else ""
                found.append(f"output {output}: nothing delivered for {now - last_ok:.0f} s with events pending{cause}")
        for output, reason in self.halted.items():
            found.append(f"output {output}: delivery stopped ({reason}); events stay in the outbox, restart to resume")
        if self.outbox_full():
            found.append("the outbox is full: pulling is paused")
        return found


class _OutboxCollector(Collector):
    def __init__(self, depth: Callable[[], dict[str, int]], size: Callable[[], int]) -> None:
        self.depth, self.size = depth, size

    def collect(self) -> Iterable[GaugeMetricFamily]:
        pending = GaugeMetricFamily(f"{PREFIX}_outbox_pending_events", "Events not yet delivered", labels=["output"])
        for output, count in self.depth().items():
            pending.add_metric([output], count)
        yield pending
        yield GaugeMetricFamily(f"{PREFIX}_outbox_bytes", "Bytes used by the outbox database", value=self.size())


class Metrics:
    """The collector's metrics in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(f"{PREFIX}_events_received", "Records received from Qualys", ["service"], registry=r)
        self.pulled = Counter(f"{PREFIX}_events_pulled", "Events committed to the outbox", ["service"], registry=r)
        self.deduplicated = Counter(
            f"{PREFIX}_events_deduplicated", "Records dropped as already delivered", ["service"], registry=r
        )
        self.delivered = Counter(f"{PREFIX}_events_delivered", "Events confirmed by an output", ["output"], registry=r)
        self.delivery_failures = Counter(
            f"{PREFIX}_delivery_failures", "Batches an output did not confirm", ["output"], registry=r
        )
        self.api_calls = Counter(f"{PREFIX}_api_calls", "Qualys API answers", ["api", "status"], registry=r)
        self.limit_waits = Counter(
            f"{PREFIX}_rate_limit_waits", "409/429 answers turned into waits", ["api", "status"], registry=r
        )
        self.token_renewals = Counter(f"{PREFIX}_token_renewals", "FIM gateway tokens issued", registry=r)
        self.last_success = Gauge(
            f"{PREFIX}_last_successful_cycle_timestamp_seconds",
            "End of the last completed cycle",
            ["service"],
            registry=r,
        )
        self.cycle_seconds = Histogram(
            f"{PREFIX}_cycle_duration_seconds",
            "Pull cycle duration",
            ["service"],
            registry=r,
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, float("inf")),
        )
        self.halted = Gauge(
            f"{PREFIX}_output_halted",
            "1 when an output stopped re-sending a batch its relay would not confirm",
            ["output"],
            registry=r,
        )
        self.readiness = Readiness()
        self._seen: dict[tuple[str, int], tuple[int, int, int]] = {}
        self._lock = threading.Lock()

    def watch_outbox(self, depth: Callable[[], dict[str, int]], size: Callable[[], int]) -> None:
        """Report outbox depth and size at scrape time."""
        self.registry.register(_OutboxCollector(depth, size))

    def page(self, service: str, pulling_id: int, received: int, sent: int, duplicates: int) -> None:
        """Cumulative figures of a cycle after one of its pages; only the increase is counted."""
        with self._lock:
            before = self._seen.get((service, pulling_id), (0, 0, 0))
            self._seen[(service, pulling_id)] = (received, sent, duplicates)
        self.received.labels(service).inc(received - before[0])
        self.pulled.labels(service).inc(sent - before[1])
        self.deduplicated.labels(service).inc(duplicates - before[2])

    def cycle(self, service: str, pulling_id: int, seconds: float, completed: bool) -> None:
        """The end of a cycle."""
        with self._lock:
            self._seen.pop((service, pulling_id), None)
        self.cycle_seconds.labels(service).observe(seconds)
        if completed:
            now = time.time()
            self.last_success.labels(service).set(now)
            self.readiness.last_cycle[service] = now

    def api_answer(self, api: str, status: int) -> None:
        """One answer from Qualys."""
        self.api_calls.labels(api, str(status)).inc()
        if status in (409, 429):
            self.limit_waits.labels(api, str(status)).inc()

    def delivery(self, output: str, count: int, ok: bool) -> None:
        """One batch confirmed (or not) by an output."""
        if ok:
            self.delivered.labels(output).inc(count)
            self.readiness.last_delivery_ok[output] = time.time()
        else:
            self.delivery_failures.labels(output).inc()
            self.readiness.last_delivery_ok.setdefault(output, time.time())

    def app(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """WSGI: ``/metrics``, ``/healthz``, ``/readyz``."""
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            problems = self.readiness.problems()
            status = "503 Service Unavailable" if problems else "200 OK"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps({"ready": not problems, "problems": problems}).encode()]
        return make_wsgi_app(self.registry)(environ, start_response)  # type: ignore[no-any-return]


class MetricsObserver(Observer):
    """Feeds :class:`Metrics` (and so ``/readyz``) from the collector's events."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def page(self, job: Job, stats: CycleStats) -> None:
        self.metrics.page(service_label(job), stats.pulling_id, stats.received, stats.committed, stats.duplicates)

    def cycle(self, job: Job, stats: CycleStats | None) -> None:
        if stats is not None:
            self.page(job, stats)
            self.metrics.cycle(service_label(job), stats.pulling_id, stats.seconds, stats.completed)

    def api_answer(self, api: str, status: int) -> None:
        self.metrics.api_answer(api_label(api), status)

    def token_issued(self) -> None:
        self.metrics.token_renewals.inc()

    def delivery(self, output: str, count: int, ok: bool) -> None:
        self.metrics.delivery(output, count, ok)

    def delivery_halted(self, output: str, reason: str) -> None:
        self.metrics.halted.labels(output).set(1)
        self.metrics.readiness.halted[output] = reason


def service_label(job: Job) -> str:
    """The ``service`` label: a backfill's is ``<service>@backfill``, so its cycles never stand in for the live
    service's in ``/readyz`` or its counters."""
    return f"{job.spec.name}@backfill" if job.backfill else job.spec.name


def api_label(api: str) -> str:
    """A low-cardinality API label: incident ids in FIM paths become ``{id}``."""
    return re.sub(r"/[0-9a-fA-F-]{16,}/", "/{id}/", api)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""


def serve(metrics: Metrics, address: str, port: int) -> WSGIServer:
    """Serve the metrics app in a daemon thread."""
    server = make_server(address, port, metrics.app, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="Metrics", daemon=True).start()
    return server
