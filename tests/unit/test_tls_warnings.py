"""TLS verification is on by default for Qualys and Devo; turning it off warns on every start."""

from __future__ import annotations

import logging
import ssl

import pytest

from qualys_collector.config import build_config
from qualys_collector.qualys.http import HttpSettings, make_client


def test_qualys_client_verifies_by_default_and_warns_when_told_not_to(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        client = make_client(HttpSettings())
    assert "TLS verification" not in caplog.text
    transport = client._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert transport.verify_mode == ssl.CERT_REQUIRED
    client.close()
    for _ in range(2):  # every start, not once
        with caplog.at_level(logging.WARNING):
            make_client(HttpSettings(verify_tls=False)).close()
    assert caplog.text.count("TLS verification towards Qualys is OFF") == 2


def test_config_defaults_to_verification() -> None:
    raw = {
        "inputs": {
            "qualys": {
                "id": 1,
                "credentials": {"hostname": "h.example", "username": "u", "password": "p"},
                "services": {"host_list": {}},
            }
        },
        "outputs": {
            "d": {
                "type": "devo_platform",
                "config": {"address": "a.example", "chain": "c.crt", "cert": "x.crt", "key": "x.key"},
            }
        },
    }
    config = build_config(raw, warnings=[])
    assert config.inputs.qualys is not None
    assert config.inputs.qualys.connection.verify_tls is True
    assert config.outputs["d"].config.verify_tls is True  # type: ignore[union-attr]
