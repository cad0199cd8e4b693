"""Service name -> how to build its spec and page source. The CLI and the composition root use this."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qualys_collector.services.base import PageSource, ServiceSpec


@dataclass(frozen=True)
class ServiceEntry:
    """A registered service: its spec and a factory ``(client, options) -> PageSource``."""

    spec: ServiceSpec
    build: Callable[[Any, Any], PageSource]


REGISTRY: dict[str, ServiceEntry] = {}


def register(entry: ServiceEntry) -> ServiceEntry:
    """Add a service to the registry (each service module calls this once)."""
    REGISTRY[entry.spec.name] = entry
    return entry
