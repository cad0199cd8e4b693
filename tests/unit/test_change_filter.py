"""The change filter over a real state store: what it lets through, what it remembers, and that the state it
moves commits with the page or not at all."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from qualys_collector.engine import changes
from qualys_collector.engine.changes import META, ChangeFilter
from qualys_collector.engine.cursor import BoundaryCursor
from qualys_collector.engine.pipeline import EventBuilder, PageWork, Pipeline
from qualys_collector.engine.store import StateStore, Transaction
from qualys_collector.model import Page, Record
from qualys_collector.services.host_list_detection import CHANGE_TABLE, HostListDetectionOptions, change_filter

SCOPE = "7"


def detection(host: str, n: int, **fields: Any) -> Record:
    body = {
        "UNIQUE_VULN_ID": f"{host}{n}",
        "QID": str(10_000 + n),
        "TYPE": "Confirmed",
        "SEVERITY": "3",
        "STATUS": "Active",
        "FIRST_FOUND_DATETIME": "2026-01-01T00:00:00Z",
        "LAST_FOUND_DATETIME": "2026-06-01T00:00:00Z",
        "TIMES_FOUND": "4",
        "RESULTS": "openssl 1.1.1",
        "IS_IGNORED": "0",
        "IS_DISABLED": "0",
        **fields,
    }
    key = f"{host}:{host}{n}"
    return Record(data={"HOST": {"ID": host}, "DETECTION": body, "@detection_key": key}, key=key)


class Boom:
    name = "boom"
    tables: tuple[str, ...] = ()

    def run(self, work: PageWork, tx: Transaction) -> None:
        raise RuntimeError("a later stage fails")


class Harness:
    def __init__(self, tmp_path: Path, *, fail_after: bool = False) -> None:
        self.store = StateStore(tmp_path / "state")
        (stage,) = change_filter(HostListDetectionOptions(emit="changes"))
        assert isinstance(stage, ChangeFilter)
        self.store.declare(CHANGE_TABLE, "host_list_detection")
        builder = EventBuilder(tag="vuln.qualys.hostdetections", pulling_id=1)
        stages = [stage, Boom()] if fail_after else [stage]
        self.pipeline = Pipeline.standard(BoundaryCursor(None, [], None), builder, change_filter=stages)  # type: ignore[arg-type]

    def page(self, records: Sequence[Record], *, snapshot: int | None = None, last: bool = False) -> list[Any]:
        with self.store.transaction(SCOPE) as tx:
            work = self.pipeline.run(Page(records, token=None if last else {"id_min": 1}, snapshot=snapshot), tx)
            tx.add_events("host_list_detection", work.events)
        return [(e.key, e.body["@change"]) for e in work.events]

    def state(self) -> dict[str, Any]:
        return dict(self.store.table(SCOPE, CHANGE_TABLE).items())


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_only_new_status_and_tracked_field_changes_pass_each_with_what_it_was(harness: Harness) -> None:
    assert harness.page([detection("1", 1)]) == [("1:11", {"kind": "new", "previous": {}, "changed": []})]
    # the same detection seen again, only the fields every scan moves have moved: nothing
    assert harness.page([detection("1", 1, LAST_FOUND_DATETIME="2026-06-02T00:00:00Z", TIMES_FOUND="5")]) == []
    assert harness.page([detection("1", 1, RESULTS="openssl 1.1.2 (evidence is not state)")]) == []
    fixed = harness.page([detection("1", 1, STATUS="Fixed", LAST_FIXED_DATETIME="2026-06-03T00:00:00Z")])
    assert fixed == [
        (
            "1:11",
            {
                "kind": "status",
                "previous": {"STATUS": "Active", "LAST_FIXED_DATETIME": None},
                "changed": ["STATUS", "LAST_FIXED_DATETIME"],
            },
        )
    ]
    keep = {"STATUS": "Fixed", "LAST_FIXED_DATETIME": "2026-06-03T00:00:00Z"}
    severity = harness.page([detection("1", 1, SEVERITY="5", **keep)])
    assert severity == [("1:11", {"kind": "updated", "previous": {"SEVERITY": "3"}, "changed": ["SEVERITY"]})]
    qds = harness.page([detection("1", 1, SEVERITY="5", QDS={"@severity": "HIGH", "#text": "71"}, **keep)])
    assert qds == [("1:11", {"kind": "updated", "previous": {"QDS": None}, "changed": ["QDS"]})]
    other = harness.page(
        [detection("1", 1, SEVERITY="5", QDS={"@severity": "HIGH", "#text": "71"}, SERVICE="ssh", **keep)]
    )
    assert other == [("1:11", {"kind": "updated", "previous": {}, "changed": ["other"]})]
    assert harness.state()["1:11"]["s"] == "Fixed"


def test_a_detection_its_host_no_longer_returns_is_removed_and_forgotten(harness: Harness) -> None:
    harness.page([detection("1", 1), detection("1", 2), detection("2", 1)])
    out = harness.page([detection("1", 1)])  # host 1 answered without detection 2; host 2 not in this page
    assert out == [
        (
            "1:12",
            {
                "kind": "removed",
                "reason": "not_returned",
                "previous": {
                    "STATUS": "Active",
                    "SEVERITY": "3",
                    "TYPE": "Confirmed",
                    "IS_IGNORED": "0",
                    "IS_DISABLED": "0",
                },
                "changed": [],
            },
        )
    ]
    assert set(harness.state()) == {"1:11", "2:21"}


def test_a_failing_later_stage_commits_no_state_so_the_change_is_emitted_when_the_page_is_pulled_again(
    tmp_path: Path,
) -> None:
    failing = Harness(tmp_path, fail_after=True)
    with pytest.raises(RuntimeError):
        failing.page([detection("1", 1)])
    assert failing.state() == {}
    failing.store.close()
    again = Harness(tmp_path)
    assert [kind["kind"] for _key, kind in again.page([detection("1", 1)])] == ["new"]


def test_snapshots_seed_then_report_unchanged_changed_and_gone_detections(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    seeded = harness.page([detection("1", 1), detection("2", 1), detection("3", 1)], snapshot=100, last=True)
    assert [c["kind"] for _k, c in seeded] == ["snapshot"] * 3  # the first snapshot seeds: nothing is "new"
    assert {c["snapshot"] for _k, c in seeded} == {100}
    assert harness.state()[META] == {"generation": 100}
    monkeypatch.setattr(changes, "SWEEP_PER_PAGE", 1)
    first = harness.page([detection("1", 1, STATUS="Fixed"), detection("4", 1)], snapshot=200)
    assert [(k, c["kind"]) for k, c in first] == [("1:11", "status"), ("4:41", "new")]
    assert {c["snapshot"] for _k, c in first} == {200}
    # the page that ends snapshot 200: hosts 2 and 3 were not returned by it -> removed, one per page
    end = harness.page([], snapshot=200, last=True)
    assert [(c["kind"], c["reason"]) for _k, c in end] == [("removed", "not_in_snapshot")]
    after = harness.page([detection("1", 1, STATUS="Fixed")])
    assert [(c["kind"], c.get("reason")) for _k, c in after] == [("removed", "not_in_snapshot")]
    assert {k for k, _c in end + after} == {"2:21", "3:31"}
    assert set(harness.state()) == {META, "1:11", "4:41"}
    assert harness.page([detection("1", 1, STATUS="Fixed")]) == []
    unchanged = harness.page([detection("1", 1, STATUS="Fixed"), detection("4", 1)], snapshot=300, last=True)
    assert [(k, c["kind"]) for k, c in unchanged] == [("1:11", "snapshot"), ("4:41", "snapshot")]
