"""The simulator's WSGI application: auth, limits, faults, routing, and the admin endpoints.

Admin (tests and the demo): ``GET /__sim/stats``, ``POST /__sim/faults`` (JSON list of fault specs,
``[]`` clears), ``POST /__sim/shapes`` (JSON list of shape names, see :mod:`.shapes`; ``[]``: the clean form),
``POST /__sim/clock`` (``{"advance": seconds}`` or ``{"offset": seconds}``),
``GET /__sim/truth?service=...&start=...&end=...`` (the keys that exist for a window).
In process, tests read ``Simulator.request_log`` (every VM call that reached the API: method, path with its
version, parameters as sent) and ``Simulator.detection_truth()`` (every detection with its QDS and factors,
including those Qualys shows only when asked).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from itertools import chain
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from qualys_collector.simulator import fim as fimapi
from qualys_collector.simulator import shapes as shaping
from qualys_collector.simulator import vm
from qualys_collector.simulator.data import Dataset, SimConfig, iso, ms
from qualys_collector.simulator.faults import Fault, FaultBook, parse_fault

VM_PATH = re.compile(
    r"^/api/(\d+\.\d+)/fo/(scan|asset/host|asset/host/vm/detection|activity_log|knowledge_base/vuln)/(?:index\.php)?$"
)
KB_RESOURCE = "knowledge_base/vuln"


@dataclass
class Limits:
    """A subscription's per-API limits (Qualys defaults: 300 calls / 3600 s, 2 concurrent)."""

    rate: int = 300
    window: int = 3600
    concurrency: int = 2


@dataclass
class _Endpoint:
    running: int = 0
    calls: deque[float] = field(default_factory=deque)
    max_running: int = 0


class Simulator:
    """A Qualys subscription on loopback."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        username: str = "demo",
        password: str = "demo",  # noqa: S107 - the simulator's documented demo credentials
        vm_limits: Limits | None = None,
        fim_limits: Limits | None = None,
        token_ttl: int = 14400,
        require_requested_with: bool = True,
        shapes: Iterable[str] | None = None,
    ) -> None:
        self.config = config or SimConfig()
        #: how answers are written (:mod:`.shapes`); the default data's shapes unless a list is given
        self.shapes = frozenset(shaping.DEFAULT_SHAPES if shapes is None else shapes)
        if shaping.unknown(self.shapes):
            raise ValueError(f"unknown shapes {shaping.unknown(self.shapes)}; use some of {sorted(shaping.SHAPES)}")
        self.data = Dataset(self.config)
        self.username, self.password = username, password
        self.vm_limits = vm_limits or Limits()
        self.fim_limits = fim_limits or Limits(rate=10_000, window=60, concurrency=100)
        self.tokens = fimapi.TokenIssuer(token_ttl)
        self.faults = FaultBook()
        self.require_requested_with = require_requested_with
        self.offset = timedelta(0)
        self.frozen: datetime | None = None
        #: Shifts of the ``Date`` header from the clock, one per answer in turn (answers from nodes whose clocks
        #: disagree behind one address); the records keep the clock's time.
        self.date_shifts: list[timedelta] = []
        self._dates_sent = 0
        self.fim = fimapi.FimApi(self.data, self.now)
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        #: Ids of FIM records the ``null_time`` fault has made timeless (in every answer after it struck).
        self.untimed: set[str] = set()
        #: Activity-log rows the ``odd_rows`` fault has made timeless (their ids), besides every seventh.
        self.untimed_rows: set[int] = set()
        #: every VM API call that passed authentication and the limits: (resource, parameters), in arrival order
        self.vm_calls: list[tuple[str, dict[str, str]]] = []
        #: the same calls with their method and path (API version included): what reached the wire
        self.request_log: list[dict[str, Any]] = []
        self.tokens_issued = 0
        self._endpoints: dict[str, _Endpoint] = {}
        self._lock = threading.Lock()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ clock

    def now(self) -> datetime:
        """The simulator's clock (real time plus an offset tests can move)."""
        return (self.frozen or datetime.now(UTC)) + self.offset

    def next_date_shift(self) -> timedelta:
        """The shift of the next answer's ``Date`` (:attr:`date_shifts` in turn; none when empty)."""
        with self._lock:
            if not self.date_shifts:
                return timedelta(0)
            shift = self.date_shifts[self._dates_sent % len(self.date_shifts)]
            self._dates_sent += 1
            return shift

    # ------------------------------------------------------------------ limits

    def _limit_headers(self, key: str, limits: Limits, *, concurrency: bool = True) -> dict[str, str]:
        ep = self._endpoints.setdefault(key, _Endpoint())
        now = time.monotonic()
        while ep.calls and ep.calls[0] <= now - limits.window:
            ep.calls.popleft()
        remaining = max(0, limits.rate - len(ep.calls))
        wait = 0 if remaining else int(ep.calls[0] + limits.window - now) + 1
        headers = {"X-RateLimit-Limit": str(limits.rate), "X-RateLimit-Window-Sec": str(limits.window)}
        if concurrency:
            headers["X-Concurrency-Limit-Limit"] = str(limits.concurrency)
            headers["X-Concurrency-Limit-Running"] = str(ep.running)
        headers["X-RateLimit-ToWait-Sec"] = str(wait)
        headers["X-RateLimit-Remaining"] = str(remaining)
        return headers

    def _acquire(self, key: str, limits: Limits, *, concurrency: bool = True) -> tuple[str | None, dict[str, str]]:
        """Admit a call or say why not: ``("1960"|"1965"|"429", headers)``."""
        with self._lock:
            ep = self._endpoints.setdefault(key, _Endpoint())
            headers = self._limit_headers(key, limits, concurrency=concurrency)
            if concurrency and ep.running >= limits.concurrency:
                headers.pop("X-RateLimit-ToWait-Sec", None)
                headers.pop("X-RateLimit-Remaining", None)
                return "1960", headers
            if headers["X-RateLimit-Remaining"] == "0":
                return ("1965" if concurrency else "429"), headers
            ep.calls.append(time.monotonic())
            ep.running += 1
            ep.max_running = max(ep.max_running, ep.running)
            return None, self._limit_headers(key, limits, concurrency=concurrency)

    def _release(self, key: str) -> None:
        with self._lock:
            self._endpoints[key].running -= 1

    def max_concurrency(self, key: str | None = None) -> int:
        """The most calls that were ever in flight at once (for one endpoint, or any)."""
        with self._lock:
            if key is not None:
                return self._endpoints.get(key, _Endpoint()).max_running
            return max((e.max_running for e in self._endpoints.values()), default=0)

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """The WSGI entry point."""
        request = Request(environ)
        self.requests[request.path] += 1
        try:
            response = self._dispatch(request)
        except vm.ApiError as exc:
            response = self._xml(exc.status, vm.simple_return(exc.code, exc.text, self.now()))
        except fimapi.GatewayError as exc:
            response = Response(exc.body, status=exc.status, content_type=exc.content_type)
        self.statuses[f"{request.path} {response.status_code}"] += 1
        return response(environ, start_response)

    def _xml(self, status: int, body: str, headers: dict[str, str] | None = None) -> Response:
        return Response(body, status=status, content_type="application/xml", headers=headers)

    def _dispatch(self, request: Request) -> Response:
        path = request.path
        if path.startswith("/__sim/"):
            return self._admin(request)
        match = VM_PATH.match(path)
        if match:
            if match.group(2) == KB_RESOURCE and match.group(1) not in vm.KB_VERSIONS:
                return Response("Not Found", status=404, content_type="text/plain")  # no KnowledgeBase 5.0
            return self._vm(request, match.group(2), match.group(1))
        if path == "/auth":
            return self._auth(request)
        if path.startswith("/fim/"):
            return self._fim(request)
        return Response("Not Found", status=404, content_type="text/plain")

    def _params(self, request: Request) -> dict[str, str]:
        params = dict(parse_qsl(request.query_string.decode(), keep_blank_values=True))
        if request.method == "POST":
            params.update(dict(parse_qsl(request.get_data(as_text=True), keep_blank_values=True)))
        return params

    def _basic_ok(self, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return user == self.username and password == self.password

    def _vm(self, request: Request, resource: str, version: str = "5.0") -> Response:
        now = self.now()
        if self.require_requested_with and not request.headers.get("X-Requested-With"):
            return self._xml(400, vm.simple_return(1903, "Missing required header: X-Requested-With", now))
        if not self._basic_ok(request):
            return self._xml(401, vm.simple_return(2000, "Bad Login/Password", now))
        key = resource
        verdict, headers = self._acquire(key, self.vm_limits)
        if verdict == "1960":
            running = headers["X-Concurrency-Limit-Running"]
            body = vm.simple_return(
                1960,
                f"This API cannot be run again until {running} currently running API instance(s) has finished.",
                now,
                {"CALLS_TO_FINISH": running},
            )
            return self._xml(409, body, headers)
        if verdict == "1965":
            wait = headers["X-RateLimit-ToWait-Sec"]
            body = vm.simple_return(
                1965, f"This API cannot be run again for another {wait} seconds.", now, {"SECONDS_TO_WAIT": wait}
            )
            return self._xml(409, body, headers)
        try:
            fault = self.faults.take(
                request.path, {"400", "409", "500", "502", "503", "504", "999", "error200", "echo"}
            )
            if fault is not None and fault.kind == "echo":
                self._release(key)
                return self._xml(400, vm.simple_return(1905, f"Request rejected: {_echo(request)}", now), headers)
            if fault is not None:
                self._release(key)
                return self._fault_response(fault, headers, now)
            params = self._params(request)
            with self._lock:
                self.vm_calls.append((resource, params))
                self.request_log.append({"method": request.method, "path": request.path, "params": params})
            base_url = f"{request.host_url.rstrip('/')}{request.path}"
            if resource == "scan":
                chunks: Iterator[str] = vm.scan_list(self.data, now, params)
            elif resource == "activity_log":
                odd = self.untimed_rows if self.faults.active(request.path, "odd_rows") else None
                chunks = vm.activity_log(self.data, now, params, base_url, odd_rows=odd)
            elif resource == KB_RESOURCE:
                chunks = vm.kb_list(self.data, now, params, base_url)
            else:
                chunks = vm.host_list(
                    self.data, now, params, base_url, detection=resource.endswith("detection"), version=version
                )
            if self.shapes:
                chunks = shaping.vm_answer(chunks, self.shapes, resource)
            first = next(chunks)  # parameter errors surface before the status line
        except BaseException:
            self._release(key)
            raise
        content_type = {"activity_log": "text/csv;charset=UTF-8", KB_RESOURCE: "text/xml;charset=UTF-8"}.get(
            resource, "application/xml"
        )
        stream = _Body(self, key, first, chunks, request.path)
        if stream.fault is not None and stream.fault.kind == "bad_gzip":
            headers = {**headers, "Content-Encoding": "gzip"}  # the plain body, mislabelled
        return Response(stream, status=200, content_type=content_type, headers=headers, direct_passthrough=True)

    def _fault_response(self, fault: Fault, headers: dict[str, str], now: datetime) -> Response:
        if fault.kind == "409":
            code = fault.code or 1965
            if code == 1960:
                hdrs = {k: v for k, v in headers.items() if "ToWait" not in k and "Remaining" not in k}
                hdrs["X-Concurrency-Limit-Running"] = hdrs.get("X-Concurrency-Limit-Limit", "2")
                text = "This API cannot be run again until 1 currently running API instance has finished."
                return self._xml(409, vm.simple_return(1960, text, now, {"CALLS_TO_FINISH": 1}), hdrs)
            hdrs = {**headers, "X-RateLimit-Remaining": "0", "X-RateLimit-ToWait-Sec": str(fault.wait)}
            text = f"This API cannot be run again for another {fault.wait} seconds."
            return self._xml(409, vm.simple_return(1965, text, now, {"SECONDS_TO_WAIT": fault.wait}), hdrs)
        if fault.kind == "400":
            text = "parameter vm_processed_after has invalid value: simulated (simulated rejection)"
            return self._xml(400, vm.simple_return(fault.code or 1905, text, now), headers)
        if fault.kind == "999":
            return self._xml(500, vm.generic_return_999(now), headers)
        if fault.kind == "error200":
            text = "parameter vm_processed_after has invalid value: simulated (an error sent with HTTP 200)"
            body = vm.simple_return(fault.code or 1905, text, now).encode("utf-8")
            chunks = _split_at(iter([body]), fault.split)
            return Response(
                chunks, status=200, content_type="application/xml", headers=headers, direct_passthrough=True
            )
        return Response(
            f"<html><body>{fault.kind} Server Error</body></html>",
            status=int(fault.kind),
            content_type="text/html",
            headers=headers,
        )

    # ------------------------------------------------------------------ FIM gateway

    def _auth(self, request: Request) -> Response:
        form = self._params(request)
        if request.method != "POST":
            return Response("Method Not Allowed", status=405, content_type="text/plain")
        if form.get("username") != self.username or form.get("password") != self.password:
            return Response(
                json.dumps({"authentication_exceptions": ["FailedLoginException"]}),
                status=401,
                content_type="application/json",
            )
        self.tokens_issued += 1
        return Response(self.tokens.issue(self.username, self.now()), status=201, content_type="text/plain")

    def _fim(self, request: Request) -> Response:
        now = self.now()
        if self.faults.take(request.path, {"expire_token"}) is not None:
            self.tokens.revoke_all()
        self.tokens.check(request.headers.get("Authorization"), now)
        if self.faults.active(request.path, "forbidden"):
            return Response(
                json.dumps({"message": "Unable to get Subscription details "}),
                status=403,
                content_type="application/json",
            )
        verdict, headers = self._acquire("fim", self.fim_limits, concurrency=False)
        if verdict is not None:
            return Response("Too Many Requests", status=429, content_type="text/plain", headers=headers)
        try:
            fault = self.faults.take(request.path, {"429", "500", "502", "503", "504", "echo"})
            if fault is not None and fault.kind == "echo":
                return Response(f"Internal error: {_echo(request)}", status=500, content_type="text/plain")
            if fault is not None and fault.kind == "429":
                headers = {**headers, "X-RateLimit-Remaining": "0", "X-RateLimit-ToWait-Sec": str(fault.wait)}
                return Response("Too Many Requests", status=429, content_type="text/plain", headers=headers)
            if fault is not None:
                return Response(
                    f"{fault.kind} Server Error", status=int(fault.kind), content_type="text/plain", headers=headers
                )
            if request.method != "POST":
                return Response("Method Not Allowed", status=405, content_type="text/plain")
            try:
                payload = json.loads(request.get_data(as_text=True) or "{}")
            except json.JSONDecodeError:
                return Response(
                    json.dumps({"message": "Malformed JSON body"}), status=400, content_type="application/json"
                )
            result = self.fim.route(request.path, payload)
            if isinstance(result, list) and result:
                if self.faults.take(request.path, {"null_time"}) is not None:
                    self.untimed.add(str(result[-1]["data"].get("id")))  # the newest; from now on, in every answer
                if self.untimed:
                    result = [_untimed(hit) if str(hit["data"].get("id")) in self.untimed else hit for hit in result]
            sort_fault = self.faults.take(request.path, {"empty_sort", "short_sort"})
            if sort_fault is not None and isinstance(result, list):
                keep = 0 if sort_fault.kind == "empty_sort" else 1
                result = [{**hit, "sortValues": hit.get("sortValues", [])[:keep]} for hit in result]
            text = shaping.fim_answer(result, self.shapes)
        finally:
            self._release("fim")
        body = _Body(self, None, text, iter(()), request.path)
        if body.fault is not None and body.fault.kind == "bad_gzip":
            headers = {**headers, "Content-Encoding": "gzip"}
        return Response(
            body,
            status=200,
            content_type="application/vnd.qualys.fim.api.v2.0+json",
            headers=headers,
            direct_passthrough=True,
        )

    # ------------------------------------------------------------------ admin

    def _admin(self, request: Request) -> Response:
        path = request.path
        if path == "/__sim/stats":
            stats = {
                "requests": dict(self.requests),
                "statuses": dict(self.statuses),
                "max_concurrency": {k: e.max_running for k, e in self._endpoints.items()},
                "tokens_issued": self.tokens_issued,
                "now": iso(self.now()),
            }
            return Response(json.dumps(stats), content_type="application/json")
        if path == "/__sim/faults" and request.method == "POST":
            specs = json.loads(request.get_data(as_text=True) or "[]")
            if not specs:
                self.faults.clear()
            for spec in specs:
                self.faults.arm(parse_fault(spec))
            return Response("{}", content_type="application/json")
        if path == "/__sim/shapes" and request.method == "POST":
            names = json.loads(request.get_data(as_text=True) or "[]")
            if shaping.unknown(names):
                return Response(json.dumps({"unknown": shaping.unknown(names)}), status=400)
            self.shapes = frozenset(names)
            return Response(json.dumps(sorted(self.shapes)), content_type="application/json")
        if path == "/__sim/clock" and request.method == "POST":
            body = json.loads(request.get_data(as_text=True) or "{}")
            if "advance" in body:
                self.offset += timedelta(seconds=float(body["advance"]))
            if "offset" in body:
                self.offset = timedelta(seconds=float(body["offset"]))
            return Response(json.dumps({"now": iso(self.now())}), content_type="application/json")
        if path == "/__sim/truth":
            args = request.args
            start = datetime.fromisoformat(args["start"].replace("Z", "+00:00")) if "start" in args else None
            end = datetime.fromisoformat(args["end"].replace("Z", "+00:00")) if "end" in args else None
            keys = sorted(self.truth(args["service"], start, end))
            return Response(json.dumps(keys), content_type="application/json")
        return Response("Not Found", status=404, content_type="text/plain")

    @property
    def kb_calls(self) -> list[dict[str, str]]:
        """The parameters of every KnowledgeBase call that reached the data (after auth and limits), in order."""
        with self._lock:
            return [params for resource, params in self.vm_calls if resource == KB_RESOURCE]

    def kb_truth(self, qid: int | str) -> dict[str, Any] | None:
        """QID ``qid`` as the KnowledgeBase holds it now (``None`` when it does not know it): the ground truth
        enriched detections and ``knowledge_base`` events are compared with."""
        return self.data.kb_vuln(int(qid), self.now())

    def truth(self, service: str, start: datetime | None = None, end: datetime | None = None) -> set[str]:
        """The record keys that exist now for ``service`` in ``[start, end)`` (the tests' ground truth).

        Keys: scans ``REF``; hosts ``ID``; detections ``hostID:UNIQUE_VULN_ID`` (statuses New, Active,
        Re-Opened and Fixed); KnowledgeBase VULNs ``QID@LAST_SERVICE_MODIFICATION_DATETIME``;
        activity rows ``Date|row id``; FIM events ``id``; incidents ``id``.
        """
        now = self.now()
        lo = start or datetime.min.replace(tzinfo=UTC)
        hi = end or datetime.max.replace(tzinfo=UTC)
        if service == "vm_scans":
            return {s["REF"] for s in self.data.scans(now) if lo <= _parse(s["LAUNCH_DATETIME"]) < hi}
        if service in ("host_list", "host_list_detection"):
            keys = set()
            for host, scan, processed in self.data.hosts_processed(now, None, None):
                if not lo <= processed < hi:
                    continue
                if service == "host_list":
                    keys.add(str(host.id))
                else:
                    keys.update(f"{host.id}:{d['UNIQUE_VULN_ID']}" for d in self.data.detections(host, scan, processed))
            return keys
        if service == "user_activity":
            return {f"{row[0]}|{rid}" for rid, row in self.data.activity(now, None, None) if lo <= _parse(row[0]) < hi}
        if service == "knowledge_base":
            keys = set()
            for qid in self.data.kb_qids():
                v = self.data.kb_vuln(qid, now)
                if v is not None and lo <= _parse(v["LAST_SERVICE_MODIFICATION_DATETIME"]) < hi:
                    keys.add(f"{qid}@{v['LAST_SERVICE_MODIFICATION_DATETIME']}")
            return keys
        if service == "fim_events":
            events = (self.data.fim_event(n) for n in self.data.fim_events_at(now))
            return {e["id"] for e in events if ms(lo) <= fimapi._get(e, "processedTime") < ms(hi)}
        if service == "fim_incidents":
            return {i["id"] for i in self.fim.incidents() if ms(lo) <= i["lastUpdatedBy"]["date"] < ms(hi)}
        raise ValueError(f"unknown service {service!r}")

    def detection_truth(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        """Every detection of hosts processed in ``[start, end)``, by key: ``(host fields, detection)``, including
        those Qualys shows only when asked (their ``@shown_by`` names the parameter). A detection's ``QDS`` is its
        score, ``QDS_FACTORS`` the index of its factors in ``QDS_FACTOR_SETS`` (the tests' ground truth)."""
        lo = start or datetime.min.replace(tzinfo=UTC)
        hi = end or datetime.max.replace(tzinfo=UTC)
        out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        for host, scan, processed in self.data.hosts_processed(self.now(), None, None):
            if not lo <= processed < hi:
                continue
            fields = self.data.host_fields(host, scan, processed)
            for d in chain(
                self.data.detections(host, scan, processed), self.data.hidden_detections(host, scan, processed)
            ):
                out[f"{host.id}:{d['UNIQUE_VULN_ID']}"] = (fields, d)
        return out

    # ------------------------------------------------------------------ serving

    def start(self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: Any = None) -> str:
        """Serve in a background thread; returns the base URL."""
        sim = self

        def date_time_string(_handler: Any, timestamp: float | None = None) -> str:
            """The HTTP ``Date`` header on the simulator's clock, as a skewed Qualys would send it."""
            if timestamp is not None:
                return formatdate(timestamp, usegmt=True)
            return formatdate((sim.now() + sim.next_date_shift()).timestamp(), usegmt=True)

        handler = type(
            "Handler",
            (WSGIRequestHandler,),
            {"protocol_version": "HTTP/1.1", "log_request": _quiet, "date_time_string": date_time_string},
        )
        self._server = make_server(host, port, self, threaded=True, request_handler=handler, ssl_context=ssl_context)
        self._thread = threading.Thread(target=self._server.serve_forever, name="simulator", daemon=True)
        self._thread.start()
        scheme = "https" if ssl_context else "http"
        return f"{scheme}://{host}:{self._server.server_port}"

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """Werkzeug's per-request access log is not wanted."""


def _parse(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class _Body:
    """A streamed body that applies cut/slow/malformed/bad_gzip faults and frees the concurrency slot at the end."""

    def __init__(self, sim: Simulator, key: str | None, first: str, rest: Iterator[str], path: str) -> None:
        self.sim, self.key, self.first, self.rest, self.path = sim, key, first, rest, path
        self.fault = sim.faults.take(path, {"cut", "slow", "malformed", "bad_gzip", "split", "badchars", "trickle"})
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            chunks = _split_at(self._chunks(), self.fault.split if self.fault is not None else None)
            if self.fault is not None and self.fault.kind == "trickle":
                chunks = _trickle(chunks, self.fault.delay)
            yield from chunks
        finally:  # the end of the answer, or the generator discarded after a failed write
            self.close()

    def _chunks(self) -> Iterator[bytes]:
        sent = 0
        buffer: list[bytes] = []
        size = 0
        for chunk in _chain(self.first, self.rest):
            data = chunk.encode("utf-8")
            if self.fault is not None and self.fault.kind == "badchars":
                data = data.replace(b"]]>", b"\x01\x1b]]>").replace(b"</USER_LOGIN>", b"&#x1;</USER_LOGIN>")
            if (
                self.fault is not None
                and self.fault.kind in ("cut", "malformed")
                and sent + size + len(data) > self.fault.after
            ):
                data = data[: max(0, self.fault.after - sent - size)]
                buffer.append(data)
                yield b"".join(buffer)
                if self.fault.kind == "cut":
                    raise ConnectionAbortedError("simulated cut connection")
                return
            if self.fault is not None and self.fault.kind == "slow":
                time.sleep(self.fault.delay)
            buffer.append(data)
            size += len(data)
            if size >= 65536:
                yield b"".join(buffer)
                sent += size
                buffer, size = [], 0
        if buffer:
            yield b"".join(buffer)

    def close(self) -> None:
        """Called by the server when the response ends (or the client went away).

        werkzeug skips this when a client's reset surfaces while it drains the request socket (a
        collector killed mid-answer), so the end of iteration and garbage collection call it too:
        a dead call must not hold a concurrency slot for ever.
        """
        with self.sim._lock:
            if self._closed:
                return
            self._closed = True
        if self.key is not None:
            self.sim._release(self.key)

    def __del__(self) -> None:
        self.close()


def _echo(request: Request) -> str:
    """The request's headers as a careless server repeats them in an error text."""
    return "; ".join(f"{name}: {value}" for name, value in request.headers.items())


def _trickle(chunks: Iterator[bytes], delay: float) -> Iterator[bytes]:
    """Every byte on its own, ``delay`` seconds apart (each read ends well within a per-read timeout)."""
    for chunk in chunks:
        for index in range(len(chunk)):
            yield chunk[index : index + 1]
            time.sleep(delay)


def _split_at(chunks: Iterator[bytes], at: int | None) -> Iterator[bytes]:
    """``chunks`` with the first write ending after ``at`` bytes and a pause, so the reader's first read ends there."""
    if at is None:
        yield from chunks
        return
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) > at:
            break
    yield head[:at]
    time.sleep(0.05)
    if head[at:]:
        yield head[at:]
    yield from chunks


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _untimed(hit: dict[str, Any]) -> dict[str, Any]:
    """A search hit whose record has no time: ``processedTime`` null (an event), ``lastUpdatedBy.date`` null (an
    incident)."""
    data = dict(hit["data"])
    if "processedTime" in data:
        data["processedTime"] = None
    else:
        data["lastUpdatedBy"] = {**(data.get("lastUpdatedBy") or {}), "date": None}
    return {**hit, "data": data}
