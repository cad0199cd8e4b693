"""Every odd shape real Qualys answers show (issue 16 item 18), switched on in the simulator: the collector turns
each into the same events as the clean form, for every VM and FIM service (see ``simulator/shapes.py`` for
where each shape comes from)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from qualys_collector.simulator import Limits, Simulator
from qualys_collector.simulator.shapes import DEFAULT_SHAPES, EMPTY_ELEMENTS, SPARSE_ELEMENTS
from tests.conftest import SimFactory
from tests.helpers.vmsim import NOW, Run, start_sim

pytestmark = pytest.mark.integration

START = "2026-05-25T00:00:00Z"
ALL = ["New", "Active", "Fixed", "Re-Opened"]
#: Shapes that change only how an answer is written.
XML_SAME = ["eval_comments", "comments", "cdata", "plain", "whitespace", "no_decl", "bom", "warning"]
CSV_SAME = ["bom", "whitespace", "warning"]
FIM_SAME = ["bom", "whitespace", "ascii", "reordered"]

VM_SERVICES: dict[str, dict[str, Any]] = {
    "vm_scans": {"start_time_utc": START},
    "host_list": {"start_time_utc": START, "truncation_limit": 5},
    "host_list_detection": {
        "start_time_utc": START,
        "truncation_limit": 5,
        "filters": {"status": ALL, "show_tags": 1},
    },
    "host_list_detection (one stream)": {
        "start_time_utc": START,
        "truncation_limit": 5,
        "parallel": False,
        "filters": {"status": ALL, "show_tags": 1},
    },
    "user_activity": {"start_time_utc": START, "truncation_limit": 15},
    "knowledge_base": {"start_time_utc": START},
}
FIM_SERVICES: dict[str, dict[str, Any]] = {
    "fim_events": {"start_time_utc": START, "page_size": 25},
    "fim_incidents": {"start_time_utc": START, "page_size": 4, "include_events": True},
}


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(
        seed=21,
        hosts=12,
        detections_per_host=3,
        scans=9,
        activity_rows=40,
        fim_events=60,
        fim_incidents=6,
        base=NOW - timedelta(days=3),
        span=timedelta(days=3),
        vm_limits=Limits(rate=100_000, window=60),
        fim_limits=Limits(rate=100_000, window=60),
    )


def pull(sim: Simulator, url: str, state: Path, name: str, block: dict[str, Any], shapes: list[str]) -> list[Any]:
    """One cycle of one service with ``shapes`` on: its delivered data events, pulling id left out, in order."""
    sim.shapes = frozenset(shapes)
    service = name.split(" ")[0]
    fim = service.startswith("fim_")
    r = Run(sim=sim, url=url, state=state, services={service: block}, input="qualys_fim" if fim else "qualys")
    assert r.cycle(), f"{name} with {shapes} did not complete"
    events = []
    for line in r.events():
        line["event"].pop("@devo_pulling_id", None)
        events.append(line)
    assert events, f"{name} delivered nothing"
    return events


def canonical(events: list[Any]) -> list[str]:
    return sorted(json.dumps(e, sort_keys=True) for e in events)


def _drop(event: Any, names: tuple[str, ...]) -> Any:
    return {k: v for k, v in event.items() if k not in names}


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


@pytest.mark.parametrize("name", list(VM_SERVICES))
def test_each_vm_shape_gives_the_events_of_the_clean_form(sim: Simulator, tmp_path: Path, name: str) -> None:
    url = start_sim(sim)
    block = VM_SERVICES[name]
    clean = pull(sim, url, tmp_path / "clean", name, block, [])
    same = CSV_SAME if name == "user_activity" else XML_SAME
    for shape in same:
        shaped = pull(sim, url, tmp_path / shape, name, block, [shape])
        assert canonical(shaped) == canonical(clean), f"{name}: shape {shape}"
    everything = pull(sim, url, tmp_path / "all", name, block, same)
    assert canonical(everything) == canonical(clean), f"{name}: all shapes at once"
    if name in ("user_activity", "knowledge_base"):
        return  # no optional host or scan elements to leave out or add
    # optional elements left out: the same events without those fields
    sparse = pull(sim, url, tmp_path / "sparse", name, block, ["sparse"])
    if name.startswith("host_list_detection"):
        expected = [{**e, "event": {**e["event"], "HOST": _drop(e["event"]["HOST"], SPARSE_ELEMENTS)}} for e in clean]
    else:
        expected = [{**e, "event": _drop(e["event"], SPARSE_ELEMENTS)} for e in clean]
    assert canonical(sparse) == canonical(expected), f"{name}: sparse"
    if name == "vm_scans":
        return
    # an empty list container (<ASSET_GROUP_LIST />) is an empty list, the type it has with items
    empty = pull(sim, url, tmp_path / "empty", name, block, ["empty"])
    added: dict[str, Any] = {key: [] for key in EMPTY_ELEMENTS}
    if name.startswith("host_list_detection"):
        expected = [{**e, "event": {**e["event"], "HOST": {**e["event"]["HOST"], **added}}} for e in clean]
    else:
        expected = [{**e, "event": {**e["event"], **added}} for e in clean]
    assert canonical(empty) == canonical(expected), f"{name}: empty elements"


@pytest.mark.parametrize("name", list(FIM_SERVICES))
def test_each_fim_shape_gives_the_events_of_the_clean_form(sim: Simulator, tmp_path: Path, name: str) -> None:
    url = start_sim(sim)
    block = FIM_SERVICES[name]
    clean = pull(sim, url, tmp_path / "clean", name, block, [])
    for shape in FIM_SAME:
        shaped = pull(sim, url, tmp_path / shape, name, block, [shape])
        assert canonical(shaped) == canonical(clean), f"{name}: shape {shape}"
    everything = pull(sim, url, tmp_path / "all", name, block, FIM_SAME)
    assert canonical(everything) == canonical(clean), f"{name}: all shapes at once"
    # "sortValues": [] (Qualys' Fetch Events example): the search ends on its short page, nothing lost
    one_page = {**block, "page_size": 1000}
    unsorted = pull(sim, url, tmp_path / "empty_sort", name, one_page, ["empty_sort"])
    assert canonical(unsorted) == canonical(clean), f"{name}: empty sortValues"
    # keys whose value is null left out: the same events without them
    sparse = pull(sim, url, tmp_path / "sparse", name, block, ["sparse"])
    expected = [{**e, "event": _without_nulls(e["event"])} for e in clean]
    assert canonical(sparse) == canonical(expected), f"{name}: sparse"


def test_the_default_data_shows_evaluation_comments_and_lists_of_one(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(seed=4, hosts=5, detections_per_host=1, base=NOW - timedelta(days=2), span=timedelta(days=2))
    assert sim.shapes == DEFAULT_SHAPES
    url = start_sim(sim)

    answer = httpx.post(
        f"{url}/api/5.0/fo/asset/host/vm/detection/",
        data={"action": "list", "show_tags": "1"},
        auth=("demo", "demo"),
        headers={"X-Requested-With": "test"},
    ).text
    assert answer.index("evaluation version of Qualys") < answer.index("<HOST_LIST_VM_DETECTION_OUTPUT>")
    assert answer.rstrip().endswith("Qualys, Inc. //-->")
    r = Run(
        sim=sim,
        url=url,
        state=tmp_path / "state",
        services={"host_list_detection": {"start_time_utc": START, "filters": {"status": ALL, "show_tags": 1}}},
    )
    assert r.cycle()
    events = [e["event"] for e in r.events() if e["tag"] == "vuln.qualys.hostdetections"]
    assert len(events) == 5  # one detection per host: a DETECTION_LIST of one
    assert all(isinstance(e["HOST"]["TAGS"], list) and len(e["HOST"]["TAGS"]) == 1 for e in events)  # a list of one
