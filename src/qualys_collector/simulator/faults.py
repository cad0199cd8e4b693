"""Faults on demand: ``--fault KIND[:key=value,...]`` or ``POST /__sim/faults``.

Kinds (each applies to requests whose path contains ``path=``, ``times=`` times, ``-1`` for ever):

* ``409`` with ``code=1960`` (concurrency) or ``code=1965`` (rate, ``wait=`` seconds) - Qualys VM blocks
* ``400`` with ``code=`` (default 1905) - a request Qualys refuses
* ``429`` with ``wait=`` seconds - the FIM gateway's rate limit
* ``500``/``502``/``503``/``504`` - server errors; ``999`` - the GENERIC_RETURN internal error
* ``cut`` with ``after=`` bytes - the connection is dropped mid-body
* ``slow`` with ``delay=`` seconds between chunks
* ``malformed`` - a 200 whose body stops in the middle of the document
* ``bad_gzip`` - a 200 labelled ``Content-Encoding: gzip`` whose body is not gzip (a client cannot decode it)
* ``expire_token`` - the next gateway calls answer 401 as for an expired token
* ``forbidden`` - valid credentials without FIM permission (403)
* ``error200`` with ``code=`` (default 1905) - a SIMPLE_RETURN error document sent with HTTP 200
* ``badchars`` - characters XML 1.0 forbids: control bytes inside every CDATA section, ``&#x1;`` in
  ``USER_LOGIN``
* ``trickle`` with ``delay=`` seconds - a slow loris: the body goes out one byte at a time, ``delay`` apart
* ``echo`` - an error answer (VM: 400 SIMPLE_RETURN 1905; FIM: 500) whose text echoes the request's headers,
  ``Authorization`` included, as some servers and proxies do
* ``empty_sort`` - search hits carry ``"sortValues": []`` (Qualys' own Fetch Events example)
* ``short_sort`` - search hits carry only their first sort value (a gateway that drops the ``id`` tie-breaker)
* ``null_time`` - the last hit of a search answer (its newest) has no time from then on, in every answer:
  ``"processedTime": null`` (an event),
  ``lastUpdatedBy.date`` null (an incident)
* ``odd_rows`` - activity-log rows past the header's seven fields (an eighth, ``unexpected``, on rows whose id is a
  multiple of 5) and with a ``Date`` that is not one (``N/A``: multiples of 7, and the newest row of each first
  page from then on), in every answer while armed
* ``split`` - nothing changes but the chunking: the first network write ends after ``split=`` bytes

Every body fault also takes ``split=N``: the body's first write ends after N bytes, then a short pause,
so the collector's first read ends exactly there (inside the root tag name, before a ``>``...).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class Fault:
    """One armed fault."""

    kind: str
    path: str = ""
    times: int = 1
    code: int | None = None
    wait: int = 1
    after: int = 300
    delay: float = 0.2
    split: int | None = None

    def matches(self, path: str) -> bool:
        """Whether this fault applies to ``path``."""
        return self.times != 0 and self.path in path


def parse_fault(spec: str) -> Fault:
    """Parse ``KIND[:key=value,...]``."""
    kind, _, rest = spec.partition(":")
    fault = Fault(kind=kind.strip())
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, _, value = item.partition("=")
        if key == "path":
            fault.path = value
        elif key in ("times", "code", "wait", "after", "split"):
            setattr(fault, key, int(value))
        elif key == "delay":
            fault.delay = float(value)
        else:
            raise ValueError(f"unknown fault option {key!r} in {spec!r}")
    known = {
        "400",
        "409",
        "429",
        "500",
        "502",
        "503",
        "504",
        "999",
        "cut",
        "slow",
        "malformed",
        "bad_gzip",
        "expire_token",
        "forbidden",
        "error200",
        "empty_sort",
        "short_sort",
        "null_time",
        "badchars",
        "trickle",
        "echo",
        "split",
        "odd_rows",
    }
    if fault.kind not in known:
        raise ValueError(f"unknown fault kind {fault.kind!r}; use one of {', '.join(sorted(known))}")
    return fault


class FaultBook:
    """The armed faults; ``take`` consumes one matching fault of the given kinds."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def arm(self, fault: Fault) -> None:
        """Add a fault."""
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        """Remove every fault."""
        with self._lock:
            self._faults.clear()

    def take(self, path: str, kinds: set[str]) -> Fault | None:
        """The first armed fault of one of ``kinds`` matching ``path``, consuming one of its uses."""
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(path):
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
        return None

    def active(self, path: str, kind: str) -> bool:
        """Whether a persistent fault of ``kind`` applies (without consuming it)."""
        with self._lock:
            return any(f.kind == kind and f.matches(path) for f in self._faults)
