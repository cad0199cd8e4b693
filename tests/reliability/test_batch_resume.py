"""kill -9 of the real collector in the middle of a batched host detection pull, under a concurrency limit of
2 and a tight rate limit, with answers parsed in separate processes: the restart must pull exactly the
batches that were not finished, once each, and nothing that was (the simulator logs every call it served);
no parsing process may outlive the killed collector."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest

from qualys_collector.engine.outbox import DB_NAME
from qualys_collector.services.hld_process import CHILD_MODULE
from qualys_collector.simulator import Limits
from tests.conftest import SimFactory, record_reliability
from tests.helpers.kit import file_output, raw_config, vm_input, write_config

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
CLI = [sys.executable, "-m", "qualys_collector"]
CHILD = Path(__file__).resolve().parents[1] / "helpers" / "batch_crash_child.py"
KILL_AFTER_PAGES = 3


def parse_processes_after(seconds: float) -> list[psutil.Process]:
    """Parsing processes still running after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [p for p in psutil.process_iter(["cmdline"]) if CHILD_MODULE in " ".join(p.info["cmdline"] or [])]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


@pytest.mark.slow
def test_a_crash_mid_run_resumes_at_the_first_unfinished_batch(make_sim: SimFactory, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    sim = make_sim(
        seed=29,
        hosts=90,
        detections_per_host=2,
        base=now - timedelta(days=4),
        span=timedelta(days=2),
        host_interval=timedelta(days=3650),  # each host processed once, two to four days ago
        vm_limits=Limits(rate=5, window=2, concurrency=2),
    )
    url = sim.start()
    services = {
        "host_list_detection": {
            "start_time_utc": (now - timedelta(days=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "batch_size": 10,
            "max_workers": 2,
            "parse_processes": 2,  # the parsing processes must not outlive a kill
        }
    }
    raw = raw_config(
        tmp_path / "state",
        qualys=vm_input(url, services, id="crash"),
        outputs=file_output(tmp_path / "events.jsonl", name="file"),
    )
    config = write_config(tmp_path / "config.json", raw)
    killed = subprocess.run([sys.executable, str(CHILD), str(config), str(KILL_AFTER_PAGES)], timeout=120)
    assert killed.returncode == -9, "the collector was not killed mid-run"
    assert not parse_processes_after(5.0), "parsing processes outlived the killed collector"
    before = list(sim.vm_calls)

    with sqlite3.connect(tmp_path / "state" / DB_NAME) as db:
        (stored,) = db.execute("SELECT data FROM checkpoints WHERE service = 'host_list_detection'").fetchone()
    progress = json.loads(stored)["window"]["token"]
    plan = [f"{low}-{high}" for low, high in progress["plan"]]
    finished = {plan[i] for i in progress["done"]}
    assert len(plan) == 9
    assert len(finished) == KILL_AFTER_PAGES  # one page per batch of ten hosts: three batches committed

    log = tmp_path / "resumed.log"
    with log.open("wb") as sink:
        resumed = subprocess.run([*CLI, "run", "-c", str(config), "--once"], timeout=120, stderr=sink)
    assert resumed.returncode == 0, log.read_text()[-3000:]
    # the enrichment's KnowledgeBase lookups (QIDs by ids) are not host listings: left out of what follows
    after = [call for call in sim.vm_calls[len(before) :] if call[0] != "knowledge_base/vuln"]

    assert not [call for call in after if call[0] != "asset/host/vm/detection"], "the host IDs were listed again"
    pulled_again = Counter(params["ids"] for _resource, params in after)
    assert not finished & set(pulled_again), f"finished batches pulled again: {finished & set(pulled_again)}"
    assert set(pulled_again) == set(plan) - finished  # every unfinished batch, from the first one on
    assert max(pulled_again.values()) == 1

    delivered = Counter(
        event["event"]["@detection_key"]
        for event in map(json.loads, (tmp_path / "events.jsonl").read_text().splitlines())
        if event["tag"] == "vuln.qualys.hostdetections"
    )
    truth = sim.truth("host_list_detection")
    assert set(delivered) == truth
    # the restart cannot know the calls its killed predecessor made: Qualys answers 409, the budget waits
    errors = [line for line in log.read_text().splitlines() if re.match(r"^\S+\s+ERROR ", line)]
    assert not errors, errors
    assert sim.max_concurrency("asset/host/vm/detection") <= 2
    # delivery after a kill may repeat the one batch the file sink wrote but did not acknowledge
    duplicated = sum(delivered.values()) - len(delivered)
    record_reliability(compared=len(truth), lost=len(truth - set(delivered)), duplicated=duplicated)
    assert duplicated <= 1000
