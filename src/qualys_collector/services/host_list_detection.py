"""``host_list_detection`` -> ``vuln.qualys.hostdetections``: one event per host x detection."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from qualys_collector.config.schema import HostListDetectionOptions
from qualys_collector.model import JSON, Page, Window
from qualys_collector.qualys.detections import converter
from qualys_collector.qualys.vm import VmClient
from qualys_collector.qualys.vm_hosts import host_pages, window_params
from qualys_collector.services.base import CursorMode, ServiceSpec
from qualys_collector.services.registry import ServiceEntry, register

SPEC = ServiceSpec(
    name="host_list_detection",
    default_tag="vuln.qualys.hostdetections",
    cursor_field="vm_processed (not returned; the window end is the checkpoint)",
    mode=CursorMode.WINDOW,
    default_lookback=timedelta(days=1),
)


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
