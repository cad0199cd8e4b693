"""SIGTERM to the real ``run`` process at the points the others do not hold (the container issue's item 4):
between cycles, and in the middle of a page whose body is still arriving. Each time the process exits within
5 s (compose's and Kubernetes' grace periods leave room for that), and a restart delivers the rest: the events
delivered, counted per record key, are exactly the simulator's ground truth.

The other points have their own tests: a 409 wait (``test_cli.py``), a parallel host detection pull
(``reliability/test_batch_stop.py``), a batch waiting for its relay's confirmation (``test_sigterm_delivery.py``),
the image's own process mid-pull (``test_image.py``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from qualys_collector.engine.outbox import Outbox
from qualys_collector.simulator.faults import parse_fault
from tests.conftest import REPO, SimFactory, record_reliability
from tests.helpers.kit import file_output, raw_config, vm_input, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.reliability]
CLI = [sys.executable, "-m", "qualys_collector"]
DETECTION = "/api/5.0/fo/asset/host/vm/detection/"
KEYS = {"vuln.qualys.hosts": "ID", "vuln.qualys.hostdetections": "@detection_key"}
#: The collectors a test started: one still running when its test ends (a failed assertion) is killed then.
RUNNING: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_collector_left_running() -> Iterator[None]:
    yield
    for proc in RUNNING:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    RUNNING.clear()


def run_collector(cfg: Path) -> subprocess.Popen[str]:
    """``run -c cfg`` in the background (killed after its test if it is still running)."""
    proc = subprocess.Popen([*CLI, "run", "-c", str(cfg)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    RUNNING.append(proc)
    return proc


def config(tmp_path: Path, url: str, services: dict[str, Any]) -> Path:
    raw = raw_config(
        tmp_path / "state",
        qualys=vm_input(url, services, id="term"),
        outputs=file_output(tmp_path / "events.jsonl", name="file"),
    )
    return write_config(tmp_path / "config.yaml", raw)


def delivered(tmp_path: Path, tag: str) -> Counter[str]:
    """Record keys of the events delivered with ``tag``, with how often each was delivered."""
    path = tmp_path / "events.jsonl"
    # only whole lines: polled while the collector still writes, the file may end inside a line (CI read one so, and
    # the failed test left its collector running into the next tests)
    whole = path.read_text().split("\n")[:-1] if path.exists() else []
    lines = [json.loads(x) for x in whole if x]
    return Counter(str(line["event"][KEYS[tag]]) for line in lines if line["tag"] == tag)


def terminate(proc: subprocess.Popen[str]) -> tuple[float, str]:
    """SIGTERM; the seconds until the process was gone, and its log."""
    proc.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    try:
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return time.monotonic() - asked, err


def pending(tmp_path: Path) -> int:
    outbox = Outbox(tmp_path / "state")
    try:
        return outbox.pending()
    finally:
        outbox.close()


def test_sigterm_between_cycles_exits_within_5_s_and_the_next_run_delivers_only_what_is_new(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    """The first cycle done and delivered, the process waiting for the next: SIGTERM ends that wait at once; the
    restart resumes at the checkpoint (no window pulled twice) and delivers what Qualys processed since."""
    now = datetime.now(UTC).replace(microsecond=0)
    sim = make_sim(
        seed=41, hosts=120, detections_per_host=2, base=now - timedelta(days=3), host_interval=timedelta(hours=1)
    )
    first = now - timedelta(hours=2, seconds=30)  # Qualys' clock, behind ours: each window ends there
    sim.frozen = first
    url = sim.start()
    start = {"start_time_utc": "2020-01-01T00:00:00Z", "request_period_in_seconds": 3600}
    cfg = config(tmp_path, url, {"host_list": start, "host_list_detection": start})
    truth = {
        "vuln.qualys.hosts": sim.truth("host_list"),
        "vuln.qualys.hostdetections": sim.truth("host_list_detection"),
    }
    proc = run_collector(cfg)
    deadline = time.monotonic() + 90
    while (
        time.monotonic() < deadline
        and proc.poll() is None
        and any(set(delivered(tmp_path, tag)) != keys for tag, keys in truth.items())
    ):
        time.sleep(0.1)
    time.sleep(1.0)  # both cycles over and delivered: the scheduler waits for the next period (an hour)
    assert proc.poll() is None, "run ended on its own"
    took, err = terminate(proc)
    assert took <= 5.0, f"exit took {took:.1f} s after SIGTERM:\n{err[-2000:]}"
    assert proc.returncode == 0, err[-3000:]
    assert "Received SIGTERM" in err
    assert "Stop requested" not in err  # nothing was in progress: no wait was cut short
    assert pending(tmp_path) == 0, "a committed event was not delivered before the exit"
    for tag, keys in truth.items():
        assert delivered(tmp_path, tag) == Counter(keys), tag

    sim.frozen = now - timedelta(seconds=30)  # two hours later for Qualys: every host processed again
    newer = {
        "vuln.qualys.hosts": sim.truth("host_list", first),
        "vuln.qualys.hostdetections": sim.truth("host_list_detection", first),
    }
    assert newer["vuln.qualys.hosts"] == truth["vuln.qualys.hosts"]  # every host processed again since
    again = subprocess.run(
        [*CLI, "run", "--once", "-c", str(cfg)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Fetching data From : 2020" not in again.stderr, "a window was pulled again from the start"
    for tag in truth:
        got, want = delivered(tmp_path, tag), Counter(truth[tag]) + Counter(newer[tag])
        record_reliability(
            compared=sum(want.values()), lost=sum((want - got).values()), duplicated=sum((got - want).values())
        )
        assert got == want, f"{tag}: {sum((want - got).values())} lost, {sum((got - want).values())} extra"


def test_sigterm_while_a_page_is_still_arriving_exits_within_5_s_and_a_restart_delivers_the_rest(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    """A detection page trickling in one byte at a time (a slow loris): SIGTERM does not wait for it. The page was
    never committed, so the restart fetches it again from the last committed page; nothing lost, nothing twice."""
    now = datetime.now(UTC).replace(microsecond=0)
    sim = make_sim(seed=43, hosts=60, detections_per_host=2, base=now - timedelta(days=3))
    sim.frozen = now - timedelta(minutes=5)
    url = sim.start()
    sim.faults.arm(parse_fault("slow:delay=0.05,times=-1,path=detection"))
    cfg = config(
        tmp_path, url, {"host_list_detection": {"start_time_utc": "2020-01-01T00:00:00Z", "truncation_limit": 5}}
    )
    truth = sim.truth("host_list_detection")
    proc = run_collector(cfg)
    deadline = time.monotonic() + 60
    while sim.requests.get(DETECTION, 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    sim.faults.clear()
    sim.faults.arm(parse_fault("trickle:delay=0.05,times=-1,path=detection"))  # the next page: 20 bytes a second
    served = sim.requests.get(DETECTION, 0)
    while sim.requests.get(DETECTION, 0) <= served and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)  # the page is arriving, a byte at a time
    assert proc.poll() is None, "run ended on its own"
    committed = delivered(tmp_path, "vuln.qualys.hostdetections")
    assert committed, "no page was committed before the trickling one"
    assert set(committed) != truth, "the pull was over before SIGTERM"
    took, err = terminate(proc)
    assert took <= 5.0, f"exit took {took:.1f} s after SIGTERM:\n{err[-2000:]}"
    assert proc.returncode == 0, err[-3000:]
    assert "Received SIGTERM" in err
    assert set(delivered(tmp_path, "vuln.qualys.hostdetections")) < truth, "the trickling page was committed"

    sim.faults.clear()
    again = subprocess.run(
        [*CLI, "run", "--once", "-c", str(cfg)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming the window interrupted after page" in again.stderr  # from the last committed page
    got = delivered(tmp_path, "vuln.qualys.hostdetections")
    want = Counter(truth)
    record_reliability(compared=len(truth), lost=sum((want - got).values()), duplicated=sum((got - want).values()))
    assert got == want, f"{sum((want - got).values())} lost, {sum((got - want).values())} extra"
