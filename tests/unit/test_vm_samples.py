"""Every real VM sample under shared/reference (read in place) through the real parsers."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from qualys_collector.errors import DataError
from qualys_collector.qualys import kb
from qualys_collector.qualys.budget import ApiBudget
from qualys_collector.qualys.paging import url_cursor
from qualys_collector.qualys.retry import Action, resolve_vm
from qualys_collector.qualys.xml import (
    LIST_CONTAINERS,
    ByteStream,
    element_to_value,
    iter_elements,
    parse_error_document,
    simple_return_items,
)
from qualys_collector.services import host_list, host_list_detection, user_activity, vm_scans

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "qualys_vm" / "samples"

#: Samples we do not consume, and why (a new sample fails the completeness test until it is placed).
UNCONSUMED = {
    "hld_csv_full_response__qualys_doc_center_sample3.csv": "we request HLD as XML",
    "hld_csv_suppress_duplicated_fragment__qualys_doc_center_sample6.csv": "we request HLD as XML",
    "hld_csv_truncated_footer_fragment__qualys_doc_center_sample4.csv": "we request HLD as XML",
    "scan_fetch_json_extended__secops_soar_qualysvm_doc.json": "vm_scans lists scans; it does not fetch results",
    "host_list_output_dtd__qualyspy_debug_2022-12.dtd": "DTDs are never loaded",
    "host_list_vm_detection_output_dtd_partial__qualyspy_debug_2022-12.dtd": "DTDs are never loaded",
    "http_exchanges_status_and_headers__jupiterone_recordings.json": "covered by test_recorded_exchanges",
    "http_headers_200_vm_pc_x_powered_by__qualys_docs_tracking_api_usage.txt": "informational headers only",
}


def parse_hosts(name: str, detection: bool) -> tuple[list[Any], int | None]:
    records: list[Any] = []
    next_id = None
    convert = host_list_detection.converter(None) if detection else host_list.to_records
    stream = ByteStream([(SAMPLES / name).read_bytes()])
    for tag, element in iter_elements(stream, {"HOST", "URL"}):
        if tag == "URL":
            next_id = url_cursor(element.text or "", "id_min")
        else:
            records.extend(convert(element_to_value(element)))
    return records, next_id


@pytest.mark.parametrize(
    ("name", "hosts", "detections", "next_id"),
    [
        ("hld_xml_qds_unique_vuln_id__elastic_stream_mock.xml", 1, 2, None),
        ("hld_xml_two_hosts_eval_account__xsoar_qualysv2_test_data.xml", 2, None, None),
        ("hld_xml_2014_info_gathered_with_truncation_warning__paulsena_sn_readme.xml", None, None, 3700609),
        ("hld_xml_default_statuses__qualys_doc_center_sample1.xml", None, None, None),
        ("hld_xml_unique_vuln_id_network__vm_pc_guide_v10_39_transcription.xml", None, None, None),
        ("hld_xml_empty__jupiterone_recording.xml", 0, 0, None),
    ],
)
def test_hld_samples(name: str, hosts: int | None, detections: int | None, next_id: int | None) -> None:
    records, found_next = parse_hosts(name, detection=True)
    assert found_next == next_id
    host_ids = {r.data["HOST"]["ID"] for r in records}
    if hosts is not None:
        assert len(host_ids) == hosts
    if detections is not None:
        assert len(records) == detections
    if hosts != 0:
        assert records, "every non-empty sample yields detection events"
    for record in records:
        assert record.key.startswith(f"{record.data['HOST']['ID']}:")
        assert record.data["@detection_key"] == record.key
        assert "DETECTION_LIST" not in record.data["HOST"]
        assert isinstance(record.data["DETECTION"]["QID"], str)
        for value in (record.data["HOST"].get("OS"), record.data["HOST"].get("DNS")):
            assert value is None or value == value.strip()  # CDATA on its own indented line is stripped
    assert len({r.key for r in records}) == len(records), "detection keys are unique"


def test_qds_factors_are_lists_with_attributes() -> None:
    records, _ = parse_hosts("hld_xml_qds_unique_vuln_id__elastic_stream_mock.xml", detection=True)
    detection = records[0].data["DETECTION"]
    assert detection["QDS"] == {"@severity": "LOW", "#text": "35"}
    assert detection["QDS_FACTORS"][0] == {"@name": "CVSS", "#text": "7.7"}
    assert records[0].key == "12048633:5555555555"
    assert detection["RESULTS"].startswith("Package Installed Version Required Version\nlinux-cloud-tools")


@pytest.mark.parametrize(
    ("name", "count", "next_id"),
    [
        ("host_list_xml_details_all_ec2_metadata__qualys_doc_center_sample1.xml", 1, None),
        ("host_list_xml_ec2_truncated_api4__vm_pc_guide_v10_39_transcription.xml", None, 145359),
        ("host_list_xml_empty__jupiterone_recording.xml", 0, None),
    ],
)
def test_host_list_samples(name: str, count: int | None, next_id: int | None) -> None:
    records, found_next = parse_hosts(name, detection=False)
    assert found_next == next_id
    if count is not None:
        assert len(records) == count
    for record in records:
        assert record.key == record.data["ID"]


def test_ec2_metadata_attributes_become_a_list() -> None:
    records, _ = parse_hosts("host_list_xml_details_all_ec2_metadata__qualys_doc_center_sample1.xml", detection=False)
    attributes = records[0].data["METADATA"]["EC2"]
    assert isinstance(attributes, list)
    assert attributes[0]["VALUE"] == "us-east-1"
    assert attributes[0]["LAST_ERROR"] == ""


def test_id_set_sample_lists_host_ids() -> None:
    stream = ByteStream([(SAMPLES / "host_list_xml_details_none_id_set__jupiterone_recording.xml").read_bytes()])
    ids = [element_to_value(e) for _t, e in iter_elements(stream, {"ID_SET"})]
    assert ids
    assert all(isinstance(i, str) and i for i in ids[0])


@pytest.mark.parametrize(
    "name",
    [
        "hld_xml_truncation_warning_fragment__qualys_doc_center_sample2.xml",
        "host_list_xml_details_all_ags_fragment__qualys_doc_center_sample2.xml",
        "host_list_xml_truncation_warning_fragment__qualys_doc_center_sample3.xml",
        "scan_list_xml_2025_show_op__qualys_docs_list_vm_scans.xml",
    ],
)
def test_fragments_and_broken_documents_give_a_clear_data_error(name: str) -> None:
    stream = ByteStream([(SAMPLES / name).read_bytes()])
    with pytest.raises(DataError, match="malformed or truncated XML from Qualys"):
        list(iter_elements(stream, {"HOST", "SCAN", "URL"}))


def test_scan_list_sample() -> None:
    stream = ByteStream([(SAMPLES / "scan_list_xml__vm_pc_guide_v10_39_transcription.xml").read_bytes()])
    scans = [element_to_value(e) for _t, e in iter_elements(stream, {"SCAN"})]
    assert len(scans) == 1
    assert scans[0]["REF"] == "scan/1735543972.16308"
    assert scans[0]["TITLE"] == "Azure Scan Internal Test"
    assert vm_scans.state_of(scans[0]) == "Finished/1"
    assert vm_scans.settled(scans[0])


@pytest.mark.parametrize(
    ("name", "code", "action", "items"),
    [
        ("error_generic_return_999_internal_error__qualys_qpymultithread_docstring.xml", 999, Action.RETRY, {}),
        ("error_simple_return_1905_bad_ids_http400__jupiterone_recording.xml", 1905, Action.FAIL, {}),
        ("error_simple_return_1905_since_datetime_format__elastic_issue_10184.xml", 1905, Action.FAIL, {}),
        (
            "error_simple_return_1960_concurrency_http409__jupiterone_test.xml",
            1960,
            Action.WAIT,
            {"CALLS_TO_FINISH": "2"},
        ),
        (
            "error_simple_return_1965_rate_limit_http409__jupiterone_test.xml",
            1965,
            Action.WAIT,
            {"SECONDS_TO_WAIT": "68928"},
        ),
        ("error_simple_return_2001_account_expired__jupiterone_recording.xml", 2001, Action.FAIL_AUTH, {}),
    ],
)
def test_error_samples_resolve_by_code(name: str, code: int, action: Action, items: dict[str, str]) -> None:
    body = (SAMPLES / name).read_bytes().strip()
    found, text = parse_error_document(body)
    assert found == code
    assert text
    status = {1960: 409, 1965: 409, 1905: 400, 999: 500, 2001: 200}[code]
    assert resolve_vm(status, found).action is action
    assert simple_return_items(body) == items


def activity(text: str) -> list[Any]:
    return list(user_activity.parse_activity_csv(io.StringIO(text, newline="")))


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("activity_log_csv_body_only__elastic_stream_mock.csv", 8),
        ("activity_log_csv_body_only__xsiam_event_collector_test_data.csv", None),
    ],
)
def test_activity_body_samples(name: str, rows: int | None) -> None:
    body = (SAMPLES / name).read_text()
    parsed = activity(f"{user_activity.BEGIN_BODY}\n{body.rstrip()}\n{user_activity.END_BODY}\n")
    if rows is not None:
        assert len(parsed) == rows
    assert parsed
    assert all(
        isinstance(r, dict) and set(r) == {"Date", "Action", "Module", "Details", "User Name", "User Role", "User IP"}
        for r in parsed
    )


def test_identical_activity_rows_exist_in_the_real_sample() -> None:
    body = (SAMPLES / "activity_log_csv_body_only__xsiam_event_collector_test_data.csv").read_text()
    parsed = activity(f"{user_activity.BEGIN_BODY}\n{body.rstrip()}\n{user_activity.END_BODY}\n")
    rows = [tuple(r.values()) for r in parsed if isinstance(r, dict)]
    assert len(rows) != len(set(rows)), "the sample has identical rows: keys must carry an occurrence number"


def test_activity_full_and_footer_samples() -> None:
    full = activity((SAMPLES / "activity_log_csv_full_response_untruncated__elastic_issue_10183.csv").read_text())
    assert full == [
        {
            "Date": "2024-06-18T12:45:24Z",
            "Action": "request",
            "Module": "auth",
            "Details": "API: /api/2.0/fo/activity_log/index.php",
            "User Name": "johndoe",
            "User Role": "Reader",
            "User IP": "175.16.199.1",
        }
    ]
    footer = (SAMPLES / "activity_log_csv_truncation_footer_fragment__xsiam_event_collector_test.csv").read_text()
    parsed = activity(f'{user_activity.BEGIN_BODY}\n"Date"\n{user_activity.END_BODY}\n{footer}')
    assert parsed == [123456]


def test_truncated_activity_body_is_a_data_error() -> None:
    with pytest.raises(DataError, match="truncated"):
        activity(f'{user_activity.BEGIN_BODY}\n"Date","Action"\n"2024-01-01T00:00:00Z","login"\n')


def test_header_samples_feed_the_budget() -> None:
    data = json.loads(
        (SAMPLES / "http_headers_200_and_409_rate_concurrency__vm_pc_guide_v10_39_transcription.json").read_text()
    )
    now = [1000.0]
    budget = ApiBudget(clock=lambda: now[0])
    budget.update("scan", data["sample1_ok_200"]["headers"])
    assert budget.limit("scan") == 3
    budget.update("scan", data["sample2_rate_limit_409"]["headers"])
    assert budget._not_before == 1181.0  # ToWait 181 s while Remaining is 0
    truncated = json.loads((SAMPLES / "activity_log_truncated_response_headers__elastic_issue_10183.json").read_text())
    budget.update("activity_log", dict(truncated["headers"]))
    assert budget.limit("activity_log") == 2


def test_recorded_exchanges() -> None:
    data = json.loads((SAMPLES / "http_exchanges_status_and_headers__jupiterone_recordings.json").read_text())
    text = json.dumps(data)
    assert "x-concurrency-limit-limit" in text.lower()


def test_every_sample_is_placed() -> None:
    consumed_here = Path(__file__).read_text()
    for path in sorted(SAMPLES.iterdir()):
        if path.name == "SOURCES.md":
            continue
        assert path.name in UNCONSUMED or path.name in consumed_here, f"{path.name} is neither parsed nor listed"


def kb_vulns(name: str) -> list[dict[str, Any]]:
    """The VULNs of a KnowledgeBase sample as the knowledge_base service parses them."""
    stream = ByteStream([(SAMPLES / name).read_bytes()])
    return [kb.normalise(element_to_value(element)) for _tag, element in iter_elements(stream, {"VULN"})]


def test_kb_2013_answer_every_list_is_a_list_and_cvss2_codes_have_no_vector() -> None:
    vulns = kb_vulns("kb_xml_2013_five_vulns_cdata_html_cvss2_codes__paragbaxi_kb_exploitability.xml")
    assert [v["QID"] for v in vulns] == ["12725", "12728", "87237", "105294", "121436"]
    by_qid = {v["QID"]: v for v in vulns}
    one = by_qid["87237"]  # lists of one stay lists
    assert one["VENDOR_REFERENCE_LIST"] == [
        {"ID": "V7.0", "URL": "http://www-01.ibm.com/support/docview.wss?uid=swg27014463"}
    ]
    assert one["DISCOVERY"]["AUTH_TYPE_LIST"] == ["Windows"]
    assert one["SOFTWARE_LIST"] == [{"PRODUCT": "None", "VENDOR": "ibm"}]
    assert one["CVSS"]["BASE"] == {"@source": "service", "#text": "9.3"}
    assert by_qid["12725"]["BUGTRAQ_LIST"][0]["ID"] == "35544"
    assert len(by_qid["12728"]["CVE_LIST"]) == 4
    assert by_qid["12728"]["VENDOR_REFERENCE_LIST"][1]["URL"].startswith("http://")  # CDATA's leading space cut
    assert "&quot;HTTP_REFERER&quot;" in by_qid["12725"]["DIAGNOSIS"]  # entities inside CDATA are text
    exploit = by_qid["121436"]["CORRELATION"]["EXPLOITS"]
    assert exploit[0]["SRC_NAME"] == "The Exploit-DB"
    assert exploit[0]["EXPLT_LIST"][0]["LINK"] == "http://www.exploit-db.com/exploits/25131"
    assert "CVE_LIST" not in by_qid["105294"]
    assert "CVSS" not in by_qid["105294"]

    briefs = {q: kb.brief(v) for q, v in by_qid.items()}
    assert briefs["87237"]["CVSS"] == {"version": "2", "base": "9.3", "vector": None}
    assert "CVSS" not in briefs["105294"]  # what the KB does not have is left out
    assert "CVE_IDS" not in briefs["105294"]
    assert briefs["105294"]["PATCHABLE"] is False
    assert briefs["12725"]["PATCHABLE"] is True
    assert briefs["12728"]["CVE_IDS"] == ["CVE-2012-0819", "CVE-2012-0820", "CVE-2012-0821", "CVE-2012-0822"]
    assert briefs["121436"]["EXPLOIT_AVAILABLE"] is True
    assert "EXPLOIT_AVAILABLE" not in briefs["12725"]
    assert briefs["12725"]["SOLUTION"].startswith('Users are advised to download <A HREF="http://www.joomla.org')
    assert briefs["12725"]["VENDOR_REFERENCES"] == ["20090604", "20090605", "20090606"]
    assert briefs["12725"]["LAST_SERVICE_MODIFICATION_DATETIME"] == "2013-09-03T21:57:34Z"


def test_kb_mock_cdata_on_own_lines_threat_intel_of_one() -> None:
    (vuln,) = kb_vulns("kb_xml_one_vuln_threat_intel_cdata_own_line__elastic_stream_mock.xml")
    assert vuln["TITLE"] == "HTTP Security Header Not Detected"
    assert vuln["THREAT_INTELLIGENCE"] == [{"@id": "8", "#text": "No_Patch"}]
    assert vuln["SOFTWARE_LIST"] == [{"PRODUCT": "None", "VENDOR": "multi-vendor"}]
    brief = kb.brief(vuln)
    assert brief["THREAT_INTEL"] == ["No_Patch"]
    assert brief["CVE_IDS"] == ["CVE-2022-31629", "CVE-2022-31628"]  # CVE_LIST before CATEGORY: order is free
    assert brief["CATEGORY"] == "CGI"
    assert "CVSS" not in brief
    assert brief["SOLUTION"] == "<B>Note:</B> To better debug the results of this QID"


def test_kb_empty_answer_has_no_vulns() -> None:
    assert kb_vulns("kb_xml_empty_no_vuln_list__elastic_stream_mock.xml") == []


def test_kb_every_repeated_element_of_the_dtd_is_a_list() -> None:
    dtd = (SAMPLES / "kb_vuln_list_output_dtd__qualyspy_debug_2023-07.dtd").read_text()
    repeated = re.findall(r"<!ELEMENT (\w+) \(\(?([\w|]+)\)?[+*]\)>", dtd)
    assert len(repeated) >= 12
    for container, child in repeated:
        assert kb.LISTS.get(container) == child or container in LIST_CONTAINERS, container


def test_kb_brief_is_bounded() -> None:
    vuln = {
        "QID": "1",
        "SOLUTION": "x" * 10_000,
        "CVE_LIST": [{"ID": f"CVE-2024-{n}"} for n in range(400)],
        "VENDOR_REFERENCE_LIST": [{"ID": str(n), "URL": "u"} for n in range(50)],
    }
    brief = kb.brief(vuln)
    assert len(brief["SOLUTION"]) == kb.SOLUTION_MAX
    assert brief["SOLUTION_TRUNCATED"] is True
    assert len(brief["CVE_IDS"]) == kb.CVE_MAX
    assert brief["CVE_COUNT"] == 400
    assert len(brief["VENDOR_REFERENCES"]) == kb.VENDOR_REF_MAX
    assert len(json.dumps(brief)) < 8 * 1024


def test_blank_lines_spaced_markers_and_an_empty_body_in_the_real_answer_shape() -> None:
    """The real full answer (Elastic issue 10183) with what a relay or another Qualys build may add: a blank line
    inside the body (refused as "0 fields, header has 7", the whole answer failed on every cycle: review), marker
    lines with trailing spaces or a CR (not recognised), and a body with no header line at all (its end marker was
    taken for the header: "truncated answer")."""
    real = (SAMPLES / "activity_log_csv_full_response_untruncated__elastic_issue_10183.csv").read_text()
    expected = activity(real)
    head, row, end = real.rstrip("\n").split("\n")[1:4]
    spaced = f"{user_activity.BEGIN_BODY}  \r\n \n{head}\n\n{row}\n   \n{end}\t\n"
    assert activity(spaced) == expected
    assert activity(f"{user_activity.BEGIN_BODY}\n{user_activity.END_BODY}\n") == []
    with pytest.raises(DataError, match="truncated answer"):  # a body cut before its end marker still fails
        activity(f"{user_activity.BEGIN_BODY}\n{head}\n{row}\n")
