"""Qualys API clients: the only place that knows Qualys' wire habits (auth, limits, errors, paging)."""

from __future__ import annotations
