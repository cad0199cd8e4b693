"""The collector without the ``demo`` extra: ``run``, ``validate``, ``check`` and ``state show`` work with
werkzeug, trustme and rich unimportable; ``demo`` says which install command it needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qualys_collector.engine.outbox import Outbox
from qualys_collector.model import parse_iso_datetime
from qualys_collector.simulator import Limits, Simulator
from tests.conftest import SimFactory
from tests.helpers.kit import file_output, raw_config, vm_input

pytestmark = pytest.mark.integration

#: A collector process in which the demo extra's modules cannot be imported (None in sys.modules makes
#: every ``import werkzeug`` / ``from rich.console import ...`` raise ImportError, as when not installed).
WITHOUT_DEMO_EXTRA = [
    sys.executable,
    "-c",
    "import sys; sys.modules.update(dict.fromkeys(('werkzeug', 'trustme', 'rich'))); "
    "from qualys_collector.cli import main; main()",
]


@pytest.fixture
def sim(make_sim: SimFactory) -> Simulator:
    return make_sim(seed=5, hosts=12, detections_per_host=2, vm_limits=Limits(rate=100_000, window=60))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WITHOUT_DEMO_EXTRA, *args], capture_output=True, text=True, timeout=120, check=False)


def test_run_validate_check_and_state_need_no_demo_extra(sim: Simulator, tmp_path: Path) -> None:
    services = {"host_list": {"start_time_utc": "2020-01-01T00:00:00Z"}}
    raw = raw_config(
        tmp_path / "state", qualys=vm_input(sim.start(), services), outputs=file_output(tmp_path / "events.jsonl")
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    for args in (["validate"], ["check"], ["run", "--once"], ["state", "show"]):
        done = cli(*args, "-c", str(config))
        assert done.returncode == 0, (args, done.stderr)
        assert "Error" not in done.stderr, (args, done.stderr)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    outbox = Outbox(tmp_path / "state")
    try:
        checkpoint = outbox.load_checkpoint("7", "host_list")
    finally:
        outbox.close()
    assert checkpoint is not None
    end = parse_iso_datetime(checkpoint["last_event_time_str"])  # the window the collector pulled
    assert {e["event"]["ID"] for e in events if e["tag"] == "vuln.qualys.hosts"} == sim.truth("host_list", None, end)


def test_demo_without_the_extra_names_the_install_command(tmp_path: Path) -> None:
    for command in ("demo", "simulate"):
        done = cli(command, *(["--dir", str(tmp_path / "demo")] if command == "demo" else ["--port", "0"]))
        assert done.returncode == 2, done.stderr
        assert f"qualys-collector {command} needs the optional 'demo' dependencies" in done.stderr
        assert "pip install 'qualys-collector[demo]'" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "demo").exists()
