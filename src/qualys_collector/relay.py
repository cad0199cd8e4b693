"""A local Devo-like relay: a real rsyslogd on 127.0.0.1 with mutual TLS (the ossl stream driver,
client certificates required) and throwaway certificates minted with trustme. Used by ``demo`` when
rsyslog is installed, and by the delivery tests.

The Devo sink counts a batch as delivered when the relay closes the session after our ``close_notify``.
With rsyslog's default in-memory main queue that close only meant "received": the lines were written to
the file later, by another thread. Measured under CPU load (two busy loops), 27 of 300 batches were
confirmed before any of their lines was in the file; a relay restarted while the sink retried lost
confirmed batches with the outbox empty. The relay therefore runs its main queue in ``Direct`` mode: each
line is written to the file by the thread that read it from the session, before the next read, so by the
time rsyslog reads our ``close_notify`` and closes, every line before it is in the file (0 of 300).

rsyslog 8.2302 (Debian 12) also closes every TLS session's socket twice in its ossl driver (fixed upstream by
rsyslog PR #6375; seen with strace: ``close(8) = 0`` then ``close(8) = -1 EBADF``). A descriptor opened by
another thread between the two closes is lost: when that was the output file (opened on the first message),
the next session inherited its number and rsyslog wrote the lines it received into that session, in
plaintext. With the in-memory queue the file was opened by the queue's thread whenever it caught up, which
under load could fall between a session's two closes. Now it is opened by the thread reading the first
session's first line, before that session closes; and at first start the relay opens it before any TLS
session exists (a UDP line of its own, left out of :meth:`Rsyslog.lines`), watches for the listening socket
instead of probing it with a connection, and resolves no peer names. What remains: sessions opened while
another one closes can be cut (a failed connection, which the sink retries); the collector opens one at a
time per output. The GnuTLS driver closes once, but it ends a session without ``close_notify`` whether it
kept the data or refused the client's certificate (the sink tells the two apart by what follows)."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

#: The tag of the line the relay sends itself at start (to open its output file); not part of :meth:`lines`.
READY_TAG = "relay.ready"
LINE = re.compile(r"^<14>\w{3} [ \d]\d \d\d:\d\d:\d\d (?P<host>\S+) (?P<tag>[^:\s]+): (?P<message>.*)$")


def _listening(port: int) -> bool:
    """Whether a TCP socket listens on 127.0.0.1:``port``, read from ``/proc/net/tcp`` (no connection:
    a probe connection would be one more session for rsyslog to close)."""
    wanted = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as table:
            rows = [row.split() for row in list(table)[1:]]
    except FileNotFoundError:  # not Linux: the output file being open is the best sign there is
        return True
    return any(row[1] == wanted and row[3] == "0A" for row in rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM a process we started, SIGKILL it if it is still there after 10 s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Certs:
    """CA chain, server pair and client pair as files."""

    directory: Path
    chain: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def mint(cls, directory: Path) -> Certs:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("collector.test")
        paths = {
            name: directory / name for name in ("chain.crt", "server.crt", "server.key", "client.crt", "client.key")
        }
        ca.cert_pem.write_to_path(str(paths["chain.crt"]))
        server.cert_chain_pems[0].write_to_path(str(paths["server.crt"]))
        server.private_key_pem.write_to_path(str(paths["server.key"]))
        client.cert_chain_pems[0].write_to_path(str(paths["client.crt"]))
        client.private_key_pem.write_to_path(str(paths["client.key"]))
        return cls(
            directory,
            paths["chain.crt"],
            paths["server.crt"],
            paths["server.key"],
            paths["client.crt"],
            paths["client.key"],
        )


class Rsyslog:
    """rsyslogd in the foreground with its own configuration; received lines land in ``out``."""

    def __init__(self, directory: Path, certs: Certs, port: int | None = None) -> None:
        directory = directory.resolve()
        self.directory = directory
        self.certs = certs
        self.port = port or free_port()
        self.udp_port = free_port()
        self.out = directory / "received.log"
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "work").mkdir(exist_ok=True)
        self.conf = directory / "rsyslog.conf"
        self.conf.write_text(f"""
global(
  workDirectory="{directory / "work"}"
  DefaultNetstreamDriver="ossl"
  DefaultNetstreamDriverCAFile="{certs.chain}"
  DefaultNetstreamDriverCertFile="{certs.server_cert}"
  DefaultNetstreamDriverKeyFile="{certs.server_key}"
  maxMessageSize="256k"
  net.enableDNS="off"
)
module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid"
       MaxSessions="200")
main_queue(queue.type="Direct")
input(type="imtcp" port="{self.port}" address="127.0.0.1")
module(load="imudp")
input(type="imudp" port="{self.udp_port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\\n")
*.* action(type="omfile" file="{self.out}" template="raw" flushOnTXEnd="on" asyncWriting="off")
""")

    @staticmethod
    def available() -> bool:
        """Whether rsyslogd is installed."""
        return shutil.which("rsyslogd") is not None

    @staticmethod
    def binary() -> str:
        """The full path of rsyslogd."""
        found = shutil.which("rsyslogd")
        if found is None:
            raise RuntimeError("rsyslogd is not installed (Debian: apt-get install rsyslog rsyslog-openssl)")
        return found

    def start(self) -> None:
        """Start rsyslogd; return once its output file is open and its TLS port listens."""
        offset = self.out.stat().st_size if self.out.exists() else 0
        with (self.directory / "rsyslogd.stderr").open("ab") as errors:
            self.proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
                [self.binary(), "-n", "-f", str(self.conf), "-i", str(self.directory / "rsyslogd.pid")],
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        deadline = time.monotonic() + 15
        ready = f"<14>Jan  1 00:00:00 relay {READY_TAG}: {{}}\n".encode()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rsyslogd exited: {(self.directory / 'rsyslogd.stderr').read_text()}")
                if self._ready_after(offset) and _listening(self.port):
                    return
                udp.sendto(ready, ("127.0.0.1", self.udp_port))
                time.sleep(0.05)
        raise RuntimeError("rsyslogd did not open its output file and listen within 15 s")

    def _ready_after(self, offset: int) -> bool:
        """Whether the output file has a ready line written after ``offset``."""
        if not self.out.exists():
            return False
        with self.out.open("rb") as handle:
            handle.seek(offset)
            return f" {READY_TAG}: ".encode() in handle.read()

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def lines(self) -> list[dict[str, str]]:
        if not self.out.exists():
            return []
        out = []
        # whole lines only: read while rsyslog still writes, the file may end inside a line (CI read '<14>Jan  1 0');
        # a torn line rsyslog stored ends with its newline like any other and still fails the format check
        for raw in self.out.read_text(encoding="utf-8").split("\n")[:-1]:
            match = LINE.match(raw)
            if match is None:
                raise AssertionError(f"rsyslog received a line not in Devo's format: {raw[:200]!r}")
            if match["tag"] != READY_TAG:
                out.append(match.groupdict())
        return out

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)
