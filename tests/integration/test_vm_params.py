"""The parameter surface against the simulator: every typed option and ``extra_params`` reach the wire as
Qualys spells them (the simulator's request log), the simulator honours them, and the delivered events carry
the risk scores (QDS and its factors, TruRisk, asset criticality) and cloud metadata of its ground truth."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from qualys_collector.cli import main
from qualys_collector.simulator import Limits, Simulator
from qualys_collector.simulator.data import QDS_FACTOR_SETS, qds_severity
from tests.conftest import SimFactory
from tests.helpers.kit import raw_config, vm_input, write_config
from tests.helpers.vmsim import NOW, Run, start_sim

pytestmark = pytest.mark.integration

START = "2026-05-28T00:00:00Z"
ALL = ["New", "Active", "Fixed", "Re-Opened"]
HLD = "asset/host/vm/detection"
Predicate = Callable[[dict[str, Any], dict[str, Any]], bool]


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(
        seed=11,
        hosts=40,
        detections_per_host=5,
        base=NOW - timedelta(days=3),
        span=timedelta(days=3),
        host_interval=timedelta(hours=20),
        vm_limits=Limits(rate=10_000, window=60, concurrency=2),
    )


def run(sim: Simulator, tmp_path: Path, services: dict[str, dict[str, Any]]) -> Run:
    return Run(sim=sim, url=start_sim(sim), state=tmp_path / "state", services=services)


def calls(sim: Simulator, path_part: str) -> list[dict[str, str]]:
    return [entry["params"] for entry in sim.request_log if entry["path"].endswith(f"/{path_part}/")]


def detections(r: Run) -> dict[str, dict[str, Any]]:
    return {e["event"]["@detection_key"]: e["event"] for e in r.events() if e["tag"] == "vuln.qualys.hostdetections"}


def test_every_typed_detection_option_and_extra_param_reaches_the_wire(sim: Simulator, tmp_path: Path) -> None:
    filters = {
        "status": ALL,
        "severities": "2-5",
        "qids": ["10000-10400"],
        "include_vuln_type": "confirmed",
        "show_igs": 1,
        "include_ignored": 1,
        "include_disabled": 1,
        "show_results": 1,
        "filter_superseded_qids": 0,
        "qds_min": 1,
        "qds_max": 100,
        "show_arf_data": 1,
        "arf_filter_keys": ["non-running-kernel"],
        "ag_ids": "9000-9003",
        "os_pattern": ".",
        "network_ids": [0],
        "use_tags": 1,
        "tag_set_by": "id",
        "tag_include_selector": "any",
        "tag_set_include": [700, 701, 702],
        "tag_exclude_selector": "all",
        "tag_set_exclude": [799],
        "host_metadata": "all",
        "host_metadata_fields": ["region"],
        "show_cloud_tags": 1,
        "cloud_tag_fields": "env:prod",
    }
    extra = {"max_days_since_last_vm_scan": 30, "compliance_enabled": False}
    r = run(
        sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "filters": filters, "extra_params": extra}}
    )
    assert r.cycle()
    sent = calls(sim, HLD)
    assert sent
    expected = {
        "status": "New,Active,Fixed,Re-Opened",
        "severities": "2,3,4,5",
        "qids": "10000-10400",
        "include_vuln_type": "confirmed",
        "show_igs": "1",
        "include_ignored": "1",
        "include_disabled": "1",
        "show_results": "1",
        "filter_superseded_qids": "0",
        "qds_min": "1",
        "qds_max": "100",
        "show_qds": "1",
        "show_qds_factors": "1",
        "show_arf_data": "1",
        "arf_filter_keys": "non-running-kernel",
        "ag_ids": "9000-9003",
        "os_pattern": ".",
        "network_ids": "0",
        "use_tags": "1",
        "tag_set_by": "id",
        "tag_include_selector": "any",
        "tag_set_include": "700,701,702",
        "tag_exclude_selector": "all",
        "tag_set_exclude": "799",
        "host_metadata": "all",
        "host_metadata_fields": "region",
        "show_cloud_tags": "1",
        "cloud_tag_fields": "env:prod",
        "max_days_since_last_vm_scan": "30",
        "compliance_enabled": "0",
    }
    for params in sent:
        assert {k: params.get(k) for k in expected} == expected
        assert params["action"] == "list"
        assert "ids" in params
    # the host IDs of the window are listed with the same host selection (not the detection or output options)
    (listing,) = calls(sim, "asset/host")
    host_selection = ("ag_ids", "os_pattern", "network_ids", "use_tags", "tag_set_by", "tag_include_selector")
    assert {k: listing[k] for k in host_selection} == {k: expected[k] for k in host_selection}
    assert not {"severities", "show_qds", "host_metadata", "max_days_since_last_vm_scan"} & set(listing)


def test_api_2_0_sends_its_own_arf_filters(sim: Simulator, tmp_path: Path) -> None:
    filters = {"status": ALL, "arf_kernel_filter": 1, "arf_service_filter": 0, "arf_config_filter": 4}
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "api_version": "2.0", "filters": filters}})
    assert r.cycle()
    entries = [e for e in sim.request_log if e["path"] == "/api/2.0/fo/asset/host/vm/detection/"]
    assert entries
    for entry in entries:
        assert {k: entry["params"][k] for k in ("arf_kernel_filter", "arf_service_filter", "arf_config_filter")} == {
            "arf_kernel_filter": "1",
            "arf_service_filter": "0",
            "arf_config_filter": "4",
        }


def visible(_host: dict[str, Any], d: dict[str, Any]) -> bool:
    return "@shown_by" not in d


HONOURED: list[tuple[dict[str, Any], Predicate]] = [
    ({"severities": [4, 5]}, lambda h, d: visible(h, d) and d["SEVERITY"] in (4, 5)),
    ({"include_vuln_type": "potential"}, lambda h, d: visible(h, d) and d["TYPE"] == "Potential"),
    ({"qids": "10000-10040,10111"}, lambda h, d: visible(h, d) and (10000 <= d["QID"] <= 10040 or d["QID"] == 10111)),
    ({"qds_min": 40, "qds_max": 89}, lambda h, d: visible(h, d) and 40 <= d["QDS"] <= 89),
    ({"show_igs": 1}, lambda h, d: d.get("@shown_by") in (None, "show_igs")),
    ({"include_ignored": 1}, lambda h, d: d.get("@shown_by") in (None, "include_ignored")),
    ({"include_disabled": 1, "show_igs": 1}, lambda h, d: d.get("@shown_by") in (None, "include_disabled", "show_igs")),
    ({"ag_titles": ["Servers", "Cloud"]}, lambda h, d: visible(h, d) and h["ASSET_GROUP"][1] in ("Servers", "Cloud")),
    ({"os_pattern": "^(Ubuntu|Amazon)"}, lambda h, d: visible(h, d) and h["OS"].startswith(("Ubuntu", "Amazon"))),
    (
        {"use_tags": 1, "tag_set_by": "name", "tag_set_include": ["DMZ", "Staging"]},
        lambda h, d: visible(h, d) and h["TAGS"][0]["NAME"] in ("DMZ", "Staging"),
    ),
    ({"use_tags": 1, "tag_set_exclude": [700]}, lambda h, d: visible(h, d) and h["TAGS"][0]["TAG_ID"] != 700),
]


@pytest.mark.parametrize(("filters", "expected"), HONOURED, ids=[str(f) for f, _ in HONOURED])
def test_the_simulator_honours_each_filter_and_the_collector_delivers_its_truth(
    sim: Simulator, tmp_path: Path, filters: dict[str, Any], expected: Predicate
) -> None:
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "filters": {"status": ALL, **filters}}})
    assert r.cycle()
    truth = {key for key, (host, d) in sim.detection_truth(None, NOW).items() if expected(host, d)}
    everything = sim.detection_truth(None, NOW)
    assert truth, "the case selects something"
    assert truth != {k for k, (h, d) in everything.items() if visible(h, d)}, "the case changes the answer"
    delivered = detections(r)
    assert set(delivered) == truth


def test_qds_and_its_factors_are_delivered_as_the_simulator_holds_them(sim: Simulator, tmp_path: Path) -> None:
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "filters": {"status": ALL}}})
    assert r.cycle()
    truth = sim.detection_truth(None, NOW)
    delivered = detections(r)
    assert delivered
    severities = set()
    for key, event in delivered.items():
        _host, d = truth[key]
        assert event["DETECTION"]["QDS"] == {"@severity": qds_severity(d["QDS"]), "#text": str(d["QDS"])}
        factors = [{"@name": name, "#text": value} for name, value in QDS_FACTOR_SETS[d["QDS_FACTORS"]]]
        assert event["DETECTION"]["QDS_FACTORS"] == factors  # a list, in Qualys' order, even when short
        severities.add(event["DETECTION"]["QDS"]["@severity"])
    assert severities == {"LOW", "MEDIUM", "HIGH", "CRITICAL"}
    # turned off, Qualys sends neither (and the collector asks for neither)
    r2 = run(
        sim,
        tmp_path / "off",
        {
            "host_list_detection": {
                "start_time_utc": START,
                "filters": {"status": ALL, "show_qds": 0, "show_qds_factors": 0},
            }
        },
    )
    assert r2.cycle()
    off = detections(r2)
    assert set(off) == set(delivered)
    assert not [e for e in off.values() if "QDS" in e["DETECTION"] or "QDS_FACTORS" in e["DETECTION"]]


def test_detection_events_keep_the_hosts_cloud_metadata(sim: Simulator, tmp_path: Path) -> None:
    filters = {"status": ALL, "host_metadata": "all"}
    r = run(sim, tmp_path, {"host_list_detection": {"start_time_utc": START, "filters": filters}})
    assert r.cycle()
    truth = sim.detection_truth(None, NOW)
    clouds = 0
    for key, event in detections(r).items():
        host, _d = truth[key]
        ec2 = host["EC2"]
        if ec2 is None:
            assert "METADATA" not in event["HOST"]
            continue
        clouds += 1
        assert event["HOST"]["EC2_INSTANCE_ID"] == ec2["EC2_INSTANCE_ID"]
        assert (event["HOST"]["CLOUD_PROVIDER"], event["HOST"]["CLOUD_SERVICE"]) == ("AWS", "VM")
        attributes = {a["NAME"].rsplit("/", 1)[-1]: a["VALUE"] for a in event["HOST"]["METADATA"]["EC2"]}
        assert attributes == {
            "region": ec2["region"],
            "instanceId": ec2["EC2_INSTANCE_ID"],
            "accountId": ec2["accountId"],
        }
    assert clouds


def test_host_list_asks_for_trurisk_and_asset_criticality(sim: Simulator, tmp_path: Path) -> None:
    filters = {"show_trurisk": 1, "show_trurisk_factors": 1, "trurisk_min": 200, "trurisk_max": 900}
    r = run(sim, tmp_path, {"host_list": {"start_time_utc": START, "filters": filters, "extra_params": {}}})
    assert r.cycle()
    for params in calls(sim, "asset/host"):
        assert {k: params[k] for k in filters} == {k: str(v) for k, v in filters.items()}
    hosts = {e["event"]["ID"]: e["event"] for e in r.events() if e["tag"] == "vuln.qualys.hosts"}
    truth = {}
    for host, scan, processed in sim.data.hosts_processed(NOW, None, None):
        fields = sim.data.host_fields(host, scan, processed)
        if 200 <= fields["TRURISK_SCORE"] <= 900:
            truth[str(host.id)] = fields
    assert hosts
    assert set(hosts) == set(truth)
    for host_id, event in hosts.items():
        assert event["TRURISK_SCORE"] == str(truth[host_id]["TRURISK_SCORE"])
        assert event["ASSET_CRITICALITY_SCORE"] == str(truth[host_id]["ASSET_CRITICALITY_SCORE"])
        factors = event["TRURISK_SCORE_FACTORS"]
        assert factors["TRURISK_SCORE_FORMULA"].startswith("ACS * ")
        assert [c["@qds_severity"] for c in factors["VULN_COUNT"]] == ["CRITICAL", "HIGH", "MEDIUM", "LOW"]


def test_vm_scans_and_user_activity_pass_their_extra_params(sim: Simulator, tmp_path: Path) -> None:
    services = {
        "vm_scans": {"start_time_utc": START, "extra_params": {"type": "Scheduled"}},
        "user_activity": {"start_time_utc": START, "extra_params": {"user_action": "login", "username": "user1"}},
    }
    r = run(sim, tmp_path, services)
    assert r.cycle()
    assert calls(sim, "scan")
    assert all(p["type"] == "Scheduled" for p in calls(sim, "scan"))
    activity = calls(sim, "activity_log")
    assert activity
    assert all((p["user_action"], p["username"]) == ("login", "user1") for p in activity)


def test_a_wrong_filter_stops_the_command_before_any_request(sim: Simulator, tmp_path: Path) -> None:
    url = start_sim(sim)
    services = {"host_list_detection": {"filters": {"arf_kernel_filter": 1}, "extra_params": {}}}
    config = write_config(tmp_path / "config.yaml", raw_config(tmp_path / "state", qualys=vm_input(url, services)))
    result = CliRunner().invoke(main, ["run", "-c", str(config), "--once"])
    assert result.exit_code == 2
    assert "[ConfigError 13] inputs.qualys.services.host_list_detection.filters.arf_kernel_filter" in result.output
    assert "show_arf_data" in result.output  # the fix names what replaced it
    owned = {"host_list_detection": {"extra_params": {"truncation_limit": 0}}}
    config = write_config(tmp_path / "owned.yaml", raw_config(tmp_path / "state", qualys=vm_input(url, owned)))
    result = CliRunner().invoke(main, ["run", "-c", str(config), "--once"])
    assert result.exit_code == 2
    assert "[ConfigError 14] inputs.qualys.services.host_list_detection.extra_params.truncation_limit" in result.output
    assert sim.request_log == []
    assert not sim.requests


def test_an_extra_param_qualys_does_not_know_is_its_error_1901_named(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    services = {"host_list_detection": {"start_time_utc": START, "extra_params": {"show_everything": 1}}}
    r = run(sim, tmp_path, services)
    assert not r.cycle()
    assert "[PullError 300]" in caplog.text
    assert "1901" in caplog.text
    assert "show_everything" in caplog.text  # Qualys' TEXT names the parameter
    assert not detections(r)
