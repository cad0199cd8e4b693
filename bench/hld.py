"""Host list detection benchmark: the four figures of issue 8, measured in one run.

1. end to end: simulator -> collector (fetch, parse, outbox) -> Devo sink -> a real rsyslog over mutual TLS,
   counted when rsyslog has written every detection (separate processes, as in production);
2. the parse limit: the same bytes through ``lxml.etree.iterparse`` alone (host elements, cleared);
3. a plain script: one GET per page, the whole body read, parsed with ElementTree, one JSON line per detection;
4. the collector's peak RSS at the small and the large size (it must not grow with the estate).

    python bench/hld.py                         # 100k and 1M detections, the default configuration
    python bench/hld.py --quick                 # 100k and 200k detections
    python bench/hld.py --parse-processes 2     # answers parsed in two child processes (opt-in)

The last line is machine-readable:
``detections_per_s=N parse_limit_ratio=R script_ratio=S rss_mb_small=A rss_mb_large=B``.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import psutil
from lxml import etree

from qualys_collector.relay import Certs, Rsyslog, free_port

CLI = [sys.executable, "-m", "qualys_collector"]
DETECTIONS_PER_HOST = 10
PATH = "/api/5.0/fo/asset/host/vm/detection/"
PARAMS = {"action": "list", "status": "New,Active,Fixed,Re-Opened", "show_asset_id": "0", "show_tags": "0"}
AUTH = {"Authorization": "Basic " + base64.b64encode(b"demo:demo").decode(), "X-Requested-With": "bench"}


class PeakRss(threading.Thread):
    """Samples the RSS of a process and its children (parsing processes) every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                family = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in family))
            except psutil.Error:
                return
            self.done.wait(0.05)

    def stop(self) -> float:
        """Peak RSS in MB."""
        self.done.set()
        self.join()
        return self.peak / 2**20


@dataclass
class Simulator:
    proc: subprocess.Popen[bytes]
    url: str
    start_s: float
    rss: PeakRss

    @classmethod
    def start(cls, hosts: int) -> Simulator:
        port = free_port()
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                *CLI,
                "simulate",
                "--port",
                str(port),
                "--hosts",
                str(hosts),
                "--detections-per-host",
                str(DETECTIONS_PER_HOST),
                "--rate-limit",
                "1000000",
                "--concurrency-limit",
                "8",
                "--host-interval-minutes",
                "10000000",  # each host processed once: a static dataset
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = started + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    rss = PeakRss(proc.pid)
                    rss.start()
                    return cls(proc, f"http://127.0.0.1:{port}", time.monotonic() - started, rss)
            except OSError:
                time.sleep(0.02)
        proc.kill()
        raise SystemExit("the simulator did not start within 30 s")

    def stop(self) -> float:
        """Stop it; its peak RSS in MB."""
        peak = self.rss.stop()
        self.proc.terminate()
        self.proc.wait(10)
        return peak


def count_lines(path: Path, needle: bytes) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(1 for line in handle if needle in line)


def end_to_end(
    sim: Simulator, workdir: Path, relay: Rsyslog, expected: int, parse_processes: int
) -> tuple[float, float]:
    """(seconds until rsyslog holds every detection, collector peak RSS in MB)."""
    config = {
        "globals": {"persistence": {"config": {"directory_name": str(workdir / "state")}}},
        "outputs": {
            "devo": {
                "type": "devo_platform",
                "config": {
                    "address": "127.0.0.1",
                    "port": relay.port,
                    "type": "SSL",
                    "chain": str(relay.certs.chain),
                    "cert": str(relay.certs.client_cert),
                    "key": str(relay.certs.client_key),
                },
            }
        },
        "inputs": {
            "qualys": {
                "id": "bench",
                "credentials": {"base_url": sim.url, "username": "demo", "password": "demo"},
                "services": {
                    "host_list_detection": {
                        "start_time_utc": "2000-01-01T00:00:00Z",
                        "parse_processes": parse_processes,
                    }
                },
            }
        },
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    started = time.monotonic()
    proc = subprocess.Popen(
        [*CLI, "run", "-c", str(path), "--once"],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "collector.log").open("wb"),
    )
    rss = PeakRss(proc.pid)
    rss.start()
    code = proc.wait()
    peak = rss.stop()
    if code != 0:
        raise SystemExit(f"the collector failed (exit {code}); see {workdir / 'collector.log'}")
    needle = b" vuln.qualys.hostdetections: "
    deadline = time.monotonic() + 120
    while (delivered := count_lines(relay.out, needle)) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    seconds = time.monotonic() - started
    if delivered != expected:
        raise SystemExit(f"rsyslog received {delivered} detections, expected {expected}")
    return seconds, peak


def download(sim: Simulator, target: Path) -> None:
    """The whole answer in one document, the bytes the parse limit is measured on."""
    url = f"{sim.url}{PATH}?{urlencode({**PARAMS, 'truncation_limit': '0'})}"
    with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH)) as answer, target.open("wb") as out:
        while chunk := answer.read(1 << 20):
            out.write(chunk)


def parse_limit(document: Path, expected: int) -> float:
    """Seconds for lxml iterparse alone over the document: host elements, each cleared, nothing else."""
    started = time.monotonic()
    hosts = 0
    for _event, element in etree.iterparse(str(document), events=("end",), tag="HOST", huge_tree=True):
        hosts += 1
        element.clear(keep_tail=False)
        while element.getprevious() is not None:
            del element.getparent()[0]
    seconds = time.monotonic() - started
    if hosts * DETECTIONS_PER_HOST != expected:
        raise SystemExit(f"the parse saw {hosts} hosts, expected {expected // DETECTIONS_PER_HOST}")
    return seconds


def plain_script(sim: Simulator, out: Path, expected: int) -> float:
    """Seconds for what a user would otherwise write: GET a page, read it all, ElementTree, JSON lines."""
    started = time.monotonic()
    url: str | None = f"{sim.url}{PATH}?{urlencode({**PARAMS, 'truncation_limit': '1000'})}"
    written = 0
    with out.open("w", encoding="utf-8") as sink:
        while url:
            with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH)) as answer:
                body = answer.read()
            root = ET.fromstring(body)
            for host in root.iter("HOST"):
                fields = {child.tag: (child.text or "").strip() for child in host if len(child) == 0}
                for detection in host.iter("DETECTION"):
                    record = {"HOST": fields, "DETECTION": {child.tag: child.text for child in detection}}
                    sink.write(json.dumps(record) + "\n")
                    written += 1
            next_url = root.find("RESPONSE/WARNING/URL")
            url = next_url.text.strip() if next_url is not None and next_url.text else None
    seconds = time.monotonic() - started
    if written != expected:
        raise SystemExit(f"the script wrote {written} detections, expected {expected}")
    return seconds


def measure(hosts: int, root: Path, certs: Certs, *, compare: bool, parse_processes: int) -> dict[str, float]:
    expected = hosts * DETECTIONS_PER_HOST
    sim = Simulator.start(hosts)
    relay = Rsyslog(root / f"relay-{hosts}", certs)
    relay.start()
    try:
        seconds, rss = end_to_end(sim, root / f"collector-{hosts}", relay, expected, parse_processes)
        result = {"detections": expected, "seconds": seconds, "rss_mb": rss, "sim_start_s": sim.start_s}
        if compare:
            document = root / "answer.xml"
            download(sim, document)
            result["bytes"] = document.stat().st_size
            result["parse_s"] = parse_limit(document, expected)
            document.unlink()
            result["script_s"] = plain_script(sim, root / "script.jsonl", expected)
    finally:
        relay.stop()
        sim_rss = sim.stop()
    result["sim_rss_mb"] = sim_rss
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k and 200k detections")
    parser.add_argument("--parse-processes", type=int, default=0, help="the collector's parse_processes")
    args = parser.parse_args()
    small, large = (10_000, 20_000) if args.quick else (10_000, 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs = Certs.mint(root / "certs")
        results = [
            measure(small, root, certs, compare=False, parse_processes=args.parse_processes),
            measure(large, root, certs, compare=True, parse_processes=args.parse_processes),
        ]
    print(f"collector: parallel ID batches (default), parse_processes={args.parse_processes}")
    for r in results:
        print(
            f"end to end: {r['detections']:>9,} detections in {r['seconds']:6.1f} s = "
            f"{r['detections'] / r['seconds']:>7,.0f}/s; collector peak RSS {r['rss_mb']:.0f} MB; "
            f"simulator start {r['sim_start_s']:.2f} s, peak RSS {r['sim_rss_mb']:.0f} MB"
        )
    big = results[-1]
    n = big["detections"]
    rate, parse_rate, script_rate = n / big["seconds"], n / big["parse_s"], n / big["script_s"]
    print(
        f"parse limit (lxml iterparse alone, {big['bytes'] / 2**20:,.0f} MiB): {parse_rate:,.0f}/s "
        f"({big['bytes'] / 2**20 / big['parse_s']:.0f} MiB/s)"
    )
    print(f"plain script (GET a page, read all, ElementTree, json.dumps): {script_rate:,.0f}/s")
    print(
        f"detections_per_s={rate:.0f} parse_limit_ratio={rate / parse_rate:.2f} script_ratio={rate / script_rate:.2f} "
        f"rss_mb_small={results[0]['rss_mb']:.0f} rss_mb_large={big['rss_mb']:.0f}"
    )


if __name__ == "__main__":
    main()
