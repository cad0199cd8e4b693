"""/metrics, /healthz and /readyz scraped during a real run against the simulator and rsyslog."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from qualys_collector.config.schema import MetricsOptions
from qualys_collector.simulator import Limits
from qualys_collector.sinks.devo import DevoSink
from tests.conftest import SimFactory
from tests.helpers.rsyslog import Certs, Rsyslog, free_port
from tests.helpers.vmsim import NOW, Run, start_sim

pytestmark = pytest.mark.integration


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.1)


@pytest.mark.slow
def test_metrics_match_deliveries_and_readiness_follows_the_relay(make_sim: SimFactory, tmp_path: Path) -> None:
    certs = Certs.mint(tmp_path / "certs")
    relay = Rsyslog(tmp_path / "relay", certs)
    relay.start()
    sim = make_sim(
        seed=17,
        hosts=30,
        detections_per_host=3,
        scans=6,
        base=NOW - timedelta(days=2),
        span=timedelta(days=2),
        host_interval=timedelta(hours=6),
        vm_limits=Limits(rate=100_000, window=60, concurrency=2),
    )
    port = free_port()
    try:
        r = Run(
            sim=sim,
            url=start_sim(sim),
            state=tmp_path / "state",
            services={
                "host_list_detection": {"start_time_utc": "2026-05-29T00:00:00Z", "request_period_in_seconds": 1},
                "vm_scans": {"start_time_utc": "2026-05-29T00:00:00Z", "request_period_in_seconds": 1},
            },
        )
        base = r.config()
        options = MetricsOptions(address="127.0.0.1", port=port, delivery_stall_seconds=1.5)
        config = base.model_copy(update={"globals": base.globals.model_copy(update={"metrics": options})})
        devo = DevoSink(
            "devo",
            "127.0.0.1",
            relay.port,
            chain=certs.chain,
            cert=certs.client_cert,
            key=certs.client_key,
            timeout=3.0,
        )
        collector = r.collector(config, sinks=[devo])
        for drainer in collector.drainers:
            drainer.max_backoff = 0.3
        thread = threading.Thread(target=collector.run_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        wait(lambda: httpx.get(f"{url}/healthz").status_code == 200 if _up(url) else False)
        truth = len(sim.truth("host_list_detection", None, NOW)) + len(sim.truth("vm_scans", None, NOW))
        wait(lambda: len(relay.lines()) >= truth)
        text = httpx.get(f"{url}/metrics").text
        delivered = len(relay.lines())
        assert metric(text, "qualys_collector_events_delivered_total", output="devo") == delivered
        assert metric(text, "qualys_collector_events_pulled_total") == delivered
        assert metric(text, "qualys_collector_api_calls_total", api="asset/host/vm/detection", status="200") >= 1
        assert metric(text, "qualys_collector_outbox_pending_events", output="devo") == 0
        assert re.search(r'^qualys_collector_output_halted\{output="devo"\} 0\.0$', text, re.MULTILINE)  # before a halt
        assert (
            metric(text, "qualys_collector_last_successful_cycle_timestamp_seconds", service="host_list_detection") > 0
        )
        assert re.search(r'qualys_collector_cycle_duration_seconds_count\{service="vm_scans"\} [1-9]', text)
        assert httpx.get(f"{url}/readyz").status_code == 200
        relay.stop()
        sim.offset += timedelta(hours=7)  # every host is processed again: new events to deliver
        wait(lambda: httpx.get(f"{url}/readyz").status_code == 503, timeout=20)
        body = httpx.get(f"{url}/readyz").json()
        assert body["ready"] is False
        assert any("output devo: nothing delivered" in p for p in body["problems"])
        stalled = [p for p in body["problems"] if p.startswith("output devo: nothing delivered")]
        assert re.search(r"with events pending \(last: \[DeliveryError 40\d\] output devo: ", stalled[0]), stalled
        assert "Fix:" not in stalled[0]  # the reason is one line: the error's number and message
        relay.start()
        wait(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=30)
        assert httpx.get(f"{url}/readyz").json() == {"ready": True, "problems": []}
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "qualys_collector_delivery_failures_total", output="devo") >= 1
        collector.stop.set()
        thread.join(30)
        collector.close()
    finally:
        relay.stop()


def _up(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=1)
    except httpx.HTTPError:
        return False
    return True
