"""Event building is plain data: the builder and its obfuscation rules pickle, and build the same events
after a round trip and in a child process."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime

from qualys_collector.engine.obfuscate import compile_rules
from qualys_collector.engine.pipeline import EventBuilder
from qualys_collector.model import Event, Record

T0 = datetime(2024, 1, 1, tzinfo=UTC)
RECORDS = [
    Record(
        data={"HOST": {"ID": str(i), "IP": f"10.0.0.{i}", "DNS": "a.example"}, "DETECTION": {"RESULTS": "x", "QID": 7}},
        key=f"{i}:1",
        cursor=T0 if i % 2 else None,
        tag="vuln.qualys.collector.summary" if i == 3 else None,
    )
    for i in range(5)
]


def builder() -> EventBuilder:
    rules = compile_rules([("HOST.IP", "hash"), ("HOST.DNS", "mask"), ("DETECTION.RESULTS", "drop")], "s4lt")
    return EventBuilder(
        tag="vuln.qualys.hostdetections", pulling_id=1704067200000, environment="prod", obfuscation=rules
    )


def build_all(b: EventBuilder) -> list[Event]:
    return [b.build(r) for r in RECORDS]


def test_the_event_builder_survives_a_pickle_round_trip_and_builds_identical_events() -> None:
    original = builder()
    copy = pickle.loads(pickle.dumps(original))
    assert copy == original
    before, after = build_all(original), build_all(copy)
    assert [(e.tag, e.to_json(), e.key, e.time) for e in after] == [(e.tag, e.to_json(), e.key, e.time) for e in before]
    first = before[1]
    assert first.body["HOST"]["IP"].startswith("sha256:")
    assert first.body["HOST"]["DNS"] == "********"
    assert "RESULTS" not in first.body["DETECTION"]
    assert (first.body["@devo_pulling_id"], first.body["environment"]) == (1704067200000, "prod")
    assert (first.key, first.time, before[0].time) == ("1:1", T0, None)
    assert [e.tag for e in before].count("vuln.qualys.collector.summary") == 1  # a record's own tag wins
    assert RECORDS[1].data["HOST"]["IP"] == "10.0.0.1"  # the record is not modified


def test_a_child_process_builds_the_same_events() -> None:
    original = builder()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        there = pool.submit(build_all, original).result(timeout=60)
    assert [e.to_json() for e in there] == [e.to_json() for e in build_all(original)]
