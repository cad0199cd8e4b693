"""Secrets in their encoded forms: an upstream error that echoes the request's Authorization header, and a
configuration whose credentials have the wrong type. Through the real CLI; nothing may show them."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qualys_collector.redact import register_credentials, scrub
from qualys_collector.simulator import SimConfig, Simulator
from qualys_collector.simulator.faults import parse_fault

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
CLI = [sys.executable, "-m", "qualys_collector"]
USER, PASSWORD = "canary-user", "Canary-P4ss-2c81"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def test_an_error_echoing_the_authorization_header_is_masked_in_logs_and_check(tmp_path: Path) -> None:
    sim = Simulator(SimConfig(seed=2, hosts=3, fim_events=5, fim_incidents=1), username=USER, password=PASSWORD)
    tokens: list[str] = []
    issue = sim.tokens.issue
    sim.tokens.issue = lambda username, now: tokens.append(issue(username, now)) or tokens[-1]  # type: ignore[method-assign]
    url = sim.start()
    sim.faults.arm(parse_fault("echo:times=-1"))
    credentials = {"base_url": url, "username": USER, "password": PASSWORD}
    connection = {"max_attempts": 1}
    config = {
        "globals": {"persistence": {"config": {"directory_name": str(tmp_path / "state")}}},
        "inputs": {
            "qualys": {
                "id": "s1",
                "credentials": credentials,
                "connection": connection,
                "services": {"vm_scans": {"start_time_utc": "2020-01-01T00:00:00Z"}},
            },
            "qualys_fim": {
                "id": "s2",
                "credentials": credentials,
                "connection": connection,
                "services": {"fim_events": {"start_time_utc": "2020-01-01T00:00:00Z"}},
            },
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        run = subprocess.run([*CLI, "run", "-c", str(path), "--once"], capture_output=True, text=True, timeout=120)
        check = subprocess.run([*CLI, "check", "-c", str(path)], capture_output=True, text=True, timeout=120)
        echoed = sim.statuses
    finally:
        sim.stop()
    assert any(k.endswith(" 400") for k in echoed)
    assert any(k.endswith(" 500") for k in echoed)
    assert tokens
    for done in (run, check):
        text = done.stdout + done.stderr
        assert done.returncode == 1, text[-2000:]
        assert "Authorization: ***" in text  # the echo reached the output, masked
        for secret in (PASSWORD, BASIC, *tokens):
            assert secret not in text, f"{secret[:6]}… leaked"
    assert "[PullError 300]" in run.stderr


def test_a_wrong_type_credentials_value_is_not_echoed_in_the_config_error(tmp_path: Path) -> None:
    for credentials in (f"{USER}:{PASSWORD}", [USER, PASSWORD], {"username": USER, "password": [PASSWORD]}):
        path = tmp_path / "config.yaml"
        services = {"host_list": {}}
        path.write_text(
            yaml.safe_dump({"inputs": {"qualys": {"id": 1, "credentials": credentials, "services": services}}})
        )
        done = subprocess.run([*CLI, "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert "inputs.qualys.credentials" in done.stderr
        assert PASSWORD not in done.stderr, done.stderr


def test_every_encoded_form_of_a_credential_is_masked() -> None:
    register_credentials(USER, PASSWORD)
    text = (
        f"Authorization: Basic {BASIC}\nproxy-authorization: Basic Zm9vOmJhcg==\n"
        f'{{"Authorization": "Bearer eyJhbGciOi.eyJzdWIi.c2ln"}} raw {PASSWORD} url {BASIC.rstrip("=")}'
    )
    masked = scrub(text)
    assert PASSWORD not in masked
    assert BASIC.rstrip("=") not in masked
    assert "Zm9vOmJhcg" not in masked
    assert "eyJhbGciOi" not in masked
    assert masked.count("***") >= 5
