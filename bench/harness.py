"""What the host list detection benches share: the simulator in its own process, CPU and RSS accounting.

CPU is counted by the kernel, not by a wall clock: a process this bench started and reaps itself is read
from ``os.wait4`` (user + sys of the process and of every descendant it waited for, so a collector's
child processes are in it); a process that keeps running (the simulator, rsyslog) is read from
``/proc/<pid>/stat`` before and after, its own time plus its reaped children's. On a shared machine these
figures hold up where a rate does not: a process waiting for the CPU is not charged for the wait.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from qualys_collector.relay import free_port

CLI = [sys.executable, "-m", "qualys_collector"]
DETECTIONS_PER_HOST = 10
PATH = "/api/5.0/fo/asset/host/vm/detection/"
PARAMS = {
    "action": "list",
    "status": "New,Active,Fixed,Re-Opened",
    "show_asset_id": "0",
    "show_tags": "0",
    "show_qds": "1",  # the collector asks for QDS and its factors by default: the same bytes are parsed
    "show_qds_factors": "1",
}
_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + sys) of a running process so far, its reaped children included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / _TICK


class PeakRss(threading.Thread):
    """Samples the RSS of a process and all its descendants (summed) every 50 ms."""

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


@dataclass(frozen=True)
class Child:
    """What a reaped child process cost: exit code, wall seconds, CPU seconds of its whole tree, peak RSS."""

    code: int
    seconds: float
    cpu_s: float
    rss_mb: float


def run_child(argv: list[str], *, env: dict[str, str] | None = None, stderr: Path | None = None) -> Child:
    """Run ``argv`` to its end and account for it (``os.wait4``: its own CPU and its reaped descendants')."""
    started = time.monotonic()
    with stderr.open("wb") if stderr else open(os.devnull, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
        rss = PeakRss(proc.pid)
        rss.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    return Child(proc.returncode, seconds, usage.ru_utime + usage.ru_stime, rss.stop())


@dataclass
class Simulator:
    """``qualys-collector simulate`` with a static estate (each host processed once)."""

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
        deadline = started + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    rss = PeakRss(proc.pid)
                    rss.start()
                    return cls(proc, f"http://127.0.0.1:{port}", time.monotonic() - started, rss)
            except OSError:
                time.sleep(0.02)
        proc.kill()
        raise SystemExit("the simulator did not start within 60 s")

    def cpu_s(self) -> float:
        """Its CPU seconds so far."""
        return proc_cpu_s(self.proc.pid)

    def stop(self) -> float:
        """Stop it; its peak RSS in MB."""
        peak = self.rss.stop()
        self.proc.terminate()
        self.proc.wait(10)
        return peak


def thread_cpu_s() -> float:
    """CPU seconds of the calling thread (the bench's sampling threads are not counted)."""
    return time.thread_time()
