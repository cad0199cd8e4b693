"""A local Devo HTTP ingestion server for the tests: real HTTPS on 127.0.0.1, in a thread, with faults on demand.

It implements the URL form Devo documents for stream mode, ``POST /stream/<domain>/token!<token>/<host>/<tag>``
(body: one event per line, ``Content-Encoding: gzip`` accepted), answers 200 to an accepted request and 401 to a
wrong token, 404 to another path or domain, and stores every line it accepted with its tag (:attr:`lines`) and
every request it saw (:attr:`requests`).

Faults are queued with :meth:`IngestServer.fault`; each request takes the first fault that has tries left:

- ``status``: answer ``code`` (500, 503, 429 with ``retry_after``, 401, 403 ...) and store nothing;
- ``slow``: wait ``delay`` seconds before reading the request, then handle it normally (stored: a client that
  gave up meanwhile sends it again, the one duplicate a lost answer can cost);
- ``cut``: read half of the body, then close the connection (nothing stored, no answer);
- ``lost_answer``: store the request, then close the connection without answering;
- ``pass``: handle the request normally (queued first, it lets the next fault hit a later request).
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import socket
import ssl
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote


@dataclass
class Fault:
    """One queued fault; ``times=-1``: every request from now on."""

    kind: str
    times: int = 1
    code: int = 503
    retry_after: str | None = None
    delay: float = 0.0


@dataclass
class Received:
    """One request as the server saw it."""

    at: float
    tag: str
    host: str
    status: int | None  # None: the connection was closed without an answer
    events: int
    body_bytes: int = 0
    gzip: bool = False
    fault: str | None = None  # the kind of the fault this request took


@dataclass
class IngestState:
    domain: str
    token: str
    lines: list[tuple[str, str]] = field(default_factory=list)  # (tag, line) of every accepted event
    requests: list[Received] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    keep_lines: bool = True  # False: count accepted lines only (the benchmark's millions)
    accepted: int = 0

    def take_fault(self) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times != 0:
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
        return None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ClassVar[IngestState]

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest would show it
        pass

    def do_POST(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        with state.lock:
            state.in_flight += 1
        try:
            self._post(state)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _post(self, state: IngestState) -> None:
        self.fault = fault = state.take_fault()
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        length = int(self.headers.get("Content-Length", "0"))
        parts = self.path.split("?", 1)[0].split("/")
        tag = unquote(parts[-1]) if parts else ""
        host = unquote(parts[-2]) if len(parts) >= 2 else ""
        gzipped = self.headers.get("Content-Encoding", "").lower() == "gzip"
        if fault is not None and fault.kind == "cut":
            self.rfile.read(length // 2)
            self._record(state, tag, host, None, 0, length // 2, gzipped)
            self._drop()
            return
        body = self.rfile.read(length)
        if len(parts) != 6 or parts[1] != "stream" or unquote(parts[2]) != state.domain:
            self._answer(state, 404, tag, host, body, gzipped)
            return
        if unquote(parts[3]) != f"token!{state.token}":
            self._answer(state, 401, tag, host, body, gzipped)
            return
        if fault is not None and fault.kind == "status":
            self._answer(state, fault.code, tag, host, body, gzipped, retry_after=fault.retry_after)
            return
        try:
            data = gzip.decompress(body) if gzipped else body
        except (OSError, EOFError, zlib.error):
            self._answer(state, 400, tag, host, body, gzipped)
            return
        lines = [line.decode("utf-8") for line in data.split(b"\n") if line]
        with state.lock:
            state.accepted += len(lines)
            if state.keep_lines:
                state.lines.extend((tag, line) for line in lines)
        if fault is not None and fault.kind == "lost_answer":
            self._record(state, tag, host, None, len(lines), len(body), gzipped)
            self._drop()
            return
        self._answer(state, 200, tag, host, body, gzipped, events=len(lines))

    def do_GET(self) -> None:
        """``GET /count``: how many lines were accepted (for a benchmark that runs the server in a process)."""
        state = self.server.state  # type: ignore[attr-defined]
        with state.lock:
            text = f"{state.accepted}\n".encode()
        self.send_response(200 if self.path == "/count" else 404)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def _record(
        self, state: IngestState, tag: str, host: str, status: int | None, events: int, size: int, gz: bool
    ) -> None:
        with state.lock:
            fault = getattr(self, "fault", None)
            kind = fault.kind if fault is not None and fault.kind != "pass" else None
            state.requests.append(Received(time.monotonic(), tag, host, status, events, size, gz, kind))

    def _answer(
        self,
        state: IngestState,
        status: int,
        tag: str,
        host: str,
        body: bytes,
        gzipped: bool,
        *,
        events: int = 0,
        retry_after: str | None = None,
    ) -> None:
        self._record(state, tag, host, status, events, len(body), gzipped)
        text = b"" if status == 200 else f"status {status}\n".encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that refused our certificate or hung up is no server error (and no noise in the output)."""


class IngestServer:
    """The server, started with :meth:`start` (HTTPS with ``cert``/``key``, else plain HTTP), stopped with
    :meth:`stop`; ``url`` is the endpoint to configure."""

    def __init__(
        self, domain: str, token: str, *, cert: Path | None = None, key: Path | None = None, keep_lines: bool = True
    ) -> None:
        self.state = IngestState(domain, token, keep_lines=keep_lines)
        self.cert, self.key = cert, key
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def lines(self) -> list[tuple[str, str]]:
        with self.state.lock:
            return list(self.state.lines)

    @property
    def requests(self) -> list[Received]:
        with self.state.lock:
            return list(self.state.requests)

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until no request is being handled (a slow one may outlive the client that gave up on it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.state.lock:
                if self.state.in_flight == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"the ingestion server still handles a request after {timeout} s")

    def fault(self, kind: str, **options: Any) -> Fault:
        fault = Fault(kind, **options)
        with self.state.lock:
            self.state.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.state.lock:
            self.state.faults.clear()

    def start(self) -> str:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.state = self.state  # type: ignore[attr-defined]
        scheme = "http"
        if self.cert is not None and self.key is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.cert), str(self.key))
            server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
            scheme = "https"
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def main() -> None:
    """``python -m tests.helpers.ingest DOMAIN TOKEN CERT KEY``: serve (counting only) until killed; prints the URL."""
    import sys

    domain, token, cert, key = sys.argv[1:5]
    server = IngestServer(domain, token, cert=Path(cert), key=Path(key), keep_lines=False)
    print(server.start(), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
