"""Operations: the container files match the CLI and the seed layout, the entrypoint runs outside
Docker, and the configuration reference is current."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from qualys_collector.cli import main
from qualys_collector.config.docs import render
from tests.conftest import REPO, SimFactory

pytestmark = pytest.mark.integration


def test_configuration_reference_is_current() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render(), "run: python -m qualys_collector.config.docs > docs/configuration.md"


def test_dockerfile_and_compose_follow_the_seed_layout() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for path in ("/devo-collector/config", "/devo-collector/certs", "/devo-collector/state"):
        assert path in dockerfile
    assert re.search(r"^USER collector$", dockerfile, re.M)  # not root
    assert 'ENTRYPOINT ["qualys-collector-entrypoint"]' in dockerfile
    assert "COPY docker/entrypoint.sh /usr/local/bin/qualys-collector-entrypoint" in dockerfile
    assert "ENV CONFIG_FILE=config.yaml" in dockerfile
    final_stage = dockerfile.split("\nFROM ")[-1]
    assert "gcc" not in final_stage
    assert "build-essential" not in final_stage
    lock = (REPO / "docker" / "requirements.lock").read_text()
    joined = lock.replace("\\\n", " ").splitlines()  # one requirement and its hashes per line
    entries = [e.strip() for e in joined if e.strip() and not e.lstrip().startswith("#")]
    pins = [e.split()[0] for e in entries]
    assert pins
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.\-]+", p) for p in pins)
    assert all("--hash=sha256:" in e for e in entries), "every pin carries its hashes (pip --require-hashes)"
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    service = compose["services"]["collector-qualys"]
    assert set(service["volumes"]) >= {
        "./certs:/devo-collector/certs",
        "./config:/devo-collector/config",
        "./state:/devo-collector/state",
    }
    assert "CONFIG_FILE=${CONFIG_FILE:-config.yaml}" in service["environment"]
    entrypoint = (REPO / "docker" / "entrypoint.sh").read_text()
    assert "exec qualys-collector run -c" in entrypoint
    assert "run" in main.commands  # the command the entrypoint calls exists
    assert os.access(REPO / "docker" / "entrypoint.sh", os.X_OK)


def test_entrypoint_runs_the_seed_layout_outside_docker(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(seed=2, hosts=6, detections_per_host=2)
    url = sim.start()
    root = tmp_path / "devo-collectors" / "qualys"
    (root / "config").mkdir(parents=True)
    (root / "certs").mkdir()
    config = {
        "globals": {"persistence": {"type": "filesystem", "config": {"directory_name": "state"}}},
        "outputs": {"local": {"type": "file", "config": {"path": "state/events.jsonl"}}},
        "inputs": {
            "qualys": {
                "id": 1,
                "credentials": {"base_url": url, "username": "demo", "password": "demo"},
                "services": {"host_list": {"start_time_utc": "2020-01-01T00:00:00Z"}},
            }
        },
    }
    (root / "config" / "collector.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "COLLECTOR_ROOT": str(root),
        "CONFIG_FILE": "collector.yaml",
        "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}",
    }
    done = subprocess.run(
        [str(REPO / "docker" / "entrypoint.sh"), "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-1500:]
    assert (root / "state" / "qualys-collector.sqlite3").exists()
    lines = [json.loads(x) for x in (root / "state" / "events.jsonl").read_text().splitlines()]
    hosts = [line["event"]["ID"] for line in lines if line["tag"] == "vuln.qualys.hosts"]
    assert set(hosts) == sim.truth("host_list")
    missing = subprocess.run(
        [str(REPO / "docker" / "entrypoint.sh")],
        env={**env, "CONFIG_FILE": "nope.yaml"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2
    assert "CONFIG_FILE" in missing.stderr
