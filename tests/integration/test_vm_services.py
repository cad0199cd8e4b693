"""The four VM services against the simulator: delivered keys equal the simulator's ground truth."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from qualys_collector.engine.outbox import Outbox
from qualys_collector.errors import DeliveryError
from qualys_collector.model import Event, StoredEvent
from qualys_collector.qualys.retry import RetryPolicy
from qualys_collector.services import hld_process
from qualys_collector.simulator import Limits, Simulator
from qualys_collector.simulator.faults import parse_fault
from qualys_collector.sinks.base import Ack
from qualys_collector.sinks.memory import MemorySink
from tests.conftest import SimFactory, record_reliability
from tests.helpers.vmsim import NOW, Run, advance, start_sim

pytestmark = pytest.mark.integration

START = "2026-05-28T00:00:00Z"
ALL = {"status": ["New", "Active", "Fixed", "Re-Opened"]}


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(
        seed=7,
        hosts=40,
        detections_per_host=4,
        scans=25,
        activity_rows=300,
        base=NOW - timedelta(days=3),
        span=timedelta(days=3),
        host_interval=timedelta(hours=20),
        vm_limits=Limits(rate=10_000, window=60, concurrency=2),
    )


def run(sim: Simulator, tmp_path: Path, services: dict[str, dict[str, object]], **kw: object) -> Run:
    return Run(sim=sim, url=start_sim(sim), state=tmp_path / "state", services=services, **kw)  # type: ignore[arg-type]


def test_host_list_detection_delivers_the_ground_truth_window_by_window(sim: Simulator, tmp_path: Path) -> None:
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "truncation_limit": 7, "filters": ALL}})
    assert r.cycle()
    first = r.keys("vuln.qualys.hostdetections", "@detection_key")
    truth = sim.truth("host_list_detection", None, NOW)
    assert set(first) == truth
    assert max(first.values()) == 1
    stats = r.stats["host_list_detection"]
    assert stats is not None
    # the host IDs of the window, then 40 hosts at 7 per answer; plus the KnowledgeBase lookups of the enrichment
    assert stats.requests == 7 + len(sim.kb_calls)
    assert len(sim.kb_calls) == 1
    # nothing new: nothing delivered
    assert r.cycle()
    assert sum(r.keys("vuln.qualys.hostdetections", "@detection_key").values()) == len(truth)
    # the clock moves: re-processed hosts bring their detections again, with their new status
    advance(sim, 10)
    assert r.cycle()
    second = r.keys("vuln.qualys.hostdetections", "@detection_key") - first
    assert set(second) == sim.truth("host_list_detection", NOW, NOW + timedelta(hours=10))
    assert second, "hosts were re-processed in ten hours"


def test_detection_events_carry_host_identity_and_all_statuses_by_default(sim: Simulator, tmp_path: Path) -> None:
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "filters": {"show_tags": 1}}})
    assert r.cycle()
    events = [e["event"] for e in r.events() if e["tag"] == "vuln.qualys.hostdetections"]
    assert events
    statuses = {e["DETECTION"]["STATUS"] for e in events}
    assert statuses == {"New", "Active", "Fixed", "Re-Opened"}  # Fixed included, so the SIEM sees fixes
    sample = events[0]
    assert set(sample["HOST"]) >= {"ID", "ASSET_ID", "IP", "DNS", "NETBIOS", "OS", "TRACKING_METHOD", "TAGS"}
    assert isinstance(sample["HOST"]["TAGS"], list)
    assert sample["environment"] == "test"
    assert isinstance(sample["@devo_pulling_id"], int)
    assert sample["@detection_key"] == f"{sample['HOST']['ID']}:{sample['DETECTION']['UNIQUE_VULN_ID']}"
    tricky = [e for e in events if "]]> end" in e["DETECTION"].get("RESULTS", "")]
    assert tricky, "CDATA with a ]]> inside survives"
    assert any(len(e["DETECTION"].get("RESULTS", "")) >= 4096 for e in events)


def test_parsing_processes_give_the_same_events_as_parsing_in_the_workers(sim: Simulator, tmp_path: Path) -> None:
    services: dict[str, dict[str, object]] = {
        "host_list_detection": {
            "start_time_utc": START,
            "truncation_limit": 7,
            "results_max_length": 100,
            "filters": ALL,
        }
    }
    in_threads = Run(sim=sim, url=start_sim(sim), state=tmp_path / "threads", services=services)
    assert in_threads.cycle()
    services["host_list_detection"]["parse_processes"] = 2
    in_processes = Run(sim=sim, url=start_sim(sim), state=tmp_path / "processes", services=services)
    assert in_processes.cycle()

    def by_key(r: Run) -> dict[str, dict[str, Any]]:
        events = [e["event"] for e in r.events() if e["tag"] == "vuln.qualys.hostdetections"]
        return {e["@detection_key"]: {k: v for k, v in e.items() if k != "@devo_pulling_id"} for e in events}

    expected = by_key(in_threads)
    assert set(expected) == sim.truth("host_list_detection", None, NOW)
    assert any(e.get("@results_truncated") for e in expected.values())
    assert by_key(in_processes) == expected


def test_every_parse_path_delivers_byte_identical_events(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsing in the workers, one answer at a time, in parsing processes (the default: the events are built from
    the processes' JSON by joining strings), or in the worker for answers over the spool limit: the same delivered
    lines, byte for byte (the clock is frozen, so even ``@devo_pulling_id`` agrees)."""
    lines: dict[str, list[str]] = {}
    parsed_here: list[int] = []  # answers the collector's process parsed on the spooled path (in its threads)
    in_thread = hld_process.answer_items

    def counted(*args: Any, **kwargs: Any) -> Any:
        parsed_here.append(1)
        return in_thread(*args, **kwargs)

    monkeypatch.setattr(hld_process, "answer_items", counted)
    for name, option in {
        "threads": {"parse": "threads"},
        "one_at_a_time": {"parse": "one_at_a_time"},
        "processes": {"parse_processes": 2},
        "default": {},
        "over_the_spool_limit": {},
    }.items():
        if name == "over_the_spool_limit":
            monkeypatch.setattr(hld_process, "SPOOL_BYTES", 3000)  # every answer of this estate is larger
        parsed_here.clear()
        services = {
            "host_list_detection": {
                "start_time_utc": START,
                "truncation_limit": 7,
                "batch_size": 9,
                "results_max_length": 100,
                "filters": ALL,
                "enrich": False,  # a QID's KB brief is pending or there depending on which page came first
                **option,
            }
        }
        run = Run(sim=sim, url=start_sim(sim), state=tmp_path / name, services=services)
        assert run.cycle()
        written = (tmp_path / name / "events.jsonl").read_text(encoding="utf-8").splitlines()
        lines[name] = sorted(line for line in written if '"tag":"vuln.qualys.hostdetections"' in line)
        if name in ("default", "processes"):
            assert not parsed_here, "the answers were parsed in the collector's threads, not in the processes"
        if name == "over_the_spool_limit":
            assert parsed_here, "no answer went over the spool limit"
    assert len(lines["threads"]) == len(sim.truth("host_list_detection", None, NOW))
    assert lines["one_at_a_time"] == lines["threads"]
    assert lines["processes"] == lines["threads"]
    assert lines["default"] == lines["threads"]
    assert lines["over_the_spool_limit"] == lines["threads"]


def test_status_filter_is_sent_to_qualys(sim: Simulator, tmp_path: Path) -> None:
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "filters": {"status": ["Fixed"]}}})
    assert r.cycle()
    detections = [e for e in r.events() if e["tag"] == "vuln.qualys.hostdetections"]
    assert {e["event"]["DETECTION"]["STATUS"] for e in detections} == {"Fixed"}


def test_results_cap_marks_the_event(sim: Simulator, tmp_path: Path) -> None:
    r = run(
        sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "results_max_length": 100, "filters": ALL}}
    )
    assert r.cycle()
    capped = [e["event"] for e in r.events() if e["event"].get("@results_truncated")]  # detections only
    assert capped
    assert all(len(e["DETECTION"]["RESULTS"]) == 100 and e["@results_length"] > 100 for e in capped)


def test_host_list_matches_truth_and_honours_filters(sim: Simulator, tmp_path: Path) -> None:
    services = {
        "host_list": {
            "start_time_utc": START,
            "truncation_limit": 9,
            "filters": {"details": "All", "show_asset_id": "1", "show_cloud_tags": "1"},
        }
    }
    r = run(sim, tmp_path, services)
    assert r.cycle()
    ids = r.keys("vuln.qualys.hosts", "ID")
    assert set(ids) == sim.truth("host_list", None, NOW)
    host = r.events()[0]["event"]
    assert "ASSET_ID" in host
    assert "LAST_VULN_SCAN_DATETIME" in host
    assert isinstance(host["CLOUD_PROVIDER_TAGS"], list)
    assert "TAGS" not in host


def test_vm_scans_follow_a_running_scan_until_it_finishes(sim: Simulator, tmp_path: Path) -> None:
    r = run(sim, tmp_path, {"vm_scans": {"start_time_utc": START}})
    assert r.cycle()
    refs = r.keys("vuln.qualys.vulnerabilities", "REF")
    assert set(refs) == sim.truth("vm_scans", None, NOW)
    running = [e["event"]["REF"] for e in r.events() if e["event"]["STATUS"]["STATE"] == "Running"]
    assert running, "the dataset has a scan still running at NOW"
    advance(sim, 3)
    assert r.cycle()
    later = [e["event"] for e in r.events()]
    finished = {e["REF"] for e in later if e["STATUS"]["STATE"] in ("Finished", "Error") and e["REF"] in running}
    assert finished == set(running)
    counts = Counter(e["REF"] for e in later)
    assert all(counts[ref] == 2 for ref in running)
    assert all(n == 1 for ref, n in counts.items() if ref not in running)
    outbox = Outbox(tmp_path / "state")
    checkpoint = outbox.load_checkpoint("7", "vm_scans")
    outbox.close()
    assert checkpoint is not None
    assert checkpoint["extra"]["pending"] == {}


def test_user_activity_rows_sharing_a_second_arrive_once_across_cycles(sim: Simulator, tmp_path: Path) -> None:
    r = run(sim, tmp_path, {"user_activity": {"start_time_utc": START, "truncation_limit": 40}})
    assert r.cycle()
    advance(sim, 30)
    assert r.cycle()
    assert r.cycle()
    rows = Counter(
        "|".join(e["event"][k] for k in ("Date", "Action", "Module", "Details", "User Name", "User Role", "User IP"))
        for e in r.events()
    )
    expected = Counter("|".join(row) for _id, row in sim.data.activity(sim.now(), None, None))
    assert rows == expected  # identical rows in one second are kept, and nothing is repeated
    assert max(expected.values()) == 2


def test_user_activity_rows_with_odd_fields_or_dates_arrive_once_and_stop_nothing(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows with a field past the header or a ``Date`` that is not one (fault ``odd_rows``, in every answer). Each
    failed its answer on every cycle, and nothing older was ever delivered (review: "activity log row has 8 fields,
    header has 7"); a timeless row kept as it came but not remembered came again in every window covering it."""
    sim.faults.arm(parse_fault("odd_rows:path=activity_log,times=-1"))
    r = run(sim, tmp_path, {"user_activity": {"start_time_utc": START, "truncation_limit": 40}})
    assert r.cycle()
    advance(sim, 30)
    assert r.cycle()
    assert r.cycle()
    names = ("Action", "Module", "Details", "User Name", "User Role", "User IP")
    events = [e["event"] for e in r.events()]
    rows = Counter("|".join(e[k] for k in names) for e in events)
    truth = list(sim.data.activity(sim.now(), None, None))
    assert rows == Counter("|".join(row[1:]) for _id, row in truth)  # every row once, the odd ones too
    extra = [e for e in events if "@extra_fields" in e]
    timeless = [e for e in events if e["Date"] == "N/A"]
    assert len(extra) == sum(1 for rid, _row in truth if rid % 5 == 0) > 0
    assert all(e["@extra_fields"] == ["unexpected"] for e in extra)
    assert len(timeless) == sum(1 for rid, _row in truth if rid % 7 == 0 or rid in sim.untimed_rows)
    assert sim.untimed_rows - {rid for rid, _row in truth if rid % 7 == 0}  # the newest row, read by every window
    said = [m.getMessage() for m in caplog.records]
    assert any("field count" in m and "@extra_fields" in m for m in said)
    assert any("without a usable Date" in m for m in said)


@pytest.mark.reliability
@pytest.mark.parametrize(
    "fault",
    [
        "409:code=1965,times=2,wait=0",
        "409:code=1960,times=3",
        "503:times=2",
        "999:times=1",
        "cut:after=3000,times=2",
        "malformed:after=2500,times=1",
        "slow:delay=0.01,times=1",
    ],
)
def test_faults_end_in_complete_delivery(sim: Simulator, tmp_path: Path, fault: str) -> None:
    sim.faults.arm(parse_fault(f"{fault},path=detection"))
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "truncation_limit": 10, "filters": ALL}})
    assert r.cycle()
    keys = r.keys("vuln.qualys.hostdetections", "@detection_key")
    truth = sim.truth("host_list_detection", None, NOW)
    record_reliability(compared=len(truth), lost=len(truth - set(keys)), duplicated=sum(keys.values()) - len(keys))
    assert set(keys) == truth
    assert max(keys.values()) == 1


def test_persistent_failure_ends_in_301_with_the_checkpoint_at_the_last_page(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "truncation_limit": 10, "filters": ALL}})
    sim.faults.arm(parse_fault("cut:after=3000,times=-1,path=detection"))
    assert not r.cycle()
    assert "[PullError 301]" in caplog.text
    outbox = Outbox(tmp_path / "state")
    checkpoint = outbox.load_checkpoint("7", "host_list_detection")
    outbox.close()
    assert checkpoint is not None
    assert checkpoint["last_event_time_str"] == START
    delivered = set(r.keys("vuln.qualys.hostdetections", "@detection_key"))
    sim.faults.clear()
    assert r.cycle()
    keys = r.keys("vuln.qualys.hostdetections", "@detection_key")
    assert set(keys) == sim.truth("host_list_detection", None, NOW)
    assert max(keys.values()) == 1
    assert delivered < set(keys)


def test_bad_credentials_give_101_without_a_retry_storm(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = run(sim, tmp_path, {"host_list": {"start_time_utc": START}}, password="wrong-password-123")
    assert not r.cycle()
    assert "[SetupError 101]" in caplog.text
    assert "Bad Login/Password" in caplog.text
    assert sum(n for path, n in sim.requests.items() if "/fo/" in path) == 1
    assert "wrong-password-123" not in caplog.text


def test_a_rejected_request_is_error_300_and_not_retried(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = run(sim, tmp_path, {"host_list": {"start_time_utc": START}})
    sim.faults.arm(parse_fault("400:code=1905,times=-1"))
    assert not r.cycle()
    assert "[PullError 300]" in caplog.text
    assert "CODE 1905" in caplog.text
    assert sum(n for path, n in sim.requests.items() if "/fo/" in path) == 1


def test_obfuscated_fields_never_reach_the_outbox_or_the_output(sim: Simulator, tmp_path: Path) -> None:
    rules = [
        {"field": "HOST.IP", "action": "hash"},
        {"field": "DETECTION.RESULTS", "action": "drop"},
        {"field": "HOST.DNS_DATA.FQDN", "action": "mask"},
    ]
    r = run(
        sim,
        tmp_path,
        {"host_list_detection": {"start_time_utc": START, "obfuscation": rules}},
        salt="pepper-and-salt-123",
    )
    assert r.cycle()
    events = [e["event"] for e in r.events() if e["tag"] == "vuln.qualys.hostdetections"]
    assert events
    assert all(e["HOST"]["IP"].startswith("sha256:") for e in events)
    assert all("RESULTS" not in e["DETECTION"] for e in events)
    assert {e["HOST"]["DNS_DATA"]["FQDN"] for e in events} == {"********"}
    raw = b"".join(p.read_bytes() for p in (tmp_path / "state").iterdir())
    assert b"10.0.0." not in raw  # neither the outbox database nor the output file holds a clear IP
    assert b"pepper-and-salt-123" not in raw
    same_host = {e["HOST"]["ID"]: e["HOST"]["IP"] for e in events}
    assert len(set(same_host.values())) == len(same_host)  # distinct hosts, distinct hashes; same host, same hash


def switchable(up: threading.Event) -> Callable[[Sequence[StoredEvent]], Ack]:
    """A receiver that refuses until ``up`` is set (a relay that is down, then up)."""

    def handler(batch: Sequence[StoredEvent]) -> Ack:
        if not up.is_set():
            raise DeliveryError("relay down")
        return Ack.all(batch)

    return handler


@pytest.mark.slow
def test_a_full_outbox_pauses_pulling_until_delivery_resumes(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "request_period_in_seconds": 1}})
    base = r.config()
    config = base.model_copy(update={"globals": base.globals.model_copy(update={"outbox_max_bytes": 1 << 20})})
    up = threading.Event()
    relay = MemorySink(switchable(up), name="relay")
    collector = r.collector(config, sinks=[relay])
    collector.outbox.commit(
        "7", "filler", [Event(tag="a.b", body={"pad": "x" * 4000}) for _ in range(400)], {"@persistence_version": 1}
    )
    thread = threading.Thread(target=collector.run_forever, daemon=True)
    with caplog.at_level(logging.WARNING):
        thread.start()
        time.sleep(1.5)
        assert sum(n for path, n in sim.requests.items() if "/fo/" in path) == 0
        assert "The outbox is full: pulling is paused" in caplog.text
        up.set()
        deadline = time.monotonic() + 20
        expected = 401 + len(sim.truth("host_list_detection", None, NOW))
        while len(relay.events) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
    collector.stop.set()
    thread.join(30)
    collector.close()
    assert len(relay.events) == 401 + len(sim.truth("host_list_detection", None, NOW))  # filler, detections, summary


@pytest.mark.reliability
@pytest.mark.parametrize("skew_minutes", [-10, 10])
def test_clock_skew_between_qualys_and_us_loses_nothing(
    make_sim: SimFactory, tmp_path: Path, skew_minutes: int
) -> None:
    """Qualys' clock `skew_minutes` ahead of (or behind) ours, hosts re-processed between cycles: every
    detection version that Qualys showed as current at some query and that fell before our window end
    is delivered."""
    sim = make_sim(
        seed=13,
        hosts=300,
        detections_per_host=2,
        base=NOW - timedelta(hours=3),
        span=timedelta(hours=3),
        host_interval=timedelta(hours=3),
        vm_limits=Limits(rate=10_000, window=60, concurrency=2),
    )
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "filters": ALL, "truncation_limit": 50}})
    moments = [NOW + timedelta(minutes=47 * i) for i in range(10)]
    for moment in moments:
        sim.frozen = moment + timedelta(minutes=skew_minutes)
        assert r.cycle(clock=lambda m=moment: m)
    delivered = {
        (e["event"]["@detection_key"], e["event"]["DETECTION"]["LAST_PROCESSED_DATETIME"])
        for e in r.events()
        if e["tag"] == "vuln.qualys.hostdetections"
    }
    observable = set()
    for index in range(len(sim.data.host_ids)):
        host = sim.data.host(index)
        for k in range(40):
            at = host.first_processed + k * host.interval
            following = at + host.interval
            for ours in moments:
                theirs = ours + timedelta(minutes=skew_minutes)
                if at <= theirs < following and at < ours.replace(microsecond=0):
                    observable.update(
                        (f"{host.id}:{d['UNIQUE_VULN_ID']}", d["LAST_PROCESSED_DATETIME"])
                        for d in sim.data.detections(host, k, at)
                    )
                    break
    missing = observable - delivered
    record_reliability(compared=len(observable), lost=len(missing), duplicated=0)
    assert observable
    assert not missing, f"{len(missing)} of {len(observable)} detection versions lost, e.g. {sorted(missing)[:3]}"


@pytest.mark.slow
def test_parallel_batches_under_a_concurrency_of_two_and_a_tight_rate_limit(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    sim = make_sim(
        seed=19,
        hosts=90,
        detections_per_host=2,
        base=NOW - timedelta(days=2),
        span=timedelta(days=2),
        host_interval=timedelta(days=3650),
        vm_limits=Limits(rate=5, window=2, concurrency=2),
    )
    r = run(
        sim,
        tmp_path,
        {
            "host_list_detection": {
                "start_time_utc": START,
                "filters": ALL,
                "batch_size": 10,
                "max_workers": 4,
                "truncation_limit": 4,
            }
        },
    )
    r.policy = RetryPolicy(
        attempts=8, total_seconds=120, base_backoff=0.05, max_backoff=0.5, max_wait=3, concurrency_wait=0.2
    )
    r.sleep = None  # real waits: the budget must space the calls
    assert r.cycle()
    keys = r.keys("vuln.qualys.hostdetections", "@detection_key")
    truth = sim.truth("host_list_detection", None, NOW)
    assert set(keys) == truth
    assert max(keys.values()) == 1
    assert sim.max_concurrency("asset/host/vm/detection") <= 2
    [summary] = [e["event"] for e in r.events(summaries=True) if e["tag"] == "vuln.qualys.collector.summary"]
    assert summary["hosts_expected"] == summary["hosts_received"] == 90
    assert summary["detections"] == len(truth)
    assert summary["batches"] == 9
    record_reliability(compared=len(truth), lost=len(truth - set(keys)), duplicated=sum(keys.values()) - len(keys))


VM_TAGS = {
    "vm_scans": "vuln.qualys.vulnerabilities",
    "host_list": "vuln.qualys.hosts",
    "host_list_detection": "vuln.qualys.hostdetections",
    "user_activity": "vuln.qualys.useractivitylog",
}


def test_every_vm_service_emits_one_summary_per_window_that_matches_what_it_delivered(
    sim: Simulator, tmp_path: Path
) -> None:
    r = run(sim, tmp_path, {name: {"start_time_utc": START, "settle_lag_seconds": 0} for name in VM_TAGS})
    assert r.cycle()
    advance(sim, 21)  # every host is processed again, new scans and activity
    first_stats = dict(r.stats)
    assert r.cycle()
    summaries: dict[str, list[dict[str, Any]]] = {}
    for line in r.events(summaries=True):
        if line["tag"] == "vuln.qualys.collector.summary":
            summaries.setdefault(line["event"]["@summary"], []).append(line["event"])
    assert {name: len(s) for name, s in summaries.items()} == dict.fromkeys(VM_TAGS, 2)
    for name, tag in VM_TAGS.items():
        first, second = summaries[name]
        assert first["window_start"] == START
        assert (first["completed"], first["input_id"], first["environment"]) == (True, "7", "test")
        delivered = sum(1 for line in r.events() if line["tag"] == tag)
        assert first["records_committed"] + second["records_committed"] == delivered > 0
        for summary, stats in ((first, first_stats[name]), (second, r.stats[name])):
            assert stats is not None
            seed_line = (stats.requests, stats.received, stats.duplicates, stats.sent)
            assert seed_line == (
                summary["requests"],
                summary["records_received"],
                summary["records_deduplicated"],
                summary["records_committed"],
            ), name
    hld = summaries["host_list_detection"][1]
    assert hld["hosts_expected"] == hld["hosts_received"] > 0  # the source's own counters survive
    assert hld["detections"] == hld["records_committed"]


HOST = "<HOST><ID>{n}</ID><IP>10.0.{a}.{b}</IP><DETECTION_LIST>{d}</DETECTION_LIST></HOST>"
GOOD = "<DETECTION><UNIQUE_VULN_ID>{n}</UNIQUE_VULN_ID><QID>1</QID><STATUS>Active</STATUS></DETECTION>"


def good_hosts(count: int) -> dict[int, str]:
    """``count`` hosts of one detection each, IDs from 1."""
    return {n: HOST.format(n=n, a=n // 256, b=n % 256, d=GOOD.format(n=n)) for n in range(1, count + 1)}


@contextlib.contextmanager
def xml_server(answer: Callable[[str, dict[str, list[str]]], bytes]) -> Iterator[str]:
    """A real HTTP server on loopback: ``answer(path, parameters)`` (from the query and a form body, as Qualys
    takes them) is sent as Qualys' XML to every GET or POST. Yields its base URL."""
    import http.server
    from urllib.parse import parse_qs, urlparse

    class Answers(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlparse(self.path).query)
            length = int(self.headers.get("Content-Length") or 0)
            query.update(parse_qs(self.rfile.read(length).decode()) if length else {})
            body = answer(urlparse(self.path).path, query)
            self.send_response(200)
            self.send_header("Content-Type", "text/xml;charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def detection_server(
    hosts: dict[int, str],
    *,
    truncate: int | None = None,
    ignore: frozenset[str] = frozenset(),
    answered: list[str] | None = None,
    repeat: frozenset[int] = frozenset(),
    inclusive: bool = False,
    descending: bool = False,
) -> Iterator[str]:
    """An :func:`xml_server` answering host list and host detection requests as Qualys does: ``ids`` from
    ``id_min``, at most ``truncate`` hosts then the truncation WARNING with its next-page URL. Parameters named in
    ``ignore`` are not honoured (a server or proxy that drops them); the path of every request answered is
    appended to ``answered``. Misbehaving as no Qualys does: hosts in ``repeat`` are sent twice in a row;
    ``inclusive``: the next-page URL's ``id_min`` is the last host sent, not the next; ``descending``: the hosts of
    an answer in descending ID order (a real answer has two hosts out of order)."""
    listing = (
        b"<HOST_LIST_OUTPUT><RESPONSE><DATETIME>2026-11-30T12:00:00Z</DATETIME>"
        b"<ID_SET><ID_RANGE>%d-%d</ID_RANGE></ID_SET></RESPONSE></HOST_LIST_OUTPUT>" % (min(hosts), max(hosts))
    )

    def answer(path: str, query: dict[str, list[str]]) -> bytes:
        for name in ignore:
            query.pop(name, None)
        low, high = (int(v) for v in query.get("ids", [f"{min(hosts)}-{max(hosts)}"])[0].split("-"))
        low = max(low, int(query.get("id_min", ["1"])[0]))
        body = listing
        if "/vm/detection/" in path:
            chosen = [n for n in range(low, high + 1) if n in hosts]
            if descending:
                chosen.reverse()
            warning = ""
            if truncate is not None and len(chosen) > truncate:
                chosen = chosen[:truncate]
                following = chosen[-1] if inclusive else chosen[-1] + 1
                url = f"https://qualys.invalid{path}?action=list&id_min={following}"
                warning = f"<WARNING><CODE>1980</CODE><TEXT>truncated</TEXT><URL><![CDATA[{url}]]></URL></WARNING>"
            body = (
                "<HOST_LIST_VM_DETECTION_OUTPUT><RESPONSE><DATETIME>2026-11-30T12:00:00Z</DATETIME><HOST_LIST>"
                f"{''.join(hosts[n] * (2 if n in repeat else 1) for n in chosen)}</HOST_LIST>{warning}</RESPONSE>"
                "</HOST_LIST_VM_DETECTION_OUTPUT>"
            ).encode()
        if answered is not None:
            answered.append(path)
        return body

    with xml_server(answer) as url:
        yield url


def run_against(
    url: str, state: Path, config: Path, service: dict[str, Any], name: str = "host_list_detection"
) -> tuple[subprocess.CompletedProcess[bytes], list[str]]:
    """``run --once`` of host detection (or service ``name``) against ``url`` (two attempts per request): the
    finished process and the keys delivered to the file output, in order (detection keys, else KB QIDs)."""
    from tests.helpers.kit import raw_config, vm_input, write_config

    extra = {"enrich": False} if name == "host_list_detection" else {}
    services = {name: {"start_time_utc": START, **extra, **service}}
    block = vm_input(url, services)
    block["connection"] = {"max_attempts": 2, "max_retry_seconds": 5}
    write_config(config, raw_config(state, qualys=block))
    done = subprocess.run(
        [sys.executable, "-m", "qualys_collector", "run", "-c", str(config), "--once"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    lines = (state / "events.jsonl").read_text().splitlines() if (state / "events.jsonl").exists() else []
    events = [json.loads(line)["event"] for line in lines]
    return done, [e.get("@detection_key", e.get("QID")) for e in events if "@detection_key" in e or "QID" in e]


def test_a_bad_host_costs_only_what_follows_it_on_every_parse_path(tmp_path: Path) -> None:
    """A host Qualys sends malformed (here the 451st of 500) fails the batch on every path; what came before it
    is delivered the same, page by page, whether the answer is parsed as it streams or in a parsing process
    (which used to hand back nothing of such an answer)."""
    hosts = good_hosts(500)
    hosts[451] = HOST.format(n=451, a=1, b=195, d="<DETECTION>oops</DETECTION>")
    delivered = {}
    with detection_server(hosts) as url:
        for name, option in {"threads": {"parse": "threads"}, "processes": {}}.items():
            service = {"batch_size": 1000, **option}
            done, keys = run_against(url, tmp_path / name, tmp_path / f"{name}.yaml", service)
            assert done.returncode != 0
            assert b"host 451" in done.stderr
            delivered[name] = sorted(keys)
    assert len(delivered["threads"]) == 400  # two pages of 200 hosts, then the bad host
    assert delivered["processes"] == delivered["threads"]


@pytest.mark.parametrize(
    ("ignored", "service", "truncate"),
    [
        ("id_min", {"batch_size": 1000}, 300),  # one batch; its second answer starts again at host 1
        ("ids", {"batch_size": 100}, None),  # five batches, each answered with all 500 hosts
    ],
)
@pytest.mark.parametrize("parse", ["threads", "processes"])
def test_a_server_that_ignores_a_paging_parameter_is_refused_before_anything_is_delivered_twice(
    tmp_path: Path, ignored: str, service: dict[str, Any], truncate: int | None, parse: str
) -> None:
    """Qualys answers ``ids`` from ``id_min``. A server or proxy that drops one of them sends hosts already
    delivered, or those of other batches: each would reach the SIEM again on every request (a test server that
    read only the query string once gave 28,400 events for 400 detections). A host outside what was asked is
    refused with error 301 naming the parameter, and no detection is delivered twice."""
    with detection_server(good_hosts(500), truncate=truncate, ignore=frozenset({ignored})) as url:
        done, keys = run_against(url, tmp_path / "state", tmp_path / "c.yaml", {**service, "parse": parse})
    assert done.returncode != 0
    assert b"[PullError 301]" in done.stderr
    assert f"{ignored}=".encode() in done.stderr  # the message names what was asked
    assert b"outside what was asked" in done.stderr
    assert b"Fix: check that requests and answers pass between the collector and Qualys unchanged" in done.stderr
    assert len(keys) == len(set(keys)), Counter(keys).most_common(3)


@pytest.mark.parametrize("parse", ["threads", "processes"])
def test_the_statistics_lines_of_a_batched_pull_count_its_requests_as_they_are_made(tmp_path: Path, parse: str) -> None:
    """Devo's statistics lines: each "(Partial) Statistics" line of a pull counts the requests made so far. The
    batched host detection pull used to say "Number of requests made: 0" with hundreds of events received, and
    put every request in the last line only."""
    import re

    answered: list[str] = []
    with detection_server(good_hosts(500), truncate=150, answered=answered) as url:
        done, keys = run_against(url, tmp_path / "state", tmp_path / "c.yaml", {"batch_size": 200, "parse": parse})
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert sorted(keys) == sorted(set(keys))
    assert len(keys) == 500
    line = re.compile(
        rb"(\(Partial\) )?Statistics for this pull cycle .*?"
        rb"Number of requests made: (\d+); Number of events received: (\d+)"
    )
    stats = [(m[1] is not None, int(m[2]), int(m[3])) for m in line.finditer(done.stderr)]
    partial = [(made, received) for is_partial, made, received in stats if is_partial]
    assert partial, done.stderr.decode()[-2000:]
    assert all(made >= 1 for made, received in partial if received)  # events came from requests already made
    assert [made for made, _ in partial] == sorted(made for made, _ in partial)  # counted as they are made
    assert stats[-1][0] is False
    assert stats[-1][1] == len(answered)  # the last line: every request the server answered (host list included)
    assert len(answered) == 1 + 5  # the host list, then batches 1-200, 201-400, 401-500 in 2 + 2 + 1 answers


@pytest.mark.parametrize("parse", ["threads", "processes"])
def test_a_host_repeated_in_an_answer_is_refused_before_it_is_delivered_twice(tmp_path: Path, parse: str) -> None:
    """A host sent twice in a row was delivered twice with exit 0 (found by review: 1,202 events for 1,200
    hosts)."""
    with detection_server(good_hosts(500), repeat=frozenset({50, 350})) as url:
        done, keys = run_against(url, tmp_path / "state", tmp_path / "c.yaml", {"parse": parse})
    assert done.returncode != 0
    assert b"[PullError 301]" in done.stderr
    assert b"Qualys answered host 50 twice in a row" in done.stderr  # 350 is never reached
    assert len(keys) == len(set(keys)), Counter(keys).most_common(3)


@pytest.mark.parametrize("parse", ["threads", "processes"])
def test_a_next_page_url_that_starts_at_the_last_host_sent_delivers_it_once(tmp_path: Path, parse: str) -> None:
    """A next-page URL whose ``id_min`` is the last host sent, not the next, delivered that host again with each
    page (found by review). The URL is refused before its page is committed; each retry resumes after the last
    committed page, so the pull still ends, every host delivered once."""
    with detection_server(good_hosts(1000), inclusive=True, truncate=300) as url:
        service = {"batch_size": 1000, "parse": parse, "parallel": False}
        done, keys = run_against(url, tmp_path / "state", tmp_path / "c.yaml", service)
    assert b"next-page URL asks for id_min=300, not after host 300" in done.stderr
    assert len(keys) == len(set(keys)), Counter(keys).most_common(3)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert len(keys) == 1000


def test_a_knowledge_base_server_that_ignores_id_min_is_refused_before_a_qid_is_delivered_twice(tmp_path: Path) -> None:
    """The KnowledgeBase pages by QID with ``id_min`` as host detection pages by host. A server that ignored it
    sent QIDs already delivered with every answer, and each retry "made progress", so ``run --once`` never ended
    (found by review: 120,900 events for 500 QIDs in 300 s). A QID below the ``id_min`` asked is refused."""
    vuln = (
        "<VULN><QID>{q}</QID><VULN_TYPE>Vulnerability</VULN_TYPE><SEVERITY_LEVEL>3</SEVERITY_LEVEL>"
        "<TITLE><![CDATA[t{q}]]></TITLE><LAST_SERVICE_MODIFICATION_DATETIME>2026-06-01T00:00:00Z"
        "</LAST_SERVICE_MODIFICATION_DATETIME></VULN>"
    )

    def answer(path: str, query: dict[str, list[str]]) -> bytes:
        """QIDs 1-400 with the next-page WARNING, always from QID 1 (``id_min`` ignored)."""
        url = f"https://qualys.invalid{path}?action=list&id_min=401"
        return (
            "<KNOWLEDGE_BASE_VULN_LIST_OUTPUT><RESPONSE><DATETIME>2026-11-30T12:00:00Z</DATETIME><VULN_LIST>"
            + "".join(vuln.format(q=q) for q in range(1, 401))
            + f"</VULN_LIST><WARNING><CODE>1980</CODE><TEXT>cut</TEXT><URL><![CDATA[{url}]]></URL></WARNING>"
            "</RESPONSE></KNOWLEDGE_BASE_VULN_LIST_OUTPUT>"
        ).encode()

    with xml_server(answer) as url:
        done, qids = run_against(url, tmp_path / "state", tmp_path / "c.yaml", {}, name="knowledge_base")
    assert done.returncode != 0
    assert b"[PullError 301]" in done.stderr
    assert b"Qualys answered QID 1, below the id_min=401 asked" in done.stderr
    assert len(qids) == len(set(qids)) == 400, Counter(qids).most_common(3)


@pytest.mark.parametrize("parse", ["threads", "processes"])
def test_an_answer_out_of_host_id_order_is_delivered_whole_and_once(tmp_path: Path, parse: str) -> None:
    """Qualys documents its host answers as sorted by ID, but a real one (XSOAR's test data, in shared/reference)
    lists host 143111841 before 10112200. Such an answer is delivered, with a warning; no page ends after the
    disorder (a resume from there would skip the lower IDs still to come). The warning was written by a parsing
    process straight to stderr, outside the collector's log format."""
    with detection_server(good_hosts(500), descending=True) as url:
        done, keys = run_against(url, tmp_path / "state", tmp_path / "c.yaml", {"parse": parse, "batch_size": 1000})
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    warned = [line for line in done.stderr.decode().splitlines() if "The answer is not sorted by host ID" in line]
    assert len(warned) == 1, warned
    # in the collector's log format on both paths (a parsing process's logging comes back to the collector)
    assert re.match(
        r"\d{4}-\d\d-\d\dT[\d:.]+ WARNING \S+::Batch-worker-\d+ -> The answer is not sorted by host ID "
        r"\(499 after 500\)",
        warned[0],
    ), warned[0]
    assert len(keys) == len(set(keys)) == 500
