"""The Qualys VM "fo" API: scan list, host list, host list detection, activity log.

XML is rendered as Qualys does (CDATA around free text, ``WARNING`` 1980 with a next-page URL, empty
results as ``RESPONSE/DATETIME`` only) and streamed host by host, so any size costs constant memory.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any
from urllib.parse import urlencode

from qualys_collector.simulator.data import QDS_FACTOR_SETS, STATUS_CYCLE, Dataset, iso, qds_severity

DEFAULT_STATUSES = ("New", "Active", "Re-Opened")
#: Host selection and cloud fields, on the host list and host list detection alike.
HOST_SCOPE_PARAMS = {
    "ag_ids",
    "ag_titles",
    "os_pattern",
    "network_ids",
    "use_tags",
    "tag_set_by",
    "tag_include_selector",
    "tag_exclude_selector",
    "tag_set_include",
    "tag_set_exclude",
    "host_metadata",
    "host_metadata_fields",
    "cloud_tag_fields",
}
HOST_LIST_PARAMS = {
    "action",
    "details",
    "show_asset_id",
    "show_tags",
    "show_cloud_tags",
    "vm_processed_after",
    "vm_processed_before",
    "id_min",
    "id_max",
    "ids",
    "truncation_limit",
    "echo_request",
    "show_trurisk",
    "show_trurisk_factors",
    "trurisk_min",
    "trurisk_max",
} | HOST_SCOPE_PARAMS
#: ``arf_*_filter`` exist in API 2.0 only; later versions take ``show_arf_data`` and ``arf_filter_keys``.
ARF_V2 = {"arf_kernel_filter", "arf_service_filter", "arf_config_filter"}
ARF_V3 = {"show_arf_data", "arf_filter_keys"}
#: Real host list detection parameters (API.md §10) the simulator accepts without modelling their effect.
HLD_UNMODELLED = {
    "ips",
    "ipv6",
    "network_name",
    "compliance_enabled",
    "vm_scan_since",
    "no_vm_scan_since",
    "max_days_since_last_vm_scan",
    "vm_scan_date_after",
    "vm_scan_date_before",
    "vm_auth_scan_date_after",
    "vm_auth_scan_date_before",
    "detection_processed_after",
    "detection_processed_before",
    "detection_last_tested_since",
    "detection_last_tested_before",
    "detection_last_tested_since_days",
    "detection_last_tested_before_days",
    "max_days_since_detection_updated",
    "include_search_list_titles",
    "exclude_search_list_titles",
    "include_search_list_ids",
    "exclude_search_list_ids",
}
HLD_PARAMS = HOST_LIST_PARAMS - {"details", "show_trurisk", "show_trurisk_factors", "trurisk_min", "trurisk_max"} | {
    *HLD_UNMODELLED,
    "status",
    "show_reopened_info",
    "detection_updated_since",
    "show_results",
    "show_igs",
    "output_format",
    "show_qds",
    "show_qds_factors",
    "qds_min",
    "qds_max",
    "severities",
    "qids",
    "include_vuln_type",
    "include_ignored",
    "include_disabled",
    "filter_superseded_qids",
    *ARF_V2,
    *ARF_V3,
}
SCAN_PARAMS = {
    "action",
    "launched_after_datetime",
    "launched_before_datetime",
    "state",
    "show_ags",
    "show_op",
    "show_status",
    "show_last",
    "processed",
    "type",
    "echo_request",
    "scan_ref",
    "target",
    "user_login",
}
ACTIVITY_PARAMS = {
    "action",
    "since_datetime",
    "until_datetime",
    "truncation_limit",
    "id_max",
    "output_format",
    "user_action",
    "username",
    "user_role",
    "action_details",
}


class ApiError(Exception):
    """A Qualys SIMPLE_RETURN error."""

    def __init__(self, status: int, code: int, text: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text


def simple_return(code: int, text: str, now: datetime, items: Mapping[str, Any] | None = None) -> str:
    """Qualys' SIMPLE_RETURN error document."""
    item_list = ""
    if items:
        item_list = (
            "<ITEM_LIST>"
            + "".join(f"<ITEM><KEY>{k}</KEY><VALUE>{v}</VALUE></ITEM>" for k, v in items.items())
            + "</ITEM_LIST>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n'
        '<!DOCTYPE SIMPLE_RETURN SYSTEM "https://qualysapi.qualys.com/api/2.0/simple_return.dtd">\n'
        f"<SIMPLE_RETURN>\n  <RESPONSE>\n    <DATETIME>{iso(now)}</DATETIME>\n    <CODE>{code}</CODE>\n"
        f"    <TEXT>{esc(text)}</TEXT>\n    {item_list}\n  </RESPONSE>\n</SIMPLE_RETURN>\n"
    )


def generic_return_999(now: datetime) -> str:
    """The 999 internal error (GENERIC_RETURN)."""
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n'
        '<!DOCTYPE GENERIC_RETURN SYSTEM "https://qualysapi.qualys.com/generic_return.dtd">\n'
        f'<GENERIC_RETURN>\n  <API name="index.php" username="demo" at="{iso(now)}">\n'
        '    <RETURN status="FAILED" number="999">Internal error. Please contact customer support.</RETURN>\n'
        "  </API>\n<!-- Incident signature: 0123456789abcdef0123456789abcdef //-->\n</GENERIC_RETURN>\n"
    )


def esc(text: str) -> str:
    """XML text escape."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cdata(text: str) -> str:
    """CDATA section (``]]>`` split across two sections, as XML requires)."""
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def parse_date(name: str, value: str, *, strict_iso: bool = False) -> datetime:
    """``YYYY-MM-DD[THH:MM:SSZ]``; anything else is Qualys error 1905."""
    for fmt in ("%Y-%m-%dT%H:%M:%SZ",) if strict_iso else ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ApiError(400, 1905, f"parameter {name} has invalid value: {value} (unsupported date format)")


def check_params(params: Mapping[str, str], allowed: set[str]) -> None:
    """1901 for parameters the endpoint does not know; 1903 without ``action``."""
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ApiError(400, 1901, f"Unrecognized parameter(s): {', '.join(unknown)}")
    if params.get("action") != "list":
        raise ApiError(400, 1903, "Missing required parameter(s): action")


def flag(params: Mapping[str, str], name: str, default: int = 0) -> int:
    """A 0/1 parameter (1905 otherwise)."""
    value = params.get(name, str(default))
    if value not in ("0", "1"):
        raise ApiError(400, 1905, f"parameter {name} has invalid value: {value}")
    return int(value)


def int_param(params: Mapping[str, str], name: str, default: int, low: int = 0, high: int = 1_000_000) -> int:
    """A bounded integer parameter."""
    value = params.get(name, str(default))
    if not value.isdigit() or not low <= int(value) <= high:
        raise ApiError(400, 1905, f"parameter {name} has invalid value: {value}")
    return int(value)


def id_filter(params: Mapping[str, str]) -> tuple[int, int | None, list[tuple[int, int]] | None]:
    """``id_min``, ``id_max`` and ``ids`` (comma list of IDs and ranges)."""
    id_min = int_param(params, "id_min", 0, 0, 10**12)
    id_max = int_param(params, "id_max", 0, 0, 10**12) if "id_max" in params else None
    ranges = None
    if "ids" in params:
        ranges = []
        for part in params["ids"].split(","):
            lo, _, hi = part.strip().partition("-")
            if not lo.isdigit() or (hi and not hi.isdigit()):
                raise ApiError(
                    400,
                    1905,
                    f"parameter ids has invalid value: {part} (neither a positive integer nor a range: {part})",
                )
            ranges.append((int(lo), int(hi or lo)))
    return id_min, id_max, ranges


def number_ranges(
    params: Mapping[str, str], name: str, low: int = 0, high: int = 10**12
) -> list[tuple[int, int]] | None:
    """A comma list of numbers and ``low-high`` ranges (``ids``, ``qids``, ``severities``, ``ag_ids``...)."""
    if name not in params:
        return None
    out = []
    for part in params[name].split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or not low <= int(lo) <= int(hi or lo) <= high:
            raise ApiError(400, 1905, f"parameter {name} has invalid value: {part.strip()}")
        out.append((int(lo), int(hi or lo)))
    return out


def _in(value: int, ranges: list[tuple[int, int]] | None) -> bool:
    return ranges is None or any(lo <= value <= hi for lo, hi in ranges)


def choice(params: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str | None = None) -> str | None:
    """One of ``allowed`` (case-insensitive), 1905 otherwise."""
    if name not in params:
        return default
    value = params[name].strip().lower()
    if value not in allowed:
        raise ApiError(400, 1905, f"parameter {name} has invalid value: {params[name]}")
    return value


def names(params: Mapping[str, str], name: str) -> set[str] | None:
    """A comma list of names (``ag_titles``, ``tag_set_include``...)."""
    if name not in params:
        return None
    return {part.strip() for part in params[name].split(",") if part.strip()}


class HostFilter:
    """The host selection parameters: asset groups, OS pattern, networks, asset tags."""

    def __init__(self, params: Mapping[str, str]) -> None:
        if "ag_ids" in params and "ag_titles" in params:
            raise ApiError(400, 1904, "Please specify only one of these parameters: ag_ids, ag_titles")
        self.ag_ids = number_ranges(params, "ag_ids")
        self.ag_titles = names(params, "ag_titles")
        self.network_ids = number_ranges(params, "network_ids")
        self.os_pattern: re.Pattern[str] | None = None
        if "os_pattern" in params:
            try:
                self.os_pattern = re.compile(params["os_pattern"])
            except re.error:
                raise ApiError(400, 1905, f"parameter os_pattern has invalid value: {params['os_pattern']}") from None
        self.tags = flag(params, "use_tags") == 1
        self.by = choice(params, "tag_set_by", ("id", "name"), "id")
        self.include_all = choice(params, "tag_include_selector", ("any", "all"), "any") == "all"
        self.exclude_all = choice(params, "tag_exclude_selector", ("any", "all"), "any") == "all"
        self.include = names(params, "tag_set_include")
        self.exclude = names(params, "tag_set_exclude")
        if self.tags and self.by == "id":
            for wanted in (self.include or set()) | (self.exclude or set()):
                if not wanted.isdigit():
                    raise ApiError(400, 1905, f"parameter tag_set_include has invalid value: {wanted} (not a tag ID)")
        choice(params, "host_metadata", ("all", "ec2", "azure", "google"))

    def __call__(self, fields: dict[str, Any]) -> bool:
        """Whether the host is selected."""
        group_id, group_title = fields["ASSET_GROUP"]
        if not _in(group_id, self.ag_ids) or (self.ag_titles is not None and group_title not in self.ag_titles):
            return False
        if not _in(fields["NETWORK_ID"], self.network_ids):
            return False
        if self.os_pattern is not None and not self.os_pattern.search(fields["OS"]):
            return False
        if not self.tags:
            return True
        have = {str(t["TAG_ID"] if self.by == "id" else t["NAME"]) for t in fields["TAGS"]}
        if self.include is not None and not (self.include <= have if self.include_all else self.include & have):
            return False
        return self.exclude is None or not (self.exclude <= have if self.exclude_all else self.exclude & have)


class DetectionFilter:
    """The detection parameters: statuses, update time, severities, QIDs, type, hidden kinds, QDS range."""

    def __init__(self, params: Mapping[str, str], updated_since: datetime | None) -> None:
        self.statuses = statuses(params)
        self.updated_since = iso(updated_since) if updated_since is not None else None
        self.severities = number_ranges(params, "severities", 1, 5)
        self.qids = number_ranges(params, "qids")
        self.vuln_type = choice(params, "include_vuln_type", ("confirmed", "potential"))
        self.shown = {name: flag(params, name) for name in ("show_igs", "include_ignored", "include_disabled")}
        self.qds_min = int_param(params, "qds_min", 1, 1, 100)
        self.qds_max = int_param(params, "qds_max", 100, 1, 100)
        for name in ("filter_superseded_qids", "show_arf_data"):
            flag(params, name)
        for name in ARF_V2 & set(params):
            int_param(params, name, 0, 0, 4)

    def __call__(self, d: dict[str, Any]) -> bool:
        """Whether the detection is in the answer."""
        shown_by = d.get("@shown_by")
        if shown_by is not None and not self.shown[shown_by]:
            return False
        if d["STATUS"] not in self.statuses:
            return False
        if self.updated_since is not None and d["LAST_UPDATE_DATETIME"] < self.updated_since:
            return False
        if not _in(d["SEVERITY"], self.severities) or not _in(d["QID"], self.qids):
            return False
        if self.vuln_type is not None and d["TYPE"] != "Info" and d["TYPE"].lower() != self.vuln_type:
            return False
        score: int = d["QDS"]
        return self.qds_min <= score <= self.qds_max


_QDS_CACHE: dict[tuple[int, int, bool], str] = {}


def _qds_xml(score: int, variant: int, factors: bool) -> str:
    """``QDS`` with its ``severity`` attribute and, when asked, ``QDS_FACTORS`` (one string per distinct value)."""
    key = (score, variant, factors)
    found = _QDS_CACHE.get(key)
    if found is None:
        found = f'            <QDS severity="{qds_severity(score)}">{score}</QDS>\n'
        if factors:
            found += (
                "            <QDS_FACTORS>\n"
                + "".join(
                    f'              <QDS_FACTOR name="{name}">{cdata(value)}</QDS_FACTOR>\n'
                    for name, value in QDS_FACTOR_SETS[variant]
                )
                + "            </QDS_FACTORS>\n"
            )
        _QDS_CACHE[key] = found
    return found


def _id_ok(host_id: int, id_max: int | None, ranges: list[tuple[int, int]] | None) -> bool:
    if id_max is not None and host_id > id_max:
        return False
    return ranges is None or any(lo <= host_id <= hi for lo, hi in ranges)


def _head(root: str, dtd: str, now: datetime) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8" ?>\n'
        f'<!DOCTYPE {root} SYSTEM "https://qualysapi.qualys.com/api/2.0/fo/{dtd}">\n'
        f"<{root}>\n  <RESPONSE>\n    <DATETIME>{iso(now)}</DATETIME>\n"
    )


def _warning(limit: int, base_url: str, params: Mapping[str, str], **cursor: int) -> str:
    url = f"{base_url}?{urlencode({**params, **{k: str(v) for k, v in cursor.items()}}, safe=',:')}"
    return (
        f"    <WARNING>\n      <CODE>1980</CODE>\n      <TEXT>{limit} record limit exceeded. Use URL to get next "
        f"batch of results.</TEXT>\n      <URL>\n        {cdata(url)}\n      </URL>\n    </WARNING>\n"
    )


def _host_xml(fields: dict[str, Any], params: Mapping[str, str], *, detailed: bool, detection: bool) -> list[str]:
    out = [f"        <ID>{fields['ID']}</ID>\n"]
    if flag(params, "show_asset_id"):
        out.append(f"        <ASSET_ID>{fields['ASSET_ID']}</ASSET_ID>\n")
    out.append(f"        <IP>{fields['IP']}</IP>\n")
    if not detection and flag(params, "show_trurisk"):
        out.append(
            f"        <TRURISK_SCORE>{fields['TRURISK_SCORE']}</TRURISK_SCORE>\n"
            f"        <ASSET_CRITICALITY_SCORE>{fields['ASSET_CRITICALITY_SCORE']}</ASSET_CRITICALITY_SCORE>\n"
        )
        if flag(params, "show_trurisk_factors"):
            out.append(_trurisk_factors(fields))
    out.append(f"        <TRACKING_METHOD>{fields['TRACKING_METHOD']}</TRACKING_METHOD>\n")
    out.append(f"        <NETWORK_ID>{fields['NETWORK_ID']}</NETWORK_ID>\n")
    dns = fields["DNS_DATA"]
    os_line = f"        <OS>{cdata(fields['OS'])}</OS>\n"
    dns_line = f"        <DNS>\n          {cdata(fields['DNS'])}\n        </DNS>\n"
    dns_data = (
        f"        <DNS_DATA>\n          <HOSTNAME>{cdata(dns['HOSTNAME'])}</HOSTNAME>\n"
        f"          <DOMAIN>{cdata(dns['DOMAIN'])}</DOMAIN>\n          <FQDN>{cdata(dns['FQDN'])}</FQDN>\n"
        "        </DNS_DATA>\n"
    )
    netbios = f"        <NETBIOS>{cdata(fields['NETBIOS'])}</NETBIOS>\n"
    ec2 = (
        fields["EC2"] if choice(params, "host_metadata", ("all", "ec2", "azure", "google")) in ("all", "ec2") else None
    )
    cloud = (
        "        <CLOUD_PROVIDER>AWS</CLOUD_PROVIDER>\n        <CLOUD_SERVICE>VM</CLOUD_SERVICE>\n"
        f"        <CLOUD_RESOURCE_ID>{cdata(ec2['EC2_INSTANCE_ID'])}</CLOUD_RESOURCE_ID>\n"
        f"        <EC2_INSTANCE_ID>{cdata(ec2['EC2_INSTANCE_ID'])}</EC2_INSTANCE_ID>\n"
        if ec2
        else ""
    )
    if detection:
        out += [os_line, dns_line, dns_data, cloud, netbios]
        out.append(f"        <QG_HOSTID>{cdata(fields['QG_HOSTID'])}</QG_HOSTID>\n")
        out.append(f"        <LAST_SCAN_DATETIME>{fields['LAST_SCAN_DATETIME']}</LAST_SCAN_DATETIME>\n")
    else:
        out += [dns_line, dns_data, cloud, netbios, os_line]
        out.append(f"        <QG_HOSTID>{cdata(fields['QG_HOSTID'])}</QG_HOSTID>\n")
    if flag(params, "show_tags"):
        out.append(
            "        <TAGS>\n"
            + "".join(
                f"          <TAG>\n            <TAG_ID>{t['TAG_ID']}</TAG_ID>\n"
                f"            <NAME>{cdata(t['NAME'])}</NAME>\n"
                "          </TAG>\n"
                for t in fields["TAGS"]
            )
            + "        </TAGS>\n"
        )
    if ec2:
        out.append(_metadata_xml(ec2, fields["LAST_SCAN_DATETIME"]))
    if flag(params, "show_cloud_tags"):
        out.append(
            "        <CLOUD_PROVIDER_TAGS>\n"
            + "".join(
                f"          <CLOUD_TAG>\n            <NAME>{cdata(t['NAME'])}</NAME>\n"
                f"            <VALUE>{cdata(t['VALUE'])}</VALUE>\n"
                f"            <LAST_SUCCESS_DATE>{t['LAST_SUCCESS_DATE']}</LAST_SUCCESS_DATE>\n          </CLOUD_TAG>\n"
                for t in fields["CLOUD_TAGS"]
            )
            + "        </CLOUD_PROVIDER_TAGS>\n"
        )
    if detailed and not detection:
        out.append(f"        <LAST_VULN_SCAN_DATETIME>{fields['LAST_SCAN_DATETIME']}</LAST_VULN_SCAN_DATETIME>\n")
    if detailed or detection:
        out.append(f"        <LAST_VM_SCANNED_DATE>{fields['LAST_VM_SCANNED_DATE']}</LAST_VM_SCANNED_DATE>\n")
        out.append(
            f"        <LAST_VM_SCANNED_DURATION>{fields['LAST_VM_SCANNED_DURATION']}</LAST_VM_SCANNED_DURATION>\n"
        )
    return out


def _trurisk_factors(fields: dict[str, Any]) -> str:
    """``TRURISK_SCORE_FACTORS``: the formula and the vulnerability counts by QDS severity behind the score."""
    counts = "".join(
        f'          <VULN_COUNT qds_severity="{band}">{(fields["TRURISK_SCORE"] >> k) % 7}</VULN_COUNT>\n'
        for k, band in enumerate(("CRITICAL", "HIGH", "MEDIUM", "LOW"))
    )
    return (
        "        <TRURISK_SCORE_FACTORS>\n"
        "          <TRURISK_SCORE_FORMULA>"
        + cdata("ACS * (wc * Rc * Count(C)^(1/100) + wh * Rh * Count(H)^(1/100) + wm * Rm * Count(M)^(1/100))")
        + "</TRURISK_SCORE_FORMULA>\n"
        + counts
        + "        </TRURISK_SCORE_FACTORS>\n"
    )


def _metadata_xml(ec2: dict[str, str], at: str) -> str:
    """``METADATA/EC2/ATTRIBUTE`` as the Qualys sample has them (``host_metadata=all|ec2``)."""
    attributes = "".join(
        "            <ATTRIBUTE>\n"
        f"              <NAME>{cdata('latest/dynamic/instance-identity/document/' + name)}</NAME>\n"
        "              <LAST_STATUS>Success</LAST_STATUS>\n"
        f"              <VALUE>{cdata(value)}</VALUE>\n"
        f"              <LAST_SUCCESS_DATE>{at}</LAST_SUCCESS_DATE>\n"
        "              <LAST_ERROR_DATE></LAST_ERROR_DATE>\n"
        f"              <LAST_ERROR>{cdata('')}</LAST_ERROR>\n"
        "            </ATTRIBUTE>\n"
        for name, value in (
            ("region", ec2["region"]),
            ("instanceId", ec2["EC2_INSTANCE_ID"]),
            ("accountId", ec2["accountId"]),
        )
    )
    return f"        <METADATA>\n          <EC2>\n{attributes}          </EC2>\n        </METADATA>\n"


_CDATA_CACHE: dict[str, str] = {}


def _cached_cdata(text: str) -> str:
    """``cdata()`` of the dataset's few distinct RESULTS texts, computed once each."""
    found = _CDATA_CACHE.get(text)
    if found is None:
        found = cdata(text)
        if len(_CDATA_CACHE) < 4096:
            _CDATA_CACHE[text] = found
    return found


def _detection_xml(
    d: dict[str, Any], *, results: bool, reopened: bool, qds: bool = False, factors: bool = False
) -> str:
    """One DETECTION element: a single format per detection (the benchmark serves a million)."""
    port = (
        f"            <PORT>{d['PORT']}</PORT>\n            <PROTOCOL>{d['PROTOCOL']}</PROTOCOL>\n"
        if d["PORT"] is not None
        else ""
    )
    result = f"            <RESULTS>{_cached_cdata(d['RESULTS'])}</RESULTS>\n" if results else ""
    fixed = d["LAST_FIXED_DATETIME"]
    fixed_line = f"            <LAST_FIXED_DATETIME>{fixed}</LAST_FIXED_DATETIME>\n" if fixed is not None else ""
    reopened_line = (
        f"            <TIMES_REOPENED>{d['TIMES_REOPENED']}</TIMES_REOPENED>\n"
        if reopened and d["TIMES_REOPENED"]
        else ""
    )
    if reopened and d.get("LAST_REOPENED_DATETIME"):  # the lifecycle dataset knows when
        last = d["LAST_REOPENED_DATETIME"]
        reopened_line = f"            <LAST_REOPENED_DATETIME>{last}</LAST_REOPENED_DATETIME>\n{reopened_line}"
    return (
        "          <DETECTION>\n"
        f"            <UNIQUE_VULN_ID>{d['UNIQUE_VULN_ID']}</UNIQUE_VULN_ID>\n"
        f"            <QID>{d['QID']}</QID>\n            <TYPE>{d['TYPE']}</TYPE>\n"
        f"            <SEVERITY>{d['SEVERITY']}</SEVERITY>\n{port}"
        f"            <SSL>{d['SSL']}</SSL>\n{result}"
        f"            <STATUS>{d['STATUS']}</STATUS>\n"
        f"            <FIRST_FOUND_DATETIME>{d['FIRST_FOUND_DATETIME']}</FIRST_FOUND_DATETIME>\n"
        f"            <LAST_FOUND_DATETIME>{d['LAST_FOUND_DATETIME']}</LAST_FOUND_DATETIME>\n"
        f"{_qds_xml(d['QDS'], d['QDS_FACTORS'], factors) if qds else ''}"
        f"            <TIMES_FOUND>{d['TIMES_FOUND']}</TIMES_FOUND>\n"
        f"            <LAST_TEST_DATETIME>{d['LAST_TEST_DATETIME']}</LAST_TEST_DATETIME>\n"
        f"            <LAST_UPDATE_DATETIME>{d['LAST_UPDATE_DATETIME']}</LAST_UPDATE_DATETIME>\n"
        f"{fixed_line}{reopened_line}"
        f"            <IS_IGNORED>{d['IS_IGNORED']}</IS_IGNORED>\n"
        f"            <IS_DISABLED>{d['IS_DISABLED']}</IS_DISABLED>\n"
        f"            <LAST_PROCESSED_DATETIME>{d['LAST_PROCESSED_DATETIME']}</LAST_PROCESSED_DATETIME>\n"
        "          </DETECTION>\n"
    )


def statuses(params: Mapping[str, str]) -> set[str]:
    """The ``status`` filter (default New, Active, Re-Opened; spaces and case as ServiceNow sends them)."""
    if "status" not in params:
        return set(DEFAULT_STATUSES)
    wanted = set()
    for part in params["status"].split(","):
        name = {s.lower(): s for s in STATUS_CYCLE}.get(part.strip().lower())
        if name is None:
            raise ApiError(400, 1905, f"parameter status has invalid value: {part.strip()}")
        wanted.add(name)
    return wanted


def host_list(
    data: Dataset, now: datetime, params: Mapping[str, str], base_url: str, *, detection: bool, version: str = "5.0"
) -> Iterator[str]:
    """Host list (``detection=False``) or host list detection, streamed host by host."""
    allowed = HLD_PARAMS if detection else HOST_LIST_PARAMS
    check_params(params, allowed - (ARF_V3 if version == "2.0" else ARF_V2))
    after = parse_date("vm_processed_after", params["vm_processed_after"]) if "vm_processed_after" in params else None
    before = (
        parse_date("vm_processed_before", params["vm_processed_before"]) if "vm_processed_before" in params else None
    )
    updated_since = (
        parse_date("detection_updated_since", params["detection_updated_since"])
        if "detection_updated_since" in params
        else None
    )
    limit = int_param(params, "truncation_limit", 1000)
    id_min, id_max, ranges = id_filter(params)
    details = params.get("details", "Basic")
    if not detection and details not in ("Basic", "Basic/AGs", "All", "All/AGs", "None"):
        raise ApiError(400, 1905, f"parameter details has invalid value: {details}")
    selected = HostFilter(params)
    wanted = DetectionFilter(params, updated_since) if detection else None
    results, reopened = flag(params, "show_results", 1) if detection else 0, flag(params, "show_reopened_info")
    qds, factors = flag(params, "show_qds"), flag(params, "show_qds_factors")
    for name in ("show_asset_id", "show_tags", "show_cloud_tags", "show_trurisk", "show_trurisk_factors"):
        flag(params, name)
    trurisk = (int_param(params, "trurisk_min", 0, 0, 1000), int_param(params, "trurisk_max", 1000, 0, 1000))
    root, dtd = (
        ("HOST_LIST_VM_DETECTION_OUTPUT", "asset/host/vm/detection/dtd/output.dtd")
        if detection
        else ("HOST_LIST_OUTPUT", "asset/host/dtd/list/output.dtd")
    )

    bounds = [
        b
        for b in (id_max, max((hi for _lo, hi in ranges), default=None) if ranges is not None else None)
        if b is not None
    ]
    last_id = min(bounds) if bounds else None
    first_id = max(id_min, min((lo for lo, _hi in ranges), default=id_min)) if ranges else id_min

    def matching() -> Iterator[str]:
        for host, scan, processed in data.hosts_processed(
            now,
            after,
            before,
            data.host_index_from(first_id),
            last_id,  # hosts are sorted by ID
        ):
            if not _id_ok(host.id, id_max, ranges):
                continue
            fields = data.host_fields(host, scan, processed)
            if not selected(fields):
                continue
            if not detection and not trurisk[0] <= fields["TRURISK_SCORE"] <= trurisk[1]:
                continue
            if not detection:
                if details == "None":
                    yield f"        <ID>{host.id}</ID>\n"
                else:
                    yield (
                        "      <HOST>\n"
                        + "".join(_host_xml(fields, params, detailed=details.startswith("All"), detection=False))
                        + "      </HOST>\n"
                    )
                continue
            assert wanted is not None
            dets = [
                d
                for d in chain(data.detections(host, scan, processed), data.hidden_detections(host, scan, processed))
                if wanted(d)
            ]
            if not dets:
                continue
            yield (
                "      <HOST>\n"
                + "".join(_host_xml(fields, params, detailed=True, detection=True))
                + "        <DETECTION_LIST>\n"
                + "".join(
                    _detection_xml(
                        d, results=bool(results), reopened=bool(reopened), qds=bool(qds), factors=bool(factors)
                    )
                    for d in dets
                )
                + "        </DETECTION_LIST>\n      </HOST>\n"
            )

    yield _head(root, dtd, now)
    hosts = matching()
    list_tag = "ID_SET" if (not detection and details == "None") else "HOST_LIST"
    opened = False
    for count, chunk in enumerate(hosts):
        if limit and count == limit:
            next_id = chunk.split("<ID>", 1)[1].split("</ID>", 1)[0]
            yield f"    </{list_tag}>\n" + _warning(limit, base_url, params, id_min=int(next_id))
            yield f"  </RESPONSE>\n</{root}>\n"
            return
        if not opened:
            yield f"    <{list_tag}>\n"
            opened = True
        yield chunk
    if opened:
        yield f"    </{list_tag}>\n"
    yield f"  </RESPONSE>\n</{root}>\n"


def scan_list(data: Dataset, now: datetime, params: Mapping[str, str]) -> Iterator[str]:
    """The scan list (no truncation), newest first."""
    check_params(params, SCAN_PARAMS)
    after = (
        parse_date("launched_after_datetime", params["launched_after_datetime"])
        if "launched_after_datetime" in params
        else now - timedelta(days=30)
    )
    before = (
        parse_date("launched_before_datetime", params["launched_before_datetime"])
        if "launched_before_datetime" in params
        else None
    )
    states = {s.strip() for s in params["state"].split(",")} if "state" in params else None
    show_op = flag(params, "show_op")
    yield _head("SCAN_LIST_OUTPUT", "scan/scan_list_output.dtd", now)
    opened = False
    for scan in data.scans(now):
        launched = datetime.strptime(scan["LAUNCH_DATETIME"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        if launched < after or (before is not None and launched > before):
            continue
        if states is not None and scan["STATE"] not in states:
            continue
        if not opened:
            yield "    <SCAN_LIST>\n"
            opened = True
        sub = f"          <SUB_STATE>{scan['SUB_STATE']}</SUB_STATE>\n" if scan["SUB_STATE"] else ""
        op = (
            (
                f"        <OPTION_PROFILE>\n          <TITLE>{cdata(scan['OPTION_PROFILE'])}</TITLE>\n"
                "          <DEFAULT_FLAG>0</DEFAULT_FLAG>\n        </OPTION_PROFILE>\n"
            )
            if show_op
            else ""
        )
        yield (
            f"      <SCAN>\n        <REF>{scan['REF']}</REF>\n        <TYPE>{scan['TYPE']}</TYPE>\n"
            f"        <TITLE>\n          {cdata(scan['TITLE'])}\n        </TITLE>\n"
            f"        <USER_LOGIN>{scan['USER_LOGIN']}</USER_LOGIN>\n"
            f"        <LAUNCH_DATETIME>{scan['LAUNCH_DATETIME']}</LAUNCH_DATETIME>\n"
            f"        <DURATION>{scan['DURATION']}</DURATION>\n"
            f"        <PROCESSING_PRIORITY>{scan['PROCESSING_PRIORITY']}</PROCESSING_PRIORITY>\n"
            f"        <PROCESSED>{scan['PROCESSED']}</PROCESSED>\n"
            f"        <STATUS>\n          <STATE>{scan['STATE']}</STATE>\n{sub}        </STATUS>\n"
            f"        <TARGET>{cdata(scan['TARGET'])}</TARGET>\n{op}      </SCAN>\n"
        )
    if opened:
        yield "    </SCAN_LIST>\n"
    yield "  </RESPONSE>\n</SCAN_LIST_OUTPUT>\n"


def _csv_line(fields: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n").writerow(fields)
    return buffer.getvalue()


def activity_log(
    data: Dataset, now: datetime, params: Mapping[str, str], base_url: str, *, odd_rows: set[int] | None = None
) -> Iterator[str]:
    """The activity log CSV, newest first, paged back in time with ``id_max``.

    With ``odd_rows`` (the fault's memory), rows whose id is a multiple of 5 carry an eighth field past the
    header's seven, and a ``Date`` of ``N/A`` those whose id is a multiple of 7 or in ``odd_rows``; the newest row of
    an answer's first page joins ``odd_rows`` (it is newer than every timed row, so the next window covers it
    again)."""
    check_params(params, ACTIVITY_PARAMS)
    if params.get("output_format", "CSV").upper() != "CSV":
        raise ApiError(400, 1905, f"parameter output_format has invalid value: {params['output_format']}")
    since = (
        parse_date("since_datetime", params["since_datetime"], strict_iso=True) if "since_datetime" in params else None
    )
    until = (
        parse_date("until_datetime", params["until_datetime"], strict_iso=True) if "until_datetime" in params else None
    )
    if since is not None and since > now:
        raise ApiError(
            400, 1905, f"parameter since_datetime has invalid value: {params['since_datetime']} (date in the future)"
        )
    if since is not None and until is not None and until < since:
        raise ApiError(400, 1905, "parameter until_datetime has invalid value: earlier than since_datetime")
    limit = int_param(params, "truncation_limit", 1000)
    id_max = int_param(params, "id_max", 0, 0, 10**12) if "id_max" in params else None
    rows = [r for r in data.activity(now, since, until) if id_max is None or r[0] <= id_max]
    yield "----BEGIN_RESPONSE_BODY_CSV\n"
    yield _csv_line(["Date", "Action", "Module", "Details", "User Name", "User Role", "User IP"])
    page = rows[:limit] if limit else rows
    if odd_rows is not None and page and id_max is None:
        odd_rows.add(page[0][0])
    for row_id, fields in page:
        if odd_rows is not None and (row_id % 7 == 0 or row_id in odd_rows):
            fields = ["N/A", *fields[1:]]
        yield _csv_line([*fields, "unexpected"] if odd_rows is not None and row_id % 5 == 0 else fields)
    yield "----END_RESPONSE_BODY_CSV\n"
    if limit and len(rows) > limit:
        url = f"{base_url}?{urlencode({**params, 'id_max': str(rows[limit][0])}, safe=',:')}"
        yield "----BEGIN_RESPONSE_FOOTER_CSV\nWARNING\n"
        yield _csv_line(["CODE", "TEXT", "URL"])
        yield _csv_line(["1980", f"{limit} record limit exceeded. Use URL to get next batch of results.", url])
        yield "----END_RESPONSE_FOOTER_CSV\n"


KB_PARAMS = {
    "action",
    "echo_request",
    "details",
    "ids",
    "id_min",
    "id_max",
    "is_patchable",
    "last_modified_after",
    "last_modified_before",
    "published_after",
    "published_before",
    "show_disabled_flag",
    "show_supported_modules_info",
    "show_pci_reasons",
    "show_qid_change_log",
}
KB_VERSIONS = ("2.0", "3.0", "4.0")


def _kb_list_xml(tag: str, child: str, items: list[str], pad: str) -> str:
    """A list container; ``items`` are the children's inner XML."""
    inner = "".join(f"{pad}  <{child}>{item}</{child}>\n" for item in items)
    return f"{pad}<{tag}>\n{inner}{pad}</{tag}>\n"


def _kb_vuln_xml(v: dict[str, Any], details: str, params: Mapping[str, str]) -> str:
    """One VULN the way real answers vary (see ``Dataset.kb_vuln``)."""
    shape, p = v["shape"], "        "
    own_line = shape == 3  # CDATA on its own indented line, as Elastic's mock of a real answer
    title = f"\n{p}  {cdata(v['TITLE'])}\n{p}" if own_line else cdata(v["TITLE"])
    cve_list = (
        _kb_list_xml(
            "CVE_LIST",
            "CVE",
            [
                f"<ID>{cdata(c)}</ID><URL>{cdata('http://cve.mitre.org/cgi-bin/cvename.cgi?name=' + c)}</URL>"
                for c in v["CVE_IDS"]
            ],
            p,
        )
        if v["CVE_IDS"]
        else ""
    )
    out = [
        f"{p}<QID>{v['QID']}</QID>\n",
        f"{p}<VULN_TYPE>{v['VULN_TYPE']}</VULN_TYPE>\n",
        f"{p}<SEVERITY_LEVEL>{v['SEVERITY_LEVEL']}</SEVERITY_LEVEL>\n",
        f"{p}<TITLE>{title}</TITLE>\n",
    ]
    if shape == 3:  # the real 2024 order: CVE_LIST right after TITLE
        out.append(cve_list)
    if shape == 4:
        out.append(f"{p}<!-- evaluation copy: for internal use only -->\n")
    out += [
        f"{p}<CATEGORY>{v['CATEGORY']}</CATEGORY>\n",
    ]
    if v["LAST_CUSTOMIZATION"]:
        out.append(
            f"{p}<LAST_CUSTOMIZATION>\n{p}  <DATETIME>{v['LAST_CUSTOMIZATION']}</DATETIME>\n"
            f"{p}  <USER_LOGIN>acme_mm</USER_LOGIN>\n{p}</LAST_CUSTOMIZATION>\n"
        )
    out += [
        f"{p}<LAST_SERVICE_MODIFICATION_DATETIME>{v['LAST_SERVICE_MODIFICATION_DATETIME']}"
        "</LAST_SERVICE_MODIFICATION_DATETIME>\n",
        f"{p}<PUBLISHED_DATETIME>{v['PUBLISHED_DATETIME']}</PUBLISHED_DATETIME>\n",
        f"{p}<PATCHABLE>{v['PATCHABLE']}</PATCHABLE>\n",
    ]
    if details == "All":
        out.append(
            _kb_list_xml(
                "SOFTWARE_LIST",
                "SOFTWARE",
                [f"<PRODUCT>{cdata(prod)}</PRODUCT><VENDOR>{cdata(ven)}</VENDOR>" for prod, ven in v["SOFTWARE"]],
                p,
            )
        )
    if v["VENDOR_REFERENCES"]:
        refs = [f"<ID>{cdata(i)}</ID><URL>{cdata(' ' + u)}</URL>" for i, u in v["VENDOR_REFERENCES"]]
        out.append(_kb_list_xml("VENDOR_REFERENCE_LIST", "VENDOR_REFERENCE", refs, p))
    if shape != 3:
        out.append(cve_list)
    if details == "All":
        out.append(f"{p}<DIAGNOSIS>{cdata(v['DIAGNOSIS'])}</DIAGNOSIS>\n")
        out.append(f"{p}<CONSEQUENCE>{cdata('An attacker could gain access.')}</CONSEQUENCE>\n")
        solution = f"\n{p}  {cdata(v['SOLUTION'])}\n{p}" if own_line else cdata(v["SOLUTION"])
        out.append(f"{p}<SOLUTION>{solution}</SOLUTION>\n")
    if v["EXPLOITS"]:
        explts = "".join(
            f"<EXPLT><REF>{cdata(ref)}</REF><DESC>{cdata(name + ' exploit')}</DESC><LINK>{cdata(link)}</LINK></EXPLT>"
            for name, ref, link in v["EXPLOITS"]
        )
        out.append(
            f"{p}<CORRELATION><EXPLOITS><EXPLT_SRC><SRC_NAME>{cdata(v['EXPLOITS'][0][0])}</SRC_NAME>"
            f"<EXPLT_LIST>{explts}</EXPLT_LIST></EXPLT_SRC></EXPLOITS></CORRELATION>\n"
        )
    cvss2 = v["CVSS"]
    if cvss2 is not None:
        source = f' source="{cvss2["source"]}"' if cvss2["source"] else ""
        vector = (
            f"{p}  <VECTOR_STRING>{cvss2['VECTOR_STRING']}</VECTOR_STRING>\n"
            if cvss2["VECTOR_STRING"]
            else f"{p}  <ACCESS>\n{p}    <VECTOR>3</VECTOR>\n{p}    <COMPLEXITY>1</COMPLEXITY>\n{p}  </ACCESS>\n"
        )
        out.append(
            f"{p}<CVSS>\n{p}  <BASE{source}>{cvss2['BASE']}</BASE>\n{p}  <TEMPORAL>{cvss2['TEMPORAL']}</TEMPORAL>\n"
            f"{vector}{p}</CVSS>\n"
        )
    cvss3 = v["CVSS_V3"]
    if cvss3 is not None:
        version = f"{p}  <CVSS3_VERSION>{cvss3['CVSS3_VERSION']}</CVSS3_VERSION>\n" if cvss3["CVSS3_VERSION"] else ""
        out.append(
            f"{p}<CVSS_V3>\n{p}  <BASE>{cvss3['BASE']}</BASE>\n{p}  <TEMPORAL>{cvss3['TEMPORAL']}</TEMPORAL>\n"
            f"{p}  <VECTOR_STRING>{cvss3['VECTOR_STRING']}</VECTOR_STRING>\n{version}{p}</CVSS_V3>\n"
        )
    out.append(f"{p}<PCI_FLAG>{int(v['SEVERITY_LEVEL'] >= 4)}</PCI_FLAG>\n")
    if flag(params, "show_pci_reasons"):
        out.append(_kb_list_xml("PCI_REASONS", "PCI_REASON", [cdata("Based on the CVSS base score.")], p))
    if v["THREAT_INTEL"]:
        intel = "".join(
            f'{p}  <THREAT_INTEL id="{i}">\n{p}    {cdata(name)}\n{p}  </THREAT_INTEL>\n'
            for i, name in v["THREAT_INTEL"]
        )
        out.append(f"{p}<THREAT_INTELLIGENCE>\n{intel}{p}</THREAT_INTELLIGENCE>\n")
    if flag(params, "show_supported_modules_info"):
        out.append(f"{p}<SUPPORTED_MODULES>VM,CA-Windows Agent</SUPPORTED_MODULES>\n")
    auth = _kb_list_xml("AUTH_TYPE_LIST", "AUTH_TYPE", v["AUTH_TYPES"], f"{p}  ") if v["AUTH_TYPES"] else ""
    out.append(f"{p}<DISCOVERY>\n{p}  <REMOTE>{v['REMOTE']}</REMOTE>\n{auth}{p}</DISCOVERY>\n")
    if flag(params, "show_disabled_flag"):
        out.append(f"{p}<IS_DISABLED>{v['IS_DISABLED']}</IS_DISABLED>\n")
    return "      <VULN>\n" + "".join(out) + "      </VULN>\n"


def kb_list(data: Dataset, now: datetime, params: Mapping[str, str], base_url: str = "") -> Iterator[str]:
    """The KnowledgeBase list, QID ascending. The KB has no ``truncation_limit``; with ``kb_page_limit`` an
    answer stops after that many VULNs with ``WARNING`` 1980 and a next-page URL (``id_min``)."""
    check_params(params, KB_PARAMS)
    details = params.get("details", "Basic")
    if details not in ("Basic", "All", "None"):
        raise ApiError(400, 1905, f"parameter details has invalid value: {details}")
    bounds = {}
    for name in ("last_modified_after", "last_modified_before", "published_after", "published_before"):
        if name in params:
            bounds[name] = iso(parse_date(name, params[name]))
    for name in ("show_disabled_flag", "show_supported_modules_info", "show_pci_reasons", "show_qid_change_log"):
        flag(params, name)
    patchable = flag(params, "is_patchable") if "is_patchable" in params else None
    id_min, id_max, ranges = id_filter(params)
    yield (
        '<?xml version="1.0" encoding="UTF-8" ?>\n<!DOCTYPE KNOWLEDGE_BASE_VULN_LIST_OUTPUT SYSTEM '
        '"https://qualysapi.qualys.com/api/2.0/fo/knowledge_base/vuln/knowledge_base_vuln_list_output.dtd">\n'
        f"<KNOWLEDGE_BASE_VULN_LIST_OUTPUT>\n  <RESPONSE>\n    <DATETIME>{iso(now)}</DATETIME>\n"
    )
    opened = False
    listed, limit, warning = 0, data.config.kb_page_limit, ""
    for qid in data.kb_qids():
        if qid < id_min or not _id_ok(qid, id_max, ranges):
            continue
        v = data.kb_vuln(qid, now)
        if v is None:
            continue
        modified, published = v["LAST_SERVICE_MODIFICATION_DATETIME"], v["PUBLISHED_DATETIME"]
        if "last_modified_after" in bounds and not modified > bounds["last_modified_after"]:
            continue
        if "last_modified_before" in bounds and not modified < bounds["last_modified_before"]:
            continue
        if "published_after" in bounds and not published > bounds["published_after"]:
            continue
        if "published_before" in bounds and not published < bounds["published_before"]:
            continue
        if patchable is not None and v["PATCHABLE"] != patchable:
            continue
        if limit and listed >= limit:
            warning = _warning(limit, base_url, params, id_min=qid)
            break
        if not opened:
            yield "    <ID_SET>\n" if details == "None" else "    <VULN_LIST>\n"
            opened = True
        yield f"      <ID>{qid}</ID>\n" if details == "None" else _kb_vuln_xml(v, details, params)
        listed += 1
    if opened:
        yield "    </ID_SET>\n" if details == "None" else "    </VULN_LIST>\n"
    if warning:
        yield warning
    yield (
        "  </RESPONSE>\n</KNOWLEDGE_BASE_VULN_LIST_OUTPUT>\n<!-- CONFIDENTIAL AND PROPRIETARY INFORMATION. "
        'Qualys provides the QualysGuard Service "As Is," without any warranty of any kind. //--> \n'
    )
