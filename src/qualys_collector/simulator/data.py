"""A deterministic Qualys dataset generated from a seed, evolving with the simulator's clock.

Nothing is materialised per detection: hosts, detections, scans, activity rows and FIM records are
computed from ``(seed, index)`` when asked for, so 100k hosts x 10 detections cost a few MB.

Time model: every record has fixed timestamps between ``base`` and ``base + span``; a record exists
once the simulator clock has passed its timestamp. Hosts are re-processed every ``host_interval``, and
each processing moves their detections one step through New -> Active -> Fixed -> Re-Opened, so a
clock that advances produces status changes, finished scans, closed incidents and late FIM events.
"""

from __future__ import annotations

import bisect
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from qualys_collector.simulator.lifecycle import ABSENT, Lifecycle, detection_fields, diff, late_start, purge_after

STATUS_CYCLE = ("New", "Active", "Active", "Fixed", "Re-Opened", "Active", "Fixed")
OSES = ("Windows 2016/2019/10", "Ubuntu Linux 22.04", "Red Hat Enterprise Linux 8.6", "Amazon Linux 2", "macOS 14")
TRACKING = ("IP", "DNS", "NETBIOS", "Cloud Agent", "EC2")
ACTIONS = (
    ("login", "auth", "user_logged in"),
    ("request", "auth", "API: /api/2.0/fo/scan/index.php"),
    ("launch", "scan", "Scan launched (ref: scan/{n})"),
    ("update", "option", "API-IPs/Ranges updated: {ip}"),
    ("finished", "report", "Report generation finished.(TITLE:,  ID:{n},  FORMAT:PDF)"),
)
_REOPENED_AT = tuple(k for k, status in enumerate(STATUS_CYCLE) if status == "Re-Opened")
#: QDS contributing factors as the Elastic sample shows them (name, value), one set per variant.
QDS_FACTOR_SETS: tuple[tuple[tuple[str, str], ...], ...] = tuple(
    (
        ("CVSS", f"{4 + v * 0.7:.1f}"),
        ("CVSS_version", "v3.x" if v % 3 else "v2"),
        ("epss", f"0.{(v * 7919) % 99999:05d}"),
        ("CVSS_vector", ("AV:N/AC:L/PR:L/UI:N/S:C/C:N/I:N/A:H", "AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H")[v % 2]),
        *((("RTI", "local"), ("exploit_maturity", "weaponized,poc"), ("CISA_vuln", "YES")) if v % 4 == 3 else ()),
        *((("trending", "02222024,02162024,02262024"), ("mitigation_controls", "18436,18437")) if v % 5 == 4 else ()),
    )
    for v in range(8)
)
#: Asset groups the simulated hosts belong to (host ``i`` is in group ``i % 4``): ID and title.
ASSET_GROUPS = ((9000, "Servers"), (9001, "Workstations"), (9002, "Cloud"), (9003, "DMZ hosts"))
#: The detections the API leaves out unless asked (``show_igs``, ``include_ignored``, ``include_disabled``),
#: on every fifth host from the second: its extra detection number, what marks it, and its QID.
HIDDEN_KINDS = {
    1: ("Info", "show_igs", 45038),
    2: ("ignored", "include_ignored", 38170),
    3: ("disabled", "include_disabled", 38739),
}


def qds_severity(score: int) -> str:
    """The ``severity`` attribute of a QDS: Critical 90-100, High 70-89, Medium 40-69, Low 1-39."""
    return "CRITICAL" if score >= 90 else "HIGH" if score >= 70 else "MEDIUM" if score >= 40 else "LOW"


UNICODE = "Ünïcödé ✓ 漢字 — «quoted» & <angle>"


def iso(value: datetime) -> str:
    """Qualys' XML timestamp format."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"  # faster than strftime


def _mix(x: int) -> int:
    """A 64-bit integer hash (the splitmix64 finaliser): cheap, well spread, deterministic."""
    x &= 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _times_reopened(scan: int, offset: int) -> int:
    """How many of the processings ``0..scan`` left a detection with status offset ``offset`` Re-Opened."""
    cycle = len(STATUS_CYCLE)
    count = 0
    for position in _REOPENED_AT:
        first = (position - offset) % cycle
        if first <= scan:
            count += (scan - first) // cycle + 1
    return count


def fim_time(value: datetime) -> str:
    """FIM's timestamp format: milliseconds and ``+0000``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def ms(value: datetime) -> int:
    """Epoch milliseconds."""
    return int(value.timestamp() * 1000)


@dataclass
class SimConfig:
    """Size and shape of the simulated subscription."""

    seed: int = 1
    hosts: int = 50
    detections_per_host: int = 5
    scans: int = 20
    activity_rows: int = 200
    fim_events: int = 500
    fim_incidents: int = 20
    #: FIM events become searchable up to this long after their ``processedTime`` (each its own share of it), as
    #: the gateway indexes them: why the FIM services wait ``settle_lag_seconds`` (30 s) behind the clock.
    fim_index_delay: timedelta = timedelta(0)
    base: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0) - timedelta(days=3))
    span: timedelta = timedelta(days=3)
    host_interval: timedelta = timedelta(hours=24)
    results_bytes: int = 200
    #: Every ``clean_every``-th host (0: none) has no detections at all: host list detection omits it, as
    #: Qualys omits hosts with nothing matching the filters, while the host list still lists it.
    clean_every: int = 0
    #: QIDs detections carry that the KnowledgeBase does not know (a brand-new QID, a retired one).
    kb_missing: tuple[int, ...] = ()
    #: Detections with a lifecycle over simulated time (:mod:`~qualys_collector.simulator.lifecycle`): new,
    #: fixed, re-opened, severity and QDS changes, hosts first processed later, and purged hosts.
    lifecycle: bool = False
    #: With ``lifecycle``: the share of hosts purged at some time within ``lifecycle_days`` of ``base``.
    purged_fraction: float = 0.0
    lifecycle_days: int = 30
    #: At most this many VULNs per KnowledgeBase answer (0: no limit), the rest behind ``WARNING`` 1980 and
    #: a next-page URL (``id_min``): the KB DTD allows ``RESPONSE/WARNING`` (CODE, TEXT, URL) as the other lists.
    kb_page_limit: int = 0


@dataclass(frozen=True)
class Host:
    """One host and its processing schedule."""

    index: int
    id: int
    first_processed: datetime
    interval: timedelta
    #: When the host was purged (``None``: never): from then on Qualys returns nothing of it.
    purged: datetime | None = None

    def processed_at(self, now: datetime) -> tuple[int, datetime] | None:
        """(scan number, time) of the latest processing at ``now``; ``None`` before the first or once purged."""
        if now < self.first_processed or (self.purged is not None and now >= self.purged):
            return None
        k = int((now - self.first_processed) / self.interval)
        return k, self.first_processed + k * self.interval


class Dataset:
    """The whole simulated subscription."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        c = config
        self.host_ids = [100_000 + 3 * i for i in range(c.hosts)]
        rng = random.Random(f"{c.seed}:hosts")  # noqa: S311 - test data, not crypto
        span_s = int(c.span.total_seconds())
        interval_s = max(60, int(c.host_interval.total_seconds()))
        # processing times on whole minutes, so several hosts share one timestamp
        self._first = [
            c.base + timedelta(minutes=rng.randrange(max(1, min(span_s, interval_s) // 60))) for _ in range(c.hosts)
        ]
        self._purged: list[datetime | None] = [None] * c.hosts
        self.life: Lifecycle | None = None
        if c.lifecycle:
            self.life = Lifecycle(c.seed, c.detections_per_host)
            for i in range(c.hosts):
                late = late_start(c.seed, i, c.lifecycle_days)
                if late is not None:
                    self._first[i] += late
                purge = purge_after(c.seed, i, c.purged_fraction, c.lifecycle_days)
                if purge is not None:  # an hour before a processing that then never happens (a stale host)
                    scans = max(1, -(-(c.base + purge - self._first[i]) // c.host_interval))
                    self._purged[i] = self._first[i] + scans * c.host_interval - timedelta(hours=1)
        self._activity = self._activity_times()
        self._results_cache: dict[tuple[int, bool, bool], str] = {}
        self._day_cache: dict[int, str] = {}
        self._fim_processed = self._fim_times()
        self._kb_known = frozenset(self.kb_qids())

    # ------------------------------------------------------------------ hosts and detections

    def host(self, index: int) -> Host:
        """Host number ``index`` (0-based)."""
        return Host(index, self.host_ids[index], self._first[index], self.config.host_interval, self._purged[index])

    def host_index_from(self, id_min: int) -> int:
        """Index of the first host whose ID is >= ``id_min``."""
        return bisect.bisect_left(self.host_ids, id_min)

    def host_fields(self, host: Host, scan: int, processed: datetime) -> dict[str, Any]:
        """The host's attributes as Qualys names them."""
        i = host.index
        r = _mix(self.config.seed * 0x9E3779B97F4A7C15 + i * 0x100000001B3 + 0xC0FFEE)
        name = f"host-{i:06d}"
        tracking = TRACKING[i % len(TRACKING)]
        return {
            "ID": host.id,
            "ASSET_ID": 5_000_000 + i,
            "IP": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            "TRACKING_METHOD": tracking,
            "NETWORK_ID": 0,
            "OS": OSES[r % len(OSES)],
            "DNS": f"{name}.corp.example",
            "DNS_DATA": {"HOSTNAME": name, "DOMAIN": "corp.example", "FQDN": f"{name}.corp.example"},
            "NETBIOS": name.upper().replace("-", ""),
            "QG_HOSTID": str(uuid.UUID(int=(r << 64) | _mix(r))),
            "LAST_SCAN_DATETIME": iso(processed - timedelta(minutes=2)),
            "LAST_VM_SCANNED_DATE": iso(processed - timedelta(minutes=3)),
            "LAST_VM_SCANNED_DURATION": 60 + (r >> 8) % 1200,
            "TAGS": [{"TAG_ID": 700 + (i % 3), "NAME": ("Production", "Staging", "DMZ")[i % 3]}],
            "CLOUD_TAGS": [{"NAME": "env", "VALUE": "prod", "LAST_SUCCESS_DATE": iso(processed)}],
            "SCAN_NUMBER": scan,
            "ASSET_GROUP": ASSET_GROUPS[i % len(ASSET_GROUPS)],
            "ASSET_CRITICALITY_SCORE": 1 + (r >> 20) % 5,
            "TRURISK_SCORE": (r >> 24) % 1001,
            "EC2": (
                {
                    "EC2_INSTANCE_ID": f"i-{r & 0xFFFFFFFFFFFFF:013x}",
                    "region": ("us-east-1", "eu-west-1")[i % 2],
                    "accountId": f"{205767712438 + i % 7}",
                }
                if tracking == "EC2"
                else None
            ),
        }

    def detections(self, host: Host, scan: int, processed: datetime) -> Iterator[dict[str, Any]]:
        """The host's detections as of its processing number ``scan``.

        Written for speed (the benchmark serves a million of these): one integer hash per detection
        instead of a seeded ``random.Random``, timestamps formatted once per host, RESULTS cached.
        """
        c = self.config
        if c.clean_every and host.index % c.clean_every == c.clean_every - 1:
            return
        if self.life is not None:
            yield from self._life_detections(host, scan, processed)
            return
        at, before = iso(processed), iso(processed - c.host_interval)  # once per host: strftime is slow
        first_day, first_clock = host.first_processed.toordinal(), iso(host.first_processed)[10:]
        cycle = len(STATUS_CYCLE)
        days = self._day_cache
        seed = c.seed * 0x9E3779B97F4A7C15 + host.index * 0x100000001B3
        for j in range(c.detections_per_host):
            r = _mix(seed + j)
            found_day = first_day - (r >> 40) % 30
            found = days.get(found_day) or days.setdefault(found_day, date.fromordinal(found_day).isoformat())
            offset = r % cycle
            status = STATUS_CYCLE[(scan + offset) % cycle] if scan or offset else "New"
            has_port = (r >> 8) % 10 < 8
            yield {
                "UNIQUE_VULN_ID": host.id * 1000 + j,
                "QID": 10_000 + j * 37 + (r >> 16) % 30,
                "TYPE": "Confirmed" if (r >> 24) % 10 < 7 else "Potential",
                "SEVERITY": 1 + (r >> 32) % 5,
                "PORT": (22, 80, 443, 3389, 8080)[j % 5] if has_port else None,
                "PROTOCOL": ("tcp" if j % 4 else "udp") if has_port else None,
                "SSL": 1 if has_port and j % 5 == 2 else 0,
                "RESULTS": self._results(host.index, j),
                "STATUS": status,
                "FIRST_FOUND_DATETIME": found + first_clock,
                "LAST_FOUND_DATETIME": at if status != "Fixed" else before,
                "TIMES_FOUND": scan + 1,
                "LAST_TEST_DATETIME": at,
                "LAST_UPDATE_DATETIME": at,
                "LAST_FIXED_DATETIME": at if status == "Fixed" else None,
                "TIMES_REOPENED": _times_reopened(scan, offset),
                "IS_IGNORED": 0,
                "IS_DISABLED": 0,
                "LAST_PROCESSED_DATETIME": at,
                "QDS": 1 + (r >> 44) % 100,
                "QDS_FACTORS": (r >> 52) % len(QDS_FACTOR_SETS),  # the variant of QDS_FACTOR_SETS
            }

    def hidden_detections(self, host: Host, scan: int, processed: datetime) -> Iterator[dict[str, Any]]:
        """The detections Qualys leaves out by default: an information-gathered (``TYPE`` Info, shown with
        ``show_igs=1``), an ignored (``include_ignored=1``) or a disabled one (``include_disabled=1``), on
        every fifth host from the second, third and fourth (none on clean hosts). ``@shown_by`` names the
        parameter that shows it (ground truth only; it is not rendered)."""
        c = self.config
        kind = HIDDEN_KINDS.get(host.index % 5)
        if kind is None or (c.clean_every and host.index % c.clean_every == c.clean_every - 1):
            return
        if self.life is not None:  # the lifecycle's ground truth covers the detections it draws, only those
            return
        label, shown_by, qid = kind
        r = _mix(c.seed * 0x9E3779B97F4A7C15 + host.index * 0x100000001B3 + 0xB1D)
        at = iso(processed)
        yield {
            "UNIQUE_VULN_ID": host.id * 1000 + 900 + host.index % 5,
            "QID": qid,
            "TYPE": "Info" if label == "Info" else "Confirmed",
            "SEVERITY": 1 if label == "Info" else 3,
            "PORT": None,
            "PROTOCOL": None,
            "SSL": 0,
            "RESULTS": self._results(host.index, 0),
            "STATUS": "Active" if scan else "New",
            "FIRST_FOUND_DATETIME": iso(host.first_processed),
            "LAST_FOUND_DATETIME": at,
            "TIMES_FOUND": scan + 1,
            "LAST_TEST_DATETIME": at,
            "LAST_UPDATE_DATETIME": at,
            "LAST_FIXED_DATETIME": None,
            "TIMES_REOPENED": 0,
            "IS_IGNORED": 1 if label == "ignored" else 0,
            "IS_DISABLED": 1 if label == "disabled" else 0,
            "LAST_PROCESSED_DATETIME": at,
            "QDS": 1 + (r >> 44) % 100,
            "QDS_FACTORS": (r >> 52) % len(QDS_FACTOR_SETS),
            "@shown_by": shown_by,
        }

    def _life_detections(self, host: Host, scan: int, processed: datetime) -> Iterator[dict[str, Any]]:
        """The host's detections at its processing ``scan``, as the lifecycle left them."""
        assert self.life is not None
        c = self.config
        at = iso(processed)
        for j, slot in enumerate(self.life.states(host.index, scan)):
            if slot.status is None:
                continue
            life = detection_fields(slot, processed, host.first_processed, c.host_interval)
            fixed, reopened = life["LAST_FIXED"], life["LAST_REOPENED"]
            yield {
                "UNIQUE_VULN_ID": host.id * 1000 + j,
                "QID": 10_000 + j * 37 + host.index % 30,
                "TYPE": "Confirmed" if (host.index + j) % 10 < 7 else "Potential",
                "SEVERITY": life["SEVERITY"],
                "QDS": life["QDS"],
                "QDS_FACTORS": (host.index + j) % len(QDS_FACTOR_SETS),
                "PORT": (22, 80, 443, 3389, 8080)[j % 5] if j % 10 < 8 else None,
                "PROTOCOL": ("tcp" if j % 4 else "udp") if j % 10 < 8 else None,
                "SSL": 1 if j % 5 == 2 else 0,
                "RESULTS": self._results(host.index, j),
                "STATUS": life["STATUS"],
                "FIRST_FOUND_DATETIME": iso(life["FIRST_FOUND"]),
                "LAST_FOUND_DATETIME": at if slot.status != "Fixed" else iso(fixed),
                "TIMES_FOUND": scan + 1 - slot.found,
                "LAST_TEST_DATETIME": at,
                "LAST_UPDATE_DATETIME": at,
                "LAST_FIXED_DATETIME": iso(fixed) if fixed is not None else None,
                "LAST_REOPENED_DATETIME": iso(reopened) if reopened is not None else None,
                "TIMES_REOPENED": slot.times_reopened,
                "IS_IGNORED": 0,
                "IS_DISABLED": 0,
                "LAST_PROCESSED_DATETIME": at,
            }

    def transitions(self, now: datetime, since: datetime | None = None) -> list[tuple[datetime, str, str, str | None]]:
        """Ground truth of the lifecycle: ``(time, detection key, kind, status after)`` of every change at or
        after ``since`` and strictly before ``now`` (as windows ``[since, now)`` see them), in time order
        (``kind``: ``new``, ``status``, ``updated``, ``removed``); an observer that saw every processing sees
        exactly these."""
        assert self.life is not None, "transitions need SimConfig(lifecycle=True)"
        c = self.config
        out: list[tuple[datetime, str, str, str | None]] = []
        for index in range(c.hosts):
            host = self.host(index)
            bound = min(now, host.purged) if host.purged is not None else now
            last = host.processed_at(bound - timedelta(microseconds=1))  # processings strictly before `bound`
            if last is None:
                continue
            before = (ABSENT,) * c.detections_per_host
            for k in range(last[0] + 1):
                at = host.first_processed + k * host.interval
                after = self.life.states(index, k)
                if since is None or at >= since:
                    for j, (old, new) in enumerate(zip(before, after, strict=True)):
                        kind = diff(old, new)
                        if kind is not None:
                            out.append((at, f"{host.id}:{host.id * 1000 + j}", kind, new.status))
                before = after
            if host.purged is not None and host.purged < now and (since is None or host.purged >= since):
                for j, old in enumerate(before):
                    if old.status is not None:
                        out.append((host.purged, f"{host.id}:{host.id * 1000 + j}", "removed", None))
        out.sort()
        return out

    def _results(self, i: int, j: int) -> str:
        key = (j, (i + j) % 17 == 0, (i + j) % 11 == 0)
        found = self._results_cache.get(key)
        if found is None:
            size = max(self.config.results_bytes, 4096) if key[1] else self.config.results_bytes  # multi-KB RESULTS
            base = f"Package\tInstalled Version\tRequired Version\nopenssl\t1.1.{j}\t1.1.{j + 1}\n"
            if key[2]:
                base += f"{UNICODE} ]]> end\n"
            found = self._results_cache[key] = (base * (size // len(base) + 1))[:size]
        return found

    def hosts_processed(
        self,
        now: datetime,
        after: datetime | None,
        before: datetime | None,
        id_from: int = 0,
        id_to: int | None = None,
    ) -> Iterator[tuple[Host, int, datetime]]:
        """Hosts (ID ascending, from index ``id_from``, up to ID ``id_to``) whose latest processing is strictly
        between the bounds."""
        end = len(self.host_ids) if id_to is None else bisect.bisect_right(self.host_ids, id_to)
        for index in range(id_from, end):
            host = self.host(index)
            state = host.processed_at(now)
            if state is None:
                continue
            scan, processed = state
            if after is not None and not processed > after:
                continue
            if before is not None and not processed < before:
                continue
            yield host, scan, processed

    # ------------------------------------------------------------------ KnowledgeBase

    def kb_qids(self) -> list[int]:
        """Every QID the KnowledgeBase knows, ascending: each one detections can carry, and a few more.

        ``kb_missing`` QIDs are left out (detections carry them, the KB does not know them)."""
        c = self.config
        qids = {10_000 + j * 37 + k for j in range(c.detections_per_host) for k in range(30)}
        qids.update(range(9_000, 9_005))  # QIDs no detection carries
        return sorted(qids - set(c.kb_missing))

    def kb_vuln(self, qid: int, now: datetime) -> dict[str, Any] | None:
        """QID ``qid`` as the KB holds it at ``now`` (``None`` if unknown): the tests' ground truth.

        Shapes vary with the QID, as real answers do: CVSS v3 and v2 with vectors, v2 only with numeric codes
        and ``BASE source="service"``, no CVSS and no CVE (information gathered), CVE_LIST right after TITLE,
        lists of one, HTML and ``&quot;`` inside CDATA, a solution longer than 2 KiB, comments inside a VULN,
        and now and then hundreds of CVEs. Each QID is modified once inside the dataset's span: before that
        its title, CVSS temporal score and threat intelligence are the older ones.
        """
        if qid not in self._kb_known:
            return None
        c = self.config
        r = _mix(c.seed * 0x51ED27 + qid * 0x9E3779B9)
        shape = qid % 7
        modified_at = c.base + timedelta(seconds=r % max(1, int(c.span.total_seconds())))
        published = c.base - timedelta(days=30 + (r >> 20) % 3000)
        bumped = now >= modified_at
        title = f"Simulated vulnerability {qid} in component {(r >> 8) % 97}"
        if shape == 4:
            title = f'Vendor "Widget" {qid} <script> & more'
        if bumped:
            title += " (updated)"
        cves = [f"CVE-20{20 + (r >> 12) % 6}-{1000 + (qid * 7 + n) % 9000}" for n in range(1 + (r >> 4) % 3)]
        if shape == 2:
            cves = []
        if qid % 97 == 5:
            cves = [f"CVE-2024-{10_000 + n}" for n in range(250)]
        v3 = None
        if shape in (0, 3, 5):
            base = f"{5 + (r >> 28) % 5}.{(r >> 32) % 10}"
            v3 = {
                "BASE": base,
                "TEMPORAL": f"{4 + (r >> 36) % 4}.{int(bumped)}",
                "VECTOR_STRING": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
                if shape != 3
                else "CVSS:3.0/AV:L/AC:H/PR:L/UI:R/S:C/C:L/I:L/A:N",
                "CVSS3_VERSION": None if shape == 5 else ("3.0" if shape == 3 else "3.1"),
            }
        v2 = None
        if shape in (0, 1, 4, 6):
            v2 = {
                "BASE": f"{3 + (r >> 40) % 7}.{(r >> 44) % 10}",
                "TEMPORAL": f"{2 + (r >> 48) % 4}.{(r >> 52) % 10}",
                "VECTOR_STRING": None if shape == 1 else "CVSS:2.0/AV:N/AC:L/Au:N/C:C/I:C/A:C/E:U/RL:U/RC:C",
                "source": "service" if shape == 1 else None,
            }
        intel = [(8, "No_Patch")] if shape == 3 else []
        if shape == 0:
            intel = [(2, "Exploit_Public"), (5, "Easy_Exploit")] + ([(15, "Remote_Code_Execution")] if bumped else [])
        solution = f'Apply the vendor update for {qid}.<P>See <A HREF="https://vendor.example/{qid}">advisory</A>.'
        if shape == 4:
            solution = ("Users are advised to upgrade. &quot;Quoted&quot; text. <BR>" * 60).strip()
        return {
            "QID": qid,
            "shape": shape,
            "VULN_TYPE": (
                "Vulnerability",
                "Potential Vulnerability",
                "Information Gathered",
                "Vulnerability or Potential Vulnerability",
            )[2 if shape == 2 else (r >> 56) % 2 * 3],
            "SEVERITY_LEVEL": 1 + (r >> 2) % 5,
            "TITLE": title,
            "CATEGORY": ("CGI", "Local", "Security Policy", "Web server", "Windows")[qid % 5],
            "LAST_SERVICE_MODIFICATION_DATETIME": iso(modified_at if bumped else published),
            "PUBLISHED_DATETIME": iso(published),
            "PATCHABLE": 0 if shape in (2, 3) else 1,
            "CVE_IDS": cves,
            "VENDOR_REFERENCES": [(f"VR-{qid}-{n}", f"https://vendor.example/{qid}/{n}") for n in range(shape % 3)],
            "SOFTWARE": [("None" if shape == 3 else f"product{qid % 11}", "multi-vendor" if shape == 3 else "vendor")],
            "DIAGNOSIS": f"The host runs a component affected by {qid}.",
            "SOLUTION": solution,
            "CVSS": v2,
            "CVSS_V3": v3,
            "THREAT_INTEL": intel,
            "EXPLOITS": [("The Exploit-DB", cves[0], f"http://www.exploit-db.com/exploits/{qid}")]
            if shape == 0 and cves
            else [],
            "AUTH_TYPES": ["Windows"] if shape in (1, 4) else [],
            "REMOTE": int(shape != 4),
            "IS_DISABLED": 0,
            # a subscription user edited it long ago (LAST_CUSTOMIZATION: its own DATETIME and USER_LOGIN)
            "LAST_CUSTOMIZATION": iso(published + timedelta(days=7)) if shape == 1 else None,
        }

    # ------------------------------------------------------------------ scans

    def scans(self, now: datetime) -> Iterator[dict[str, Any]]:
        """Scans launched by ``now``, newest first, with their state at ``now``."""
        c = self.config
        rows = []
        for n in range(c.scans):
            rng = random.Random(f"{c.seed}:scan:{n}")  # noqa: S311
            launch = c.base + timedelta(seconds=int(c.span.total_seconds() * n / max(1, c.scans)))
            if n % 5 == 4 and n != c.scans - 1:  # two scans launched in the same second
                launch = c.base + timedelta(seconds=int(c.span.total_seconds() * (n - 1) / max(1, c.scans)))
            if launch > now:
                continue
            duration = timedelta(minutes=5 + rng.randrange(120))
            if n == c.scans - 1:
                duration = timedelta(hours=4)  # the newest scan is still running for a while
            finished = now >= launch + duration
            state = ("Error" if n % 13 == 12 else "Finished") if finished else "Running"
            elapsed = duration if finished else now - launch
            hh, rem = divmod(int(elapsed.total_seconds()), 3600)
            rows.append(
                {
                    "REF": f"scan/{int(launch.timestamp())}.{10_000 + n}",
                    "TYPE": ("Scheduled", "On-Demand", "API")[n % 3],
                    "TITLE": f"Weekly perimeter scan {n} — {UNICODE}" if n % 7 == 3 else f"Weekly perimeter scan {n}",
                    "USER_LOGIN": "demo_user",
                    "LAUNCH_DATETIME": iso(launch),
                    "DURATION": f"{hh:02d}:{rem // 60:02d}:{rem % 60:02d}" if finished else "Running",
                    "PROCESSING_PRIORITY": "0 - No Priority",
                    "PROCESSED": 1 if finished else 0,
                    "STATE": state,
                    "SUB_STATE": "No_Vuln" if finished and n % 4 == 0 else None,
                    "TARGET": f"10.0.{n}.0/24",
                    "OPTION_PROFILE": "Initial Options",
                }
            )
        rows.sort(key=lambda r: (r["LAUNCH_DATETIME"], r["REF"]), reverse=True)
        yield from rows

    # ------------------------------------------------------------------ activity log

    def _activity_times(self) -> list[datetime]:
        c = self.config
        rng = random.Random(f"{c.seed}:activity")  # noqa: S311
        times: list[datetime] = []
        for n in range(c.activity_rows):
            t = c.base + timedelta(seconds=int(c.span.total_seconds() * n / max(1, c.activity_rows)))
            if n and rng.random() < 0.25:
                t = times[-1]  # several rows share one second
            times.append(t)
        return times

    def activity(self, now: datetime, since: datetime | None, until: datetime | None) -> list[tuple[int, list[str]]]:
        """(row id, CSV fields) of rows in ``[since, until]`` existing at ``now``, newest first.

        Row ids grow with time, so ``id_max`` paging walks back in time as Qualys' does.
        """
        rows: list[list[str]] = []
        for n, t in enumerate(self._activity):
            action, module, details = ACTIONS[n % len(ACTIONS)]
            details = details.format(n=n, ip=f"10.1.{n % 255}.{n % 200}")
            if n % 9 == 0:
                details = f'{{"json": "with ""quotes"" and, commas", "n": {n}}}'
            user_ip = "N/A" if n % 6 == 5 else f"192.0.2.{n % 250}"
            row = [iso(t), action, module, details, f"user{n % 4}", "Manager" if n % 3 else "Reader", user_ip]
            rows.append(row)
            if n % 23 == 7:  # an identical row in the same second, as real logs have
                rows.append(list(row))
        out = []
        for row_id, row in enumerate(rows, start=1):
            t = datetime.strptime(row[0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            if t > now or (since is not None and t < since) or (until is not None and t > until):
                continue
            out.append((row_id, row))
        out.reverse()
        return out

    # ------------------------------------------------------------------ FIM

    def _fim_times(self) -> list[tuple[datetime, datetime]]:
        c = self.config
        rng = random.Random(f"{c.seed}:fim")  # noqa: S311
        out: list[tuple[datetime, datetime]] = []
        for n in range(c.fim_events):
            processed = c.base + timedelta(milliseconds=int(c.span.total_seconds() * 1000 * n / max(1, c.fim_events)))
            processed = processed.replace(microsecond=(processed.microsecond // 100_000) * 100_000)
            if n and rng.random() < 0.2:
                processed = out[-1][1]  # several events share one processedTime
            late = timedelta(days=2) if n % 37 == 5 else timedelta(seconds=4 + rng.randrange(300))
            out.append((processed - late, processed))
        return out

    def fim_times(self, n: int) -> tuple[datetime, datetime]:
        """``(dateTime, processedTime)`` of event ``n``."""
        return self._fim_processed[n]

    def fim_event_id(self, n: int) -> str:
        """The id of event ``n``."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim:{self.config.seed}:fim:{n}"))

    def fim_event(self, n: int) -> dict[str, Any]:
        """FIM event ``n`` with the field tree of the public samples."""
        c = self.config
        happened, processed = self._fim_processed[n]
        rng = random.Random(f"{c.seed}:fimev:{n}")  # noqa: S311
        host = n % max(1, c.hosts)
        return {
            "id": self.fim_event_id(n),
            "customerId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim:{c.seed}:customer")),
            "dateTime": fim_time(happened),
            "processedTime": fim_time(processed),
            "action": ("Create", "Delete", "Rename", "Attributes", "Content", "Security")[n % 6],
            "type": "File",
            "class": "Disk",
            "platform": "WINDOWS" if n % 3 else "LINUX",
            "severity": 1 + rng.randrange(5),
            "name": f"file{n}.cfg",
            "fullPath": f"C:\\ProgramData\\app\\file{n}.cfg" if n % 3 else f"/etc/app/file{n}.cfg",
            "incidentId": None,
            "changedAttributes": [1 + n % 3] if n % 6 == 3 else None,
            "oldContent": None,
            "newContent": None,
            "actor": {
                "process": "svchost.exe",
                "processID": 1000 + n % 5000,
                "imagePath": "C:\\Windows\\svchost.exe",
                "userName": f"user{n % 4}",
                "userID": "S-1-5-18",
            },
            "asset": {
                "agentId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim:{c.seed}:agent:{host}")),
                "agentVersion": "5.1.0.0",
                "assetType": "HOST",
                "hostId": str(100_000 + 3 * host),
                "name": f"host-{host:06d}",
                "netbiosName": f"HOST{host:06d}",
                "operatingSystem": OSES[host % 5],
                "lastLoggedOnUser": f"user{n % 4}",
                "created": fim_time(c.base),
                "updated": fim_time(processed),
                "lastCheckedIn": iso(processed),
                "system": {"lastBoot": iso(c.base)},
                "tags": [str(700 + host % 3)],
                "ec2": None,
                "interfaces": [
                    {
                        "address": f"10.0.0.{host % 250}",
                        "hostname": f"host-{host:06d}",
                        "interfaceName": "eth0",
                        "macAddress": "00:00:5e:00:53:01",
                    }
                ],
            },
            "profiles": [
                {
                    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "sim:profile")),
                    "name": "PCI profile",
                    "type": "WINDOWS",
                    "category": {"id": "1", "name": "PCI"},
                    "rules": [
                        {
                            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "sim:rule")),
                            "name": "Config files",
                            "description": UNICODE,
                            "number": 1,
                            "section": None,
                            "severity": 4,
                            "type": "file",
                        }
                    ],
                }
            ],
        }

    def fim_events_at(self, now: datetime) -> Iterator[int]:
        """Indexes of FIM events processed and indexed (searchable) by ``now``."""
        for n, (_happened, processed) in enumerate(self._fim_processed):
            if processed + self.fim_index_delay(n) <= now:
                yield n

    def fim_index_delay(self, n: int) -> timedelta:
        """How long after its ``processedTime`` event ``n`` becomes searchable (0 to ``fim_index_delay``)."""
        most = self.config.fim_index_delay
        return most * ((n * 7919) % 101) / 100 if most else timedelta(0)

    def fim_incident(self, n: int, now: datetime) -> dict[str, Any] | None:
        """Incident ``n`` as of ``now`` (``None`` before it exists); it closes (and is updated) later."""
        c = self.config
        created = c.base + timedelta(seconds=int(c.span.total_seconds() * n / max(1, c.fim_incidents)))
        if created > now:
            return None
        closes = created + timedelta(hours=6 + n % 12)
        closed = now >= closes
        user = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "sim:user")), "name": "demo"}
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim:{c.seed}:incident:{n}")),
            "name": f"Incident {n}",
            "type": "AUTOMATED" if n % 2 else "DEFAULT",
            "status": "CLOSED" if closed else "OPEN",
            "approvalStatus": "APPROVED" if closed else "PENDING",
            "approvalType": "MANUAL",
            "approvalDate": fim_time(closes) if closed else None,
            "changeType": "MANUAL",
            "dispositionCategory": "PATCHING" if closed else None,
            "comment": "closed by simulator" if closed else "",
            "reviewers": ["demo"],
            "filters": [f"incidentId: 'sim-{n}'"],
            "filterFromDate": fim_time(created - timedelta(hours=1)),
            "filterToDate": fim_time(created),
            "assignDate": fim_time(created),
            "createdBy": {"date": ms(created), "user": user},
            "lastUpdatedBy": {"date": ms(closes if closed else created), "user": user},
            "customerId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim:{c.seed}:customer")),
            "marked": False,
            "deleted": False,
            "markupStatus": None,
            "ruleId": None,
            "ruleName": None,
            "slaDurationKey": None,
            "slaViolationDate": None,
        }

    def incident_events(self, n: int) -> list[int]:
        """Indexes of the FIM events that belong to incident ``n``."""
        c = self.config
        return [e for e in range(c.fim_events) if e % max(1, c.fim_incidents * 5) == n]
