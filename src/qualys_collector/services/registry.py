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


def load_all() -> dict[str, ServiceEntry]:
    """Import every service module (each registers itself) and return the registry."""
    from qualys_collector.services import (  # noqa: F401 - imported for registration
        fim_events,
        fim_incidents,
        host_list,
        host_list_detection,
        user_activity,
        vm_scans,
    )

    return REGISTRY
