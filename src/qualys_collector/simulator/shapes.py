"""Odd but valid shapes of real Qualys answers: the same data, written the ways real payloads write it.

Switched on with ``Simulator(shapes=...)``, ``POST /__sim/shapes`` (a JSON list of names; ``[]`` for the clean
form) or ``simulate --shape NAME``. :data:`DEFAULT_SHAPES` are on unless a list is given. Each shape changes how
an answer is written, never what it says, except ``sparse`` and ``empty``, which leave out or add optional
elements (named in :data:`SPARSE_ELEMENTS` and :data:`EMPTY_ELEMENTS`).

Where each comes from, in ``../shared/reference/`` ([I]: inferred, no public sample shows it):

VM XML answers (scan list, host list, host list detection):

* ``eval_comments`` (default) - an evaluation-account comment between the DOCTYPE and the root element and a
  CONFIDENTIAL comment after it (REAL: ``hld_xml_two_hosts_eval_account``, ``hld_xml_empty`` recordings).
* ``comments`` - keep-alive comments inside ``RESPONSE``, between hosts and scans, inside ``HOST`` and
  ``DETECTION_LIST``, inside a leaf (``<QID>1<!-- -->0012</QID>``, ``<RESULTS><!-- --><![CDATA[``) [I], and a
  trailing comment after the root as the 999 answer has (DOC: ``error_generic_return_999``).
* ``cdata`` - every text value in CDATA, numbers and dates too, each CDATA split into two sections [I; CDATA
  around free text: every sample].
* ``plain`` - no CDATA at all: free text entity-escaped instead (DOC: ``hld_xml_default_statuses`` writes
  some values plain).
* ``whitespace`` - CRLF line ends, blank lines and tabs between elements [I; the guide's samples wrap and
  indent freely: ``hld_xml_unique_vuln_id_network``].
* ``no_decl`` - no XML declaration and no DOCTYPE (REAL: ``error_simple_return_1905_bad_ids``; DOC: sample 1
  has no DOCTYPE).
* ``bom`` - a UTF-8 byte-order mark before everything [I: no sample has one; some HTTP stacks add it].
* ``warning`` - the truncation ``WARNING`` without ``CODE`` (the DTD makes it optional: ``WARNING (CODE?,
  TEXT, URL?)``), its ``TEXT`` wrapped across lines and its ``URL`` entity-escaped instead of CDATA, on
  ``/api/4.0/`` and carrying a parameter the caller never sent (DOC-3P: ``host_list_xml_ec2_truncated_api4``).
* ``sparse`` - optional host and scan elements left out (:data:`SPARSE_ELEMENTS`; the DTD marks them ``?``).
* ``empty`` - an empty ``<ASSET_GROUP_LIST />`` on every host (DOC-3P: ``hld_xml_unique_vuln_id_network``).

Activity log CSV: ``bom``, ``whitespace`` (CRLF line ends) and ``warning`` (the footer's URL broken across
two lines inside its quoted field, MOCK: ``activity_log_csv_truncation_footer_fragment``).

FIM JSON answers: ``bom``, ``whitespace`` (indented, CRLF), ``ascii`` (every non-ASCII character as ``\\uXXXX``,
``/`` as ``\\/``) [I], ``reordered`` (keys in another order, ``data`` before ``sortValues``) [I],
``empty_sort`` (``"sortValues": []``, Qualys' own Fetch Events example) and ``sparse`` (keys whose value is
``null`` left out, as the approve answer and XSOAR's fixtures differ on them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

XML_SHAPES = frozenset(
    {"eval_comments", "comments", "cdata", "plain", "whitespace", "no_decl", "bom", "warning", "sparse", "empty"}
)
CSV_SHAPES = frozenset({"bom", "whitespace", "warning"})
FIM_SHAPES = frozenset({"bom", "whitespace", "ascii", "reordered", "empty_sort", "sparse"})
SHAPES = XML_SHAPES | CSV_SHAPES | FIM_SHAPES
#: What the simulator's default data shows (real answers of evaluation subscriptions carry these comments).
DEFAULT_SHAPES = frozenset({"eval_comments"})
#: Elements ``sparse`` leaves out of hosts and scans.
SPARSE_ELEMENTS = ("NETBIOS", "QG_HOSTID", "DNS_DATA", "NETWORK_ID", "PROCESSING_PRIORITY", "OPTION_PROFILE")
#: Empty elements ``empty`` adds to every host.
EMPTY_ELEMENTS = ("ASSET_GROUP_LIST",)

_ROOTS = "HOST_LIST_VM_DETECTION_OUTPUT|HOST_LIST_OUTPUT|SCAN_LIST_OUTPUT"
_ROOT_OPEN = re.compile(rf"<({_ROOTS})>")
_ROOT_CLOSE = re.compile(rf"</({_ROOTS})>\n")
_EVAL = "<!-- This report was generated with an evaluation version of Qualys //-->\n"
_CONFIDENTIAL = (
    '<!-- CONFIDENTIAL AND PROPRIETARY INFORMATION. Qualys provides the QualysGuard Service "As Is," without '
    "any warranty of any kind. Copyright 2026, Qualys, Inc. //-->\n"
)
_CDATA = re.compile(r"<!\[CDATA\[(.*?)\]\]>", re.DOTALL)
_CDATA_SPLIT = re.compile(r"(<!\[CDATA\[.*?\]\]>)", re.DOTALL)
_LEAF = re.compile(r"<([A-Z_]+)>([^<>\n]+)</\1>")
_QID = re.compile(r"<QID>(\d)(\d+)</QID>")
_DECL = re.compile(r"<\?xml[^>]*\?>\n?|<!DOCTYPE[^>]*>\n?")
_WARNING_CODE = re.compile(r"\s*<CODE>1980</CODE>")
_WARNING_URL = re.compile(r"<URL>\s*<!\[CDATA\[(.*?)\]\]>\s*</URL>", re.DOTALL)
_SPARSE = re.compile(rf"[ \t]*<({'|'.join(SPARSE_ELEMENTS)})>.*?</\1>\n", re.DOTALL)


def unknown(names: Iterable[str]) -> list[str]:
    """The names that are no shape."""
    return sorted(set(names) - SHAPES)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _unesc(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _split_cdata(match: re.Match[str]) -> str:
    text = match.group(1)
    if len(text) < 2:
        return match.group(0)
    half = len(text) // 2
    return f"<![CDATA[{text[:half]}]]><![CDATA[{text[half:]}]]>"


def _xml_chunk(text: str, shapes: frozenset[str], first: bool) -> str:
    """One chunk of a VM XML answer (the simulator writes whole hosts, lines and blocks per chunk; the root's
    start tag is in the first, its end tag ends the last)."""
    last = text.endswith("_OUTPUT>\n")  # O(1): the default shape must not cost the benchmark's million hosts
    if "sparse" in shapes:
        text = _SPARSE.sub("", text)
    if "empty" in shapes:
        text = text.replace("</TRACKING_METHOD>\n", "</TRACKING_METHOD>\n        <ASSET_GROUP_LIST />\n")
    if "warning" in shapes and "<WARNING>" in text:
        text = _WARNING_CODE.sub("", text, count=1)
        text = text.replace("next batch of results.", "next batch of\nresults.")
        text = _WARNING_URL.sub(lambda m: f"<URL>{_esc(_api4(m.group(1)))}</URL>", text)
    if "comments" in shapes:
        text = text.replace("<RESPONSE>\n", "<RESPONSE>\n    <!-- keep-alive -->\n", 1)
        text = text.replace("</HOST>\n", "</HOST>\n      <!-- keep-alive //-->\n")
        text = text.replace("</SCAN>\n", "</SCAN>\n      <!-- keep-alive //-->\n")
        text = text.replace("<DETECTION_LIST>\n", "<DETECTION_LIST>\n          <!-- detections -->\n")
        text = text.replace("</ID>\n", "</ID><!-- id -->\n")
        text = text.replace("<RESULTS><![CDATA[", "<RESULTS><!-- results --><![CDATA[")
        text = _QID.sub(r"<QID>\1<!-- split -->\2</QID>", text)
        if last:
            text = _ROOT_CLOSE.sub(lambda m: f"{m.group(0)}<!-- Incident signature: 0123456789abcdef //-->\n", text)
    if "cdata" in shapes:
        text = _LEAF.sub(lambda m: f"<{m.group(1)}><![CDATA[{_unesc(m.group(2))}]]></{m.group(1)}>", text)
        text = _CDATA.sub(_split_cdata, text)
    elif "plain" in shapes:
        text = _CDATA.sub(lambda m: _esc(m.group(1)), text)
    if "eval_comments" in shapes:
        if first:
            text = _ROOT_OPEN.sub(lambda m: f"{_EVAL}{m.group(0)}", text, count=1)
        if last:
            text = _ROOT_CLOSE.sub(lambda m: f"{m.group(0)}{_CONFIDENTIAL}", text)
    if "no_decl" in shapes and first:
        text = _DECL.sub("", text)
    if "whitespace" in shapes:
        text = _loosen(text)
    return text


def _loosen(text: str) -> str:
    """CRLF line ends everywhere (a parser reads them as LF, inside CDATA too) and, between elements only, a
    blank line and a tab after each line."""
    parts = _CDATA_SPLIT.split(text)  # even: outside CDATA; odd: CDATA sections, kept whole
    for index in range(0, len(parts), 2):
        parts[index] = parts[index].replace(">\n", ">\n\t\n")
    return "".join(parts).replace("\n", "\r\n")


def _api4(url: str) -> str:
    """A next-page URL as the guide prints one: on ``/api/4.0/``, with a parameter the caller never sent."""
    return re.sub(r"/api/\d+\.\d+/", "/api/4.0/", url) + "&cloud_agent_activationkey=0"


def _csv_chunk(text: str, shapes: frozenset[str]) -> str:
    if "warning" in shapes and text.startswith('"1980"'):
        cut = text.rindex("&")
        text = f"{text[:cut]}\n{text[cut:]}"  # the URL broken across two lines inside its quoted field
    if "whitespace" in shapes:
        text = text.replace("\n", "\r\n")
    return text


def vm_answer(chunks: Iterator[str], shapes: frozenset[str], resource: str) -> Iterator[str]:
    """A VM answer's chunks written in ``shapes`` (``resource`` is the API: ``activity_log`` answers CSV)."""
    csv = resource == "activity_log"
    active = shapes & (CSV_SHAPES if csv else XML_SHAPES)
    first = True
    for chunk in chunks:
        text = _csv_chunk(chunk, active) if csv else _xml_chunk(chunk, active, first)
        if first and "bom" in active:
            text = "\ufeff" + text
        first = False
        yield text


def _reversed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reversed(value[k]) for k in reversed(value)}
    if isinstance(value, list):
        return [_reversed(v) for v in value]
    return value


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def fim_answer(result: Any, shapes: frozenset[str]) -> str:
    """A FIM gateway answer (search hits, a count) as JSON text written in ``shapes``."""
    active = shapes & FIM_SHAPES
    if isinstance(result, list):
        if "sparse" in active:
            result = [{**hit, "data": _without_nulls(hit.get("data"))} for hit in result]
        if "empty_sort" in active:
            result = [{**hit, "sortValues": []} for hit in result]
        if "reordered" in active:
            result = [_reversed(hit) for hit in result]
    text = json.dumps(result, ensure_ascii="ascii" in active, indent=2 if "whitespace" in active else None)
    if "ascii" in active:
        text = text.replace("/", "\\/")
    if "whitespace" in active:
        text = text.replace("\n", "\r\n")
    if "bom" in active:
        text = "\ufeff" + text
    return text
