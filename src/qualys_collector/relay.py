"""A local Devo-like relay: a real rsyslogd on 127.0.0.1 with mutual TLS (the ossl stream driver,
client certificates required) and throwaway certificates minted with trustme. Used by ``demo`` when
rsyslog is installed, and by the delivery tests."""

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

LINE = re.compile(r"^<14>\w{3} [ \d]\d \d\d:\d\d:\d\d (?P<host>\S+) (?P<tag>[^:\s]+): (?P<message>.*)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
)
module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid"
       MaxSessions="200")
input(type="imtcp" port="{self.port}" address="127.0.0.1")
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
        with (self.directory / "rsyslogd.stderr").open("ab") as errors:
            self.proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
                [self.binary(), "-n", "-f", str(self.conf), "-i", str(self.directory / "rsyslogd.pid")],
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {(self.directory / 'rsyslogd.stderr').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("rsyslogd did not listen within 15 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def lines(self) -> list[dict[str, str]]:
        if not self.out.exists():
            return []
        out = []
        for raw in self.out.read_text(encoding="utf-8").splitlines():
            match = LINE.match(raw)
            if match is None:
                raise AssertionError(f"rsyslog received a line not in Devo's format: {raw[:200]!r}")
            out.append(match.groupdict())
        return out

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)
