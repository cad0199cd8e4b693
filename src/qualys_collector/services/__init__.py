"""One small module per Qualys data source: only what differs between them."""

from __future__ import annotations
