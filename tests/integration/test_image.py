"""The image built from the project's own Dockerfile (buildah) and run from its root filesystem as an engine would,
in the seed's bind-mounted layout, against the simulator: the README's container steps, word for word.

Checks: a root-owned ``state/`` is one line with the exact chown command, then after that chown one cycle
delivers the simulator's ground truth with state 0700 / database 0600; a configuration error under
``STOP_ON_CONFIG_ERROR=1`` stops (exit 0) and a missing secret is one clear line; subcommands go through the
entrypoint; SIGTERM mid-pull exits within 5 s and a restart delivers the rest, nothing lost or doubled.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from qualys_collector.simulator import SimConfig, Simulator
from tests.conftest import REPO
from tests.helpers import image
from tests.helpers.rsyslog import Certs, Rsyslog

pytestmark = [pytest.mark.integration, pytest.mark.slow]

if not image.available():  # CI installs buildah and debootstrap and runs as root
    pytest.fail("the image tests need buildah, debootstrap and root: run `bash .ci/run` as root", pytrace=False)


@pytest.fixture(scope="module")
def built() -> str:
    started = time.monotonic()
    name = image.build(REPO)
    print(f"image {name}: {image.size(name)}, built in {time.monotonic() - started:.0f} s")
    return name


@pytest.fixture
def rootfs(built: str) -> Iterator[image.Rootfs]:
    with image.rootfs(built) as root:
        yield root


@pytest.fixture(scope="module")
def sim() -> Iterator[tuple[Simulator, str]]:
    simulator = Simulator(SimConfig(seed=21, hosts=3000, detections_per_host=1))
    yield simulator, simulator.start()
    simulator.stop()


def layout(tmp_path: Path, url: str) -> Path:
    """The README's steps: config/, certs/, credentials/ with the secret, state/ created by root."""
    root = tmp_path / "devo-collectors" / "qualys"
    for name in ("config", "certs", "credentials", "state"):
        (root / name).mkdir(parents=True)
    (root / "state").chmod(0o755)
    secret = root / "credentials" / "qualys_password"
    secret.write_text("demo")
    secret.chmod(0o600)
    os.chown(secret, 10001, 10001)
    config: dict[str, Any] = {
        "globals": {"persistence": {"type": "filesystem", "config": {"directory_name": "state"}}},
        "outputs": {"local": {"type": "file", "config": {"path": "state/events.jsonl"}}},
        "inputs": {
            "qualys": {
                "id": 1,
                "credentials": {"base_url": url, "username": "demo", "password_file": "/run/secrets/qualys_password"},
                "services": {"host_list": {"start_time_utc": "2020-01-01T00:00:00Z"}},
            }
        },
    }
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def mounts(root: Path, *, secret: bool = True) -> dict[Path, str]:
    """docker-compose.yml's volumes and (unless left out) its secret."""
    volumes = {
        root / "certs": "/devo-collector/certs",
        root / "config": "/devo-collector/config",
        root / "credentials": "/devo-collector/credentials",
        root / "state": "/devo-collector/state",
    }
    if secret:
        volumes[root / "credentials" / "qualys_password"] = "/run/secrets/qualys_password"
    return volumes


def run(
    rootfs: image.Rootfs, root: Path, *args: str, secret: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    command = rootfs.command(list(args), mounts(root, secret=secret), env)
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def delivered(root: Path) -> list[str]:
    lines = [json.loads(line) for line in (root / "state" / "events.jsonl").read_text().splitlines()]
    return [line["event"]["ID"] for line in lines if line["tag"] == "vuln.qualys.hosts"]


def test_first_start_as_the_readme_says(tmp_path: Path, rootfs: image.Rootfs, sim: tuple[Simulator, str]) -> None:
    simulator, url = sim
    root = layout(tmp_path, url)
    first = run(rootfs, root, "--once")
    lines = first.stderr.strip().splitlines()
    assert first.returncode == 2
    assert len(lines) == 1, first.stderr
    assert "sudo chown -R 10001:10001 state && sudo chmod 700 state" in lines[0]
    stopped = run(rootfs, root, STOP_ON_CONFIG_ERROR="1")  # compose's setting: no restart loop
    assert stopped.returncode == 0
    assert "not to be restarted" in stopped.stderr
    os.chown(root / "state", 10001, 10001)  # the README's chown
    done = run(rootfs, root, "--once")
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(delivered(root)) == sorted(simulator.truth("host_list"))
    assert stat.S_IMODE((root / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "state" / "qualys-collector.sqlite3").stat().st_mode) == 0o600
    shown = run(rootfs, root, "state", "show")
    assert shown.returncode == 0, shown.stderr
    assert "host_list" in shown.stdout + shown.stderr
    assert run(rootfs, root, "validate").returncode == 0


def test_configuration_errors_are_one_line_and_stop(
    tmp_path: Path, rootfs: image.Rootfs, sim: tuple[Simulator, str]
) -> None:
    root = layout(tmp_path, sim[1])
    os.chown(root / "state", 10001, 10001)
    missing = run(rootfs, root, secret=False, STOP_ON_CONFIG_ERROR="1")  # `docker run` without the secret
    assert missing.returncode == 0
    errors = [line for line in missing.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1
    assert "password_file" in errors[0]
    assert "/run/secrets/qualys_password" in errors[0]
    assert run(rootfs, root, "validate", secret=False).returncode == 2


def test_sigterm_mid_pull_exits_within_5_s_and_a_restart_delivers_the_rest(
    tmp_path: Path, rootfs: image.Rootfs, sim: tuple[Simulator, str]
) -> None:
    simulator, url = sim
    root = layout(tmp_path, url)
    os.chown(root / "state", 10001, 10001)
    raw = yaml.safe_load((root / "config" / "config.yaml").read_text())
    raw["inputs"]["qualys"]["services"]["host_list"]["truncation_limit"] = 100  # 30 pages
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(raw))
    with subprocess.Popen(rootfs.command([], mounts(root)), stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if "(Partial) Statistics" in line:  # mid-pull: a page committed, more to come
                break
        assert process.poll() is None, "".join(seen[-20:])
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        process.wait(30)
        assert time.monotonic() - started <= 5.0, "SIGTERM must end the collector within compose's grace period"
        rest = process.stderr.read()
    assert "Stop requested" in rest, rest[-2000:]  # it stopped inside the window, not after it
    resumed = run(rootfs, root, "--once")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ids = delivered(root)
    assert sorted(set(ids)) == sorted(simulator.truth("host_list"))
    assert len(ids) == len(set(ids)), "a host was delivered twice"


def readme_container_steps() -> list[str]:
    """The command block of the README's container section, line by line (comments left to the shell)."""
    section = (REPO / "README.md").read_text().split("**Container.**", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()


def test_the_readme_container_section_word_for_word_gives_a_collector_delivering_to_devo(tmp_path: Path) -> None:
    """A fresh directory, the README's commands as written (``<this repository>`` is this clone; ``sudo``, and
    ``$EDITOR`` writing a configuration for the simulator and a local relay, are the only stand-ins), and
    ``docker compose up -d --build`` done as an engine would from the compose file: the collector pulls the
    simulator's ground truth and delivers it over mutual TLS to the relay."""
    simulator = Simulator(SimConfig(seed=23, hosts=300, detections_per_host=1), password="the-qualys-password")
    url = simulator.start()
    home, bin_dir, work = tmp_path / "home", tmp_path / "bin", tmp_path / "fresh"
    for directory in (home, bin_dir, work):
        directory.mkdir()
    certs = Certs.mint(tmp_path / "devo")  # Devo's files for the domain, as a user downloads them
    for name, path in {
        "chain.crt": certs.chain,
        "client.crt": certs.client_cert,
        "client.key": certs.client_key,
    }.items():
        (home / name).write_bytes(path.read_bytes())
        (home / name).chmod(0o600)  # as a careful user keeps them
    relay = Rsyslog(tmp_path / "relay", certs)
    config = {
        "globals": {"persistence": {"type": "filesystem", "config": {"directory_name": "state"}}},
        "outputs": {
            "devo_1": {
                "type": "devo_platform",
                "config": {"address": "127.0.0.1", "port": relay.port, "type": "SSL", "chain": "chain.crt",
                           "cert": "client.crt", "key": "client.key"},
            }
        },
        "inputs": {
            "qualys": {
                "id": 12345,
                "credentials": {"base_url": url, "username": "demo", "password_file": "/run/secrets/qualys_password"},
                "services": {"host_list": {"start_time_utc": "2020-01-01T00:00:00Z"}},
            }
        },
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    editor = bin_dir / "editor"
    editor.write_text(f'#!/bin/sh\ncat {tmp_path / "config.yaml"} > "$1"\n')
    sudo = bin_dir / "sudo"
    sudo.write_text('#!/bin/sh\nexec "$@"\n')  # the tests run as root
    for script in (editor, sudo):
        script.chmod(0o755)
    *shell, up = readme_container_steps()
    assert up == "docker compose up -d --build && docker compose logs -f"
    script = "\n".join(["set -eu", *shell]).replace("<this repository>", str(REPO))
    env = {**os.environ, "HOME": str(home), "EDITOR": str(editor), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    steps = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert steps.returncode == 0, steps.stderr
    checkout = work / "devo-collectors" / "qualys"
    service = image.compose_service(checkout, "collector-qualys", host_env={})
    relay.start()
    try:
        name = image.build(checkout, tag=service.image)  # `--build`, from the fresh clone's own context
        with image.rootfs(name) as root:
            command = root.command([], service.mounts, service.env)
            with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
                truth = simulator.truth("host_list")
                lines = relay.wait_for(len(truth), timeout=120)
                alive = process.poll() is None
                process.send_signal(signal.SIGTERM)
                try:
                    _out, log = process.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    _out, log = process.communicate()
    finally:
        relay.stop()
        simulator.stop()
    assert alive, f"the collector exited:\n{log[-3000:]}"
    hosts = [json.loads(line["message"])["ID"] for line in lines if line["tag"] == "vuln.qualys.hosts"]
    assert sorted(hosts) == sorted(truth), log[-3000:]
    assert " ERROR " not in log, log[-3000:]
    assert process.returncode == 0, log[-3000:]
