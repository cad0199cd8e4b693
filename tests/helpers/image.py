"""The container image, built from the project's own Dockerfile with buildah and run from its root filesystem.

No container engine runs on the machines this project is built on, so the image is built with buildah (vfs
storage, chroot isolation) and its root filesystem run the way an engine would: as the image's user, with its
ENV, WORKDIR and ENTRYPOINT, and the seed's directories bind-mounted in a private mount namespace.

The Dockerfile's ``BASE`` is the official ``python:3.11-slim`` when it can be pulled; otherwise a stand-in
with the same Python (Debian bookworm's 3.11, from debootstrap) is built once and kept in buildah's storage.
The stand-in trusts this machine's certificate bundle (``PIP_CERT``), as the machine's own pip does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BUILDAH = ["buildah", "--storage-driver", "vfs"]
OFFICIAL = "docker.io/library/python:3.11-slim"
STANDIN = "localhost/python-standin:3.11-bookworm"
IMAGE = "localhost/qualys-collector:test"


def available() -> bool:
    """buildah and debootstrap are installed and we are root (``.ci/run`` installs both)."""
    return bool(shutil.which("buildah") and shutil.which("debootstrap") and shutil.which("unshare")) and (
        os.geteuid() == 0
    )


def _buildah(*args: str, timeout: float = 600) -> str:
    done = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args[:2])} failed: {done.stderr[-2000:]}")
    return done.stdout.strip()


def _exists(image: str) -> bool:
    return (
        subprocess.run([*BUILDAH, "inspect", "--type", "image", image], capture_output=True, check=False).returncode
        == 0
    )


def base() -> str:
    """The image to build FROM: the official one if it can be pulled, else the cached or a new stand-in."""
    if (
        _exists(OFFICIAL)
        or subprocess.run([*BUILDAH, "pull", "-q", OFFICIAL], capture_output=True, timeout=120, check=False).returncode
        == 0
    ):
        return OFFICIAL
    if _exists(STANDIN):
        return STANDIN
    with tempfile.TemporaryDirectory(prefix="standin-") as work:
        root = Path(work) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
             str(root), "http://deb.debian.org/debian"],
            capture_output=True, timeout=900, check=True,
        )  # fmt: skip
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", root / "etc/ssl/certs/ca-certificates.crt")
        archive = Path(work) / "root.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(archive), "."], check=True)
        container = _buildah("from", "scratch")
        _buildah("add", container, str(archive), "/")
        _buildah(
            "config",
            "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env", "LANG=C.UTF-8",
            "--env", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
            "--cmd", "python3",
            container,
        )  # fmt: skip
        _buildah("commit", "-q", "--rm", container, STANDIN)
    return STANDIN


def build(repo: Path, tag: str = IMAGE) -> str:
    """Build the project's Dockerfile (layers cached between runs); returns the image name."""
    _buildah(
        "bud", "--isolation", "chroot", "--layers", "--build-arg", f"BASE={base()}",
        "-t", tag, "-f", str(repo / "Dockerfile"), str(repo),
        timeout=1200,
    )  # fmt: skip
    return tag


def size(image: str) -> str:
    """The image's size as buildah reports it (e.g. ``241 MB``)."""
    return _buildah("images", "--format", "{{.Size}}", image)


@dataclass
class Rootfs:
    """A mounted working container of ``image``: run its entrypoint as an engine would."""

    path: Path
    env: list[str]
    user: str
    workdir: str
    entrypoint: list[str]

    def uid(self) -> tuple[int, int]:
        """The image user's uid and gid, from the image's own ``/etc/passwd``."""
        for line in (self.path / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if self.user in (fields[0], fields[2]):
                return int(fields[2]), int(fields[3])
        raise RuntimeError(f"user {self.user} is not in the image")

    def command(self, args: list[str], mounts: dict[Path, str], env: dict[str, str] | None = None) -> list[str]:
        """The command line that runs the entrypoint with ``args`` and ``mounts`` (host path -> container path)."""
        root = shlex.quote(str(self.path))
        steps = [f"mount --rbind /dev {root}/dev", f"mount -t proc proc {root}/proc"]
        for host, inside in mounts.items():
            target = shlex.quote(f"{self.path}{inside}")
            if host.is_dir():
                steps.append(f"mkdir -p {target}")
            else:
                steps.append(f"mkdir -p {shlex.quote(str(Path(f'{self.path}{inside}').parent))} && touch {target}")
            steps.append(f"mount --bind {shlex.quote(str(host))} {target}")
        uid, gid = self.uid()
        variables = [*self.env, *(f"{k}={v}" for k, v in (env or {}).items())]
        inner = ["/bin/sh", "-c", f'cd {shlex.quote(self.workdir)} && exec "$@"', "entrypoint", *self.entrypoint, *args]
        steps.append(
            shlex.join(["exec", "chroot", f"--userspec={uid}:{gid}", str(self.path), "/usr/bin/env", "-i",
                        *variables, *inner])
        )  # fmt: skip
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(steps)]


@contextlib.contextmanager
def rootfs(image: str) -> Iterator[Rootfs]:
    """A fresh working container of ``image``, mounted; removed afterwards."""
    container = _buildah("from", "-q", image)
    try:
        path = Path(_buildah("mount", container))
        config = json.loads(_buildah("inspect", "--type", "container", container))["OCIv1"]["config"]
        yield Rootfs(
            path=path,
            env=config.get("Env", []),
            user=config.get("User", "root"),
            workdir=config.get("WorkingDir", "/"),
            entrypoint=config.get("Entrypoint") or [],
        )
    finally:
        with contextlib.suppress(RuntimeError):
            _buildah("umount", container)
        with contextlib.suppress(RuntimeError):
            _buildah("rm", container)


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}`` and ``${VAR:-default}`` in ``value``."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m[1]) or (m[2] if m[2] is not None else ""), value)


@dataclass
class ComposeService:
    """What ``docker compose up`` would give one service of a compose file: its image, mounts and environment."""

    image: str
    mounts: dict[Path, str]
    env: dict[str, str]


def compose_service(directory: Path, name: str, host_env: dict[str, str] | None = None) -> ComposeService:
    """Read ``directory/docker-compose.yml`` as compose does for service ``name``: its bind mounts (``./x:/y``),
    its secrets (``file:`` mounted at ``/run/secrets/<name>``), ``environment`` and ``env_file`` (optional ones
    skipped when absent), with ``${VAR:-default}`` interpolated from ``host_env``."""
    import yaml

    host = host_env or {}
    compose = yaml.safe_load((directory / "docker-compose.yml").read_text())
    service = compose["services"][name]
    mounts: dict[Path, str] = {}
    for volume in service.get("volumes", []):
        source, target = _interpolate(volume, host).split(":")[:2]
        mounts[(directory / source).resolve()] = target
    for secret in service.get("secrets", []):
        secret_name = secret if isinstance(secret, str) else secret["source"]
        mounts[(directory / compose["secrets"][secret_name]["file"]).resolve()] = f"/run/secrets/{secret_name}"
    env: dict[str, str] = {}
    for entry in service.get("env_file", []):
        path, required = (entry, True) if isinstance(entry, str) else (entry["path"], entry.get("required", True))
        file = directory / path
        if not file.exists():
            if required:
                raise FileNotFoundError(f"env_file {file} is required by the compose file")
            continue
        for line in file.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                env[key.strip()] = value
    for item in service.get("environment", []):
        key, _, value = item.partition("=")
        env[key] = _interpolate(value.split(" #")[0].strip(), host)
    image = _interpolate(service["image"], host)
    return ComposeService(image if "/" in image else f"localhost/{image}", mounts, env)
