"""The KnowledgeBase wire: ``/api/<v>/fo/knowledge_base/vuln/?action=list`` answers, streamed VULN by VULN.

Three things live here, none of them engine or storage:

* :func:`normalise` makes one converted ``VULN`` element have one shape whatever the counts: every list
  container (``CVE_LIST``, ``VENDOR_REFERENCE_LIST``, ``SOFTWARE_LIST``, ``THREAT_INTELLIGENCE``,
  ``AUTH_TYPE_LIST``...) becomes a list of its children's values, also when it holds one child or is empty;
* :func:`brief` keeps the fields a detection needs from a VULN, bounded in size (the KB cache's value and
  the ``KB`` key of an enriched detection);
* :func:`vulns` and :func:`fetch_briefs` read an answer as it streams (the full KB is hundreds of MB).

Version: ``4.0`` by default (Release 10.37.2, Feb 2026; QualysETL's default); ``2.0`` and ``3.0`` are still
served. No source mentions a KnowledgeBase ``5.0`` (HLD and host list have one): ``../shared/reference/
qualys_vm/KB.md`` section 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from qualys_collector.model import JSON
from qualys_collector.qualys.paging import guard_progress, url_cursor
from qualys_collector.qualys.vm_hosts import server_time
from qualys_collector.qualys.xml import element_to_value, iter_elements

if TYPE_CHECKING:
    from qualys_collector.qualys.vm import VmClient

KB_VERSIONS = ("2.0", "3.0", "4.0")
DEFAULT_KB_VERSION = "4.0"
#: QIDs per ``ids`` request: what XSIAM settled on after 2,000 took 1.5 minutes (KB.md section 5).
IDS_PER_CALL = 500
#: The solution text kept in a brief, in characters (the full text stays in the knowledge_base events).
SOLUTION_MAX = 512
#: CVE ids and vendor references kept in a brief (a kernel update QID can list hundreds of CVEs).
CVE_MAX = 200
VENDOR_REF_MAX = 20

#: Containers whose children always form a list (KB.md section 9 row 7), mapped to their child's name.
LISTS = {
    "VULN_LIST": "VULN",
    "CVE_LIST": "CVE",
    "BUGTRAQ_LIST": "BUGTRAQ",
    "VENDOR_REFERENCE_LIST": "VENDOR_REFERENCE",
    "SOFTWARE_LIST": "SOFTWARE",
    "THREAT_INTELLIGENCE": "THREAT_INTEL",
    "AUTH_TYPE_LIST": "AUTH_TYPE",
    "PCI_REASONS": "PCI_REASON",
    "CHANGE_LOG_LIST": "CHANGE_LOG_INFO",
    "COMPLIANCE_LIST": "COMPLIANCE",
    "EXPLOITS": "EXPLT_SRC",
    "EXPLT_LIST": "EXPLT",
    "MALWARE": "MW_SRC",
    "MW_LIST": "MW_INFO",
}


def path_for(version: str) -> str:
    """The list endpoint of one KB API version."""
    return f"/api/{version}/fo/knowledge_base/vuln/"


def _listed(value: Any, child: str) -> list[Any]:
    if isinstance(value, dict):
        items = value.get(child, [])
        return [normalise(v) for v in (items if isinstance(items, list) else [items])]
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return []  # an empty container (``<CVE_LIST/>``) or one with only whitespace


def normalise(value: Any) -> Any:
    """``value`` with every known container turned into a list of its children (recursively)."""
    if isinstance(value, dict):
        return {k: (_listed(v, LISTS[k]) if k in LISTS else normalise(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def _text(value: Any) -> str | None:
    """A leaf's text: plain, or ``#text`` of a leaf with attributes (``<BASE source="service">9.3</BASE>``)."""
    if isinstance(value, dict):
        value = value.get("#text")
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def cvss(vuln: JSON) -> JSON | None:
    """CVSS v3 version, base score and vector, else v2's (a 2013 answer has numeric v2 codes and no vector), else
    ``None``."""
    v3 = vuln.get("CVSS_V3")
    if isinstance(v3, dict) and _text(v3.get("BASE")):
        return {
            "version": _text(v3.get("CVSS3_VERSION")) or "3",
            "base": _text(v3.get("BASE")),
            "vector": _text(v3.get("VECTOR_STRING")),
        }
    v2 = vuln.get("CVSS")
    if isinstance(v2, dict) and _text(v2.get("BASE")):
        return {
            "version": "2",
            "base": _text(v2.get("BASE")),
            "vector": _text(v2.get("VECTOR_STRING")),
        }
    return None


def _ids(items: Any) -> list[str]:
    out = []
    for item in items if isinstance(items, list) else []:
        ident = _text(item.get("ID")) if isinstance(item, dict) else None
        if ident:
            out.append(ident)
    return out


def brief(vuln: JSON) -> JSON:
    """What a detection carries of its QID (``KB``): a few hundred bytes, at most a few KiB.

    It is copied into every detection event, so it keeps what an alert needs and leaves out what says
    nothing: ``CVSS``, ``CVE_IDS``, ``VENDOR_REFERENCES``, ``THREAT_INTEL`` and ``SOLUTION`` only when the KB
    has them, ``EXPLOIT_AVAILABLE`` / ``MALWARE_AVAILABLE`` only when true (``PATCHABLE`` always). The QID is
    the detection's own, and ``DETECTION.TYPE`` already says confirmed, potential or information gathered.
    ``SOLUTION`` keeps its first :data:`SOLUTION_MAX` characters (``SOLUTION_TRUNCATED`` says when it was cut;
    the whole text is in the ``knowledge_base`` event); ``CVE_IDS`` at most :data:`CVE_MAX` ids (``CVE_COUNT``
    is the full count when cut), vendor references at most :data:`VENDOR_REF_MAX` ids.
    """
    cves = _ids(vuln.get("CVE_LIST"))
    found = vuln.get("CORRELATION")
    correlation: JSON = found if isinstance(found, dict) else {}
    intel = [t for t in (_text(t) for t in vuln.get("THREAT_INTELLIGENCE") or []) if t]
    solution = _text(vuln.get("SOLUTION")) or ""
    out: JSON = {
        "status": "ok",
        "TITLE": _text(vuln.get("TITLE")),
        "CATEGORY": _text(vuln.get("CATEGORY")),
        "SEVERITY_LEVEL": _text(vuln.get("SEVERITY_LEVEL")),
        "CVSS": cvss(vuln),
        "CVE_IDS": cves[:CVE_MAX],
        "VENDOR_REFERENCES": _ids(vuln.get("VENDOR_REFERENCE_LIST"))[:VENDOR_REF_MAX],
        "PATCHABLE": _text(vuln.get("PATCHABLE")) == "1",
        "EXPLOIT_AVAILABLE": bool(correlation.get("EXPLOITS")) or None,
        "MALWARE_AVAILABLE": bool(correlation.get("MALWARE")) or None,
        "THREAT_INTEL": intel,
        "PUBLISHED_DATETIME": _text(vuln.get("PUBLISHED_DATETIME")),
        "LAST_SERVICE_MODIFICATION_DATETIME": _text(vuln.get("LAST_SERVICE_MODIFICATION_DATETIME")),
        "SOLUTION": solution[:SOLUTION_MAX],
    }
    if len(cves) > CVE_MAX:
        out["CVE_COUNT"] = len(cves)
    if len(solution) > SOLUTION_MAX:
        out["SOLUTION_TRUNCATED"] = True
    return {k: v for k, v in out.items() if v not in (None, "", [])}


def vulns(
    client: VmClient,
    path: str,
    params: dict[str, str],
    horizon: list[datetime | None],
    cut: list[int | None] | None = None,
) -> Iterator[JSON]:
    """Every VULN of one answer, normalised, as it streams.

    At the answer's end ``horizon[0]`` gets ``RESPONSE/DATETIME`` (only that one: ``LAST_CUSTOMIZATION`` has
    a ``DATETIME`` of its own, a VULN's field and not Qualys' clock), and ``cut[0]`` the ``id_min`` of the
    next-page URL when a ``RESPONSE/WARNING`` (the DTD's CODE, TEXT, URL) says the answer was cut.
    """
    with client.open(path, params) as response:
        for tag, element in iter_elements(client.body(path, response), {"VULN", "RESPONSE"}):
            if tag == "RESPONSE":
                horizon[0] = server_time(element.findtext("DATETIME"), horizon[0])
                url = element.findtext("WARNING/URL")
                if cut is not None and url and url.strip():
                    cut[0] = url_cursor(url, "id_min")
                continue
            vuln = normalise(element_to_value(element))
            if isinstance(vuln, dict) and _text(vuln.get("QID")):
                yield vuln


def ids_params(qids: Iterable[str]) -> dict[str, str]:
    """An ``ids`` lookup: ``details=All`` (the solution is not in ``Basic``), disabled QIDs included."""
    return {"action": "list", "details": "All", "show_disabled_flag": "1", "ids": ",".join(qids)}


def fetch_briefs(client: VmClient, path: str, qids: list[str]) -> dict[str, JSON]:
    """The briefs of ``qids`` (at most :data:`IDS_PER_CALL`); QIDs the KB lacks are absent. One call, unless
    the answer ends with a next-page ``WARNING``: its URL is followed, so no QID behind it is taken as unknown."""
    if len(qids) > IDS_PER_CALL:
        raise ValueError(f"at most {IDS_PER_CALL} QIDs per KnowledgeBase call, not {len(qids)}")
    horizon: list[datetime | None] = [None]
    found: dict[str, JSON] = {}
    request = ids_params(qids)
    while True:
        cut: list[int | None] = [None]
        for vuln in vulns(client, path, request, horizon, cut):
            found[str(_text(vuln.get("QID")))] = brief(vuln)
        following = cut[0]
        if following is None:
            return found
        previous = request.get("id_min")
        guard_progress(int(previous) if previous else None, following, ascending=True)
        request = {**request, "id_min": str(following)}
