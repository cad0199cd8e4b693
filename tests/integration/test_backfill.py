"""``qualys-collector backfill`` against the simulator, compared with its ground truth.

In process (the collector as the product builds it, on the simulator's frozen clock): every time-windowed
service, VM and FIM, backfills a 30-day range exactly. Through the real command line in real processes (the
wall clock): beside a running ``run``, which hosts the backfill on its own API budget while its live services
go on (no gap, no overlap, the live checkpoint untouched); kill -9 mid-backfill then the same command again
(resumes, loses nothing); and every bad argument is one numbered error before any network call.
"""

from __future__ import annotations

import itertools
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from qualys_collector.backfill import run_backfill
from qualys_collector.engine.outbox import DB_NAME
from qualys_collector.engine.summary import SUMMARY_TAG
from qualys_collector.model import format_seed_datetime, parse_iso_datetime, parse_seed_datetime
from qualys_collector.services.hld_process import CHILD_MODULE
from qualys_collector.simulator import Limits, Simulator
from qualys_collector.simulator.faults import parse_fault
from tests.conftest import REPO, SimFactory, record_reliability
from tests.helpers.kit import clients, config, file_output, fim_input, no_sleep, raw_config, vm_input, write_config
from tests.helpers.vmsim import NOW

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "qualys_collector"]

#: the tag and the key of each service's events, as the simulator's ground truth names them
TAGS = {
    "vm_scans": "vuln.qualys.vulnerabilities",
    "host_list": "vuln.qualys.hosts",
    "host_list_detection": "vuln.qualys.hostdetections",
    "user_activity": "vuln.qualys.useractivitylog",
    "fim_events": "monitor.qualys.fim.event",
    "fim_incidents": "monitor.qualys.fim.incident",
    "knowledge_base": "vuln.qualys.kb",
}
VM = ("vm_scans", "host_list", "host_list_detection", "user_activity", "knowledge_base")


def sim_data(base: datetime) -> dict[str, Any]:
    """40 days of history before ``base + 40 days``; each host processed once (its ID is delivered or lost)."""
    return {
        "seed": 29,
        "hosts": 60,
        "detections_per_host": 3,
        "scans": 60,
        "activity_rows": 900,
        "fim_events": 1500,
        "fim_incidents": 12,
        "base": base,
        "span": timedelta(days=40),
        "host_interval": timedelta(days=3650),
    }


def key_of(service: str, event: dict[str, Any]) -> Any:
    if service == "vm_scans":
        return event["REF"]
    if service == "host_list":
        return event["ID"]
    if service == "host_list_detection":
        return event["@detection_key"]
    if service == "knowledge_base":
        return f"{event['QID']}@{event['LAST_SERVICE_MODIFICATION_DATETIME']}"
    if service == "user_activity":
        return f"{event['Date']}|" + "|".join(
            str(v) for k, v in event.items() if not k.startswith("@") and k not in ("environment", "Date")
        )
    return event["id"]


def truth(sim: Simulator, service: str, start: datetime, end: datetime | None) -> Counter[Any]:
    """The simulator's records of ``service`` in ``[start, end)``, keyed as :func:`key_of` keys events."""
    if service == "user_activity":
        header = ["Date", "Action", "Module", "Details", "User Name", "User Role", "User IP"]
        rows = sim.data.activity(sim.now(), None, None)
        out: Counter[Any] = Counter()
        for _rid, row in rows:
            when = parse_seed_datetime(row[0])
            if start <= when and (end is None or when < end):
                out[key_of(service, dict(zip(header, row, strict=True)))] += 1
        return out
    return Counter(sim.truth(service, start, end))


def delivered(path: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [line for line in lines if line["tag"] != SUMMARY_TAG]


def by_service(lines: list[dict[str, Any]], service: str, *, backfill: bool) -> Counter[Any]:
    return Counter(
        key_of(service, line["event"])
        for line in lines
        if line["tag"] == TAGS[service] and bool(line["event"].get("@backfill")) is backfill
    )


def checkpoint_row(state: Path, scope: str, service: str) -> dict[str, Any] | None:
    with sqlite3.connect(state / DB_NAME, timeout=30) as db:
        found = db.execute(
            "SELECT data FROM checkpoints WHERE input_id = ? AND service = ?", (scope, service)
        ).fetchone()
    return None if found is None else dict(json.loads(found[0]))


# ------------------------------------------------------------------------------------------- every service


@pytest.mark.slow
@pytest.mark.parametrize("service", list(TAGS))
def test_every_time_windowed_service_backfills_30_days_exactly(
    make_sim: SimFactory, tmp_path: Path, service: str
) -> None:
    sim = make_sim(
        **sim_data(NOW - timedelta(days=40)),
        vm_limits=Limits(rate=100_000, window=60, concurrency=2),
        fim_limits=Limits(rate=100_000, window=60),
    )
    sim.frozen = NOW
    url = sim.start()
    end = NOW - timedelta(days=5)
    start = end - timedelta(days=30)
    options: dict[str, Any] = {"max_window_seconds": 7 * 86400}
    if service in ("host_list", "host_list_detection", "user_activity"):
        options["truncation_limit"] = 50
    state = tmp_path / "state"
    block = {service: options}
    cfg = config(
        state,
        qualys=vm_input(url, block) if service in VM else None,
        qualys_fim=None if service in VM else fim_input(url, block),
    )
    assert run_backfill(
        cfg,
        None,
        service,
        format_seed_datetime(start),
        format_seed_datetime(end),
        stop=threading.Event(),
        clock=sim.now,
        clients=clients(),
        sleep=no_sleep,
    )
    lines = delivered(state / "events.jsonl")
    got = by_service(lines, service, backfill=True)
    expected = truth(sim, service, start, end)
    assert expected  # the range holds records of this service
    assert by_service(lines, service, backfill=False) == Counter()  # every event is marked
    if service == "vm_scans":  # a scan's state changes follow it: each REF at least once
        assert set(got) == set(expected)
    else:
        assert got == expected
    record_reliability(
        compared=sum(expected.values()),
        lost=sum((expected - got).values()),
        duplicated=sum((got - expected).values()) if service != "vm_scans" else 0,
    )
    windows = [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]
    spans = [(s["event"]["window_start"], s["event"]["window_end"]) for s in windows if s["tag"] == SUMMARY_TAG]
    assert spans[0][0] == format_seed_datetime(start)
    assert spans[-1][1] == format_seed_datetime(end)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # windows follow without a hole
    assert checkpoint_row(state, "7", service) is None
    assert checkpoint_row(state, "5", service) is None


# ------------------------------------------------------------------------------------ the real command line


@pytest.fixture
def wall_sim(make_sim: SimFactory) -> Simulator:
    """The wall clock (the CLI runs in its own processes): 40 days of history up to now."""
    now = datetime.now(UTC).replace(microsecond=0)
    return make_sim(
        **sim_data(now - timedelta(days=40) + timedelta(minutes=1)),
        vm_limits=Limits(rate=100_000, window=60, concurrency=2),
        fim_limits=Limits(rate=100_000, window=60),
    )


def write(tmp_path: Path, url: str, vm: dict[str, Any] | None, fim: dict[str, Any] | None) -> Path:
    raw = raw_config(
        tmp_path / "state",
        qualys=vm_input(url, vm, id="c1") if vm else None,
        qualys_fim=fim_input(url, fim, id="c1") if fim else None,
        outputs=file_output(tmp_path / "events.jsonl"),
    )
    return write_config(tmp_path / "config.yaml", raw)


def range_of(days_ago: int = 1) -> tuple[datetime, datetime]:
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days_ago)
    return end - timedelta(days=30), end


def backfill_cmd(path: Path, service: str, start: datetime, end: datetime) -> list[str]:
    return [
        *CLI,
        "backfill",
        "-c",
        str(path),
        "--service",
        service,
        "--from",
        format_seed_datetime(start),
        "--to",
        format_seed_datetime(end),
    ]


@pytest.mark.slow
def test_backfill_beside_a_running_collector_no_gap_no_overlap_live_checkpoint_untouched(
    wall_sim: Simulator, tmp_path: Path
) -> None:
    start, end = range_of()
    live = {"start_time_utc": format_seed_datetime(end)}
    vm = {
        "host_list_detection": {**live, "request_period_in_seconds": 3600, "truncation_limit": 40},
        "user_activity": {**live, "request_period_in_seconds": 2, "truncation_limit": 40},
    }
    fim = {"fim_events": {**live, "request_period_in_seconds": 3600, "page_size": 100, "max_window_seconds": 864000}}
    path = write(tmp_path, wall_sim.start(), vm, fim)
    state = tmp_path / "state"
    log = (tmp_path / "run.log").open("w")  # a file, not a pipe: the live run writes more than a pipe holds
    run = subprocess.Popen([*CLI, "run", "-c", str(path)], stderr=log, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        idle = ("host_list_detection", "fim_events")  # one cycle, then an hour's wait: their checkpoints rest
        while time.monotonic() < deadline:
            rows = [checkpoint_row(state, "c1", s) if (state / DB_NAME).exists() else None for s in idle]
            if all(
                r is not None and "window" not in r and r["last_event_time_str"] != r["start_time_str"] for r in rows
            ):
                break
            time.sleep(0.2)
        before = {s: checkpoint_row(state, "c1", s) for s in idle}
        assert all(before.values()), before
        waiters = [
            subprocess.Popen(backfill_cmd(path, s, start, end), stderr=subprocess.PIPE, text=True, cwd=REPO)
            for s in ("host_list_detection", "user_activity", "fim_events")
        ]
        outcomes = [(w.communicate(timeout=240)[1], w.returncode) for w in waiters]
        for err, code in outcomes:
            assert code == 0, err[-3000:]
            assert "holds the state directory" in err or "in use by another collector" in err, err[-2000:]
            assert "complete and delivered" in err
        after = {s: checkpoint_row(state, "c1", s) for s in idle}
        assert after == before  # the backfills never touched the live checkpoints
        shown = subprocess.run([*CLI, "state", "show", "-c", str(path)], capture_output=True, text=True, check=True)
        for service in ("host_list_detection", "user_activity", "fim_events"):
            assert f"c1@backfill/{service}:" in shown.stdout
            assert f"backfill [{format_seed_datetime(start)}, {format_seed_datetime(end)}): complete" in shown.stdout
        time.sleep(3)  # one more live user_activity cycle after the backfills
        # the finished backfills' parsing processes ended with them: only the live host detection job's remains
        parsers = [c for c in psutil.Process(run.pid).children() if CHILD_MODULE in " ".join(c.cmdline())]
        assert len(parsers) == 1, [c.cmdline() for c in parsers]
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=30)
        log.close()
    err = (tmp_path / "run.log").read_text()
    assert run.returncode == 0, err[-3000:]
    assert "Hosting the backfill of fim_events" in err
    lines = delivered(tmp_path / "events.jsonl")
    compared = lost = duplicated = 0
    for service in ("host_list_detection", "user_activity", "fim_events"):
        filled = by_service(lines, service, backfill=True)
        expected = truth(wall_sim, service, start, end)
        assert expected, service
        assert filled == expected, service  # the range exactly: each record once, none missing
        pulled = by_service(lines, service, backfill=False)
        assert not set(filled) & set(pulled), service  # no overlap with the live pull
        row = checkpoint_row(state, "c1", service)
        assert row is not None
        assert row["start_time_str"] == format_seed_datetime(end)
        reached = parse_iso_datetime(row["last_event_time_str"])
        live_truth = truth(wall_sim, service, end, reached)
        assert not live_truth - pulled, service  # no gap at --to: the live service took over there
        assert not pulled - truth(wall_sim, service, end, None), service  # each once (identical rows stay two)
        compared += sum(expected.values()) + sum(live_truth.values())
        lost += sum((expected - filled).values()) + sum((live_truth - pulled).values())
        duplicated += sum((filled - expected).values())
    record_reliability(compared=compared, lost=lost, duplicated=duplicated)


@pytest.mark.slow
def test_kill_9_mid_backfill_then_the_same_command_resumes_and_loses_nothing(
    wall_sim: Simulator, tmp_path: Path
) -> None:
    start, end = range_of()
    fim = {"fim_events": {"page_size": 20, "max_window_seconds": 86400, "start_time_utc": format_seed_datetime(end)}}
    path = write(tmp_path, wall_sim.start(), None, fim)
    state = tmp_path / "state"
    wall_sim.faults.arm(parse_fault("slow:delay=0.05,times=-1,path=fim"))
    first = subprocess.Popen(
        backfill_cmd(path, "fim_events", start, end), stderr=subprocess.DEVNULL, text=True, cwd=REPO
    )
    deadline = time.monotonic() + 90
    reached = start
    while time.monotonic() < deadline and first.poll() is None:
        row = checkpoint_row(state, "c1@backfill", "fim_events") if (state / DB_NAME).exists() else None
        if row is not None:
            reached = parse_iso_datetime(row["last_event_time_str"])
            if reached > start + timedelta(days=8):
                break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    assert start + timedelta(days=8) < reached < end  # killed mid-range
    wall_sim.faults.clear()

    again = subprocess.run(
        backfill_cmd(path, "fim_events", start, end), capture_output=True, text=True, timeout=180, check=False, cwd=REPO
    )
    assert again.returncode == 0, again.stderr[-3000:]
    starts = [line.split("From : ")[1].split("  To")[0] for line in again.stderr.splitlines() if "From : " in line]
    assert starts
    resumed = parse_iso_datetime(starts[0].replace(" ", "T"))
    assert resumed > start  # resumed, not restarted: in the window that was under way (a day at most)
    assert resumed >= reached - timedelta(days=1)
    lines = delivered(tmp_path / "events.jsonl")
    filled = by_service(lines, "fim_events", backfill=True)
    expected = truth(wall_sim, "fim_events", start, end)
    lost, extra = expected - filled, filled - expected
    record_reliability(compared=sum(expected.values()), lost=sum(lost.values()), duplicated=sum(extra.values()))
    assert not lost
    assert set(filled) == set(expected)
    assert max(filled.values()) <= 2
    assert sum(extra.values()) <= 1000  # at most the one batch written but not confirmed when killed
    assert checkpoint_row(state, "c1", "fim_events") is None  # the live service was never started

    # state show names it; state reset --backfill forgets it and only it
    shown = subprocess.run([*CLI, "state", "show", "-c", str(path)], capture_output=True, text=True, check=True)
    assert f"backfill [{format_seed_datetime(start)}, {format_seed_datetime(end)}): complete" in shown.stdout
    reset = subprocess.run(
        [*CLI, "state", "reset", "-c", str(path), "--service", "fim_events", "--backfill"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Backfill of c1/fim_events reset" in reset.stderr
    assert checkpoint_row(state, "c1@backfill", "fim_events") is None


@pytest.mark.parametrize(
    ("service", "start", "end", "code", "named"),
    [
        ("fim_events", "2024-02-01T00:00:00Z", "2024-02-01T00:00:00Z", 600, "is not after --from"),
        ("fim_events", "2024-02-01T00:00:00Z", "2024-01-01T00:00:00Z", 600, "is not after --from"),
        ("fim_events", "2024-01-01T00:00:00Z", "2999-01-01T00:00:00Z", 601, "settle_lag_seconds 30"),
        ("fim_events", "2024-01-01T00:00:00Z", "+10s", 601, "settle_lag_seconds 30"),
        ("nope", "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", 602, "use one of: vm_scans"),
        ("host_list", "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", 602, "inputs.qualys.services.host_list"),
        ("fim_events", "2024-01-01", "2024-02-01T00:00:00Z", 603, "--from '2024-01-01' is not a UTC time"),
        ("fim_events", "2024-01-01T00:00:00Z", "yesterday", 603, "--to 'yesterday'"),
    ],
)
def test_a_bad_argument_is_one_numbered_error_before_any_network_call(
    make_sim: SimFactory, tmp_path: Path, service: str, start: str, end: str, code: int, named: str
) -> None:
    sim = make_sim(seed=1, hosts=1)
    path = write(tmp_path, sim.start(), None, {"fim_events": {}})
    if end == "+10s":  # later than now minus the 30 s settle lag, not in the future
        end = format_seed_datetime(datetime.now(UTC) - timedelta(seconds=10))
    done = subprocess.run(
        [*CLI, "backfill", "-c", str(path), "--service", service, "--from", start, "--to", end],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stderr
    assert f"[BackfillError {code}]" in errors[0]
    assert named in errors[0]
    assert "Fix: " in errors[0]
    assert sim.requests == {}  # nothing was asked of Qualys
    assert not (tmp_path / "state").exists()  # nor was the state touched


def test_a_second_range_while_one_is_under_way_is_refused_with_604(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(seed=1, hosts=1)
    path = write(tmp_path, sim.start(), None, {"fim_events": {}})
    from qualys_collector.engine import backfill as backfills
    from qualys_collector.engine.outbox import Outbox

    outbox = Outbox(tmp_path / "state")
    try:
        backfills.request(outbox, "c1", "fim_events", NOW - timedelta(days=60), NOW - timedelta(days=30))
    finally:
        outbox.close()
    done = subprocess.run(
        backfill_cmd(path, "fim_events", NOW - timedelta(days=20), NOW - timedelta(days=10)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stderr
    assert "[BackfillError 604]" in done.stderr
    assert "is under way (0% done)" in done.stderr
    assert sim.requests == {}


def test_a_live_service_hours_behind_pulls_its_capped_windows_at_once_then_waits_its_period(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    """#16 item 14 through the real client: 5 h 30 min behind, capped at an hour, period 600 s."""
    from qualys_collector.app import Collector
    from qualys_collector.engine.outbox import Outbox

    sim = make_sim(**sim_data(NOW - timedelta(days=40)), vm_limits=Limits(rate=100_000, window=60, concurrency=2))
    sim.frozen = NOW
    url = sim.start()
    start = NOW - timedelta(hours=5, minutes=30)
    options = {"start_time_utc": format_seed_datetime(start), "max_window_seconds": 3600}
    state = tmp_path / "state"
    cfg = config(state, qualys=vm_input(url, {"user_activity": {**options, "request_period_in_seconds": 600}}))
    stop = threading.Event()
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        stop.set()  # the first wait between cycles ends the test
        return True

    collector = Collector(cfg, clock=sim.now, clients=clients(), sleep=no_sleep, stop=stop, wait=wait)
    try:
        collector.scheduler.loop(collector.jobs[0])
    finally:
        collector.close()
    outbox = Outbox(state)
    try:
        outbox.register_outputs(["probe"])
        stored = [json.loads(e.body) for e in outbox.read("probe", 100_000)]
    finally:
        outbox.close()
    spans = [(e["window_start"], e["window_end"], e["capped"]) for e in stored if "@summary" in e]
    hours = [format_seed_datetime(start + timedelta(hours=h)) for h in range(6)]
    assert spans == [(hours[h], hours[h + 1], True) for h in range(5)] + [(hours[5], format_seed_datetime(NOW), False)]
    assert waits == [600.0]  # five capped windows back to back, the sixth caught up: then one period
    got = Counter(key_of("user_activity", e) for e in stored if "@summary" not in e)
    assert got == truth(sim, "user_activity", start, NOW)


@pytest.mark.slow
def test_the_hosting_run_killed_mid_backfill_then_the_waiting_command_takes_over_and_loses_nothing(
    wall_sim: Simulator, tmp_path: Path
) -> None:
    start, end = range_of()
    live = {"start_time_utc": format_seed_datetime(end), "request_period_in_seconds": 3600}
    path = write(
        tmp_path, wall_sim.start(), None, {"fim_events": {**live, "page_size": 20, "max_window_seconds": 86400}}
    )
    state = tmp_path / "state"
    wall_sim.faults.arm(parse_fault("slow:delay=0.05,times=-1,path=fim"))
    run = subprocess.Popen([*CLI, "run", "-c", str(path)], stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.monotonic() + 60
    while not (state / DB_NAME).exists() or checkpoint_row(state, "c1", "fim_events") is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    waiting = subprocess.Popen(
        backfill_cmd(path, "fim_events", start, end), stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    reached = start
    while reached <= start + timedelta(days=5):
        assert time.monotonic() < deadline + 60
        row = checkpoint_row(state, "c1@backfill", "fim_events")
        reached = parse_iso_datetime(row["last_event_time_str"]) if row else start
        time.sleep(0.05)
    run.kill()
    run.wait(timeout=30)
    wall_sim.faults.clear()
    _out, err = waiting.communicate(timeout=180)
    assert waiting.returncode == 0, err[-3000:]
    assert "in use by another collector" in err  # it waited for the run first
    pulls = [line for line in err.splitlines() if "Puller(qualys_fim,c1,fim_events,backfill) -> Fetching data" in line]
    assert pulls  # then it pulled the rest itself, from where the killed run had committed (not from --from)
    assert parse_iso_datetime(pulls[0].split("From : ")[1].split("  To")[0].replace(" ", "T")) > start
    filled = by_service(delivered(tmp_path / "events.jsonl"), "fim_events", backfill=True)
    expected = truth(wall_sim, "fim_events", start, end)
    lost, extra = expected - filled, filled - expected
    record_reliability(compared=sum(expected.values()), lost=sum(lost.values()), duplicated=sum(extra.values()))
    assert not lost
    assert sum(extra.values()) <= 1000  # at most the one batch the killed run had written but not confirmed
