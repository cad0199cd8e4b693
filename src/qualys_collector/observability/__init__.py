"""Logging in the seeds' line format, and (later) metrics and health."""

from __future__ import annotations
