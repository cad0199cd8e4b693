"""The KnowledgeBase: the knowledge_base service, the KB cache and the enrichment of detections, against the
simulator's KB (its ground truth field by field, its count of KB calls)."""

from __future__ import annotations

import logging
import math
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from qualys_collector.engine.outbox import Outbox
from qualys_collector.model import parse_seed_datetime
from qualys_collector.simulator import Limits, Simulator
from qualys_collector.simulator.faults import parse_fault
from tests.conftest import SimFactory
from tests.helpers.kit import raw_config, vm_input
from tests.helpers.vmsim import NOW, Run, advance, start_sim

pytestmark = pytest.mark.integration

START = "2026-05-28T00:00:00Z"
HLD_TAG, KB_TAG = "vuln.qualys.hostdetections", "vuln.qualys.kb"
KB_PATH = "/api/4.0/fo/knowledge_base/vuln/"


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(
        seed=11,
        hosts=40,
        detections_per_host=4,
        base=NOW - timedelta(days=3),
        span=timedelta(days=3),
        host_interval=timedelta(hours=20),
        vm_limits=Limits(rate=10_000, window=60, concurrency=2),
    )


def run(sim: Simulator, tmp_path: Path, services: dict[str, dict[str, Any]]) -> Run:
    return Run(sim=sim, url=start_sim(sim), state=tmp_path / "state", services=services)


def expected_kb(truth: dict[str, Any]) -> dict[str, Any]:
    """What a detection must carry for a QID, written from the simulator's ground truth (not from our parser)."""
    v3, v2 = truth["CVSS_V3"], truth["CVSS"]
    cvss = None
    if v3 is not None:
        cvss = {"version": v3["CVSS3_VERSION"] or "3", "base": v3["BASE"], "vector": v3["VECTOR_STRING"]}
    elif v2 is not None:  # v2 only where that is all there is
        cvss = {"version": "2", "base": v2["BASE"], "vector": v2["VECTOR_STRING"]}
    out = {
        "status": "ok",
        "TITLE": truth["TITLE"],
        "CATEGORY": truth["CATEGORY"],
        "SEVERITY_LEVEL": str(truth["SEVERITY_LEVEL"]),
        "CVSS": cvss,
        "CVE_IDS": truth["CVE_IDS"][:200],
        "VENDOR_REFERENCES": [i for i, _url in truth["VENDOR_REFERENCES"]],
        "PATCHABLE": truth["PATCHABLE"] == 1,
        "EXPLOIT_AVAILABLE": True if truth["EXPLOITS"] else None,
        "THREAT_INTEL": [name for _id, name in truth["THREAT_INTEL"]],
        "PUBLISHED_DATETIME": truth["PUBLISHED_DATETIME"],
        "LAST_SERVICE_MODIFICATION_DATETIME": truth["LAST_SERVICE_MODIFICATION_DATETIME"],
        "SOLUTION": truth["SOLUTION"][:512],
    }
    if len(truth["CVE_IDS"]) > 200:
        out["CVE_COUNT"] = len(truth["CVE_IDS"])
    if len(truth["SOLUTION"]) > 512:
        out["SOLUTION_TRUNCATED"] = True
    return {k: v for k, v in out.items() if v not in (None, [])}  # what says nothing is left out


def detections(r: Run) -> list[dict[str, Any]]:
    return [e["event"] for e in r.events() if e["tag"] == HLD_TAG]


def cache(r: Run) -> tuple[dict[str, Any], set[str]]:
    """The KB cache rows and the pending QIDs, as committed."""
    outbox = Outbox(r.state)
    try:
        for name in ("kb_cache", "kb_pending"):
            outbox.declare(name, "knowledge_base")
        rows = dict(outbox.table("7", "kb_cache").items())
        pending = {key for key, _ in outbox.table("7", "kb_pending").items()}
    finally:
        outbox.close()
    return rows, pending


def test_knowledge_base_service_delivers_each_vuln_of_the_window_with_lists_and_fills_the_cache(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    # modifications spread from two days before NOW to a day after: windows see them as the clock moves
    sim = make_sim(seed=3, hosts=10, detections_per_host=3, base=NOW - timedelta(days=2), span=timedelta(days=3))
    r = run(sim, tmp_path, {"knowledge_base": {"start_time_utc": START}})
    assert r.cycle()
    first = r.keys(KB_TAG, "QID")
    events = {e["event"]["QID"]: e["event"] for e in r.events() if e["tag"] == KB_TAG}
    truth = sim.truth("knowledge_base", parse_seed_datetime(START), NOW)  # QIDs older than START are not asked
    assert {f"{q}@{e['LAST_SERVICE_MODIFICATION_DATETIME']}" for q, e in events.items()} == truth
    assert max(first.values()) == 1
    (call,) = sim.kb_calls  # one call for the window, the window's edges as Qualys spells them
    assert call["last_modified_after"] == "2026-05-27T23:59:59Z"
    assert call["last_modified_before"] == "2026-06-01T12:00:00Z"
    assert call["details"] == "All"
    assert call["show_disabled_flag"] == "1"
    for qid, event in events.items():
        known = sim.kb_truth(qid)
        assert known is not None
        assert isinstance(event["SOFTWARE_LIST"], list)
        if known["CVE_IDS"]:
            assert [c["ID"] for c in event["CVE_LIST"]] == known["CVE_IDS"]  # a list, also of one
        else:
            assert "CVE_LIST" not in event
        if known["THREAT_INTEL"]:
            assert event["THREAT_INTELLIGENCE"] == [{"@id": str(i), "#text": n} for i, n in known["THREAT_INTEL"]]
        assert event["TITLE"] == known["TITLE"]  # CDATA, on its own line or not, HTML and quotes kept as text
        assert event["SOLUTION"] == known["SOLUTION"]
    rows, pending = cache(r)
    assert {q: rows[q] for q in events} == {q: expected_kb(sim.kb_truth(q) or {}) for q in events}
    assert not pending
    # a day later: the QIDs modified since are delivered again, with their new fields, and nothing else
    advance(sim, 24)
    assert r.cycle()
    again = {e["event"]["QID"]: e["event"] for e in r.events() if e["tag"] == KB_TAG}
    later = r.keys(KB_TAG, "QID") - first
    assert set(later) == {k.split("@")[0] for k in sim.truth("knowledge_base", NOW, NOW + timedelta(hours=24))}
    assert later, "QIDs were modified in a day"
    for qid in later:
        assert again[qid]["TITLE"].endswith("(updated)")
    rows, _ = cache(r)
    assert all(rows[q] == expected_kb(sim.kb_truth(q) or {}) for q in later)
    assert len(sim.kb_calls) == 2


@pytest.mark.parametrize("with_service", [True, False], ids=["kb-service-too", "on-demand-only"])
def test_every_detection_carries_its_qids_kb_fields(sim: Simulator, tmp_path: Path, with_service: bool) -> None:
    services: dict[str, dict[str, Any]] = {"host_list_detection": {"start_time_utc": START, "truncation_limit": 7}}
    if with_service:
        services["knowledge_base"] = {"start_time_utc": START}
    r = run(sim, tmp_path, services)
    assert r.cycle()
    first = detections(r)
    assert {e["@detection_key"] for e in first} == sim.truth("host_list_detection", None, NOW)
    for event in first:  # the first pull: fields that are right, or pending, never wrong
        if event["KB"]["status"] != "pending":
            assert event["KB"] == expected_kb(sim.kb_truth(event["DETECTION"]["QID"]) or {})
    assert any(e["KB"]["status"] == "ok" for e in first)
    advance(sim, 10)  # re-processed hosts: their detections again
    assert r.cycle()
    second = detections(r)[len(first) :]
    assert second
    for event in second:
        assert event["KB"] == expected_kb(sim.kb_truth(event["DETECTION"]["QID"]) or {}), event["@detection_key"]
    _, pending = cache(r)
    assert not pending


def test_kb_failing_mid_way_delivers_detections_pending_and_the_next_cycle_completes_the_cache(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "truncation_limit": 7}})
    sim.faults.arm(parse_fault(f"cut:path={KB_PATH},after=3000,times=-1"))  # the KB answer breaks half-way
    with caplog.at_level(logging.WARNING):
        assert r.cycle(), "a KB failure never fails the detection pull"
    first = detections(r)
    assert {e["@detection_key"] for e in first} == sim.truth("host_list_detection", None, NOW)
    assert {e["KB"]["status"] for e in first} == {"pending"}
    assert all(set(e["DETECTION"]) >= {"QID", "STATUS", "SEVERITY"} for e in first)
    warnings = [r.getMessage() for r in caplog.records if "[PullError 302]" in r.getMessage()]
    assert len(warnings) == 1, "one warning per window, no call after the failure"
    assert "Fix:" in warnings[0]
    assert len(sim.kb_calls) == 1
    (summary,) = [e["event"] for e in r.events(summaries=True) if e["event"].get("@summary") == "host_list_detection"]
    assert summary["kb_pending"] == len(first)  # the window's summary says how many went out pending
    assert summary["complete"] is True
    qids = {e["DETECTION"]["QID"] for e in first}
    rows, pending = cache(r)
    assert pending == qids
    assert not rows
    # the KB is back: the next cycle fetches what waits, whether or not its detections need it
    sim.faults.clear()
    advance(sim, 0.1)
    assert r.cycle()
    rows, pending = cache(r)
    assert not pending
    assert {q: rows[q] for q in qids} == {q: expected_kb(sim.kb_truth(q) or {}) for q in qids}
    assert len(sim.kb_calls) == 2  # 160 QIDs: one call
    assert max(r.keys(HLD_TAG, "@detection_key").values()) == 1  # pending events are not sent again


@pytest.mark.parametrize("with_service", [False, True], ids=["on-demand-only", "kb-service-too"])
def test_kb_calls_for_n_distinct_qids_are_at_most_ceil_n_over_500_plus_window_calls(
    make_sim: SimFactory, tmp_path: Path, with_service: bool
) -> None:
    sim = make_sim(
        seed=5,
        hosts=120,
        detections_per_host=25,  # up to 750 QIDs
        base=NOW - timedelta(days=3),
        span=timedelta(days=3),
        host_interval=timedelta(hours=20),
        vm_limits=Limits(rate=10_000, window=60, concurrency=2),
    )
    services: dict[str, dict[str, Any]] = {"host_list_detection": {"start_time_utc": START, "truncation_limit": 10}}
    if with_service:
        services["knowledge_base"] = {"start_time_utc": START}
    r = run(sim, tmp_path, services)
    assert r.cycle()
    events = detections(r)
    assert len(events) == len(sim.truth("host_list_detection", None, NOW)) > 2000  # many pages of detections
    n = len({e["DETECTION"]["QID"] for e in events})
    assert n > 500
    window_calls = [c for c in sim.kb_calls if "last_modified_after" in c]
    by_ids = [c for c in sim.kb_calls if "ids" in c]
    assert len(window_calls) == (1 if with_service else 0)
    assert len(sim.kb_calls) <= math.ceil(n / 500) + len(window_calls)
    asked = [q for c in by_ids for q in c["ids"].split(",")]
    assert all(len(c["ids"].split(",")) <= 500 for c in by_ids)
    assert len(asked) == len(set(asked)), "a QID is asked for once"


def test_enrich_false_adds_nothing_and_calls_no_kb(sim: Simulator, tmp_path: Path) -> None:
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "enrich": False}})
    assert r.cycle()
    events = detections(r)
    assert events
    assert all("KB" not in e for e in events)
    assert sim.kb_calls == []


def test_simulator_kb_filters_and_refusals(sim: Simulator) -> None:
    import httpx

    url = start_sim(sim)
    auth = ("demo", "demo")
    headers = {"X-Requested-With": "test"}
    answer = httpx.post(url + KB_PATH, data={"action": "list", "ids": "10000-10040,9001"}, auth=auth, headers=headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/xml")
    listed = [int(q) for q in answer.text.split("<QID>")[1:] for q in [q.split("<")[0]]]
    assert listed == sorted(q for q in sim.data.kb_qids() if 10000 <= q <= 10040 or q == 9001)
    assert "<SOLUTION>" not in answer.text  # details=Basic by default
    ids = httpx.post(url + KB_PATH, data={"action": "list", "details": "None"}, auth=auth, headers=headers)
    assert ids.text.count("<ID>") == len(sim.data.kb_qids())
    assert "<ID_SET>" in ids.text
    refused = httpx.post(url + KB_PATH, data={"action": "list", "truncation_limit": "10"}, auth=auth, headers=headers)
    assert refused.status_code == 400
    assert "<CODE>1901</CODE>" in refused.text
    micro = {"action": "list", "last_modified_after": "2026-05-01T00:00:00.123Z"}
    assert httpx.post(url + KB_PATH, data=micro, auth=auth, headers=headers).status_code == 400
    assert httpx.post(url + "/api/5.0/fo/knowledge_base/vuln/", data={"action": "list"}, auth=auth).status_code == 404
    assert len(sim.kb_calls) == 4  # refused parameters count as calls (as Qualys counts them); 5.0 is no KB


def test_a_customised_qid_keeps_its_customisation_date_and_does_not_hold_the_checkpoint_back(
    make_sim: SimFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # LAST_CUSTOMIZATION has its own DATETIME (KB DTD): it is the VULN's field, not Qualys' clock
    sim = make_sim(seed=3, hosts=10, detections_per_host=3, base=NOW - timedelta(days=2), span=timedelta(days=3))
    r = run(sim, tmp_path, {"knowledge_base": {"start_time_utc": START}})
    with caplog.at_level(logging.WARNING):
        assert r.cycle()
    events = {e["event"]["QID"]: e["event"] for e in r.events() if e["tag"] == KB_TAG}
    customised = {q: e for q, e in events.items() if (sim.kb_truth(q) or {}).get("LAST_CUSTOMIZATION")}
    assert customised, "the window holds customised QIDs"
    for qid, event in customised.items():
        truth = sim.kb_truth(qid) or {}
        assert event["LAST_CUSTOMIZATION"] == {"DATETIME": truth["LAST_CUSTOMIZATION"], "USER_LOGIN": "acme_mm"}
    assert not [m for m in caplog.messages if "clock" in m and "behind" in m]
    advance(sim, 24)
    assert r.cycle()
    second = sim.kb_calls[-1]  # the next window starts where the first ended (one second early), not years back
    assert second["last_modified_after"] == "2026-06-01T11:59:59Z"


@pytest.mark.parametrize("limit", [7, 50])
def test_a_kb_answer_cut_by_a_warning_url_is_followed_to_its_end(
    make_sim: SimFactory, tmp_path: Path, limit: int
) -> None:
    # RESPONSE/WARNING (CODE 1980, URL with id_min) is in the KB DTD: what follows it is neither lost nor
    # cached as not_found
    sim = make_sim(
        seed=11,
        hosts=40,
        detections_per_host=4,
        base=NOW - timedelta(days=3),
        span=timedelta(days=3),
        host_interval=timedelta(hours=20),
        vm_limits=Limits(rate=10_000, window=60, concurrency=2),
        kb_page_limit=limit,
    )
    services: dict[str, dict[str, Any]] = {
        "knowledge_base": {"start_time_utc": START},
        "host_list_detection": {"start_time_utc": START, "truncation_limit": 7},
    }
    r = run(sim, tmp_path, services)
    assert r.cycle()
    kb_keys = {
        f"{e['event']['QID']}@{e['event']['LAST_SERVICE_MODIFICATION_DATETIME']}"
        for e in r.events()
        if e["tag"] == KB_TAG
    }
    assert kb_keys == sim.truth("knowledge_base", parse_seed_datetime(START), NOW)
    advance(sim, 10)
    assert r.cycle()
    rows, pending = cache(r)
    qids = {e["DETECTION"]["QID"] for e in detections(r)}
    assert not pending
    assert {q: rows[q] for q in qids} == {q: expected_kb(sim.kb_truth(q) or {}) for q in qids}


def test_the_kb_cache_belongs_to_knowledge_base_whichever_service_declared_it_first(
    sim: Simulator, tmp_path: Path
) -> None:
    # enrichment alone first (the stage declares kb_cache), then the knowledge_base service is enabled
    hld: dict[str, Any] = {"start_time_utc": START, "truncation_limit": 7}
    r = run(sim, tmp_path, {"host_list_detection": hld})
    assert r.cycle()
    r.services = {"host_list_detection": hld, "knowledge_base": {"start_time_utc": START}}
    assert r.cycle()
    filled, _ = cache(r)
    assert filled
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw_config(r.state, qualys=vm_input(r.url, r.services))))

    def reset(service: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "qualys_collector", "state", "reset", "-c", str(path), "--service", service],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-1500:]

    reset("host_list_detection")  # the detections start again; the KB the knowledge_base service pulled stays
    assert cache(r)[0] == filled
    reset("knowledge_base")  # README: resetting knowledge_base clears the cache (its next pull refills it)
    assert cache(r) == ({}, set())


def test_a_kb_lookup_never_holds_the_state_databases_write_lock(sim: Simulator, tmp_path: Path) -> None:
    # a pending QID the cache knows already (the knowledge_base service committed it between a page's read and
    # its commit) is cleaned up by the next window's first page, and that must not take the write lock
    # before the page's KB call: a slow KB answer would block every other service's commit
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "truncation_limit": 7}})
    assert r.cycle()
    rows, _ = cache(r)
    kept = next(iter(rows))
    outbox = Outbox(r.state)
    try:
        for name in ("kb_cache", "kb_pending"):
            outbox.declare(name, "knowledge_base")
        with outbox.transaction("7") as tx:
            tx.table("kb_pending").put(kept, 1)
            for qid in rows:
                if qid != kept:
                    tx.table("kb_cache").delete(qid)  # so the next window's first page calls the KB
    finally:
        outbox.close()
    calls = len(sim.kb_calls)
    sim.faults.arm(parse_fault(f"slow:path={KB_PATH},delay=0.05,times=1"))
    advance(sim, 10)
    done: list[bool] = []
    worker = threading.Thread(target=lambda: done.append(r.cycle()))
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while len(sim.kb_calls) == calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(sim.kb_calls) > calls, "the KB lookup started"
        other = sqlite3.connect(r.state / "qualys-collector.sqlite3", timeout=0.5)
        try:
            other.execute("BEGIN IMMEDIATE")  # another service's commit, while the KB answer streams
            other.execute("ROLLBACK")
        finally:
            other.close()
    finally:
        worker.join(60)
    assert done == [True]
    rows, pending = cache(r)
    assert kept in rows
    assert kept not in pending, "the stale pending row was removed with the page"
