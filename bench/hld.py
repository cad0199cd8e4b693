"""Host list detection benchmark: what the collector costs, against the parse floor, in one run.

1. end to end: simulator -> collector (fetch, parse, outbox) -> Devo sink -> a real rsyslog over mutual TLS,
   counted when rsyslog has written every detection (separate processes, as in production); the collector's
   CPU is user + sys of its whole process tree (``os.wait4``), per million detections;
2. the parse floor: the same bytes through ``lxml.etree.iterparse`` alone (host elements, cleared), its CPU
   in the same run; ``cpu_vs_parse`` is the collector's CPU over it;
3. a plain script: one GET per page, the whole body read, parsed with ElementTree, one JSON line per detection;
4. the collector's peak RSS (its process tree) at the small and the large size (it must not grow with the estate);
5. as information, the simulator's and rsyslog's CPU per detection (they share the machine's cores).

    python bench/hld.py                         # 100k and 1M detections, the default configuration
    python bench/hld.py --quick                 # 100k and 200k detections
    python bench/hld.py --parse-processes 2     # answers parsed in two child processes (opt-in)
    python bench/hld.py --baseline main --repeat 2   # A/B: another commit's collector on the same data, alternated
    python bench/hld.py --output batch_size=5000     # a key of the Devo output block (this side of an A/B only)
    python bench/hld.py --ref HEAD --baseline main   # this side from a commit too (edit the tree while it runs)

The last line is machine-readable: ``detections_per_s=N parse_limit_ratio=R script_ratio=S rss_mb_small=A
rss_mb_large=B collector_cpu_s_per_million=C parse_cpu_s_per_million=P cpu_vs_parse=V`` (with ``--baseline``
also ``baseline_detections_per_s=… baseline_cpu_s_per_million=… speedup=… cpu_ratio=…``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from harness import CLI, DETECTIONS_PER_HOST, PARAMS, PATH, Simulator, proc_cpu_s, run_child, thread_cpu_s
from lxml import etree

from qualys_collector.relay import Certs, Rsyslog

AUTH = {"Authorization": "Basic " + base64.b64encode(b"demo:demo").decode(), "X-Requested-With": "bench"}
NEEDLE = b" vuln.qualys.hostdetections: "


def count_lines(path: Path, needle: bytes) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(1 for line in handle if needle in line)


def collector_config(
    sim: Simulator, workdir: Path, relay: Rsyslog, service: dict[str, Any], output: dict[str, Any] | None = None
) -> Path:
    """A config file for one collector run against ``sim`` and ``relay``; ``service`` adds HLD options, ``output``
    keys of the Devo output block (``batch_size``)."""
    config = {
        "globals": {"persistence": {"config": {"directory_name": str(workdir / "state")}}},
        "outputs": {
            "devo": {
                "type": "devo_platform",
                **(output or {}),
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
                "services": {"host_list_detection": {"start_time_utc": "2000-01-01T00:00:00Z", **service}},
            }
        },
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    return path


def end_to_end(
    sim: Simulator,
    workdir: Path,
    certs: Certs,
    expected: int,
    service: dict[str, Any],
    *,
    output: dict[str, Any] | None = None,
    pythonpath: Path | None = None,
) -> dict[str, float]:
    """One collector run (``run --once``) into a fresh rsyslog: wall seconds until rsyslog holds every detection,
    the collector's CPU and peak RSS (its process tree), the simulator's and rsyslog's CPU meanwhile."""
    relay = Rsyslog(workdir / "relay", certs)
    relay.start()
    try:
        assert relay.proc is not None
        path = collector_config(sim, workdir, relay, service, output)
        env = dict(os.environ)
        if pythonpath is not None:  # another commit's collector (the A/B baseline)
            env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [env.get("PYTHONPATH")])])
        sim_before, relay_before = sim.cpu_s(), proc_cpu_s(relay.proc.pid)
        started = time.monotonic()
        child = run_child([*CLI, "run", "-c", str(path), "--once"], env=env, stderr=workdir / "collector.log")
        if child.code != 0:
            raise SystemExit(f"the collector failed (exit {child.code}); see {workdir / 'collector.log'}")
        deadline = time.monotonic() + 120
        while (delivered := count_lines(relay.out, NEEDLE)) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        seconds = time.monotonic() - started
        if delivered != expected:
            raise SystemExit(f"rsyslog received {delivered} detections, expected {expected}")
        sim_cpu, relay_cpu = sim.cpu_s() - sim_before, proc_cpu_s(relay.proc.pid) - relay_before
    finally:
        relay.stop()
    return {
        "seconds": seconds,
        "cpu_s": child.cpu_s,
        "rss_mb": child.rss_mb,
        "sim_cpu_s": sim_cpu,
        "relay_cpu_s": relay_cpu,
    }


def download(sim: Simulator, target: Path) -> None:
    """The whole answer in one document, the bytes the parse floor is measured on."""
    url = f"{sim.url}{PATH}?{urlencode({**PARAMS, 'truncation_limit': '0'})}"
    with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH)) as answer, target.open("wb") as out:
        while chunk := answer.read(1 << 20):
            out.write(chunk)


def parse_floor(document: Path, expected: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of lxml iterparse alone over the document: host elements, each cleared."""
    started, cpu = time.monotonic(), thread_cpu_s()
    hosts = 0
    for _event, element in etree.iterparse(str(document), events=("end",), tag="HOST", huge_tree=True):
        hosts += 1
        element.clear(keep_tail=False)
        while element.getprevious() is not None:
            del element.getparent()[0]
    seconds, cpu = time.monotonic() - started, thread_cpu_s() - cpu
    if hosts * DETECTIONS_PER_HOST != expected:
        raise SystemExit(f"the parse saw {hosts} hosts, expected {expected // DETECTIONS_PER_HOST}")
    return seconds, cpu


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


def baseline_tree(ref: str, root: Path, name: str = "baseline") -> Path:
    """``src`` of another commit of this repository, extracted beside (its collector runs from there)."""
    repo = Path(__file__).resolve().parents[1]
    target = root / name
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", ref, "src/qualys_collector"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def measure(
    hosts: int,
    root: Path,
    certs: Certs,
    *,
    compare: bool,
    service: dict[str, Any],
    output: dict[str, Any],
    baseline: Path | None,
    repeat: int,
    new: Path | None = None,
) -> dict[str, Any]:
    """The collector (and the baseline, alternated) ``repeat`` times against one simulator; the parse floor and
    the plain script on the same data when ``compare``."""
    expected = hosts * DETECTIONS_PER_HOST
    sim = Simulator.start(hosts)
    runs: dict[str, list[dict[str, float]]] = {"new": [], "baseline": []}
    try:
        for n in range(repeat):
            for name in ("new", "baseline") if baseline is not None else ("new",):
                workdir = root / f"{name}-{hosts}-{n}"
                old = name != "new"
                runs[name].append(
                    end_to_end(
                        sim,
                        workdir,
                        certs,
                        expected,
                        {} if old else service,
                        output=None if old else output,
                        pythonpath=baseline if old else new,
                    )
                )
        result: dict[str, Any] = {"detections": expected, "runs": runs, "sim_start_s": sim.start_s}
        if compare:
            document = root / "answer.xml"
            download(sim, document)
            result["bytes"] = document.stat().st_size
            result["parse_s"], result["parse_cpu_s"] = parse_floor(document, expected)
            document.unlink()
            result["script_s"] = plain_script(sim, root / "script.jsonl", expected)
    finally:
        result_rss = sim.stop()
    result["sim_rss_mb"] = result_rss
    return result


def per_million(cpu_s: float, detections: int) -> float:
    return cpu_s / detections * 1e6


def best(runs: list[dict[str, float]], key: str) -> float:
    """The median of the runs (the figure quoted); every run is printed too."""
    return statistics.median(r[key] for r in runs)


def report(label: str, r: dict[str, float], n: int) -> str:
    return (
        f"  {label:<9} {n:>9,} detections in {r['seconds']:6.1f} s = {n / r['seconds']:>7,.0f}/s; "
        f"collector CPU {r['cpu_s']:6.1f} s = {per_million(r['cpu_s'], n):5.1f} s/M, peak RSS {r['rss_mb']:4.0f} MB; "
        f"simulator {per_million(r['sim_cpu_s'], n):5.1f} µs/det, "
        f"rsyslog {per_million(r['relay_cpu_s'], n):4.1f} µs/det"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k and 200k detections")
    parser.add_argument("--parse-processes", type=int, default=None, help="parse_processes (this side only)")
    parser.add_argument("--option", action="append", default=[], help="an HLD option, KEY=JSON (this side only)")
    parser.add_argument("--output", action="append", default=[], help="a Devo output key, KEY=JSON (batch_size)")
    parser.add_argument("--baseline", help="a git ref: its collector runs on the same data, alternated (A/B)")
    parser.add_argument("--ref", help="run this side from a git ref (default: the working tree)")
    parser.add_argument("--repeat", type=int, default=1, help="collector runs per size (and per side of the A/B)")
    parser.add_argument("--hosts", type=int, nargs=2, metavar=("SMALL", "LARGE"), help="hosts of each size (x10)")
    args = parser.parse_args()
    service: dict[str, Any] = {}
    if args.parse_processes is not None:
        service["parse_processes"] = args.parse_processes
    for option in args.option:
        key, _, value = option.partition("=")
        service[key] = json.loads(value)
    output = {key: json.loads(value) for key, _, value in (o.partition("=") for o in args.output)}
    small, large = args.hosts or ((10_000, 20_000) if args.quick else (10_000, 100_000))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs = Certs.mint(root / "certs")
        baseline = baseline_tree(args.baseline, root) if args.baseline else None
        new = baseline_tree(args.ref, root, "new") if args.ref else None
        common = {"service": service, "output": output, "baseline": baseline, "repeat": args.repeat, "new": new}
        results = [
            measure(small, root, certs, compare=False, **common),
            measure(large, root, certs, compare=True, **common),
        ]
    print(f"collector: default configuration + HLD {json.dumps(service)}, output {json.dumps(output)}")
    for r in results:
        n = r["detections"]
        print(f"{n:,} detections (simulator start {r['sim_start_s']:.2f} s, peak RSS {r['sim_rss_mb']:.0f} MB):")
        for name, runs in r["runs"].items():
            for run in runs:
                print(report(name if name == "new" else f"{args.baseline}", run, n))
    big, small_r = results[-1], results[0]
    n = big["detections"]
    new = big["runs"]["new"]
    seconds, cpu = best(new, "seconds"), best(new, "cpu_s")
    rate, parse_rate, script_rate = n / seconds, n / big["parse_s"], n / big["script_s"]
    collector_m, parse_m = per_million(cpu, n), per_million(big["parse_cpu_s"], n)
    print(
        f"parse floor (lxml iterparse alone, {big['bytes'] / 2**20:,.0f} MiB): {parse_rate:,.0f}/s "
        f"({big['bytes'] / 2**20 / big['parse_s']:.0f} MiB/s), CPU {parse_m:.1f} s per million detections"
    )
    print(f"plain script (GET a page, read all, ElementTree, json.dumps): {script_rate:,.0f}/s")
    print(
        f"collector CPU (median of {len(new)}): {collector_m:.1f} s per million detections = "
        f"{collector_m / parse_m:.2f} x the parse; simulator {per_million(best(new, 'sim_cpu_s'), n):.1f} µs/det, "
        f"rsyslog {per_million(best(new, 'relay_cpu_s'), n):.1f} µs/det"
    )
    line = (
        f"detections_per_s={rate:.0f} parse_limit_ratio={rate / parse_rate:.2f} script_ratio={rate / script_rate:.2f} "
        f"rss_mb_small={max(r['rss_mb'] for r in small_r['runs']['new']):.0f} "
        f"rss_mb_large={max(r['rss_mb'] for r in new):.0f} "
        f"collector_cpu_s_per_million={collector_m:.1f} parse_cpu_s_per_million={parse_m:.1f} "
        f"cpu_vs_parse={collector_m / parse_m:.2f}"
    )
    if args.baseline:
        old = big["runs"]["baseline"]
        old_rate, old_m = n / best(old, "seconds"), per_million(best(old, "cpu_s"), n)
        print(f"baseline {args.baseline}: {old_rate:,.0f}/s, CPU {old_m:.1f} s per million detections")
        line += (
            f" baseline_detections_per_s={old_rate:.0f} baseline_cpu_s_per_million={old_m:.1f} "
            f"speedup={rate / old_rate:.2f} cpu_ratio={collector_m / old_m:.2f}"
        )
    print(line)


if __name__ == "__main__":
    sys.exit(main())
