"""``host_list_detection`` -> ``vuln.qualys.hostdetections``: one event per host x detection."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from qualys_collector.config.schema import HostListDetectionOptions
from qualys_collector.errors import DataError
from qualys_collector.model import JSON, Page, Record, Window
from qualys_collector.qualys.vm import VmClient
from qualys_collector.services.base import CursorMode, ServiceSpec
from qualys_collector.services.registry import ServiceEntry, register
from qualys_collector.services.vm_hosts import host_pages, window_params

SPEC = ServiceSpec(
    name="host_list_detection",
    default_tag="vuln.qualys.hostdetections",
    cursor_field="vm_processed (not returned; the window end is the checkpoint)",
    mode=CursorMode.WINDOW,
    default_lookback=timedelta(days=1),
)

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


class HostDetectionSource:
    """Pages of ``/api/<v>/fo/asset/host/vm/detection/?action=list``."""

    def __init__(self, client: VmClient, options: HostListDetectionOptions) -> None:
        self.client = client
        self.options = options
        self.path = f"/api/{options.api_version}/fo/asset/host/vm/detection/"
        self.convert = converter(options.results_max_length)

    def params(self, window: Window) -> dict[str, str]:
        """The request for one window."""
        f = self.options.filters
        return {
            "action": "list",
            "status": ",".join(f.status),
            "show_asset_id": str(f.show_asset_id),
            "show_tags": str(f.show_tags),
            "show_reopened_info": str(f.show_reopened_info),
            "truncation_limit": str(self.options.truncation_limit),
            **window_params(window.start, window.end),
        }

    def pages(self, window: Window, token: JSON | None, extra: JSON) -> Iterator[Page]:
        """The window's detections, resumable at any host boundary."""
        return host_pages(self.client, self.path, self.params(window), token, self.convert, "host detections")


def build(client: VmClient, options: HostListDetectionOptions) -> Any:
    """Batched, parallel pulls by default (``parallel: false`` reads the window as one stream)."""
    if options.parallel:
        from qualys_collector.services.hld_parallel import ParallelDetectionSource

        return ParallelDetectionSource(client, options)
    return HostDetectionSource(client, options)


ENTRY = register(ServiceEntry(SPEC, build))
