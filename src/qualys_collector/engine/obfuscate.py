"""Source event obfuscation: per-field ``hash`` (salted SHA-256, so equal values stay joinable),
``mask`` or ``drop``, applied before an event enters the outbox so clear values never touch disk.

A field path is dot-separated (``HOST.IP``); a list on the way applies the rule to every element.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qualys_collector.model import JSON

Action = Literal["hash", "mask", "drop"]
MASK = "********"


@dataclass(frozen=True)
class Rule:
    """One field and what to do with it."""

    path: tuple[str, ...]
    action: Action


def compile_rules(rules: Sequence[tuple[str, Action]], salt: str | None) -> Callable[[JSON], JSON] | None:
    """A function that obfuscates one event body (``None`` when there are no rules)."""
    if not rules:
        return None
    compiled = [Rule(tuple(field.split(".")), action) for field, action in rules]
    key = (salt or "").encode("utf-8")

    def transform(body: JSON) -> JSON:
        out = body
        for rule in compiled:
            out = _apply(out, rule.path, rule.action, key)
        return out

    return transform


def _apply(node: Any, path: tuple[str, ...], action: Action, key: bytes) -> Any:
    if isinstance(node, list):
        return [_apply(item, path, action, key) for item in node]
    if not isinstance(node, dict) or path[0] not in node:
        return node
    head, rest = path[0], path[1:]
    copy = dict(node)
    if rest:
        copy[head] = _apply(node[head], rest, action, key)
    elif action == "drop":
        del copy[head]
    else:
        copy[head] = _leaf(node[head], action, key)
    return copy


def _leaf(value: Any, action: Action, key: bytes) -> Any:
    if isinstance(value, list):
        return [_leaf(item, action, key) for item in value]
    if value is None:
        return None
    if action == "mask":
        return MASK
    text = value if isinstance(value, str) else repr(value)
    return "sha256:" + hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
