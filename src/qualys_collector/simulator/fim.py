"""The FIM gateway: ``/auth`` JWTs and the events / incidents search and count APIs.

Search answers are JSON arrays of ``{"sortValues": [...], "data": {...}}``; offset paging stops at
10,000 rows (416); ``searchAfter`` with the last ``sortValues`` pages past that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from qualys_collector.simulator.data import Dataset, ms

MAX_WINDOW = 10_000
MAX_PAGE = 1000
_RANGE = re.compile(r"([\w.]+)\s*:\s*\[\s*'([^']*)'\s*\.\.\s*'([^']*)'\s*\]")
_EQUAL = re.compile(r"([\w.]+)\s*:\s*['`]([^'`]*)['`]")
DATE_FIELDS = {"dateTime", "processedTime", "createdBy.date", "lastUpdatedBy.date"}


class GatewayError(Exception):
    """An HTTP error answer from the gateway."""

    def __init__(self, status: int, body: str, content_type: str = "text/plain") -> None:
        super().__init__(body)
        self.status, self.body, self.content_type = status, body, content_type


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """HS512 JWTs like the gateway's (``exp - iat`` = 4 hours unless configured)."""

    def __init__(self, ttl: int = 14400) -> None:
        self.ttl = ttl
        self._key = secrets.token_bytes(32)
        self.generation = 0
        self.min_generation = 0

    def revoke_all(self) -> None:
        """Every token issued so far stops working (as if it had expired)."""
        self.min_generation = self.generation + 1

    def issue(self, username: str, now: datetime) -> str:
        """A signed token for ``username``."""
        iat = int(now.timestamp())
        self.generation += 1
        payload = {
            "gen": self.generation,
            "sub": username,
            "iat": iat,
            "exp": iat + self.ttl,
            "jti": f"TGT-{uuid.uuid4()}",
            "modulesAllowed": ["FIM", "VM"],
            "subscriptionId": 1234,
            "credentialType": "USERNAME_PASSWORD",
        }
        head = _b64(json.dumps({"alg": "HS512"}).encode())
        body = _b64(json.dumps(payload).encode())
        sig = _b64(hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha512).digest())
        return f"{head}.{body}.{sig}"

    def check(self, header: str | None, now: datetime) -> None:
        """401 unless ``header`` is ``Bearer <valid, unexpired token>``."""
        if not header or not header.startswith("Bearer "):
            raise GatewayError(401, "Unauthorized")
        token = header[len("Bearer ") :]
        try:
            head, body, sig = token.split(".")
            good = _b64(hmac.new(self._key, f"{head}.{body}".encode(), hashlib.sha512).digest())
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, json.JSONDecodeError) as exc:
            raise GatewayError(401, "Unauthorized") from exc
        expired = payload["exp"] <= now.timestamp() or payload["gen"] < self.min_generation
        if not hmac.compare_digest(sig, good) or expired:
            raise GatewayError(401, "Unauthorized")


def _value(field: str, raw: str) -> Any:
    if field in DATE_FIELDS:
        if raw.isdigit():
            return int(raw)
        text = raw.replace("Z", "+00:00")
        if len(text) == 10:
            text += "T00:00:00+00:00"
        try:
            return ms(datetime.fromisoformat(text).astimezone(UTC))
        except ValueError as exc:
            raise GatewayError(
                400, json.dumps({"message": f"Invalid date {raw!r} for {field}"}), "application/json"
            ) from exc
    return raw


def parse_qql(text: str | None) -> list[tuple[str, Any, Any]]:
    """Conditions ``(field, low, high)`` (``high is None`` for equality) from a QQL filter."""
    if not text:
        return []
    conditions: list[tuple[str, Any, Any]] = []
    rest = text
    for match in _RANGE.finditer(text):
        field = match.group(1)
        conditions.append((field, _value(field, match.group(2)), _value(field, match.group(3))))
        rest = rest.replace(match.group(0), " ")
    for match in _EQUAL.finditer(rest):
        conditions.append((match.group(1), match.group(2), None))
        rest = rest.replace(match.group(0), " ")
    leftover = re.sub(r"\b(and|AND)\b|[()\s]", "", rest)
    if leftover:
        raise GatewayError(400, json.dumps({"message": f"Invalid QQL near {leftover[:40]!r}"}), "application/json")
    return conditions


def _get(record: dict[str, Any], field: str) -> Any:
    light = record.get("_ms")
    if light is not None and field in light:
        return light[field]
    value: Any = record
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if field in ("dateTime", "processedTime") and isinstance(value, str):
        return ms(datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z"))
    return value


def _matches(record: dict[str, Any], conditions: list[tuple[str, Any, Any]]) -> bool:
    for field, low, high in conditions:
        value = _get(record, field)
        if high is None:
            if str(value) != str(low):
                return False
        elif value is None or not low <= value <= high:
            return False
    return True


def _sort_keys(body: dict[str, Any]) -> list[tuple[str, bool]]:
    raw = body.get("sort")
    if raw in (None, "", []):
        return []
    items = json.loads(raw) if isinstance(raw, str) else raw
    keys = []
    for item in items:
        for field, direction in item.items():
            keys.append((field, str(direction).lower() == "desc"))
    return keys


def search(records: Iterable[dict[str, Any]], body: dict[str, Any]) -> list[dict[str, Any]]:
    """Filter, sort and page ``records`` as the gateway does."""
    conditions = parse_qql(body.get("filter"))
    keys = _sort_keys(body)
    size = int(body.get("pageSize", 10))
    number = int(body.get("pageNumber", 0))
    if not 1 <= size <= MAX_PAGE:
        raise GatewayError(
            400, json.dumps({"message": f"pageSize must be between 1 and {MAX_PAGE}"}), "application/json"
        )
    hits = [r for r in records if _matches(r, conditions)]
    for field, desc in reversed(keys):
        hits.sort(key=lambda r, f=field: (_get(r, f) is None, _get(r, f)), reverse=desc)  # type: ignore[misc]
    after = body.get("searchAfter") or []
    if after:
        if len(after) != len(keys):
            raise GatewayError(
                400, json.dumps({"message": "searchAfter must match the sort fields"}), "application/json"
            )

        def beyond(record: dict[str, Any]) -> bool:
            for (field, desc), ref in zip(keys, after, strict=True):
                value = _get(record, field)
                if value != ref:
                    return bool(value < ref) if desc else bool(value > ref)
            return False

        hits = [r for r in hits if beyond(r)]
    if (number + 1) * size > MAX_WINDOW:
        raise GatewayError(416, "Requested Range Not Satisfiable")
    page = hits[number * size : (number + 1) * size]
    return [{"sortValues": [_get(r, f) for f, _d in keys], "data": r} for r in page]


class FimApi:
    """The gateway's FIM routes over a dataset."""

    def __init__(self, data: Dataset, clock: Callable[[], datetime]) -> None:
        self.data = data
        self.clock = clock
        self._light: list[dict[str, Any]] | None = None

    def events(self) -> list[dict[str, Any]]:
        """Every event processed by now."""
        return [self.data.fim_event(n) for n in self.data.fim_events_at(self.clock())]

    def _light_events(self) -> list[dict[str, Any]]:
        """Just the fields searches filter and sort on (the full event is built for the page only)."""
        if self._light is None:
            light: list[dict[str, Any]] = []
            for n in range(self.data.config.fim_events):
                happened, processed = self.data.fim_times(n)
                stamps = {"processedTime": ms(processed), "dateTime": ms(happened)}
                searchable = ms(processed + self.data.fim_index_delay(n))
                light.append({"_n": n, "id": self.data.fim_event_id(n), "_ms": stamps, "_searchable": searchable})
            light.sort(key=lambda r: (r["_ms"]["processedTime"], r["id"]))
            self._light = light
        now = ms(self.clock())
        return [r for r in self._light if r["_searchable"] <= now]

    def search_events(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Event search; light records when only id and the two dates are filtered or sorted on."""
        fields = {c[0] for c in parse_qql(body.get("filter"))} | {f for f, _d in _sort_keys(body)}
        if not fields <= {"processedTime", "dateTime", "id"}:
            return search(self.events(), body)
        hits = search(self._light_events(), body)
        return [{"sortValues": h["sortValues"], "data": self.data.fim_event(h["data"]["_n"])} for h in hits]

    def incidents(self) -> list[dict[str, Any]]:
        """Every incident existing now."""
        now = self.clock()
        out = []
        for n in range(self.data.config.fim_incidents):
            incident = self.data.fim_incident(n, now)
            if incident is not None:
                out.append(incident)
        return out

    def incident_events(self, incident_id: str) -> list[dict[str, Any]]:
        """The events of one incident (404 for an unknown id)."""
        now = self.clock()
        for n in range(self.data.config.fim_incidents):
            incident = self.data.fim_incident(n, now)
            if incident is not None and incident["id"] == incident_id:
                events = []
                for e in self.data.incident_events(n):
                    if e in set(self.data.fim_events_at(now)):
                        event = self.data.fim_event(e)
                        event["incidentId"] = incident_id
                        events.append(event)
                return events
        raise GatewayError(404, "Not Found")

    def route(self, path: str, body: dict[str, Any]) -> Any:
        """Answer one FIM API call."""
        if path == "/fim/v2/events/search":
            result: Any = self.search_events(body)
        elif path == "/fim/v2/events/count":
            conditions = parse_qql(body.get("filter"))
            result = {"count": sum(1 for r in self._light_events() if _matches(r, conditions))}
        elif path == "/fim/v3/incidents/search":
            result = search(self.incidents(), body)
        elif path == "/fim/v2/incidents/count":
            result = {"count": sum(1 for r in self.incidents() if _matches(r, parse_qql(body.get("filter"))))}
        else:
            match = re.fullmatch(r"/fim/v2/incidents/([\w-]+)/events/search", path)
            if match is None:
                raise GatewayError(404, "Not Found")
            result = search(self.incident_events(match.group(1)), body)
        return result
