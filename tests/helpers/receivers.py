"""Foreign receivers for the delivery matrix: programs users really put in front of Devo, started on 127.0.0.1.

- :class:`RsyslogReceiver`: rsyslogd with either TLS stream driver (``ossl``, ``gtls``), or plain TCP (the
  backend behind a TLS-terminating load balancer).
- :class:`SyslogNg`: syslog-ng with a ``network()`` TLS source (one message per line) or a ``syslog()`` TLS
  source (RFC 5425 octet counting). Debian's ``syslog-ng-core`` conflicts with rsyslog, so ``.ci/run`` unpacks
  it with ``dpkg -x`` into a cache directory; ``SYSLOG_NG_ROOT`` names that directory.
- :class:`Haproxy`: HAProxy terminating mutual TLS in front of a plain-TCP receiver.
- :class:`HoldingRelay`: a mutual-TLS receiver that stores every line and never closes after our close.

Each stores what it received, one message per line, in ``out``; :meth:`Receiver.messages` returns the event
bodies of the Devo lines stored (the ready line each receiver sends itself is left out).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

from qualys_collector.relay import LINE, READY_TAG, Certs, Rsyslog, _listening, free_port, stop_process

SYSLOG_NG_ROOT = Path(
    os.environ.get("SYSLOG_NG_ROOT", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "syslog-ng-root")
)


class Receiver:
    """A receiver process started in the foreground with its own configuration."""

    directory: Path
    port: int
    out: Path
    proc: subprocess.Popen[bytes] | None = None
    name = "receiver"

    def command(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def environment(self) -> dict[str, str] | None:
        return None

    def start(self) -> None:
        """Start the process; return once its TLS port listens."""
        with (self.directory / f"{self.name}.stderr").open("ab") as errors:
            self.proc = subprocess.Popen(  # our own binaries and arguments
                self.command(), stdout=subprocess.DEVNULL, stderr=errors, env=self.environment()
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {(self.directory / f'{self.name}.stderr').read_text()}")
            if _listening(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.port} within 15 s")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None

    def messages(self) -> list[str]:
        """The event bodies of the Devo lines stored, in arrival order."""
        if not self.out.exists():
            return []
        bodies = []
        for raw in self.out.read_text(encoding="utf-8").split("\n")[:-1]:  # whole lines (see Rsyslog.lines)
            match = LINE.match(raw)
            if match is None:
                raise AssertionError(f"{self.name} stored a line not in Devo's format: {raw[:200]!r}")
            if match["tag"] != READY_TAG:
                bodies.append(match["message"])
        return bodies

    def wait_for(self, count: int, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            bodies = self.messages()
            if len(bodies) >= count or time.monotonic() > deadline:
                return bodies
            time.sleep(0.1)


class RsyslogReceiver(Rsyslog, Receiver):
    """rsyslogd with the ``ossl`` or ``gtls`` stream driver (client certificates required), or plain TCP."""

    name = "rsyslogd"

    def __init__(self, directory: Path, certs: Certs, *, driver: str | None) -> None:
        super().__init__(directory, certs)
        tls = (
            f'DefaultNetstreamDriver="{driver}" DefaultNetstreamDriverCAFile="{certs.chain}" '
            f'DefaultNetstreamDriverCertFile="{certs.server_cert}" DefaultNetstreamDriverKeyFile="{certs.server_key}"'
        )
        module = (
            f'module(load="imtcp" StreamDriver.Name="{driver}" StreamDriver.Mode="1" '
            'StreamDriver.AuthMode="x509/certvalid" MaxSessions="200")'
            if driver
            else 'module(load="imtcp" MaxSessions="200")'
        )
        self.conf.write_text(f"""
global(workDirectory="{self.directory / "work"}" {tls if driver else ""} maxMessageSize="256k" net.enableDNS="off")
{module}
main_queue(queue.type="Direct")
input(type="imtcp" port="{self.port}" address="127.0.0.1")
module(load="imudp")
input(type="imudp" port="{self.udp_port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\\n")
*.* action(type="omfile" file="{self.out}" template="raw" flushOnTXEnd="on" asyncWriting="off")
""")

    start = Rsyslog.start  # waits for its own ready line, not only the port
    wait_for = Receiver.wait_for  # event bodies, as every receiver's (Rsyslog's returns parsed lines)


class SyslogNg(Receiver):
    """syslog-ng with a TLS source: ``network()`` (``framing="lf"``) or ``syslog()`` (octet counting)."""

    name = "syslog-ng"

    def __init__(self, directory: Path, certs: Certs, *, framing: str = "lf", max_tls12: bool = False) -> None:
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.out = self.directory / "received.log"
        driver = {"lf": "network", "octet-counting": "syslog"}[framing]
        self.conf = self.directory / "syslog-ng.conf"
        self.conf.write_text(f"""@version: 3.38
options {{ use-dns(no); dns-cache(no); stats-freq(0); log-msg-size(262144); keep-hostname(yes); }};
source s_in {{
  {driver}(ip("127.0.0.1") port({self.port}) transport("tls") flags(no-parse) log-msg-size(262144)
    max-connections(200)
    tls(key-file("{certs.server_key}") cert-file("{certs.server_cert}") ca-file("{certs.chain}")
        peer-verify(required-trusted) {"ssl-options(no-tlsv13)" if max_tls12 else ""}));
}};
destination d_file {{ file("{self.out}" template("$MSG\\n") flush-lines(1)); }};
log {{ source(s_in); destination(d_file); flags(flow-control); }};
""")

    @staticmethod
    def available() -> bool:
        return (SYSLOG_NG_ROOT / "usr/sbin/syslog-ng").is_file()

    def command(self) -> list[str]:
        root = SYSLOG_NG_ROOT
        return [
            str(root / "usr/sbin/syslog-ng"),
            "-F",
            "--no-caps",
            "-f",
            str(self.conf),
            f"--module-path={root / 'usr/lib/syslog-ng/3.38'}",
            f"--persist-file={self.directory / 'syslog-ng.persist'}",
            f"--pidfile={self.directory / 'syslog-ng.pid'}",
            f"--control={self.directory / 'syslog-ng.ctl'}",
        ]

    def environment(self) -> dict[str, str]:
        libs = [SYSLOG_NG_ROOT / "usr/lib/x86_64-linux-gnu", SYSLOG_NG_ROOT / "usr/lib/syslog-ng"]
        return {**os.environ, "LD_LIBRARY_PATH": ":".join(str(p) for p in libs)}


class Haproxy(Receiver):
    """HAProxy terminating mutual TLS (client certificates required) in front of ``backend_port`` (plain TCP)."""

    name = "haproxy"

    def __init__(self, directory: Path, certs: Certs, backend_port: int, *, max_tls12: bool = False) -> None:
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.out = self.directory / "unused"  # HAProxy stores nothing: its backend does
        pem = self.directory / "server.pem"
        pem.write_bytes(certs.server_cert.read_bytes() + certs.server_key.read_bytes())
        bounded = " ssl-max-ver TLSv1.2" if max_tls12 else ""
        self.conf = self.directory / "haproxy.cfg"
        self.conf.write_text(f"""global
  maxconn 200
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend tls_in
  bind 127.0.0.1:{self.port} ssl crt {pem} ca-file {certs.chain} verify required{bounded}
  default_backend relay
backend relay
  server relay1 127.0.0.1:{backend_port}
""")

    @staticmethod
    def available() -> bool:
        return shutil.which("haproxy") is not None

    def command(self) -> list[str]:
        return [shutil.which("haproxy") or "haproxy", "-db", "-f", str(self.conf)]


class HoldingRelay(Receiver):
    """A mutual-TLS receiver that stores every line but never closes a connection after ours.

    The misbehaving relay of the delivery issue (a relay holding the connection open after the client's
    close): each batch arrives whole and is stored, and no close ever confirms it.
    """

    name = "holding-relay"

    def __init__(self, directory: Path, certs: Certs) -> None:
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.out = self.directory / "received.log"
        self.certs = certs
        self._server: socket.socket | None = None
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.certs.chain))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_cert_chain(str(self.certs.server_cert), str(self.certs.server_key))
        server = socket.create_server(("127.0.0.1", self.port))
        self._server = server
        threading.Thread(target=self._accept, args=(server, context), daemon=True).start()

    def _accept(self, server: socket.socket, context: ssl.SSLContext) -> None:
        while True:
            try:
                raw, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw, context), daemon=True).start()

    def _serve(self, raw: socket.socket, context: ssl.SSLContext) -> None:
        try:
            tls = context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        with self._lock:
            self._held.append(tls)
        data = b""
        while True:
            try:
                chunk = tls.recv(1 << 16)
            except (ssl.SSLError, OSError):
                chunk = b""
            if not chunk:
                break
            data += chunk
            *lines, data = data.split(b"\n")
            if lines:
                with self._lock, self.out.open("ab") as out:
                    out.write(b"".join(line + b"\n" for line in lines))
        # EOF or close_notify seen: hold the connection open, never close it

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            for held in self._held:
                with contextlib.suppress(OSError):
                    held.close()
            self._held.clear()

    def kill(self) -> None:
        self.stop()
