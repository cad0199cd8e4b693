"""Events too large for where they go: their largest string fields shortened, never split or dropped.

The outbox takes events up to ``globals.event_max_bytes``; each syslog output takes messages up to its
``max_event_bytes`` (a receiver cuts a longer message into fragments, none of which is valid JSON). An event
over such a limit has its largest string fields shortened until it fits, stays one valid JSON object, and
says what was cut: ``"@truncated_fields": {"<field path>": <original length>}``.
"""

from __future__ import annotations

import json
from typing import Any

TRUNCATED = "@truncated_fields"


def _dump(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def _strings(node: Any, path: str = "") -> list[tuple[int, str, Any, Any]]:
    """Every string leaf as (encoded size, dotted path, container, key)."""
    found: list[tuple[int, str, Any, Any]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        if key == TRUNCATED and not path:
            continue
        here = f"{path}.{key}" if path else str(key)
        if isinstance(value, str):
            found.append((len(value.encode("utf-8")), here, node, key))
        elif isinstance(value, dict | list):
            found.extend(_strings(value, here))
    return found


def shorten(body: str, limit: int) -> tuple[str, dict[str, int]]:
    """``body`` (a JSON object) within ``limit`` bytes, and the fields cut with their original lengths.

    Returns ``body`` unchanged when it fits. Raises ``ValueError`` when even empty strings do not fit.
    """
    if len(body.encode("utf-8")) <= limit:
        return body, {}
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("the event is not a JSON object")  # noqa: TRY004 (the caller handles ValueError)
    originals: dict[str, int] = {}
    while True:
        if originals:
            document[TRUNCATED] = originals
        text = _dump(document)
        excess = len(text.encode("utf-8")) - limit
        if excess <= 0:
            return text, originals
        leaves = [leaf for leaf in _strings(document) if leaf[0] > 0]
        if not leaves:
            raise ValueError(f"the event does not fit in {limit} bytes even with every string emptied")
        _, path, container, key = max(leaves, key=lambda leaf: leaf[0])
        value: str = container[key]
        originals.setdefault(path, len(value))
        # each character cut removes at least one byte of the encoded line; cut a little more for the note
        keep = max(0, len(value) - excess - 64)
        container[key] = value[:keep]
