"""Delivery benchmark: outbox -> Devo sink -> a real rsyslog over mutual TLS, against the physical limit
here (a bare ``socket`` + ``ssl`` loop sending the same bytes to the same rsyslog).

    python bench/delivery.py             # 1,000,000 events of ~700 bytes
    python bench/delivery.py --events 200000
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.rsyslog import READY_TAG, Certs, Rsyslog

from qualys_collector.engine.outbox import Outbox
from qualys_collector.model import Event
from qualys_collector.sinks.devo import DevoSink
from qualys_collector.sinks.drain import Drainer


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.events
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs = Certs.mint(root / "certs")
        body = json.dumps(
            {
                "HOST": {"ID": "123456", "IP": "10.0.0.1"},
                "DETECTION": {"QID": "38170", "RESULTS": "x" * 560},
                "@devo_pulling_id": 1717069365052,
            }
        )
        outbox = Outbox(root / "state")
        outbox.register_outputs(["devo"])
        for start in range(0, n, 50_000):
            outbox.commit(
                "b",
                "bench",
                [Event(tag="vuln.qualys.hostdetections", body=json.loads(body)) for _ in range(min(50_000, n - start))],
                {},
            )
        relay = Rsyslog(root / "relay", certs)
        relay.start()
        sink = DevoSink(
            "devo", "127.0.0.1", relay.port, chain=certs.chain, cert=certs.client_cert, key=certs.client_key
        )
        process = psutil.Process()
        peak = [process.memory_info().rss]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                done.wait(0.05)

        threading.Thread(target=sample, daemon=True).start()
        started = time.monotonic()
        Drainer(outbox, sink, batch_size=5000).run(threading.Event(), until_empty=True)
        ours = time.monotonic() - started
        done.set()
        wait_lines(relay, n)
        relay.stop()
        relay.out.unlink()
        outbox.close()

        # the physical limit: the same bytes through one bare TLS connection
        header = b"<14>Jan  1 00:00:00 bench vuln.qualys.hostdetections: "
        payload = (header + body.encode() + b"\n") * 5000
        relay.start()
        context = ssl.create_default_context(cafile=str(certs.chain))
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        started = time.monotonic()
        with context.wrap_socket(
            socket.create_connection(("127.0.0.1", relay.port)), server_hostname="127.0.0.1"
        ) as raw:
            for _ in range(n // 5000):
                raw.sendall(payload)
            raw.unwrap()
        bare = time.monotonic() - started
        wait_lines(relay, (n // 5000) * 5000)
        relay.stop()
    print(f"collector: {n:,} events in {ours:.1f} s = {n / ours:,.0f} events/s, peak RSS {peak[0] / 2**20:.0f} MB")
    print(f"bare socket+ssl: {n:,} events in {bare:.1f} s = {n / bare:,.0f} events/s")
    print(
        f"events_per_s={n / ours:.0f} bare_events_per_s={n / bare:.0f} ratio={bare / ours:.2f} "
        f"rss_mb={peak[0] / 2**20:.0f}"
    )


if __name__ == "__main__":
    main()
