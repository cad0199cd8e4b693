"""kill -9 of the real collector at 20 random points during a backfill of five services, restarting
each time; then the delivered sets are compared with the simulator's ground truth."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from qualys_collector.simulator import Limits
from qualys_collector.simulator.faults import parse_fault
from tests.conftest import SimFactory, record_reliability
from tests.helpers.kit import file_output, fim_input, raw_config, vm_input, write_config

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]
CLI = [sys.executable, "-m", "qualys_collector"]
KILLS = 20
BATCH = 1000  # the drain's batch: at most one unconfirmed batch repeats per kill


def test_twenty_kills_during_a_backfill_lose_nothing(make_sim: SimFactory, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    sim = make_sim(
        seed=21,
        hosts=150,
        detections_per_host=6,
        scans=15,
        activity_rows=400,
        fim_events=2500,
        fim_incidents=8,
        base=now - timedelta(days=2),
        span=timedelta(days=2) - timedelta(minutes=5),
        host_interval=timedelta(days=3650),  # a static estate: every record exists, none changes
        vm_limits=Limits(rate=1_000_000, window=60, concurrency=2),
    )
    sim.faults.arm(parse_fault("slow:delay=0.01,times=-1"))
    url = sim.start()
    start = {"start_time_utc": (now - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    vm = {
        "host_list_detection": {
            **start,
            "truncation_limit": 10,
            "filters": {"status": ["New", "Active", "Fixed", "Re-Opened"]},
        },
        "vm_scans": start,
        "user_activity": {**start, "truncation_limit": 30},
    }
    fim = {
        "fim_events": {**start, "page_size": 100, "settle_lag_seconds": 0},
        "fim_incidents": {**start, "page_size": 3, "settle_lag_seconds": 0},
    }
    raw = raw_config(
        tmp_path / "state",
        qualys=vm_input(url, vm, id="k"),
        qualys_fim=fim_input(url, fim, id="k"),
        outputs=file_output(tmp_path / "events.jsonl"),
    )
    path = write_config(tmp_path / "config.yaml", raw)
    rng = random.Random(7)
    for _ in range(KILLS):
        proc = subprocess.Popen([*CLI, "run", "-c", str(path), "--once"], stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.6, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    sim.faults.clear()
    done = subprocess.run(
        [*CLI, "run", "-c", str(path), "--once"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        by_tag.setdefault(line["tag"], []).append(line["event"])
    checks = {
        "vuln.qualys.hostdetections": (
            Counter(e["@detection_key"] for e in by_tag["vuln.qualys.hostdetections"]),
            sim.truth("host_list_detection"),
        ),
        "vuln.qualys.vulnerabilities": (
            Counter(e["REF"] for e in by_tag["vuln.qualys.vulnerabilities"]),
            sim.truth("vm_scans"),
        ),
        "monitor.qualys.fim.event": (
            Counter(e["id"] for e in by_tag["monitor.qualys.fim.event"]),
            sim.truth("fim_events"),
        ),
        "monitor.qualys.fim.incident": (
            Counter(e["id"] for e in by_tag["monitor.qualys.fim.incident"]),
            sim.truth("fim_incidents"),
        ),
    }
    rows = Counter(
        "|".join(e[k] for k in ("Date", "Action", "Module", "Details", "User Name", "User Role", "User IP"))
        for e in by_tag["vuln.qualys.useractivitylog"]
    )
    expected_rows = Counter("|".join(row) for _id, row in sim.data.activity(sim.now(), None, None))
    lost = sum(len(truth - set(got)) for got, truth in checks.values()) + sum((expected_rows - rows).values())
    duplicated = sum(sum(got.values()) - len(got) for got, _t in checks.values()) + sum((rows - expected_rows).values())
    compared = sum(len(truth) for _g, truth in checks.values()) + sum(expected_rows.values())
    record_reliability(compared=compared, lost=lost, duplicated=duplicated)
    for tag, (got, truth) in checks.items():
        assert set(got) == truth, f"{tag}: lost {len(truth - set(got))}, unexpected {len(set(got) - truth)}"
    assert lost == 0
    assert duplicated <= KILLS * BATCH
