"""Source event obfuscation: per-field ``hash`` (salted SHA-256, so equal values stay joinable),
``mask`` or ``drop``, applied before an event enters the outbox so clear values never touch disk.

A field path is dot-separated (``HOST.IP``); a list on the way applies the rule to every element.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
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


@dataclass(frozen=True)
class Obfuscation:
    """The rules of one service and the salt of its input, as plain data: callable on an event body,
    and picklable (it can build events in a child process)."""

    rules: tuple[Rule, ...]
    salt: bytes = b""

    def __call__(self, body: JSON) -> JSON:
        """A copy of ``body`` with every rule applied (the input is not modified)."""
        out = body
        for rule in self.rules:
            out = _apply(out, rule.path, rule.action, self.salt)
        return out if out is not body else dict(body)


def compile_rules(rules: Sequence[tuple[str, Action]], salt: str | None) -> Obfuscation | None:
    """The obfuscation of ``rules`` (``None`` when there are none)."""
    if not rules:
        return None
    return Obfuscation(tuple(Rule(tuple(field.split(".")), action) for field, action in rules), (salt or "").encode())


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
