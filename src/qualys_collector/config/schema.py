"""The configuration model: the seeds' shapes, validated with pydantic.

Shapes accepted unchanged: the on-premises YAML (``globals``, ``outputs``, ``inputs``) and the collector
server JSON (``global_overrides``, ``inputs``). Inputs: ``qualys`` (VM) and ``qualys_fim`` (FIM).
Every service block takes ``request_period_in_seconds``, ``override_tag``, ``start_time_utc``,
``enabled`` and its own ``filters`` and options; unknown keys are refused with the key path.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from qualys_collector.services.options import ServiceOptions
from qualys_collector.sinks.registry import Output

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class Strict(BaseModel):
    """Base for every block: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(value: str, *, what: str) -> str:
    """Validate an API URL: https, or plain http only towards a loopback host (tests, simulator)."""
    parts = urlsplit(value)
    if parts.username is not None or parts.password is not None:  # never echoed: it may hold a password
        raise ValueError(
            f"{what} must not carry a user name or password (user:password@host): they would be ignored; give the "
            "API user as username and password (or password_file) and the URL as https://host[:port]"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} must be a URL like https://host[:port]; got {value!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            f"{what} uses plain http towards {parts.hostname}; only https is allowed "
            "(plain http is accepted for 127.0.0.1/localhost only)"
        )
    return value.rstrip("/")


# ----------------------------------------------------------------------------------------- globals


class PersistenceOptions(Strict):
    """``globals.persistence.config``."""

    directory_name: str = "state"


class Persistence(Strict):
    """``globals.persistence``: where checkpoints and the outbox live."""

    type: Literal["filesystem"] = "filesystem"
    config: PersistenceOptions = PersistenceOptions()


class MetricsOptions(Strict):
    """``globals.metrics``: Prometheus ``/metrics``, ``/healthz`` and ``/readyz``."""

    address: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    delivery_stall_seconds: float = Field(default=300.0, gt=0)


class Globals(BaseModel):
    """``globals`` (YAML) or ``global_overrides`` (JSON). Unknown keys are ignored with a warning."""

    model_config = ConfigDict(extra="allow", frozen=True)

    debug: bool = False
    id: str | int | None = None
    name: str = Field(default="qualys-collector", min_length=1)
    persistence: Persistence = Persistence()
    outbox_max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    event_max_bytes: int = Field(default=16 << 20, ge=64 << 10, le=1 << 30)
    metrics: MetricsOptions | None = None


# ----------------------------------------------------------------------------------------- outputs
# Each output type owns its options model in its module under ``sinks/``; ``Output`` is their tagged
# union, composed from the explicit list in ``sinks/registry.py``.

# ----------------------------------------------------------------------------------------- services

# Each service owns its options model in its module under ``services/`` (on the common base
# :class:`~qualys_collector.services.options.ServiceOptions`); ``services/catalog.py`` lists them.

# ----------------------------------------------------------------------------------------- inputs


class Connection(Strict):
    """HTTP settings shared by both inputs."""

    verify_tls: bool = True
    ca_bundle: str | None = None
    proxy: str | None = None
    request_timeout_seconds: float = Field(default=300.0, gt=0, le=3600)
    max_attempts: int = Field(default=6, ge=1, le=100)
    max_retry_seconds: float = Field(default=1800.0, gt=0, le=86400)
    max_wait_seconds: float = Field(default=3600.0, gt=0, le=86400)


def _non_empty_password(value: SecretStr) -> SecretStr:
    """An empty password passed validation and came back from Qualys as a login failure (found by review)."""
    if not value.get_secret_value():
        raise ValueError(
            "the password is empty: set it, or password_file, or ${ENV_VAR} naming a variable that is set and not empty"
        )
    return value


#: A password that may not be empty (both inputs' credentials).
Password = Annotated[SecretStr, AfterValidator(_non_empty_password)]


class VmCredentials(Strict):
    """``inputs.qualys.credentials``."""

    hostname: str | None = None
    base_url: str | None = None
    username: str = Field(min_length=1)
    password: Password

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        if value is not None and ("://" in value or "/" in value):
            raise ValueError(
                f"hostname must be a bare host name such as qualysapi.qualys.com, without https:// "
                f"or a path; got {value!r}"
            )
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value, what="base_url")

    @model_validator(mode="after")
    def _one_of(self) -> VmCredentials:
        if not self.hostname and not self.base_url:
            raise ValueError("set hostname (for example qualysapi.qualys.com) or base_url")
        return self

    @property
    def api_url(self) -> str:
        """The API server URL: ``base_url`` wins over ``hostname``."""
        return self.base_url or f"https://{self.hostname}"


class FimCredentials(Strict):
    """``inputs.qualys_fim.credentials``."""

    username: str = Field(min_length=1)
    password: Password
    base_url: str
    auth_url: str | None = None

    @field_validator("base_url", "auth_url")
    @classmethod
    def _urls(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value, what="URL")

    @property
    def token_url(self) -> str:
        """The gateway's ``/auth`` URL (``auth_url`` or ``base_url`` + ``/auth``)."""
        return self.auth_url or f"{self.base_url}/auth"


class RequestsLimits(Strict):
    """The seeds' ``requests_limits``: the user's own cap on calls per period for one input."""

    max_calls: int = Field(ge=1)
    period_seconds: int = Field(ge=1)


class InputBase(Strict):
    """What both inputs share."""

    id: str
    enabled: bool = True
    environment: str | None = Field(default=None, min_length=1)
    connection: Connection = Connection()
    requests_limits: RequestsLimits | None = None
    obfuscation_salt: SecretStr | None = None

    @model_validator(mode="after")
    def _salt_for_hashes(self) -> InputBase:
        services: dict[str, ServiceOptions] = getattr(self, "services", {})
        hashed = [n for n, o in services.items() if any(r.action == "hash" for r in o.obfuscation)]
        if hashed and self.obfuscation_salt is None:
            raise ValueError(
                f"services {', '.join(hashed)} hash fields: set obfuscation_salt on the input (a secret, for "
                "example ${OBFUSCATION_SALT}) so hashes cannot be reversed by guessing"
            )
        return self

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if isinstance(value, str) and not ID_PATTERN.match(value):
            raise ValueError("id must be 1-32 letters, digits, '_' or '-' (it names the persistence)")
        return value


class VmInput(InputBase):
    """``inputs.qualys``."""

    credentials: VmCredentials
    services: dict[str, ServiceOptions]


class FimInput(InputBase):
    """``inputs.qualys_fim``."""

    credentials: FimCredentials
    services: dict[str, ServiceOptions]


class Inputs(Strict):
    """``inputs``: at least one of ``qualys`` and ``qualys_fim``."""

    qualys: VmInput | None = None
    qualys_fim: FimInput | None = None


class CollectorConfig(Strict):
    """The whole configuration after loading."""

    globals: Globals = Globals()
    outputs: dict[str, Output] = Field(default_factory=dict)
    inputs: Inputs
    source_path: Path | None = None

    def state_dir(self, override: Path | None = None) -> Path:
        """The persistence directory (``--state-dir`` wins, relative paths resolve from the cwd)."""
        return override or Path(self.globals.persistence.config.directory_name)
