"""Host detection records: a host element's identity, each detection's key, and the conversion of one host
into one record per detection. No I/O and light imports: the parsing processes load only this module, the
XML parser and the model (see :mod:`~qualys_collector.services.hld_process`)."""

from __future__ import annotations

from typing import Any

import orjson

from qualys_collector.errors import DataError
from qualys_collector.model import Record

IDENTITY_FIELDS = (
    "ID",
    "ASSET_ID",
    "IP",
    "IPV6",
    "TRACKING_METHOD",
    "NETWORK_ID",
    "NETWORK_NAME",
    "OS",
    "OS_CPE",
    "DNS",
    "DNS_DATA",
    "NETBIOS",
    "QG_HOSTID",
    "CLOUD_PROVIDER",
    "CLOUD_SERVICE",
    "CLOUD_RESOURCE_ID",
    "EC2_INSTANCE_ID",
    "TAGS",
    "METADATA",  # cloud metadata (EC2/AZURE/GOOGLE attributes) with host_metadata
    "CLOUD_PROVIDER_TAGS",
    "ASSET_GROUP_LIST",
    "LAST_SCAN_DATETIME",
    "LAST_VM_SCANNED_DATE",
    "LAST_VM_SCANNED_DURATION",
    "LAST_VM_AUTH_SCANNED_DATE",
    "LAST_VM_AUTH_SCANNED_DURATION",
    "LAST_PC_SCANNED_DATE",
)


#: The hint a detection record made in a parsing process carries: its ``DETECTION.QID`` (see ``Record.hints``).
QID_HINT = "DETECTION.QID"


def host_key(host: Any) -> str:
    """A host's ``ID``, or a :class:`DataError` for a host element without one."""
    host_id = host.get("ID") if isinstance(host, dict) else None
    if not isinstance(host_id, str) or not host_id:
        raise DataError(f"a HOST element without an ID: {str(host)[:160]!r}")
    return host_id


def detection_key(host_id: str, detection: dict[str, Any]) -> str:
    """Stable identity: ``UNIQUE_VULN_ID`` when Qualys sends it, else host, QID, port, protocol, SSL, FQDN, instance."""
    uvid = detection.get("UNIQUE_VULN_ID")
    if uvid:
        return f"{host_id}:{uvid}"
    parts = [detection.get(k) or "" for k in ("QID", "PORT", "PROTOCOL", "SSL", "FQDN", "INSTANCE")]
    return f"{host_id}:" + ":".join(str(p) for p in parts)


def converter(results_max_length: int | None) -> Any:
    """Host element -> one record per detection, carrying the host's identifying fields."""

    def to_records(host: dict[str, Any]) -> list[Record]:
        host_id = host_key(host)
        identity = {k: host[k] for k in IDENTITY_FIELDS if k in host}
        records = []
        detections = host.get("DETECTION_LIST") or []
        for detection in detections if isinstance(detections, list) else [detections]:
            if not isinstance(detection, dict):
                raise DataError(f"host {host_id}: a DETECTION that is not an element: {str(detection)[:120]!r}")
            key = detection_key(host_id, detection)
            data: dict[str, Any] = {"HOST": identity, "DETECTION": detection, "@detection_key": key}
            results = detection.get("RESULTS")
            if results_max_length and isinstance(results, str) and len(results) > results_max_length:
                data["DETECTION"] = {**detection, "RESULTS": results[:results_max_length]}
                data["@results_truncated"] = True
                data["@results_length"] = len(results)
            records.append(Record(data=data, key=key))
        return records

    return to_records


#: The fields that define a detection's state, with the short code each is stored under; the status first.
TRACKED_FIELDS = (
    ("STATUS", "s"),
    ("SEVERITY", "v"),
    ("QDS", "q"),
    ("TYPE", "t"),
    ("IS_IGNORED", "i"),
    ("IS_DISABLED", "d"),
    ("LAST_FIXED_DATETIME", "f"),
    ("LAST_REOPENED_DATETIME", "r"),
)
#: Fields that move at every scan without the detection changing (or move only with a tracked field):
#: left out of the hash of "the rest". RESULTS is left out too: its evidence text often carries scan-time
#: values (uptime, process lists, timestamps), so hashing it would report most detections at every scan.
VOLATILE_FIELDS = frozenset(
    {
        "LAST_FOUND_DATETIME",
        "TIMES_FOUND",
        "LAST_TEST_DATETIME",
        "LAST_UPDATE_DATETIME",
        "LAST_PROCESSED_DATETIME",
        "TIMES_REOPENED",
        "FIRST_REOPENED_DATETIME",
        "QDS_FACTORS",
        "RESULTS",
    }
)
_TRACKED_NAMES = frozenset(name for name, _code in TRACKED_FIELDS)


def _scalar(value: Any) -> Any:
    """``QDS`` arrives as ``{"@severity": "LOW", "#text": "35"}``: its score is what is compared."""
    if isinstance(value, dict) and "#text" in value:
        return value["#text"]
    return value


def detection_state(body: dict[str, Any]) -> dict[str, Any]:
    """The stored state of one detection event: tracked fields by code, the QID, a hash of the rest."""
    detection = body.get("DETECTION")
    if not isinstance(detection, dict):
        detection = {}
    state: dict[str, Any] = {}
    for name, code in TRACKED_FIELDS:
        value = _scalar(detection.get(name))
        if value is not None and value != "":
            state[code] = value
    rest = {k: v for k, v in detection.items() if k not in _TRACKED_NAMES and k not in VOLATILE_FIELDS}
    import hashlib  # here: it loads OpenSSL's libcrypto (3.7 MB), which the parsing processes never need

    state["h"] = hashlib.sha256(orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
    if detection.get("QID") is not None:
        state["Q"] = detection["QID"]
    return state


def detection_group(key: str) -> str | None:
    """The prefix shared by the keys of one host's detections (``"<host ID>:"``)."""
    host, sep, _rest = key.partition(":")
    return f"{host}:" if sep else None


def removed_detection(key: str, state: dict[str, Any]) -> dict[str, Any]:
    """The body of a ``removed`` change: the host ID, the QID and last known state, and the key."""
    host, _sep, _rest = key.partition(":")
    detection: dict[str, Any] = {"QID": state["Q"]} if "Q" in state else {}
    detection.update({name: state[code] for name, code in TRACKED_FIELDS if code in state})
    return {"HOST": {"ID": host}, "DETECTION": detection, "@detection_key": key}
