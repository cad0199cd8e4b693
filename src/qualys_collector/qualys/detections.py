"""Host detection records: a host element's identity, each detection's key, and the conversion of one host
into one record per detection. No I/O and light imports: the parsing processes load only this module, the
XML parser and the model (see :mod:`~qualys_collector.services.hld_process`)."""

from __future__ import annotations

from typing import Any

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
