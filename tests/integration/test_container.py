"""The container as a user meets it, outside Docker (no engine runs here): the entrypoint's subcommands, the state
directory's ownership and modes, a configuration error that stops instead of restart-looping, the compose file's
secrets and stop policy, and the Kubernetes manifests checked against the CLI, the image and the config schema."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from qualys_collector.cli import main
from qualys_collector.config import build_config
from tests.conftest import REPO

pytestmark = pytest.mark.integration
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def layout(tmp_path: Path, config: dict[str, Any] | None = None) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "devo-collectors" / "qualys"
    for name in ("config", "certs", "credentials"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "credentials" / "qualys_password").write_text("s3cret-canary\n")
    raw = config or {
        "globals": {"persistence": {"type": "filesystem", "config": {"directory_name": "state"}}},
        "outputs": {"local": {"type": "file", "config": {"path": "state/events.jsonl"}}},
        "inputs": {
            "qualys": {
                "id": 1,
                "credentials": {
                    "base_url": "http://127.0.0.1:9",
                    "username": "u",
                    "password_file": str(root / "credentials" / "qualys_password"),
                },
                "services": {"host_list": {}},
            }
        },
    }
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(raw))
    env = {
        **os.environ,
        "COLLECTOR_ROOT": str(root),
        "CONFIG_FILE": "config.yaml",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    return root, env


def entrypoint(env: dict[str, str], *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(ENTRYPOINT), *args]
    if user is not None:  # as the image's user would run it
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_subcommands_go_through_the_entrypoint_with_the_mounted_config(tmp_path: Path) -> None:
    root, env = layout(tmp_path)
    valid = entrypoint(env, "validate")
    assert valid.returncode == 0, valid.stderr
    shown = entrypoint(env, "state", "show")
    assert shown.returncode == 0, shown.stderr
    assert (root / "state" / "qualys-collector.sqlite3").exists()  # state show read the mounted layout's state
    reset = entrypoint(env, "state", "reset", "--help")
    assert reset.returncode == 0
    assert "--service" in reset.stdout
    version = entrypoint(env, "--version")
    assert version.returncode == 0
    assert "version" in version.stdout
    assert {"run", "validate", "check", "state"} <= set(main.commands)  # what the entrypoint names exists
    (root / "config" / "config.yaml").write_text("inputs: {qualys: {id: 1}}\n")
    assert entrypoint(env, "validate").returncode == 2


def test_a_configuration_error_stops_the_container_instead_of_restarting_it(tmp_path: Path) -> None:
    root, env = layout(tmp_path)
    (root / "config" / "config.yaml").write_text("inputs: {qualys: {id: 1, credentials: 3}}\n")
    plain = entrypoint(env)
    assert plain.returncode == 2  # outside compose: the CLI's own exit code
    stopped = entrypoint({**env, "STOP_ON_CONFIG_ERROR": "1"})
    assert stopped.returncode == 0, "restart: on-failure must not restart a configuration error"
    assert "[ConfigError 10] inputs.qualys" in stopped.stderr
    assert "not to be restarted" in stopped.stderr
    missing = entrypoint({**env, "STOP_ON_CONFIG_ERROR": "1", "CONFIG_FILE": "nope.yaml"})
    assert missing.returncode == 0
    assert "CONFIG_FILE" in missing.stderr
    assert entrypoint({**env, "STOP_ON_CONFIG_ERROR": "1"}, "validate").returncode == 2  # only `run` is softened


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the entrypoint as another uid")
def test_a_state_directory_the_collector_cannot_write_is_one_line_with_the_chown_command(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    root, env = layout(tmp_path)
    for parent in [root, *root.parents]:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    (root / "state").mkdir(mode=0o755)  # what Docker creates for a missing bind-mount source: root's
    (root / "config" / "config.yaml").chmod(0o644)
    done = entrypoint(env, user=10001)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "sudo chown -R 10001:10001 state && sudo chmod 700 state" in lines[0]
    assert "uid 0" in lines[0]


def test_the_state_directory_is_tightened_to_0700(tmp_path: Path) -> None:
    root, env = layout(tmp_path)
    (root / "state").mkdir(mode=0o755)
    os.chmod(root / "state", 0o755)
    assert entrypoint(env, "state", "show").returncode == 0
    assert stat.S_IMODE((root / "state").stat().st_mode) == 0o700
    database = root / "state" / "qualys-collector.sqlite3"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


def test_compose_passes_secrets_both_ways_and_stops_in_time() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    service = compose["services"]["collector-qualys"]
    assert "./credentials:/devo-collector/credentials" in service["volumes"]
    assert "STOP_ON_CONFIG_ERROR=1" in service["environment"]
    assert service["restart"] == "on-failure"
    assert int(service["stop_grace_period"].rstrip("s")) >= 10
    assert service["env_file"] == [{"path": "./collector.env", "required": False}]
    for name in service["secrets"]:
        assert compose["secrets"][name]["file"].startswith("./credentials/")
    readme = (REPO / "README.md").read_text()
    assert "password_file: /run/secrets/qualys_password" in readme  # the README's config matches the secret
    assert "QUALYS_PASSWORD=" in readme  # ... and the env_file way


def test_a_deployment_in_the_checkout_is_never_committed() -> None:
    ignored = (REPO / ".gitignore").read_text().split()
    for path in ("/config/", "/certs/", "/credentials/", "/collector.env", "state/"):
        assert path in ignored


def test_dockerignore_keeps_the_context_to_what_the_build_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"]
    copied = set(re.findall(r"^COPY (?!--from)(\S+)", (REPO / "Dockerfile").read_text(), re.M))
    copied |= {
        part
        for line in re.findall(r"^COPY (?!--from)(.+) \S+$", (REPO / "Dockerfile").read_text(), re.M)
        for part in line.split()
    }
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for path in copied:
        assert any(path == a or path.startswith(f"{a}/") for a in allowed), f"{path} is copied but ignored"
    assert "tests" not in allowed
    assert ".venv" not in allowed
    assert "state" not in allowed


def test_kubernetes_manifests_match_the_cli_the_image_and_the_schema() -> None:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "kubernetes" / "qualys-collector.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    config_map, stateful = kinds["ConfigMap"], kinds["StatefulSet"]
    spec = stateful["spec"]
    assert spec["replicas"] == 1  # one collector per state directory
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert "args" not in container
    assert "command" not in container
    dockerfile = (REPO / "Dockerfile").read_text()
    uid = int(re.search(r"useradd --uid (\d+)", dockerfile).group(1))  # type: ignore[union-attr]
    assert pod["securityContext"]["runAsUser"] == uid
    assert pod["securityContext"]["fsGroup"] == uid
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for path in ("/devo-collector/config", "/devo-collector/certs", "/devo-collector/state"):
        assert path in mounts.values()
        assert path in dockerfile
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    assert mounts["state"] == "/devo-collector/state"
    raw = yaml.safe_load(config_map["data"]["config.yaml"])
    port = raw["globals"]["metrics"]["port"]
    assert container["ports"][0]["containerPort"] == port
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] >= 10  # the collector exits within 5 s of SIGTERM
    secret_file = raw["inputs"]["qualys"]["credentials"]["password_file"]
    assert secret_file.startswith(mounts["credentials"] + "/")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CONFIG_FILE"] in config_map["data"]
    # The ConfigMap's configuration is valid for this version's schema (the secret file stands in locally).
    raw["inputs"]["qualys"]["credentials"].pop("password_file")
    raw["inputs"]["qualys"]["credentials"]["password"] = "stand-in"
    build_config(raw, warnings=[])


def test_the_dockerfile_installs_from_the_hashed_lock_without_a_wheel_layer() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile
    assert "COPY --from=build /opt/qualys-collector" in dockerfile
    final = dockerfile.split("\nFROM ")[-1]
    assert "wheels" not in final
    assert "pip install" not in final
