"""``host_list`` -> ``vuln.qualys.hosts``: hosts whose VM data was processed in the window."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator

from qualys_collector.engine.source import CursorMode, ServiceSpec
from qualys_collector.model import JSON, Page, Record, Window
from qualys_collector.qualys.detections import host_key
from qualys_collector.qualys.vm import VmClient
from qualys_collector.qualys.vm_hosts import host_pages, window_params
from qualys_collector.services.options import Flag, ServiceEntry, flag
from qualys_collector.services.vm_params import COMMON_OWNED, VERSION_PATTERN, HostListParams, VmOptions

SPEC = ServiceSpec(
    name="host_list",
    default_tag="vuln.qualys.hosts",
    cursor_field="vm_processed (not returned; the window end is the checkpoint)",
    mode=CursorMode.WINDOW,
    default_lookback=timedelta(days=1),
)


class HostListFilters(HostListParams):
    """The seed's host list filters, then typed Qualys parameters (TruRisk, asset criticality, host scope).

    The typed parameters are :class:`~qualys_collector.services.vm_params.HostListParams`."""

    details: Literal["Basic", "Basic/AGs", "All", "All/AGs"] = "All"
    show_asset_id: Flag = 1
    show_tags: Flag = 0
    show_cloud_tags: Flag = 0

    _flags = field_validator("show_asset_id", "show_tags", "show_cloud_tags", mode="before")(flag)


class HostListOptions(VmOptions):
    """``host_list``."""

    KNOWN_VERSIONS = ("2.0", "3.0", "4.0", "5.0")
    OWNED = COMMON_OWNED | {"ids"}
    OWNED_PREFIXES = ("vm_processed_",)

    api_version: str = Field(default="5.0", pattern=VERSION_PATTERN)
    truncation_limit: int = Field(default=1000, ge=1, le=1_000_000)
    filters: HostListFilters = HostListFilters()


def to_records(host: dict[str, Any]) -> list[Record]:
    """One event per host."""
    return [Record(data=host, key=host_key(host))]


class HostListSource:
    """Pages of ``/api/<v>/fo/asset/host/?action=list``."""

    def __init__(self, client: VmClient, options: HostListOptions) -> None:
        self.client = client
        self.options = options
        self.path = f"/api/{options.api_version}/fo/asset/host/"

    def params(self, window: Window) -> dict[str, str]:
        """The request for one window."""
        return {
            "action": "list",
            **self.options.filters.wire(),  # the seed's four and every typed parameter that is set
            **self.options.extra_params,
            "truncation_limit": str(self.options.truncation_limit),
            **window_params(window.start, window.end),
        }

    def pages(self, window: Window, token: JSON | None, extra: JSON) -> Iterator[Page]:
        """The window's hosts, resumable at any host boundary."""
        return host_pages(self.client, self.path, self.params(window), token, to_records, "hosts")


SERVICE = ServiceEntry(SPEC, "qualys", HostListOptions, HostListSource)
