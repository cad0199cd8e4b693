"""The one place secrets are masked: log records, error texts, URLs and statistics all pass here.

Secrets are registered once (when the configuration is loaded, when a token is issued) and every
log record is scrubbed of them by :class:`RedactingFilter`, so a secret that slips into an exception
text or a URL still never reaches a log line.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|authorization|api[_-]?key|^key$|salt", re.IGNORECASE)

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that it is masked wherever it appears later. Short values are ignored."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def register_credentials(username: str, password: str) -> None:
    """Mask ``password`` and the encoded forms a request carries it in: the base64 of ``username:password``
    (an echoed ``Authorization: Basic`` header), with and without padding, standard and URL-safe."""
    register_secret(password)
    pair = f"{username}:{password}".encode()
    for encoded in (base64.b64encode(pair).decode(), base64.urlsafe_b64encode(pair).decode()):
        register_secret(encoded)
        register_secret(encoded.rstrip("="))


#: An ``Authorization``/``Proxy-Authorization`` header value wherever it is echoed (text, JSON, a repr).
_AUTH_HEADER = re.compile(
    r"""(?i)\b((?:proxy-)?authorization)(["']?\s*[:=]\s*["']?)((?:basic|bearer|digest|negotiate|ntlm)\s+)?[^\s"',;}]+"""
)


def forget_secrets() -> None:
    """Drop every registered secret (tests use this between cases)."""
    with _lock:
        _secrets.clear()


def is_secret_key(key: str) -> bool:
    """Whether a configuration or form key names a secret (password, token, key, ...)."""
    return bool(_SECRET_KEYS.search(key))


def scrub(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``***``."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "uthorization" in text or "UTHORIZATION" in text:
        text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return text


def sanitize_url(url: str) -> str:
    """Remove user-info and secret-looking query parameters from a URL."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    query = urlencode(
        [(k, MASK if is_secret_key(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)],
        safe=",:/",
    )
    return scrub(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


class RedactingFilter(logging.Filter):
    """A logging filter that renders each record's message and masks registered secrets in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub the message (and exception text) of ``record`` in place."""
        message = record.getMessage()
        record.msg = scrub(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
