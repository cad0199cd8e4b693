"""qualys-collector: Qualys VM and FIM data into a SIEM, complete and exactly once."""

from __future__ import annotations

__version__ = "0.1.0"
