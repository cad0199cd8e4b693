"""The real samples are the contract: FIM samples through the real parsers, and the simulator's answers
with the same element/field structure (names, nesting, types) as the samples (read in place)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from lxml import etree

from qualys_collector.qualys.fim import token_expiry
from qualys_collector.services import fim_events, fim_incidents
from qualys_collector.simulator import SimConfig, Simulator

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"
FIM = REFERENCE / "qualys_fim" / "samples"
VM = REFERENCE / "qualys_vm" / "samples"
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def fim_sample(name: str) -> Any:
    return json.loads((FIM / name).read_text())


def test_fim_event_samples_through_the_parser() -> None:
    hits = fim_sample("events_search_v2_response__xsoar_list_events.json")
    records = [fim_events.to_record(hit["data"]) for hit in hits]
    assert [r.key for r in records] == [hit["data"]["id"] for hit in hits]
    assert [r.cursor for r in records] == [
        datetime(2021, 2, 15, 9, 5, 53, 800000, tzinfo=UTC),
        datetime(2021, 2, 15, 9, 5, 53, 880000, tzinfo=UTC),
    ]
    detail = fim_events.to_record(fim_sample("event_detail_v2_response__xsoar_get_event.json"))
    assert detail.cursor == datetime(2021, 1, 20, 0, 13, 27, 782000, tzinfo=UTC)


def test_fim_incident_samples_through_the_parser() -> None:
    hits = fim_sample("incidents_search_v3_response__xsoar_list_incidents.json")
    for hit in hits:
        when = fim_incidents.field_ms(hit["data"], "lastUpdatedBy.date")
        assert when is not None
        assert hit["sortValues"] == [when]
    approve = fim_sample("incident_approve_v3_response__xsoar_approve_incident.json")
    assert fim_incidents.field_ms(approve, "lastUpdatedBy.date") is None  # the approve answer is flat: no hit
    created = fim_sample("incident_create_v3_response__xsoar_create_incident.json")
    assert "id" in created


def test_jwt_sample_expiry_is_read_from_exp() -> None:
    claims = fim_sample("jwt_payload_decoded__qualys_community_postman_v2.json")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert token_expiry(f"eyJhbGciOiJIUzUxMiJ9.{body}.sig") == claims["exp"]
    assert claims["exp"] - claims["iat"] == 14400


def test_postman_collection_has_the_incident_events_search_we_call() -> None:
    text = (FIM / "postman_fim_folder__qualys_community_collection_v3.json").read_text()
    assert "/v2/incidents/:incidentId/events/search" in text
    source = Path(fim_incidents.__file__).read_text()
    assert 'f"/fim/v2/incidents/{incident_id}/events/search"' in source


# ------------------------------------------------------------------------------ structure comparison


def shape(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path, JSON type) pairs; the XSOAR fixtures' "None"/"False" strings count as null/boolean."""
    if isinstance(value, dict):
        yield prefix or "$", "object"
        for key, item in value.items():
            yield from shape(item, f"{prefix}.{key}")
    elif isinstance(value, list):
        yield prefix, "array"
        for item in value:
            yield from shape(item, f"{prefix}[]")
    elif value is None or value == "None":
        yield prefix, "null"
    elif isinstance(value, bool) or value in ("False", "True"):
        yield prefix, "boolean"
    elif isinstance(value, int | float):
        yield prefix, "number"
    else:
        yield prefix, "string"


def types(value: Any) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path, kind in shape(value):
        out.setdefault(path, set()).add(kind)
    return out


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[Simulator, str, str]]:
    simulator = Simulator(
        SimConfig(
            seed=5, hosts=30, fim_events=80, fim_incidents=6, base=NOW - timedelta(days=2), span=timedelta(days=2)
        )
    )
    simulator.frozen = NOW
    url = simulator.start()
    token = httpx.post(f"{url}/auth", data={"username": "demo", "password": "demo", "token": "true"}).text
    yield simulator, url, token
    simulator.stop()


def post(url: str, token: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()


def compatible(sample: dict[str, set[str]], ours: dict[str, set[str]]) -> list[str]:
    problems = []
    for path in sorted(set(sample) | set(ours)):
        if path not in ours:
            problems.append(f"missing in simulator: {path}")
        elif path not in sample:
            problems.append(f"not in the sample: {path}")
        elif not (sample[path] & ours[path]) and "null" not in sample[path] | ours[path]:
            problems.append(f"type differs at {path}: sample {sample[path]}, simulator {ours[path]}")
    return problems


def test_simulated_event_search_has_the_sample_structure(sim: tuple[Simulator, str, str]) -> None:
    _sim, url, token = sim
    ours = post(url, token, "/fim/v2/events/search", {"pageSize": 40, "sort": '[{"dateTime":"asc"}]'})
    sample = fim_sample("events_search_v2_response__xsoar_list_events.json")
    assert compatible(types(sample), types(ours)) == []


def test_simulated_incident_search_has_the_sample_structure(sim: tuple[Simulator, str, str]) -> None:
    _sim, url, token = sim
    ours = post(url, token, "/fim/v3/incidents/search", {"pageSize": 5, "sort": '[{"lastUpdatedBy.date":"asc"}]'})
    sample = fim_sample("incidents_search_v3_response__xsoar_list_incidents.json")
    extra = {"[].data.slaDurationKey", "[].data.slaViolationDate"}  # in the Qualys doc sample (DOC-INC3), not XSOAR's
    problems = [p for p in compatible(types(sample), types(ours)) if p.split(": ", 1)[1] not in extra]
    assert problems == []


def element_paths(xml: bytes) -> set[str]:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, recover=True)
    root = etree.fromstring(xml, parser=parser)
    paths = set()
    for element in root.iter():
        if isinstance(element.tag, str):
            paths.add("/".join(a.tag for a in reversed(list(element.iterancestors()))) + "/" + element.tag)
            paths.update(f"{paths_attr}" for paths_attr in (f"@{k}" for k in element.attrib))
    return {p.lstrip("/") for p in paths}


def vm_get(url: str, path: str, params: dict[str, str]) -> bytes:
    response = httpx.post(
        f"{url}{path}", data={"action": "list", **params}, auth=("demo", "demo"), headers={"X-Requested-With": "test"}
    )
    assert response.status_code == 200, response.text
    return response.content


@pytest.mark.parametrize(
    ("path", "params", "samples", "allowed_extra"),
    [
        (
            "/api/5.0/fo/asset/host/vm/detection/",
            {
                "show_tags": "1",
                "show_asset_id": "1",
                "show_reopened_info": "1",
                "truncation_limit": "5",
                "status": "New,Active,Fixed,Re-Opened",
                "show_qds": "1",
                "show_qds_factors": "1",
                "host_metadata": "all",
            },
            [
                "hld_xml_qds_unique_vuln_id__elastic_stream_mock.xml",
                "hld_xml_two_hosts_eval_account__xsoar_qualysv2_test_data.xml",
                "hld_xml_2014_info_gathered_with_truncation_warning__paulsena_sn_readme.xml",
                "hld_xml_default_statuses__qualys_doc_center_sample1.xml",
                "hld_xml_unique_vuln_id_network__vm_pc_guide_v10_39_transcription.xml",
            ],
            # in the DTD / API.md §10 but in none of the saved HLD samples
            {
                "HOST/ASSET_ID",
                "HOST/TAGS",
                "HOST/TAGS/TAG",
                "HOST/TAGS/TAG/TAG_ID",
                "HOST/TAGS/TAG/NAME",
                "DETECTION/TIMES_REOPENED",
                "HOST/QG_HOSTID",
                # host_metadata: the DTD gives HLD the host list's METADATA (its EC2 sample's shape) and cloud fields
                "HOST/METADATA",
                "METADATA/EC2",
                "EC2/ATTRIBUTE",
                "ATTRIBUTE/NAME",
                "ATTRIBUTE/LAST_STATUS",
                "ATTRIBUTE/VALUE",
                "ATTRIBUTE/LAST_SUCCESS_DATE",
                "ATTRIBUTE/LAST_ERROR_DATE",
                "ATTRIBUTE/LAST_ERROR",
                "HOST/CLOUD_PROVIDER",
                "HOST/CLOUD_SERVICE",
                "HOST/CLOUD_RESOURCE_ID",
                "HOST/EC2_INSTANCE_ID",
            },
        ),
        (
            "/api/5.0/fo/asset/host/",
            {
                "details": "All",
                "show_asset_id": "1",
                "show_cloud_tags": "1",
                "show_tags": "1",
                "truncation_limit": "5",
                "host_metadata": "all",
                "show_trurisk": "1",
                "show_trurisk_factors": "1",
            },
            [
                "host_list_xml_details_all_ec2_metadata__qualys_doc_center_sample1.xml",
                "host_list_xml_ec2_truncated_api4__vm_pc_guide_v10_39_transcription.xml",
            ],
            {
                "HOST/ASSET_ID",
                "HOST/TAGS",
                "HOST/TAGS/TAG",
                "HOST/TAGS/TAG/TAG_ID",
                "HOST/TAGS/TAG/NAME",
                "HOST/CLOUD_PROVIDER_TAGS",
                "HOST/CLOUD_PROVIDER_TAGS/CLOUD_TAG",
                "CLOUD_TAG/NAME",
                "CLOUD_TAG/VALUE",
                "CLOUD_TAG/LAST_SUCCESS_DATE",
                "HOST/DNS_DATA",
                "DNS_DATA/HOSTNAME",
                "DNS_DATA/DOMAIN",
                "DNS_DATA/FQDN",
                "HOST/NETWORK_ID",
                "HOST/QG_HOSTID",
                "HOST/NETBIOS",
                # show_trurisk / show_trurisk_factors (API.md §9, from the 2026 model; no sample shows them)
                "HOST/TRURISK_SCORE",
                "HOST/ASSET_CRITICALITY_SCORE",
                "HOST/TRURISK_SCORE_FACTORS",
                "TRURISK_SCORE_FACTORS/TRURISK_SCORE_FORMULA",
                "TRURISK_SCORE_FACTORS/VULN_COUNT",
                "@qds_severity",
                "HOST/CLOUD_PROVIDER",
                "HOST/CLOUD_SERVICE",
                "HOST/CLOUD_RESOURCE_ID",
            },
        ),
        (
            "/api/3.0/fo/scan/",
            {"show_op": "1"},
            ["scan_list_xml__vm_pc_guide_v10_39_transcription.xml"],
            {"SCAN/OPTION_PROFILE", "OPTION_PROFILE/TITLE", "OPTION_PROFILE/DEFAULT_FLAG"},
        ),
    ],
)
def test_simulated_vm_answers_use_only_sample_elements(
    sim: tuple[Simulator, str, str], path: str, params: dict[str, str], samples: list[str], allowed_extra: set[str]
) -> None:
    _sim, url, _token = sim
    ours = element_paths(vm_get(url, path, params))
    known: set[str] = set()
    for name in samples:
        known |= element_paths((VM / name).read_bytes())
    unknown = {p for p in ours - known if not any(p.endswith(extra) for extra in allowed_extra)}
    assert unknown == set()
    core = {p for p in known if p.count("/") <= 4} & ours
    assert core, "the simulator shares the samples' skeleton"


def test_simulated_activity_log_has_the_sample_layout(sim: tuple[Simulator, str, str]) -> None:
    _sim, url, _token = sim
    text = vm_get(url, "/api/2.0/fo/activity_log/", {"truncation_limit": "5"}).decode()
    lines = text.splitlines()
    full = (VM / "activity_log_csv_full_response_untruncated__elastic_issue_10183.csv").read_text().splitlines()
    footer = (VM / "activity_log_csv_truncation_footer_fragment__xsiam_event_collector_test.csv").read_text()
    assert lines[:2] == full[:2]  # body marker and the exact header line
    assert "----END_RESPONSE_BODY_CSV" in lines
    ours_footer = lines[lines.index("----BEGIN_RESPONSE_FOOTER_CSV") :]
    theirs_footer = footer.splitlines()
    assert ours_footer[:3] == theirs_footer[:3]  # marker, WARNING, "CODE","TEXT","URL"
    assert ours_footer[3].startswith('"1980","5 record limit exceeded. Use URL to get next batch of results.","')
    assert ours_footer[-1] == theirs_footer[-1] == "----END_RESPONSE_FOOTER_CSV"
