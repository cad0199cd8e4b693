"""Host list detection pull benchmark: simulator -> parse -> outbox -> file sink, in separate processes.

Prints detections/s and the peak RSS of the collector at a small and a large size (memory must not grow
with the number of detections), and the simulator's start time and peak RSS.

    python bench/hld.py            # 100k and 1M detections
    python bench/hld.py --quick    # 100k and 200k detections (under a minute)
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

CLI = [sys.executable, "-m", "qualys_collector"]
DETECTIONS_PER_HOST = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PeakRss(threading.Thread):
    """Samples a process's RSS every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            self.done.wait(0.05)


def start_simulator(hosts: int) -> tuple[subprocess.Popen[bytes], str, float]:
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
                return proc, f"http://127.0.0.1:{port}", time.monotonic() - started
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise SystemExit("the simulator did not start within 30 s")


def pull(hosts: int, workdir: Path) -> dict[str, float]:
    sim, url, start_s = start_simulator(hosts)
    sim_rss = PeakRss(sim.pid)
    sim_rss.start()
    try:
        config = {
            "globals": {"persistence": {"config": {"directory_name": str(workdir / "state")}}},
            "outputs": {"file": {"type": "file", "config": {"path": str(workdir / "events.jsonl")}}},
            "inputs": {
                "qualys": {
                    "id": "bench",
                    "credentials": {"base_url": url, "username": "demo", "password": "demo"},
                    "services": {
                        "host_list_detection": {"start_time_utc": "2000-01-01T00:00:00Z", "truncation_limit": 1000}
                    },
                }
            },
        }
        path = workdir / "config.json"
        path.write_text(json.dumps(config))
        started = time.monotonic()
        proc = subprocess.Popen(
            [*CLI, "run", "-c", str(path), "--once"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        rss = PeakRss(proc.pid)
        rss.start()
        code = proc.wait()
        seconds = time.monotonic() - started
        rss.done.set()
        rss.join()
        if code != 0:
            raise SystemExit(f"the collector failed (exit {code}); see {workdir}")
        with (workdir / "events.jsonl").open("rb") as handle:
            delivered = sum(1 for line in handle if line.startswith(b'{"tag":"vuln.qualys.hostdetections"'))
        expected = hosts * DETECTIONS_PER_HOST
        if delivered != expected:
            raise SystemExit(f"delivered {delivered} detections, expected {expected}")
        return {
            "detections": delivered,
            "seconds": seconds,
            "rss_mb": rss.peak / 2**20,
            "sim_start_s": start_s,
            "sim_rss_mb": sim_rss.peak / 2**20,
        }
    finally:
        sim_rss.done.set()
        sim.terminate()
        sim.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k and 200k detections")
    args = parser.parse_args()
    small, large = (10_000, 20_000) if args.quick else (10_000, 100_000)
    results = []
    for hosts in (small, large):
        with tempfile.TemporaryDirectory() as tmp:
            result = pull(hosts, Path(tmp))
        results.append(result)
        print(
            f"{result['detections']:>9,} detections in {result['seconds']:6.1f} s = "
            f"{result['detections'] / result['seconds']:>8,.0f}/s; collector peak RSS {result['rss_mb']:.0f} MB; "
            f"simulator start {result['sim_start_s']:.2f} s, peak RSS {result['sim_rss_mb']:.0f} MB"
        )
    big = results[-1]
    print(
        f"detections_per_s={big['detections'] / big['seconds']:.0f} rss_mb_small={results[0]['rss_mb']:.0f} "
        f"rss_mb_large={big['rss_mb']:.0f} sim_start_s={big['sim_start_s']:.2f} sim_rss_mb={big['sim_rss_mb']:.0f}"
    )


if __name__ == "__main__":
    main()
