"""Every error the collector prints has a number and a fix, and every number is in README's error table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qualys_collector.errors import ERROR_TYPES, ConfigError, StateError
from qualys_collector.simulator import SimConfig, Simulator
from qualys_collector.simulator.faults import parse_fault

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "qualys_collector"]
README = Path(__file__).resolve().parents[2] / "README.md"
NUMBERED = re.compile(r"\[(\w+) (\d+)\] .+ Fix: \S")


def table_codes() -> dict[int, str]:
    """``code -> fix`` of README's error table (ranges like 400–404 expanded)."""
    out: dict[int, str] = {}
    for line in README.read_text().splitlines():
        match = re.match(r"^\| (\w+Error) \| (\d+)(?:–(\d+))? \| [^|]+ \| ([^|]+) \|$", line)
        if match:
            low, high = int(match.group(2)), int(match.group(3) or match.group(2))
            for code in range(low, high + 1):
                out[code] = match.group(4).strip()
    return out


def test_every_error_number_is_in_the_readme_table_with_a_fix() -> None:
    listed = table_codes()
    missing = sorted(set(ERROR_TYPES) - set(listed))
    assert not missing, f"error numbers without a README row: {missing}"
    assert all(len(fix) > 10 for fix in listed.values())


def test_errors_built_without_a_number_still_print_one_and_a_fix() -> None:
    for error in (ConfigError("a.b", "is wrong"), StateError("cannot write")):
        assert NUMBERED.match(str(error)), str(error)


def test_the_errors_the_cli_prints_are_numbered_with_a_fix(tmp_path: Path) -> None:
    sim = Simulator(SimConfig(seed=1, hosts=3, scans=3))
    url = sim.start()
    sim.faults.arm(parse_fault("400:code=1905,times=-1"))
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output wants a directory")
    good = {
        "globals": {"persistence": {"config": {"directory_name": str(tmp_path / "state")}}},
        "outputs": {"out": {"type": "file", "config": {"path": str(blocked / "sub" / "events.jsonl")}}},
        "inputs": {
            "qualys": {
                "id": "n1",
                "credentials": {"base_url": url, "username": "demo", "password": "demo"},
                "connection": {"max_attempts": 1},
                "services": {"vm_scans": {"start_time_utc": "2020-01-01T00:00:00Z"}},
            }
        },
    }
    bad_key = {"inputs": {"qualys": {"id": 1, "credentials": {"hostname": "h", "username": "u"}, "servcies": {}}}}
    paths = {}
    for name, content in (("good", good), ("bad_key", bad_key)):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(content))
    (tmp_path / "broken.yaml").write_text("inputs: [\n")
    runs = [
        [*CLI, "validate", "-c", str(paths["bad_key"])],
        [*CLI, "validate", "-c", str(tmp_path / "missing.yaml")],
        [*CLI, "validate", "-c", str(tmp_path / "broken.yaml")],
        [*CLI, "run", "-c", str(paths["good"]), "--once"],  # 1905 from Qualys, then the output cannot write
    ]
    try:
        printed = [subprocess.run(r, capture_output=True, text=True, timeout=120) for r in runs]
    finally:
        sim.stop()
    errors = [line for done in printed for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) >= 5, errors
    unnumbered = [line for line in errors if not NUMBERED.search(line)]
    assert not unnumbered, unnumbered
    seen = {int(m.group(2)) for line in errors if (m := NUMBERED.search(line))}
    assert {10, 11, 300, 405} <= seen, seen
