"""qualys-collector: Qualys VM and FIM data into a SIEM, complete and exactly once."""

from __future__ import annotations

import sys

# httpx imports its command-line client at import time when click, rich and pygments are installed (the demo
# extra installs rich): 8 MB of every collector's memory for a module the collector never uses. With the entry
# set, httpx's own fallback applies (``httpx.main`` says the client cannot run).
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

__version__ = "0.1.0"
