"""The scripts users write instead of the collector, against the same simulator data in the same run.

Each script runs in its own process (CPU = user + sys from ``os.wait4``, peak RSS sampled), pages with
``truncation_limit=1000`` and the ``WARNING/URL`` ``id_min``, and writes one JSON line per detection (host
fields + detection) to a file; the collector beside them does what it always does (state, outbox, Devo over
mutual TLS to a real rsyslog, timed until rsyslog holds every detection):

- ``qualysapi+xmltodict``: ``qualysapi.connect(...).request(...)``, ``xmltodict.parse`` of each page;
- ``qualysapi+objectify``: the same requests, ``lxml.objectify.fromstring`` of each page;
- ``elementtree``: ``urllib`` GET, ``xml.etree.ElementTree.fromstring`` of each page.

    pip install -e '.[bench]'      # qualysapi, xmltodict (bench only, not runtime dependencies)
    python bench/peers.py          # 1M detections (100,000 hosts)
    python bench/peers.py --hosts 20000

The one change to the qualysapi scripts is the base URL: qualysapi always builds ``https://<hostname>/``, and
the simulator serves plain HTTP on loopback. The last line is machine-readable:
``collector_us_per_det=C best_peer=NAME best_peer_us_per_det=P vs_best_peer=R`` plus ``<peer>_us_per_det=…``.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from harness import DETECTIONS_PER_HOST, PARAMS, Simulator, run_child
from hld import end_to_end

from qualys_collector.relay import Certs

API = "/api/2.0/fo/asset/host/vm/detection/"
PAGE = {**PARAMS, "truncation_limit": "1000"}
PEERS = ("qualysapi+xmltodict", "qualysapi+objectify", "elementtree")


def next_id_min(url: str | None) -> str | None:
    """``id_min`` of a ``WARNING/URL``, or ``None`` on the last page."""
    if not url:
        return None
    return parse_qs(urlparse(url.strip()).query)["id_min"][0]


def connect(base_url: str) -> Any:
    """``qualysapi.connect`` with the simulator's plain-HTTP base URL."""
    import qualysapi  # type: ignore[import-not-found,unused-ignore]

    qgc = qualysapi.connect(username="demo", password="demo", hostname=urlparse(base_url).netloc)
    qgc.url_api_version = lambda _version: f"{base_url}/"
    return qgc


def qualysapi_xmltodict(base_url: str, out: Any) -> int:
    import xmltodict  # type: ignore[import-not-found,unused-ignore]

    qgc = connect(base_url)
    params, written = dict(PAGE), 0
    while True:
        doc = xmltodict.parse(qgc.request(API, params))
        response = doc["HOST_LIST_VM_DETECTION_OUTPUT"]["RESPONSE"]
        hosts = (response.get("HOST_LIST") or {}).get("HOST", [])
        for host in hosts if isinstance(hosts, list) else [hosts]:
            detections = host["DETECTION_LIST"]["DETECTION"]
            fields = {k: v for k, v in host.items() if k != "DETECTION_LIST"}
            for detection in detections if isinstance(detections, list) else [detections]:
                out.write(json.dumps({"HOST": fields, "DETECTION": detection}) + "\n")
                written += 1
        id_min = next_id_min((response.get("WARNING") or {}).get("URL"))
        if id_min is None:
            return written
        params["id_min"] = id_min


def qualysapi_objectify(base_url: str, out: Any) -> int:
    from lxml import objectify

    qgc = connect(base_url)
    params, written = dict(PAGE), 0
    while True:
        root = objectify.fromstring(qgc.request(API, params).encode("utf-8"))
        response = root.RESPONSE
        for host in response.HOST_LIST.HOST if hasattr(response, "HOST_LIST") else []:
            fields = {c.tag: c.text for c in host.iterchildren() if c.tag != "DETECTION_LIST"}
            for detection in host.DETECTION_LIST.DETECTION:
                record = {"HOST": fields, "DETECTION": {c.tag: c.text for c in detection.iterchildren()}}
                out.write(json.dumps(record) + "\n")
                written += 1
        id_min = next_id_min(str(response.WARNING.URL) if hasattr(response, "WARNING") else None)
        if id_min is None:
            return written
        params["id_min"] = id_min


def elementtree(base_url: str, out: Any) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(b"demo:demo").decode(), "X-Requested-With": "script"}
    params, written = dict(PAGE), 0
    while True:
        url = f"{base_url}{API}?{urlencode(params)}"
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as answer:
            root = ET.fromstring(answer.read())
        for host in root.iter("HOST"):
            fields = {child.tag: (child.text or "").strip() for child in host if len(child) == 0}
            for detection in host.iter("DETECTION"):
                record = {"HOST": fields, "DETECTION": {child.tag: child.text for child in detection}}
                out.write(json.dumps(record) + "\n")
                written += 1
        id_min = next_id_min(root.findtext("RESPONSE/WARNING/URL"))
        if id_min is None:
            return written
        params["id_min"] = id_min


SCRIPTS = {"qualysapi+xmltodict": qualysapi_xmltodict, "qualysapi+objectify": qualysapi_objectify}
SCRIPTS["elementtree"] = elementtree


def run_script(name: str, base_url: str, out: Path, expected: int) -> None:
    """One peer script, in this (child) process."""
    with out.open("w", encoding="utf-8") as sink:
        written = SCRIPTS[name](base_url, sink)
    if written != expected:
        raise SystemExit(f"{name} wrote {written} detections, expected {expected}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100_000, help="hosts (x10 detections)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each, alternated")
    parser.add_argument("--script", choices=PEERS, help=argparse.SUPPRESS)  # the child process's side
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    expected = args.hosts * DETECTIONS_PER_HOST
    if args.script:
        run_script(args.script, args.url, args.out, expected)
        return
    rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ("collector", *PEERS)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs = Certs.mint(root / "certs")
        sim = Simulator.start(args.hosts)
        try:
            for n in range(args.repeat):
                r = end_to_end(sim, root / f"collector-{n}", certs, expected, {})
                rows["collector"].append((r["cpu_s"], r["seconds"], r["rss_mb"]))
                for name in PEERS:
                    out = root / f"{name}.jsonl"
                    argv = [sys.executable, __file__, "--hosts", str(args.hosts), "--script", name]
                    child = run_child([*argv, "--url", sim.url, "--out", str(out)], stderr=root / f"{name}.log")
                    if child.code != 0:
                        raise SystemExit(f"{name} failed: {(root / f'{name}.log').read_text()[-2000:]}")
                    rows[name].append((child.cpu_s, child.seconds, child.rss_mb))
                    out.unlink()
        finally:
            sim.stop()
    print(f"{expected:,} detections, {args.repeat} run(s) each (CPU = user + sys of the process tree):")
    us: dict[str, float] = {}
    for name, runs in rows.items():
        cpu = sorted(r[0] for r in runs)[len(runs) // 2]
        us[name] = cpu / expected * 1e6
        for cpu_s, seconds, rss in runs:
            print(
                f"  {name:<20} CPU {cpu_s / expected * 1e6:6.1f} µs/det, {expected / seconds:>7,.0f} det/s, "
                f"peak RSS {rss:4.0f} MB"
            )
    best = min(PEERS, key=lambda name: us[name])
    line = (
        f"collector_us_per_det={us['collector']:.1f} best_peer={best} best_peer_us_per_det={us[best]:.1f} "
        f"vs_best_peer={us['collector'] / us[best]:.2f} "
    )
    print(line + " ".join(f"{name.replace('+', '_')}_us_per_det={us[name]:.1f}" for name in PEERS))


if __name__ == "__main__":
    main()
