"""Hardened streaming XML: lxml ``iterparse`` with entities, DTD loading and network access off.

Elements are turned into plain dicts losslessly: attributes become ``@name`` keys, CDATA text is
unescaped and stripped of the whitespace Qualys wraps around it, and the children of known list
containers (``TAGS``, ``DETECTION_LIST``, ``QDS_FACTORS``...) are always lists, an empty one included, so a
field has one type whatever the count. Parsed elements are cleared as soon as they are converted: memory stays flat.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

from lxml import etree

from qualys_collector.errors import DataError

logger = logging.getLogger("qualys_collector.qualys")

#: Containers whose children always form a list (the container maps to a list of their values).
LIST_CONTAINERS = frozenset(
    {
        "TAGS",
        "CLOUD_PROVIDER_TAGS",
        "QDS_FACTORS",
        "DETECTION_LIST",
        "HOST_LIST",
        "SCAN_LIST",
        "ID_SET",
        "ITEM_LIST",
        "ASSET_GROUP_TITLE_LIST",
        "ASSET_GROUP_LIST",
        "USER_LIST",
        "PARAM_LIST",
        "EC2",
        "GOOGLE",
        "AZURE",
    }
)


class ByteStream(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (an HTTP body), for lxml."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = memoryview(b"")
        self._offset = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        """Always readable."""
        return True

    def readinto(self, target: Any) -> int:
        """Fill ``target`` from the next chunks."""
        while self._offset >= len(self._buffer):
            try:
                self._buffer = memoryview(next(self._chunks))
            except StopIteration:
                return 0
            self._offset = 0
        size = min(len(target), len(self._buffer) - self._offset)
        target[:size] = self._buffer[self._offset : self._offset + size]
        self._offset += size
        self.bytes_read += size
        return size


#: Characters XML 1.0 forbids, raw or as references: the C0 controls but tab, LF and CR (one byte each in UTF-8),
#: the noncharacters U+FFFE and U+FFFF (EF BF BE/BF), and the surrogates U+D800-U+DFFF (as references: a UTF-16
#: system writes an emoji as two of them; raw, they are not UTF-8 at all and the parser says so).
_FORBIDDEN = re.compile(
    rb"[\x00-\x08\x0b\x0c\x0e-\x1f]|\xef\xbf[\xbe\xbf]"
    rb"|&#(?:[xX]0*(?:[0-8bBcCeEfF]|1[0-9a-fA-F]|[fF]{3}[eEfF]|[dD][89a-fA-F][0-9a-fA-F]{2})"
    rb"|0*(?:[0-8]|1[124-9]|2[0-9]|3[01]|6553[45]|5529[6-9]|55[3-9][0-9]{2}|56[0-9]{3}|57[0-2][0-9]{2}|573[0-3][0-9]"
    rb"|5734[0-3]));"
)
#: The first two bytes of U+FFFE and U+FFFF in UTF-8 (and of the other characters from U+FFC0, which are allowed).
_NONCHARACTER_HEAD = b"\xef\xbf"
REPLACEMENT = "\ufffd".encode()
#: The start of a character reference cut at a chunk's end (any number of leading zeros is allowed in XML).
_PARTIAL_REFERENCE = re.compile(rb"&(?:#[xX]?[0-9a-fA-F]*)?")
#: The longest cut reference carried to the next chunk (a longer run of zeros is left to the parser).
CARRY_LIMIT = 64 << 10
#: The raw bytes of :data:`_FORBIDDEN`, for the fast check (``bytes.translate`` deletes them in C at ~1 GB/s).
_FORBIDDEN_BYTES = bytes(b for b in range(32) if b not in (9, 10, 13))


class ForbiddenCharacters:
    """Replaces characters XML 1.0 forbids with U+FFFD before the parser sees them, and counts them.

    Qualys has been seen sending such characters (control bytes in RESULTS); a strict parser would fail
    that answer on every cycle for ever. The replacement is visible in the event, and each answer with
    replacements logs one warning with the count.
    """

    def __init__(self, what: str, *, warn: bool = True) -> None:
        self.what = what
        self.replaced = 0
        self.warn = warn

    def _clean(self, data: bytes) -> bytes:
        # The regex scans ~115 MB/s (measured: 24 µs per detection of 1.4 KB, more than the parse itself); almost
        # every chunk is clean, which these two C scans (no raw control byte, no character reference) tell first.
        if (
            b"&#" not in data
            and b"\xef" not in data  # one byte: memchr, 15x faster than looking for two (U+F000 and up start so)
            and len(data.translate(None, _FORBIDDEN_BYTES)) == len(data)
        ):
            return data
        if _FORBIDDEN.search(data) is None:
            return data
        cleaned, count = _FORBIDDEN.subn(REPLACEMENT, data)
        self.replaced += count
        return cleaned

    def chunks(self, source: Iterable[bytes]) -> Iterator[bytes]:
        """``source`` cleaned; a character reference cut between two chunks is joined first."""
        carry = b""
        for chunk in source:
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"&", max(0, len(data) - CARRY_LIMIT))
            if cut >= 0 and _PARTIAL_REFERENCE.fullmatch(data, cut):  # "&#0000…" with its ";" still to come
                data, carry = data[:cut], data[cut:]
            elif data.endswith((b"\xef", _NONCHARACTER_HEAD)):  # U+FFFE or U+FFFF may be cut: its rest comes next
                cut = len(data) - (2 if data.endswith(_NONCHARACTER_HEAD) else 1)
                data, carry = data[:cut], data[cut:]
            else:
                carry = b""
            yield self._clean(data)
        if carry:
            yield self._clean(carry)
        if self.replaced and self.warn:
            warn_replaced(self.what, self.replaced)


def warn_replaced(what: str, count: int) -> None:
    """The one warning of an answer in which :class:`ForbiddenCharacters` replaced ``count`` characters."""
    logger.warning("The answer from %s had characters XML 1.0 forbids: replaced %d of them with U+FFFD", what, count)


def element_to_value(element: Any) -> Any:
    """Convert one element into a string, a dict or a list (see the module docstring).

    Written for speed (it runs once per XML element): ``len()`` and ``keys()`` are C calls that
    avoid building attribute proxies, and the common leaf without attributes is read inline rather
    than by a recursive call (13 % of the conversion).
    """
    if not len(element):
        text = element.text
        text = text.strip() if text else _empty(element.tag)
        if element.keys():
            attrs = {f"@{k}": v for k, v in element.items()}
            return {**attrs, "#text": text} if text else attrs
        return text
    keys = element.keys()
    if not keys and element.tag in LIST_CONTAINERS:
        items = []
        for child in element:
            if child.tag.__class__ is not str:  # a comment or processing instruction
                continue
            if len(child) or child.keys():
                items.append(element_to_value(child))
            else:
                text = child.text
                items.append(text.strip() if text else _empty(child.tag))
        return items
    result: dict[str, Any] = {f"@{k}": v for k, v in element.items()} if keys else {}
    for child in element:
        tag = child.tag
        if tag.__class__ is not str:
            continue
        if len(child) or child.keys():
            value = element_to_value(child)
        else:
            text = child.text
            value = text.strip() if text else _empty(tag)
        if tag in result:
            existing = result[tag]
            result[tag] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            result[tag] = value
    return result


def _empty(tag: Any) -> str | list[Any]:
    """The value of an element without text or children: ``[]`` for a list container (``<ASSET_GROUP_LIST />``,
    as Qualys' guide prints it), so the field is a list however many items it has; ``""`` otherwise."""
    return [] if tag in LIST_CONTAINERS else ""


def iter_elements(stream: io.RawIOBase, tags: set[str]) -> Iterator[tuple[str, Any]]:
    """Yield ``(tag, element)`` for each completed element whose tag is in ``tags``.

    The caller converts the element before asking for the next one; it is cleared afterwards.
    Malformed or truncated documents raise :class:`DataError`.
    """
    parser = etree.iterparse(
        stream,
        events=("end",),
        tag=tuple(tags),
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=True,
        remove_comments=True,
        remove_blank_text=True,  # the indentation between elements: 15 % of the parse, never a value
        recover=False,
    )
    try:
        for _event, element in parser:
            yield element.tag, element
            element.clear(keep_tail=False)
            parent = element.getparent()
            if parent is not None:
                while element.getprevious() is not None:
                    del parent[0]
    except etree.XMLSyntaxError as exc:
        raise DataError(f"malformed or truncated XML from Qualys: {exc.msg}") from exc


#: ``root_tag`` of a head that is not an XML document (CSV, HTML text...).
NOT_XML = ""
_NAME_END = b" \t\r\n/>"


def root_tag(head: bytes) -> str | None:
    """The root element's name once the head holds all of it; ``None`` while more bytes are needed.

    The XML declaration, processing instructions, comments and the DOCTYPE (with an internal subset)
    before the root are skipped whole, and a name counts only once the byte after it is there (space,
    ``/`` or ``>``): a first read that ends inside ``<SIMPLE_RET`` decides nothing. A head that does not
    start like XML gives :data:`NOT_XML`.
    """
    if len(head) < 3 and b"\xef\xbb\xbf".startswith(head):
        return None  # nothing yet, or a byte-order mark cut short
    position = 3 if head.startswith(b"\xef\xbb\xbf") else 0
    while True:
        while position < len(head) and head[position : position + 1] in b" \t\r\n":
            position += 1
        if position >= len(head):
            return None
        if head[position : position + 1] != b"<":
            return NOT_XML
        if len(head) - position < 2:
            return None
        if head.startswith(b"<?", position):
            close = head.find(b"?>", position + 2)
            position = close + 2 if close >= 0 else -1
        elif head.startswith(b"<!--", position) or (b"<!--".startswith(head[position:])):
            close = head.find(b"-->", position + 4)
            position = close + 3 if close >= 0 else -1
        elif head.startswith(b"<!", position):
            close = _doctype_end(head, position + 2)
            position = close
        else:
            end = position + 1
            while end < len(head) and head[end : end + 1] not in _NAME_END:
                end += 1
            if end >= len(head):
                return None
            return head[position + 1 : end].decode("utf-8", "replace") or NOT_XML
        if position < 0:
            return None


def _doctype_end(head: bytes, position: int) -> int:
    """The index after a ``<!DOCTYPE ...>`` starting before ``position`` (``-1`` if not all there yet)."""
    depth = 0
    quote = b""
    for index in range(position, len(head)):
        char = head[index : index + 1]
        if quote:
            if char == quote:
                quote = b""
        elif char in b"\"'":
            quote = char
        elif char == b"[":
            depth += 1
        elif char == b"]":
            depth -= 1
        elif char == b">" and depth <= 0:
            return index + 1
    return -1


def parse_error_document(body: bytes) -> tuple[int | None, str]:
    """``(CODE, TEXT)`` of a SIMPLE_RETURN, or the number and text of a GENERIC_RETURN; ``(None, "")`` else.

    Error bodies are small and sometimes not well-formed (a GENERIC_RETURN with a broken attribute
    is on record), so a tolerant pattern match backs up the parser.
    """
    code, text = _parse_error_tree(body)
    if code is None:
        code, text = _scan_error_text(body.decode("utf-8", "replace"))
    return code, text


def _scan_error_text(text: str) -> tuple[int | None, str]:
    match = re.search(r"<CODE>\s*(\d+)\s*</CODE>", text)
    if match:
        found = re.search(r"<TEXT>(.*?)</TEXT>", text, re.DOTALL)
        return int(match.group(1)), (found.group(1).strip() if found else "")
    match = re.search(r"<RETURN[^>]*\bnumber=\"(\d+)\"[^>]*>(.*?)</RETURN>", text, re.DOTALL)
    if match:
        return int(match.group(1)), match.group(2).strip()
    return None, ""


def _parse_error_tree(body: bytes) -> tuple[int | None, str]:
    try:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, recover=True)
        root = etree.fromstring(body, parser=parser)
    except etree.XMLSyntaxError:
        return None, ""
    if root is None:
        return None, ""
    if root.tag == "SIMPLE_RETURN":
        code = root.findtext("RESPONSE/CODE")
        text = (root.findtext("RESPONSE/TEXT") or "").strip()
        return (int(code.strip()) if code and code.strip().isdigit() else None), text
    if root.tag == "GENERIC_RETURN":
        ret = root.find("API/RETURN")
        if ret is not None:
            number = ret.get("number", "")
            return (int(number) if number.isdigit() else None), (ret.text or "").strip()
    return None, ""


def simple_return_items(body: bytes) -> dict[str, str]:
    """``ITEM_LIST`` of a SIMPLE_RETURN as a dict (``SECONDS_TO_WAIT``, ``CALLS_TO_FINISH``...)."""
    try:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, recover=True)
        root = etree.fromstring(body, parser=parser)
    except etree.XMLSyntaxError:
        return {}
    if root is None:
        return {}
    return {
        (item.findtext("KEY") or "").strip(): (item.findtext("VALUE") or "").strip()
        for item in root.iterfind("RESPONSE/ITEM_LIST/ITEM")
    }
