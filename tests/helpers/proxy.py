"""A small real HTTP forward proxy on loopback (absolute-form requests, optional Basic proxy auth, or a
proxy that drops every connection), so proxy failures are tested over the wire."""

from __future__ import annotations

import base64
import socket
import socketserver
import threading
from urllib.parse import urlsplit


class _Handler(socketserver.StreamRequestHandler):
    server: ForwardProxy

    def handle(self) -> None:
        proxy = self.server
        if proxy.mode == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        line = self.rfile.readline(65536).decode("latin-1")
        headers: list[tuple[str, str]] = []
        while True:
            raw = self.rfile.readline(65536).decode("latin-1")
            if raw in ("\r\n", "\n", ""):
                break
            name, _, value = raw.partition(":")
            headers.append((name.strip(), value.strip()))
        given = {n.lower(): v for n, v in headers}.get("proxy-authorization")
        if proxy.credentials is not None and given != "Basic " + base64.b64encode(proxy.credentials.encode()).decode():
            self.wfile.write(
                b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="test"\r\n'
                b"Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            return
        method, target, version = line.split()
        url = urlsplit(target)
        length = int({n.lower(): v for n, v in headers}.get("content-length", "0"))
        body = self.rfile.read(length) if length else b""
        kept = [
            (n, v) for n, v in headers if n.lower() not in ("proxy-authorization", "connection", "proxy-connection")
        ]
        path = url.path + (f"?{url.query}" if url.query else "")
        request = f"{method} {path} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in kept)
        request += "Connection: close\r\n\r\n"
        proxy.forwarded += 1
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=30) as upstream:
            upstream.sendall(request.encode("latin-1") + body)
            while chunk := upstream.recv(65536):
                self.wfile.write(chunk)


class ForwardProxy(socketserver.ThreadingTCPServer):
    """``mode``: ``"forward"`` (default) or ``"drop"``; ``credentials``: ``"user:password"`` to require."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *, mode: str = "forward", credentials: str | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        self.credentials = credentials
        self.forwarded = 0
        self._thread = threading.Thread(target=self.serve_forever, name="proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.shutdown()
        self.server_close()
