"""The service catalog is the one list the configuration and the composition root read."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import qualys_collector.services as services_pkg
from qualys_collector.config import build_config
from qualys_collector.errors import ConfigError
from qualys_collector.services.catalog import SERVICES
from qualys_collector.services.options import ServiceEntry


def test_every_service_module_is_in_the_catalog_once() -> None:
    declared = []
    for info in pkgutil.iter_modules(services_pkg.__path__):
        module = importlib.import_module(f"qualys_collector.services.{info.name}")
        entry = getattr(module, "SERVICE", None)
        if isinstance(entry, ServiceEntry):
            declared.append(entry)
    assert sorted(e.name for e in declared) == sorted(e.name for e in SERVICES)
    assert len({e.name for e in SERVICES}) == len(SERVICES)
    assert len({e.spec.default_tag for e in SERVICES}) == len(SERVICES)  # one tag per service, defined once


@pytest.mark.parametrize("input_name", ["qualys", "qualys_fim"])
def test_an_input_accepts_exactly_the_catalogs_services_for_it(input_name: str) -> None:
    raw = {"inputs": {input_name: {"id": "1", "credentials": {}, "services": {"nope": {}}}}}
    with pytest.raises(ConfigError) as caught:
        build_config(raw, warnings=[])
    expected = ", ".join(e.name for e in SERVICES if e.input == input_name)
    assert str(caught.value).count(f"use one of: {expected}") == 1
