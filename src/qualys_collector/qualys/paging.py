"""Pure paging helpers: the cursor in a truncation ``WARNING`` URL, loop guards."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from qualys_collector.errors import DataError

#: What to do when an answer holds items the request did not ask for, or one twice (host detection's ``AskedHosts``
#: and repeat check, the KnowledgeBase's ``id_min`` check).
ANSWER_FIX = (
    "check that requests and answers pass between the collector and Qualys unchanged (a proxy that drops form bodies "
    "or query parameters, a stand-in server); nothing is lost: the next cycle resumes from the last committed page"
)


def url_cursor(url: str, name: str) -> int:
    """The integer ``name`` (``id_min`` or ``id_max``) in a next-page URL (whitespace around it tolerated)."""
    query = parse_qs(urlsplit("".join(url.split())).query)
    values = query.get(name)
    if not values or not values[0].isdigit():
        raise DataError(f"the truncation WARNING URL carries no {name}: {url.strip()[:200]!r}")
    return int(values[0])


def guard_progress(previous: int | None, following: int, *, ascending: bool) -> None:
    """Refuse a next-page cursor that does not move (a loop) or moves backwards."""
    if previous is None:
        return
    if (ascending and following <= previous) or (not ascending and following >= previous):
        raise DataError(
            f"Qualys returned a next-page cursor ({following}) that does not advance past {previous}; "
            "stopping to avoid a loop"
        )
