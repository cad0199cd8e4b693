"""Typed Qualys parameters and ``extra_params``: each value checked (type, allowed values, the API version
that offers it) into the exact wire form, and every wrong one a numbered ConfigError at its key path."""

from __future__ import annotations

from typing import Any

import pytest

from qualys_collector.config import build_config
from qualys_collector.errors import ConfigError
from qualys_collector.services.options import ServiceOptions

HLD = "inputs.qualys.services.host_list_detection"


def options(service: str, block: dict[str, Any]) -> Any:
    raw = {
        "inputs": {
            "qualys": {
                "id": "7",
                "credentials": {"hostname": "qualysapi.qualys.eu", "username": "u", "password": "Secret-1"},
                "services": {service: block},
            }
        }
    }
    config = build_config(raw, warnings=[])
    assert config.inputs.qualys is not None
    found: ServiceOptions = config.inputs.qualys.services[service]
    return found


def refused(service: str, block: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        options(service, block)
    assert "Secret-1" not in str(info.value)
    return info.value


def test_the_seed_filters_reach_the_wire_unchanged_plus_the_scores() -> None:
    hld = options("host_list_detection", {"filters": {"details": "All", "show_tags": "1", "status": ["New", "Fixed"]}})
    wire = hld.filters.wire()
    assert wire == {
        "status": "New,Fixed",
        "show_asset_id": "1",
        "show_tags": "1",
        "show_reopened_info": "0",
        "show_qds": "1",  # risk scores by default (issue 17, item 4)
        "show_qds_factors": "1",
    }
    assert "details" not in wire  # the seed's example puts it here; host list detection has no such parameter
    host_list = options("host_list", {"filters": {"details": "All", "show_asset_id": "1", "show_cloud_tags": "0"}})
    assert host_list.filters.wire() == {
        "details": "All",
        "show_asset_id": "1",
        "show_tags": "0",
        "show_cloud_tags": "0",
    }


WIRE = [
    # (the option as a user writes it, what Qualys receives)
    ({"severities": [4, 5]}, {"severities": "4,5"}),
    ({"severities": "3-5"}, {"severities": "3,4,5"}),
    ({"severities": 5}, {"severities": "5"}),
    ({"qids": [38739, "19000-19010"]}, {"qids": "38739,19000-19010"}),
    ({"qids": "38739, 45038"}, {"qids": "38739,45038"}),
    ({"include_vuln_type": "Confirmed"}, {"include_vuln_type": "confirmed"}),
    (
        {"show_igs": True, "include_ignored": "1", "include_disabled": 0},
        {"show_igs": "1", "include_ignored": "1", "include_disabled": "0"},
    ),
    ({"show_results": 0}, {"show_results": "0"}),
    ({"filter_superseded_qids": 1}, {"filter_superseded_qids": "1"}),
    ({"qds_min": 40, "qds_max": 90}, {"qds_min": "40", "qds_max": "90"}),
    (
        {"show_arf_data": 1, "arf_filter_keys": "non-running-kernel,non-running-service"},
        {"show_arf_data": "1", "arf_filter_keys": "non-running-kernel,non-running-service"},
    ),
    ({"ag_ids": "12,15-17"}, {"ag_ids": "12,15-17"}),
    ({"ag_titles": ["Servers", "DMZ hosts"]}, {"ag_titles": "Servers,DMZ hosts"}),
    ({"os_pattern": "^(Windows|Ubuntu)"}, {"os_pattern": "^(Windows|Ubuntu)"}),
    ({"network_ids": [0, 3]}, {"network_ids": "0,3"}),
    (
        {
            "use_tags": 1,
            "tag_set_by": "name",
            "tag_include_selector": "ALL",
            "tag_set_include": "DMZ,Production",
            "tag_exclude_selector": "any",
            "tag_set_exclude": ["Staging"],
        },
        {
            "use_tags": "1",
            "tag_set_by": "name",
            "tag_include_selector": "all",
            "tag_set_include": "DMZ,Production",
            "tag_exclude_selector": "any",
            "tag_set_exclude": "Staging",
        },
    ),
    ({"use_tags": 1, "tag_set_include": [700, 702]}, {"use_tags": "1", "tag_set_include": "700,702"}),
    (
        {"host_metadata": "EC2", "host_metadata_fields": ["region", "accountId"]},
        {"host_metadata": "ec2", "host_metadata_fields": "region,accountId"},
    ),
    ({"show_cloud_tags": 1, "cloud_tag_fields": "env:prod"}, {"show_cloud_tags": "1", "cloud_tag_fields": "env:prod"}),
]


@pytest.mark.parametrize(("given", "sent"), WIRE)
def test_each_typed_detection_option_is_sent_as_qualys_spells_it(given: dict[str, Any], sent: dict[str, str]) -> None:
    hld = options("host_list_detection", {"filters": given})
    wire = hld.filters.wire()
    assert {k: wire[k] for k in sent} == sent
    untouched = set(wire) - set(sent)
    assert untouched <= {"status", "show_asset_id", "show_tags", "show_reopened_info", "show_qds", "show_qds_factors"}


def test_arf_filters_of_api_2_0() -> None:
    hld = options(
        "host_list_detection",
        {"api_version": "2.0", "filters": {"arf_kernel_filter": 1, "arf_service_filter": 4, "arf_config_filter": 0}},
    )
    assert {k: hld.filters.wire()[k] for k in ("arf_kernel_filter", "arf_service_filter", "arf_config_filter")} == {
        "arf_kernel_filter": "1",
        "arf_service_filter": "4",
        "arf_config_filter": "0",
    }


def test_host_list_trurisk_and_criticality_options() -> None:
    hl = options(
        "host_list",
        {"filters": {"show_trurisk": 1, "show_trurisk_factors": "1", "trurisk_min": 500, "trurisk_max": 1000}},
    )
    wire = hl.filters.wire()
    assert {k: wire[k] for k in ("show_trurisk", "show_trurisk_factors", "trurisk_min", "trurisk_max")} == {
        "show_trurisk": "1",
        "show_trurisk_factors": "1",
        "trurisk_min": "500",
        "trurisk_max": "1000",
    }


def test_extra_params_pass_through_as_strings() -> None:
    hld = options(
        "host_list_detection",
        {
            "extra_params": {
                "max_days_since_last_vm_scan": 30,
                "compliance_enabled": True,
                "ips": ["10.0.0.1", "10.0.0.5"],
            }
        },
    )
    assert hld.extra_params == {
        "max_days_since_last_vm_scan": "30",
        "compliance_enabled": "1",
        "ips": "10.0.0.1,10.0.0.5",
    }
    scans = options("vm_scans", {"extra_params": {"state": "Finished", "type": "Scheduled"}})
    assert scans.extra_params == {"state": "Finished", "type": "Scheduled"}
    activity = options("user_activity", {"extra_params": {"user_action": "login"}})
    assert activity.extra_params == {"user_action": "login"}


BAD = [
    # (service, block, key path below the service, error number, a word of the fix)
    ("host_list_detection", {"filters": {"severities": [6]}}, "filters.severities", 10, None),
    ("host_list_detection", {"filters": {"severities": "5-3"}}, "filters.severities", 10, None),
    ("host_list_detection", {"filters": {"qids": ["abc"]}}, "filters.qids", 10, None),
    ("host_list_detection", {"filters": {"include_vuln_type": "maybe"}}, "filters.include_vuln_type", 10, None),
    ("host_list_detection", {"filters": {"show_igs": "yes"}}, "filters.show_igs", 10, None),
    ("host_list_detection", {"filters": {"qds_min": 0}}, "filters.qds_min", 10, None),
    (
        "host_list_detection",
        {"filters": {"arf_filter_keys": ["running-kernel"]}},
        "filters.arf_filter_keys.0",
        10,
        None,
    ),
    ("host_list_detection", {"filters": {"tag_set_by": "tag", "use_tags": 1}}, "filters.tag_set_by", 10, None),
    ("host_list_detection", {"filters": {"host_metadata": "aws"}}, "filters.host_metadata", 10, None),
    ("host_list_detection", {"filters": {"os_pattern": "a\nb"}}, "filters.os_pattern", 10, None),
    (
        "host_list_detection",
        {"filters": {"use_tags": 1, "tag_set_include": ["DMZ"]}},
        "filters.tag_set_include",
        10,
        "tag_set_by",
    ),
    # the API version that offers it (13)
    ("host_list_detection", {"filters": {"arf_kernel_filter": 1}}, "filters.arf_kernel_filter", 13, "api_version 2.0"),
    (
        "host_list_detection",
        {"api_version": "3.0", "filters": {"arf_config_filter": 2}},
        "filters.arf_config_filter",
        13,
        None,
    ),
    (
        "host_list_detection",
        {"api_version": "2.0", "filters": {"show_arf_data": 1}},
        "filters.show_arf_data",
        13,
        "3.0",
    ),
    (
        "host_list_detection",
        {"api_version": "2.0", "filters": {"arf_filter_keys": "non-running-kernel"}},
        "filters.arf_filter_keys",
        13,
        None,
    ),
    ("host_list_detection", {"api_version": "6.0"}, "api_version", 13, "5.0"),
    ("host_list", {"api_version": "1.0"}, "api_version", 10, None),
    ("vm_scans", {"api_version": "5.0"}, "api_version", 13, "3.0"),
    ("user_activity", {"api_version": "3.0"}, "api_version", 13, "2.0"),
    # what the collector sends itself (14)
    ("host_list_detection", {"extra_params": {"action": "purge"}}, "extra_params.action", 14, "remove it"),
    ("host_list_detection", {"extra_params": {"ids": "1-9"}}, "extra_params.ids", 14, None),
    ("host_list_detection", {"extra_params": {"id_min": 5}}, "extra_params.id_min", 14, None),
    ("host_list_detection", {"extra_params": {"truncation_limit": 0}}, "extra_params.truncation_limit", 14, None),
    (
        "host_list_detection",
        {"extra_params": {"vm_processed_after": "2024-01-01"}},
        "extra_params.vm_processed_after",
        14,
        None,
    ),
    (
        "host_list_detection",
        {"extra_params": {"detection_updated_since": "2024-01-01"}},
        "extra_params.detection_updated_since",
        14,
        None,
    ),
    ("host_list_detection", {"extra_params": {"output_format": "CSV"}}, "extra_params.output_format", 14, None),
    ("host_list_detection", {"extra_params": {"echo_request": 1}}, "extra_params.echo_request", 14, None),
    ("host_list_detection", {"extra_params": {"severities": "4"}}, "extra_params.severities", 14, "filters.severities"),
    ("host_list_detection", {"extra_params": {"status": "New"}}, "extra_params.status", 14, "filters.status"),
    (
        "host_list",
        {"extra_params": {"vm_processed_before": "2024-01-01"}},
        "extra_params.vm_processed_before",
        14,
        None,
    ),
    ("host_list", {"extra_params": {"show_trurisk": 1}}, "extra_params.show_trurisk", 14, "filters.show_trurisk"),
    (
        "vm_scans",
        {"extra_params": {"launched_after_datetime": "2024-01-01"}},
        "extra_params.launched_after_datetime",
        14,
        None,
    ),
    ("vm_scans", {"extra_params": {"show_status": 0}}, "extra_params.show_status", 14, None),
    ("user_activity", {"extra_params": {"since_datetime": "2024-01-01"}}, "extra_params.since_datetime", 14, None),
    ("user_activity", {"extra_params": {"id_max": 9}}, "extra_params.id_max", 14, None),
    ("host_list_detection", {"extra_params": {"Show QDS": 1}}, "extra_params.Show QDS", 10, None),
    ("host_list_detection", {"extra_params": {"ips": {"a": 1}}}, "extra_params.ips", 10, None),
    ("host_list_detection", {"extra_params": "show_qds=1"}, "extra_params", 10, None),
    # combinations Qualys refuses (15)
    ("host_list_detection", {"filters": {"ag_ids": [1], "ag_titles": ["x"]}}, "filters.ag_titles", 15, "one of them"),
    ("host_list_detection", {"filters": {"tag_set_include": [700]}}, "filters.tag_set_include", 15, "use_tags: 1"),
    ("host_list_detection", {"filters": {"show_qds": 0, "qds_min": 50}}, "filters.qds_min", 15, "show_qds: 1"),
    ("host_list_detection", {"filters": {"show_qds": 0}}, "filters.show_qds_factors", 15, None),
    ("host_list_detection", {"filters": {"qds_min": 90, "qds_max": 40}}, "filters.qds_min", 15, "swap"),
    ("host_list_detection", {"filters": {"host_metadata_fields": "region"}}, "filters.host_metadata_fields", 15, None),
    ("host_list", {"filters": {"trurisk_min": 700}}, "filters.trurisk_min", 15, "show_trurisk: 1"),
    ("host_list", {"filters": {"show_trurisk_factors": 1}}, "filters.show_trurisk_factors", 15, None),
    (
        "host_list",
        {"filters": {"show_trurisk": 1, "trurisk_min": 900, "trurisk_max": 100}},
        "filters.trurisk_min",
        15,
        None,
    ),
]


@pytest.mark.parametrize(("service", "block", "key", "code", "fix"), BAD)
def test_a_wrong_parameter_is_a_numbered_config_error_at_its_key(
    service: str, block: dict[str, Any], key: str, code: int, fix: str | None
) -> None:
    error = refused(service, block)
    assert error.path == f"inputs.qualys.services.{service}.{key}", str(error)
    assert error.code == code, str(error)
    assert str(error).startswith(f"[ConfigError {code}] inputs.qualys.services.{service}.{key}: ")
    assert error.fix
    if fix is not None:
        assert fix in error.fix or fix in str(error), str(error)


def test_show_qds_can_be_turned_off_with_its_factors() -> None:
    hld = options("host_list_detection", {"filters": {"show_qds": 0, "show_qds_factors": 0}})
    wire = hld.filters.wire()
    assert (wire["show_qds"], wire["show_qds_factors"]) == ("0", "0")
