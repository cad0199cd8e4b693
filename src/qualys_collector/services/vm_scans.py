"""``vm_scans`` -> ``vuln.qualys.vulnerabilities``: scans launched since the checkpoint, one event per scan.

A scan not yet in a final state is remembered in the checkpoint and looked at again on later cycles;
when its state changes it is emitted again, so the SIEM sees it finish.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field

from qualys_collector.engine.source import CursorMode, ServiceSpec
from qualys_collector.model import JSON, Page, Record, Window, format_seed_datetime, parse_seed_datetime
from qualys_collector.qualys.vm import VmClient
from qualys_collector.qualys.xml import element_to_value, iter_elements
from qualys_collector.services.options import ServiceEntry
from qualys_collector.services.vm_params import COMMON_OWNED, VERSION_PATTERN, VmOptions

logger = logging.getLogger("qualys_collector.puller")

SPEC = ServiceSpec(
    name="vm_scans",
    default_tag="vuln.qualys.vulnerabilities",
    cursor_field="LAUNCH_DATETIME",
    mode=CursorMode.RECORD,
    default_lookback=timedelta(days=30),
)


class VmScansOptions(VmOptions):
    """``vm_scans``."""

    KNOWN_VERSIONS = ("2.0", "3.0")
    #: the window and the fields the state tracking reads (STATUS, OPTION_PROFILE)
    OWNED = COMMON_OWNED | {"launched_after_datetime", "launched_before_datetime", "show_status", "show_op"}

    api_version: str = Field(default="3.0", pattern=VERSION_PATTERN)


FINAL_STATES = frozenset({"Finished", "Error", "Canceled"})
#: Unfinished scans are followed for this long, then forgotten with a warning.
FOLLOW_FOR = timedelta(days=30)


def state_of(scan: dict[str, Any]) -> str:
    """``STATE/PROCESSED`` of a scan, the pair whose change is worth another event."""
    status = scan.get("STATUS")
    state = status.get("STATE", "") if isinstance(status, dict) else ""
    return f"{state}/{scan.get('PROCESSED', '')}"


def settled(scan: dict[str, Any]) -> bool:
    """Final state and processed: nothing more will change."""
    state, _, processed = state_of(scan).partition("/")
    return state in FINAL_STATES and processed != "0"


class ScanSource:
    """``/api/<v>/fo/scan/?action=list`` for a launch-time window, plus unfinished scans from before."""

    def __init__(self, client: VmClient, options: VmScansOptions) -> None:
        self.client = client
        self.extra_params = options.extra_params
        self.path = f"/api/{options.api_version}/fo/scan/"

    def _list(self, after: datetime, before: datetime) -> list[dict[str, Any]]:
        params = {
            "action": "list",
            "launched_after_datetime": format_seed_datetime(after),
            "launched_before_datetime": format_seed_datetime(before),
            "show_op": "1",
            "show_status": "1",
            **self.extra_params,
        }

        def fetch(_token: JSON | None) -> Iterator[Page]:
            scans: list[Record] = []
            with self.client.open(self.path, params) as response:
                for _tag, element in iter_elements(self.client.body(self.path, response), {"SCAN"}):
                    scans.append(Record(data=element_to_value(element), key=""))
            yield Page(scans)

        return [r.data for page in self.client.resumable(fetch, None, "scans") for r in page.records]

    def pages(self, window: Window, token: JSON | None, extra: JSON) -> Iterator[Page]:
        """One page: the window's scans and the state changes of scans followed from earlier cycles."""
        before = self.client.requests
        pending: dict[str, dict[str, str]] = dict(extra.get("pending", {}))
        records: list[Record] = []
        scans = self._list(window.start, window.end)
        answered = self.client.server_time  # Qualys' clock when it listed the window
        for number, scan in enumerate(scans, start=1):
            ref = str(scan.get("REF", ""))
            logger.info("Fetched scan with reference %s (no. %d out of %d)", ref, number, len(scans))
            records.append(Record(data=scan, key=ref, cursor=parse_seed_datetime(scan["LAUNCH_DATETIME"])))
        followed = dict(pending)  # every entry was delivered by an earlier cycle
        if followed:
            oldest = min(parse_seed_datetime(e["launched"]) for e in followed.values())
            for scan in self._list(oldest, window.start):
                ref = str(scan.get("REF", ""))
                if ref in followed and state_of(scan) != followed[ref]["state"]:
                    logger.info("Scan %s changed state: %s -> %s", ref, followed[ref]["state"], state_of(scan))
                    records.append(Record(data=scan, key=f"{ref}@{state_of(scan)}", cursor=None))
                    pending[ref] = {**pending[ref], "state": state_of(scan)}
                    if settled(scan):
                        del pending[ref]
        for record in records:
            if record.cursor is not None and not settled(record.data):
                ref = record.key
                pending.setdefault(ref, {"state": state_of(record.data), "launched": record.data["LAUNCH_DATETIME"]})
        followed_since = format_seed_datetime(window.end - FOLLOW_FOR)  # older unfinished scans are let go
        for ref in [r for r, e in pending.items() if e["launched"] < followed_since]:
            logger.warning("Scan %s is still %s after %s; no longer followed", ref, pending[ref]["state"], FOLLOW_FOR)
            del pending[ref]
        yield Page(
            records, token=None, requests=self.client.requests - before, extra={"pending": pending}, horizon=answered
        )


SERVICE = ServiceEntry(SPEC, "qualys", VmScansOptions, ScanSource)
