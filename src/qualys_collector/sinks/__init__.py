"""Sinks drain the outbox into a destination and acknowledge only what the destination confirmed."""

from __future__ import annotations
