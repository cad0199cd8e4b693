"""Proxy failures through the real CLI and a real forward proxy: the error names the proxy and its fix,
not Qualys or the service's filters."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from qualys_collector.simulator import SimConfig, Simulator
from tests.helpers.proxy import ForwardProxy

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
CLI = [sys.executable, "-m", "qualys_collector"]
PROXY_PASSWORD = "Proxy-Canary-51d"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(SimConfig(seed=3, hosts=5, scans=4))
    simulator.start()
    yield simulator
    simulator.stop()


def run_through(
    sim: Simulator, tmp_path: Path, proxy: str | None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    assert sim._server is not None
    url = f"http://127.0.0.1:{sim._server.server_port}"
    config = {
        "globals": {"persistence": {"config": {"directory_name": str(tmp_path / "state")}}},
        "inputs": {
            "qualys": {
                "id": "p1",
                "credentials": {"base_url": url, "username": "demo", "password": "demo"},
                "connection": {"max_attempts": 1, **({"proxy": proxy} if proxy is not None else {})},
                "services": {"vm_scans": {"start_time_utc": "2020-01-01T00:00:00Z"}},
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([*CLI, "run", "-c", str(path), "--once"], capture_output=True, text=True, timeout=60, env=env)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_proxy_that_wants_credentials_is_named_with_407(sim: Simulator, tmp_path: Path) -> None:
    with ForwardProxy(credentials=f"proxyuser:{PROXY_PASSWORD}") as proxy:
        done = run_through(sim, tmp_path, proxy.url)
    assert done.returncode == 1, done.stderr
    assert "407" in done.stderr
    assert f"the proxy {proxy.url}" in done.stderr
    assert "Qualys was not reached" in done.stderr
    assert "filters" not in done.stderr
    assert "connection.proxy" in done.stderr


def test_a_refused_proxy_is_named(sim: Simulator, tmp_path: Path) -> None:
    port = closed_port()
    done = run_through(sim, tmp_path, f"http://127.0.0.1:{port}")
    assert done.returncode == 1, done.stderr
    assert f"cannot connect to the proxy http://127.0.0.1:{port}" in done.stderr
    assert "connection.proxy" in done.stderr
    assert "network access to the Qualys API server" not in done.stderr


def test_a_proxy_that_drops_the_connection_is_named(sim: Simulator, tmp_path: Path) -> None:
    with ForwardProxy(mode="drop") as proxy:
        done = run_through(sim, tmp_path, proxy.url)
    assert done.returncode == 1, done.stderr
    assert f"the proxy {proxy.url} dropped the connection" in done.stderr
    assert "connection.proxy" in done.stderr


def test_the_right_proxy_credentials_work_and_stay_secret(sim: Simulator, tmp_path: Path) -> None:
    with ForwardProxy(credentials=f"proxyuser:{PROXY_PASSWORD}") as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        done = run_through(sim, tmp_path, f"http://proxyuser:{PROXY_PASSWORD}@{host}:{port}")
        forwarded = proxy.forwarded
    assert done.returncode == 0, done.stderr
    assert forwarded >= 1
    assert PROXY_PASSWORD not in done.stderr


def test_a_proxy_refusing_the_fim_token_request_is_named(sim: Simulator, tmp_path: Path) -> None:
    assert sim._server is not None
    url = f"http://127.0.0.1:{sim._server.server_port}"
    with ForwardProxy(credentials=f"proxyuser:{PROXY_PASSWORD}") as proxy:
        config = {
            "globals": {"persistence": {"config": {"directory_name": str(tmp_path / "state")}}},
            "inputs": {
                "qualys_fim": {
                    "id": "p2",
                    "credentials": {"base_url": url, "username": "demo", "password": "demo"},
                    "connection": {"proxy": proxy.url, "max_attempts": 1},
                    "services": {"fim_events": {"start_time_utc": "2020-01-01T00:00:00Z"}},
                }
            },
        }
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        done = subprocess.run([*CLI, "run", "-c", str(path), "--once"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "[SetupError 100]" in done.stderr
    assert f"407 Proxy Authentication Required from the proxy {proxy.url}" in done.stderr
    assert "auth_url" not in done.stderr


def test_a_proxy_in_the_environment_is_named_as_unused_and_its_password_never_shown(
    sim: Simulator, tmp_path: Path
) -> None:
    """curl, pip and most HTTP clients go through ``HTTPS_PROXY``; the collector reads ``connection.proxy`` only.
    A host that reaches Qualys only through the environment's proxy failed with "cannot connect", far from the
    reason. Now the start says which variable is set and not used, and how to use it; never its value."""
    import os

    with ForwardProxy(credentials=f"proxyuser:{PROXY_PASSWORD}") as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        url = f"http://proxyuser:{PROXY_PASSWORD}@{host}:{port}"
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        done = run_through(sim, tmp_path, None, env={**env, "HTTPS_PROXY": url, "http_proxy": url})
        forwarded = proxy.forwarded
    assert done.returncode == 0, done.stderr
    assert forwarded == 0  # what the warning says: Qualys was reached directly
    for name in ("HTTPS_PROXY", "http_proxy"):
        warned = [line for line in done.stderr.splitlines() if f"{name} is set in the environment" in line]
        assert len(warned) == 1, done.stderr
        assert "set connection.proxy" in warned[0]
    assert PROXY_PASSWORD not in done.stderr
    assert "proxyuser" not in done.stderr
