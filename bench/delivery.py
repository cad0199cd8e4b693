"""Delivery benchmark, each output against a bare loop over the same bytes in the same run:

- ``devo_platform``: outbox -> Devo sink -> a real rsyslog over mutual TLS, vs a bare ``socket`` + ``ssl`` loop
  sending the same lines to the same rsyslog;
- ``devo_http``: outbox -> HTTP sink -> the tests' ingestion server (``tests/helpers/ingest.py``, HTTPS, in its own
  process, counting lines), vs a bare ``http.client`` loop posting the same gzip'd bodies (compressed before
  the clock starts) on one kept-alive connection to the same server.

    python bench/delivery.py             # 1,000,000 events of ~700 bytes
    python bench/delivery.py --events 200000
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.rsyslog import READY_TAG, Certs, Rsyslog

from qualys_collector.engine.outbox import Outbox
from qualys_collector.model import Event, StoredEvent
from qualys_collector.sinks.devo import DevoSink
from qualys_collector.sinks.devo_http import DevoHttpSink
from qualys_collector.sinks.drain import Drainer

TAG = "vuln.qualys.hostdetections"
BATCH = 5000


def wait_lines(relay: Rsyslog, count: int, timeout: float = 300) -> float:
    """Seconds until rsyslog has written ``count`` lines (counted by newlines, cheaply, less the relay's own
    start-up lines)."""
    started = time.monotonic()
    own = f" {READY_TAG}: ".encode()
    while time.monotonic() - started < timeout:
        if relay.out.exists():
            lines, carry = 0, b""
            with relay.out.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    lines += chunk.count(b"\n") - (carry + chunk).count(own)
                    carry = chunk[-(len(own) - 1) :]  # a marker split across two reads is counted once
                if lines >= count:
                    return time.monotonic() - started
        time.sleep(0.2)
    raise SystemExit(f"rsyslog did not receive {count} lines within {timeout} s")


class Peak:
    """Peak RSS of this process while a drain runs."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.rss = self.process.memory_info().rss
        self.done = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.done.is_set():
            self.rss = max(self.rss, self.process.memory_info().rss)
            self.done.wait(0.05)

    def stop(self) -> float:
        self.done.set()
        return self.rss / 2**20


def fill(root: Path, n: int, body: str) -> Outbox:
    outbox = Outbox(root / "state")
    outbox.register_outputs(["devo", "http"])
    for start in range(0, n, 50_000):
        outbox.commit(
            "b",
            "bench",
            [Event(tag=TAG, body=json.loads(body)) for _ in range(min(50_000, n - start))],
            {},
        )
    return outbox


def bench_platform(root: Path, certs: Certs, outbox: Outbox, n: int, body: str) -> tuple[float, float, float]:
    """Seconds for the collector, seconds for the bare loop, peak RSS (MB)."""
    relay = Rsyslog(root / "relay", certs)
    relay.start()
    sink = DevoSink("devo", "127.0.0.1", relay.port, chain=certs.chain, cert=certs.client_cert, key=certs.client_key)
    peak = Peak()
    started = time.monotonic()
    Drainer(outbox, sink, batch_size=BATCH).run(threading.Event(), until_empty=True)
    ours = time.monotonic() - started
    rss = peak.stop()
    wait_lines(relay, n)
    relay.stop()
    relay.out.unlink()

    # the physical limit: the same bytes through one bare TLS connection
    header = f"<14>Jan  1 00:00:00 bench {TAG}: ".encode()
    payload = (header + body.encode() + b"\n") * BATCH
    relay.start()
    context = ssl.create_default_context(cafile=str(certs.chain))
    context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    started = time.monotonic()
    with context.wrap_socket(socket.create_connection(("127.0.0.1", relay.port)), server_hostname="127.0.0.1") as raw:
        for _ in range(n // BATCH):
            raw.sendall(payload)
        raw.unwrap()
    bare = time.monotonic() - started
    wait_lines(relay, (n // BATCH) * BATCH)
    relay.stop()
    return ours, bare, rss


def count(url: str, context: ssl.SSLContext) -> int:
    host, port = url.removeprefix("https://").split(":")
    connection = http.client.HTTPSConnection(host, int(port), context=context)
    try:
        connection.request("GET", "/count")
        return int(connection.getresponse().read())
    finally:
        connection.close()


def wait_count(url: str, context: ssl.SSLContext, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while count(url, context) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"the ingestion server did not accept {n} lines within {timeout} s")
        time.sleep(0.1)


def bench_http(certs: Certs, outbox: Outbox, n: int, body: str) -> tuple[float, float, float]:
    """Seconds for the collector, seconds for the bare loop, peak RSS (MB); the server runs in its own process."""
    token = "BenchTokenBenchTokenBenchToken12"
    repo = Path(__file__).resolve().parents[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.ingest", "bench", token, str(certs.server_cert), str(certs.server_key)],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        if not url.startswith("https://"):
            raise SystemExit("the ingestion server did not start")
        context = ssl.create_default_context(cafile=str(certs.chain))
        sink = DevoHttpSink("http", url, "bench", token, hostname="bench", ca_bundle=certs.chain)
        peak = Peak()
        started = time.monotonic()
        Drainer(outbox, sink, batch_size=BATCH).run(threading.Event(), until_empty=True)
        ours = time.monotonic() - started
        rss = peak.stop()
        sink.close()
        wait_count(url, context, n)

        # the limit of this server and this transport: the same gzip'd bodies, compressed before the clock starts
        _tag, _events, raw_body = next(sink.requests_of([StoredEvent(i, TAG, body) for i in range(BATCH)]))
        compressor = zlib.compressobj(sink.gzip_level, zlib.DEFLATED, 31)
        gzipped = compressor.compress(raw_body) + compressor.flush()
        path = sink.url(TAG).split(url, 1)[1]
        host, port = url.removeprefix("https://").split(":")
        before = count(url, context)
        connection = http.client.HTTPSConnection(host, int(port), context=context)
        headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"}
        started = time.monotonic()
        for _ in range(n // BATCH):
            connection.request("POST", path, body=gzipped, headers=headers)
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise SystemExit(f"bare loop: HTTP {answer.status}")
        bare = time.monotonic() - started
        connection.close()
        wait_count(url, context, before + (n // BATCH) * BATCH)
    finally:
        server.kill()
        server.wait()
    return ours, bare, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.events
    body = json.dumps(
        {
            "HOST": {"ID": "123456", "IP": "10.0.0.1"},
            "DETECTION": {"QID": "38170", "RESULTS": "x" * 560},
            "@devo_pulling_id": 1717069365052,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs = Certs.mint(root / "certs")
        outbox = fill(root, n, body)
        try:
            results = {
                "devo_platform": bench_platform(root, certs, outbox, n, body),
                "devo_http": bench_http(certs, outbox, n, body),
            }
        finally:
            outbox.close()
    figures = []
    for name, (ours, bare, rss) in results.items():
        print(
            f"{name}: {n:,} events in {ours:.1f} s = {n / ours:,.0f} events/s, bare loop {n / bare:,.0f} events/s, "
            f"ratio {bare / ours:.2f}, peak RSS {rss:.0f} MB"
        )
        figures.append(f"{name}_events_per_s={n / ours:.0f} {name}_bare_events_per_s={n / bare:.0f} ")
        figures.append(f"{name}_ratio={bare / ours:.2f} ")
    print("".join(figures).strip())


if __name__ == "__main__":
    main()
