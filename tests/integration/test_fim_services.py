"""fim_events and fim_incidents against the simulator's gateway: ids delivered equal the ground truth."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from qualys_collector.app import Collector
from qualys_collector.config import build_config
from qualys_collector.engine.cycle import CycleStats, Job
from qualys_collector.engine.outbox import DB_NAME, Outbox
from qualys_collector.simulator import Limits, Simulator
from qualys_collector.simulator.faults import parse_fault
from tests.conftest import SimFactory, record_reliability
from tests.helpers.kit import Recorder
from tests.helpers.vmsim import NOW, Run, start_sim

pytestmark = pytest.mark.integration
START = "2026-05-28T00:00:00Z"


@dataclass
class FimRun(Run):
    """A :class:`Run` of the FIM input; ``stop_after_pages`` sets the collector's stop after that many pages."""

    input: str = "qualys_fim"
    stop_after_pages: int | None = None

    def cycle(self, **kw: Any) -> bool:
        collector: Collector

        def on_page(job: Job, stats: CycleStats) -> None:
            if self.stop_after_pages is not None and recorder.pages >= self.stop_after_pages:
                collector.stop.set()

        recorder = Recorder(on_page)
        collector = self.collector(recorder=recorder, **kw)
        try:
            return collector.run_once()
        finally:
            collector.close()

    def events(self, tag: str) -> list[dict[str, Any]]:  # type: ignore[override]  # by tag, unlike Run
        return [line["event"] for line in super().events(summaries=True) if line["tag"] == tag]


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(
        seed=3,
        hosts=20,
        fim_events=600,
        fim_incidents=12,
        base=NOW - timedelta(days=3),
        span=timedelta(days=3),
        fim_limits=Limits(rate=100_000, window=60),
    )


def fim(sim: Simulator, tmp_path: Path, services: dict[str, dict[str, Any]], **kw: Any) -> FimRun:
    return FimRun(sim=sim, url=start_sim(sim), state=tmp_path / "state", services=services, **kw)


EVENTS = "monitor.qualys.fim.event"
INCIDENTS = "monitor.qualys.fim.incident"


@pytest.mark.slow
def test_25000_events_past_the_10000_row_window_arrive_once(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(
        seed=9,
        fim_events=25_000,
        fim_incidents=1,
        base=NOW - timedelta(days=2),
        span=timedelta(days=2),
        fim_limits=Limits(rate=100_000, window=60),
    )
    r = fim(sim, tmp_path, {"fim_events": {"start_time_utc": START, "settle_lag_seconds": 0}})
    assert r.cycle()
    ids = Counter(e["id"] for e in r.events(EVENTS))
    assert len(ids) == 25_000
    assert max(ids.values()) == 1
    assert set(ids) == sim.truth("fim_events", None, NOW)
    assert sim.statuses.get("/fim/v2/events/search 416", 0) == 0  # keyset paging, never offset past 10,000


def test_late_events_and_shared_timestamps_across_pages_arrive_once(sim: Simulator, tmp_path: Path) -> None:
    r = fim(sim, tmp_path, {"fim_events": {"start_time_utc": START, "page_size": 7, "settle_lag_seconds": 30}})
    sim.offset = -timedelta(days=1)
    assert r.cycle()
    first_end = sim.now() - timedelta(seconds=30)
    sim.offset = timedelta(0)
    assert r.cycle()
    ids = Counter(e["id"] for e in r.events(EVENTS))
    assert max(ids.values()) == 1
    assert set(ids) == sim.truth("fim_events", None, NOW - timedelta(seconds=30))
    late = [e for e in r.events(EVENTS) if e["dateTime"] < first_end.strftime("%Y-%m-%dT%H:%M:%S") < e["processedTime"]]
    assert late, "events that happened before the first window's end but were processed after it"
    shared = Counter(e["processedTime"] for e in r.events(EVENTS))
    assert max(shared.values()) > 1


def test_a_token_expiring_mid_window_is_renewed_without_loss(sim: Simulator, tmp_path: Path) -> None:
    r = fim(sim, tmp_path, {"fim_events": {"start_time_utc": START, "page_size": 50, "settle_lag_seconds": 0}})
    sim.faults.arm(parse_fault("expire_token:times=1,path=/fim/v2/events/search"))
    sim.faults.arm(parse_fault("expire_token:times=0"))
    assert r.cycle()
    assert sim.tokens_issued == 2
    ids = Counter(e["id"] for e in r.events(EVENTS))
    assert set(ids) == sim.truth("fim_events", None, NOW)
    assert max(ids.values()) == 1


def test_an_incident_closed_after_delivery_is_delivered_again(sim: Simulator, tmp_path: Path) -> None:
    r = fim(
        sim, tmp_path, {"fim_incidents": {"start_time_utc": START, "settle_lag_seconds": 0, "include_events": True}}
    )
    sim.offset = -timedelta(days=1)
    assert r.cycle()
    first = {i["id"]: i["status"] for i in r.events(INCIDENTS)}
    assert "OPEN" in first.values()
    sim.offset = timedelta(0)
    assert r.cycle()
    seen: dict[str, list[str]] = {}
    for incident in r.events(INCIDENTS):
        seen.setdefault(incident["id"], []).append(incident["status"])
    reopened = [i for i, s in first.items() if s == "OPEN" and seen[i] == ["OPEN", "CLOSED"]]
    assert reopened, "an incident seen OPEN is delivered again CLOSED"
    assert set(seen) == sim.truth("fim_incidents", None, NOW)
    events = r.events("monitor.qualys.fim.incident_event")
    assert Counter(e["id"] for e in events).most_common(1)[0][1] == 1  # each incident's events once


def test_incident_ids_kept_in_the_old_checkpoint_blob_move_into_the_keyed_table(sim: Simulator, tmp_path: Path) -> None:
    services = {"fim_incidents": {"start_time_utc": START, "settle_lag_seconds": 0, "include_events": True}}
    r = fim(sim, tmp_path, services)
    sim.offset = -timedelta(days=1)
    assert r.cycle()
    # rewrite the state as the previous version kept it: the ids in the checkpoint's extra blob, no table rows
    with sqlite3.connect(tmp_path / "state" / DB_NAME) as db:
        pulled = dict(db.execute("SELECT key, stamp FROM kt_fim_incident_ids WHERE scope = '5'").fetchall())
        assert pulled, "the first cycle pulled the events of some incidents"
        (data,) = db.execute("SELECT data FROM checkpoints WHERE service = 'fim_incidents'").fetchone()
        checkpoint = {**json.loads(data), "extra": {"events_pulled": pulled}}
        db.execute("UPDATE checkpoints SET data = ? WHERE service = 'fim_incidents'", (json.dumps(checkpoint),))
        db.execute("DELETE FROM kt_fim_incident_ids")
    sim.offset = timedelta(0)
    assert r.cycle()
    events = r.events("monitor.qualys.fim.incident_event")
    assert Counter(e["id"] for e in events).most_common(1)[0][1] == 1  # the migrated ids were not pulled again
    outbox = Outbox(tmp_path / "state")
    try:
        stored = outbox.load_checkpoint("5", "fim_incidents")
        assert stored is not None
        assert "extra" not in stored
        outbox.declare("fim_incident_ids", owner="fim_incidents")
        table = dict(outbox.table("5", "fim_incident_ids").items())
    finally:
        outbox.close()
    assert set(pulled) <= set(table)
    assert set(table) == {i["id"] for i in r.events(INCIDENTS)}
    assert all(table[k] == v for k, v in pulled.items())


def test_both_fim_services_emit_one_summary_per_window_that_matches_what_they_delivered(
    sim: Simulator, tmp_path: Path
) -> None:
    services = {
        "fim_events": {"start_time_utc": START, "page_size": 100, "settle_lag_seconds": 0},
        "fim_incidents": {"start_time_utc": START, "settle_lag_seconds": 0, "include_events": True},
    }
    r = fim(sim, tmp_path, services)
    assert r.cycle()
    summaries = {s["@summary"]: s for s in r.events("vuln.qualys.collector.summary")}
    assert set(summaries) == set(services)
    delivered = {
        "fim_events": len(r.events(EVENTS)),
        "fim_incidents": len(r.events(INCIDENTS)) + len(r.events("monitor.qualys.fim.incident_event")),
    }
    for name, summary in summaries.items():
        stats = r.stats[name]
        assert stats is not None
        assert summary["window_start"] == START
        assert summary["records_committed"] == delivered[name] == stats.sent > 0
        assert (summary["records_received"], summary["requests"]) == (stats.received, stats.requests)
        assert summary["pages"] == stats.pages
    assert summaries["fim_events"]["pages"] == 7  # 600 events, 100 a page, and the empty page that ends the search


def test_bad_credentials_give_101_once(sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r = fim(sim, tmp_path, {"fim_events": {"start_time_utc": START}}, password="not-the-password")
    assert not r.cycle()
    assert "[SetupError 101] The tokens provided are incorrect" in caplog.text
    assert sim.requests["/auth"] == 1
    assert sim.requests.get("/fim/v2/events/search", 0) == 0
    assert "not-the-password" not in caplog.text


def test_no_fim_permission_gives_102(sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sim.faults.arm(parse_fault("forbidden:times=-1"))
    r = fim(sim, tmp_path, {"fim_events": {"start_time_utc": START}})
    assert not r.cycle()
    assert "[SetupError 102] The provided tokens are valid but they do not have the permission" in caplog.text
    assert sim.requests["/fim/v2/events/search"] == 1


@pytest.mark.reliability
@pytest.mark.parametrize(
    "fault",
    [
        "429:times=3,wait=0",
        "503:times=3",
        "502:times=1",
        "cut:after=2000,times=2",
        "malformed:after=900,times=1",
        "expire_token:times=1",
    ],
)
def test_rate_limits_and_server_errors_end_complete(sim: Simulator, tmp_path: Path, fault: str) -> None:
    sim.faults.arm(parse_fault(fault))
    r = fim(sim, tmp_path, {"fim_events": {"start_time_utc": START, "page_size": 100, "settle_lag_seconds": 0}})
    assert r.cycle()
    ids = Counter(e["id"] for e in r.events(EVENTS))
    truth = sim.truth("fim_events", None, NOW)
    record_reliability(compared=len(truth), lost=len(truth - set(ids)), duplicated=sum(ids.values()) - len(ids))
    assert set(ids) == truth
    assert max(ids.values()) == 1


def test_a_stopped_window_resumes_from_its_last_page(sim: Simulator, tmp_path: Path) -> None:
    r = fim(
        sim,
        tmp_path,
        {"fim_events": {"start_time_utc": START, "page_size": 40, "settle_lag_seconds": 0}},
        stop_after_pages=3,
    )
    assert not r.cycle()  # stopped (as on SIGTERM) after three pages
    outbox = Outbox(tmp_path / "state")
    checkpoint = outbox.load_checkpoint("5", "fim_events")
    outbox.close()
    assert checkpoint is not None
    assert checkpoint["window"]["token"]["searchAfter"]
    assert len(r.events(EVENTS)) == 120
    r.stop_after_pages = None
    assert r.cycle()
    ids = Counter(e["id"] for e in r.events(EVENTS))
    assert set(ids) == sim.truth("fim_events", None, NOW)
    assert max(ids.values()) == 1


def test_a_user_filter_naming_the_window_field_is_refused(tmp_path: Path) -> None:
    from qualys_collector.errors import ConfigError

    raw = {
        "inputs": {
            "qualys_fim": {
                "id": 1,
                "credentials": {"base_url": "https://gateway.example", "username": "u", "password": "p"},
                "services": {"fim_events": {"filter": "dateTime: ['2024-01-01'..'2024-02-01']"}},
            }
        }
    }
    with pytest.raises(ConfigError, match="may not name processedTime or dateTime"):
        build_config(raw, warnings=[])
