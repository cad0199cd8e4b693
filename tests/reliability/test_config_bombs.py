"""Hostile configuration files through the real CLI: refused quickly, with the key problem named."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.reliability
CLI = [sys.executable, "-m", "qualys_collector"]


def alias_bomb() -> str:
    """Nine levels of nine aliases (~1.5 KB): 9**9 strings once expanded."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        refs = ",".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    lines.append("inputs:")
    lines.append("  qualys:")
    lines.append("    id: 1")
    lines.append("    credentials: {hostname: qualysapi.qualys.eu, username: u, password: p}")
    lines.append("    services: {host_list: {}}")
    lines.append("    environment: *a9")
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_at_once_by_validate(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(alias_bomb())
    assert len(path.read_bytes()) < 2048
    started = time.monotonic()
    try:
        done = subprocess.run([*CLI, "validate", "-c", str(path)], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("validate ran past 30 s on a 1.5 KB alias bomb")
    assert time.monotonic() - started < 15
    assert done.returncode == 2, done.stderr
    assert "[ConfigError" in done.stderr
    assert "alias" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_few_aliases_stay_allowed(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "inputs:\n  qualys:\n    id: 1\n"
        "    credentials: {hostname: qualysapi.qualys.eu, username: u, password: p}\n"
        "    services:\n"
        "      host_list: &common {request_period_in_seconds: 600, start_time_utc: '2024-01-01T00:00:00Z'}\n"
        "      vm_scans: *common\n"
    )
    done = subprocess.run([*CLI, "validate", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
