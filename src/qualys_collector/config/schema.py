"""The configuration model: the seeds' shapes, validated with pydantic.

Shapes accepted unchanged: the on-premises YAML (``globals``, ``outputs``, ``inputs``) and the collector
server JSON (``global_overrides``, ``inputs``). Inputs: ``qualys`` (VM) and ``qualys_fim`` (FIM).
Every service block takes ``request_period_in_seconds``, ``override_tag``, ``start_time_utc``,
``enabled`` and its own ``filters`` and options; unknown keys are refused with the key path.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from qualys_collector.sinks.registry import Output

TAG_PATTERN = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+){1,15}$")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

#: Default Devo tag of each service (from the seeds).
DEFAULT_TAGS: dict[str, str] = {
    "vm_scans": "vuln.qualys.vulnerabilities",
    "host_list": "vuln.qualys.hosts",
    "host_list_detection": "vuln.qualys.hostdetections",
    "user_activity": "vuln.qualys.useractivitylog",
    "fim_events": "monitor.qualys.fim.event",
    "fim_incidents": "monitor.qualys.fim.incident",
}


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
    metrics: MetricsOptions | None = None


# ----------------------------------------------------------------------------------------- outputs
# Each output type owns its options model in its module under ``sinks/``; ``Output`` is their tagged
# union, composed from the explicit list in ``sinks/registry.py``.

# ----------------------------------------------------------------------------------------- services

Flag = Literal[0, 1]


def _flag(value: Any) -> Any:
    """Accept the seed's ``"1"``/``"0"`` strings, ints and booleans for 0/1 filters."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return value


class ObfuscationRule(Strict):
    """One field of the events to hash, mask or drop before they are stored."""

    field: str = Field(min_length=1, pattern=r"^[^.\s]+(\.[^.\s]+)*$")
    action: Literal["hash", "mask", "drop"]


class ServiceOptions(Strict):
    """Options every service accepts."""

    enabled: bool = True
    obfuscation: list[ObfuscationRule] = Field(default_factory=list)
    request_period_in_seconds: int = Field(default=60, ge=1, le=86400 * 7)
    override_tag: str | None = None
    start_time_utc: datetime | None = None
    settle_lag_seconds: int = Field(default=0, ge=0, le=86400)
    max_window_seconds: int | None = Field(default=None, ge=60)

    @field_validator("override_tag")
    @classmethod
    def _tag(cls, value: str | None) -> str | None:
        if value is not None and not TAG_PATTERN.match(value):
            raise ValueError(
                f"{value!r} is not a valid Devo tag: use 2-16 dot-separated parts of lowercase letters, "
                "digits, '_' or '-' (for example my.app.qualys.scans)"
            )
        return value


class HostListFilters(Strict):
    """The seed's host list filters."""

    details: Literal["Basic", "Basic/AGs", "All", "All/AGs"] = "All"
    show_asset_id: Flag = 1
    show_tags: Flag = 0
    show_cloud_tags: Flag = 0

    _flags = field_validator("show_asset_id", "show_tags", "show_cloud_tags", mode="before")(_flag)


DetectionStatus = Literal["New", "Active", "Fixed", "Re-Opened"]
ALL_STATUSES: tuple[DetectionStatus, ...] = ("New", "Active", "Fixed", "Re-Opened")


class DetectionFilters(Strict):
    """The seed's host list detection filters (``details`` appears in its example; it is ignored)."""

    status: list[DetectionStatus] = Field(default_factory=lambda: list(ALL_STATUSES))
    show_asset_id: Flag = 1
    show_tags: Flag = 0
    show_reopened_info: Flag = 0
    details: str | None = None

    _flags = field_validator("show_asset_id", "show_tags", "show_reopened_info", mode="before")(_flag)

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class VmScansOptions(ServiceOptions):
    """``vm_scans``."""

    api_version: str = "3.0"


class HostListOptions(ServiceOptions):
    """``host_list``."""

    api_version: str = "5.0"
    truncation_limit: int = Field(default=1000, ge=1, le=1_000_000)
    filters: HostListFilters = HostListFilters()


class HostListDetectionOptions(ServiceOptions):
    """``host_list_detection``."""

    api_version: str = "5.0"
    truncation_limit: int = Field(default=1000, ge=1, le=1_000_000)
    results_max_length: int | None = Field(default=None, ge=64)
    parallel: bool = True
    batch_size: int = Field(default=500, ge=1, le=1000)
    max_workers: int | None = Field(default=None, ge=1, le=64)
    parse_processes: int = Field(default=0, ge=0, le=64)
    summary_tag: str | None = None
    filters: DetectionFilters = DetectionFilters()


class UserActivityOptions(ServiceOptions):
    """``user_activity``."""

    api_version: str = "2.0"
    truncation_limit: int = Field(default=1000, ge=1, le=1_000_000)


class FimEventsOptions(ServiceOptions):
    """``fim_events``."""

    settle_lag_seconds: int = Field(default=30, ge=0, le=86400)
    page_size: int = Field(default=1000, ge=1, le=1000)
    filter: str | None = None

    @field_validator("filter")
    @classmethod
    def _qql(cls, value: str | None) -> str | None:
        if value and re.search(r"\b(processedTime|dateTime)\b", value):
            raise ValueError(
                "the filter may not name processedTime or dateTime: the collector windows on processedTime "
                "itself; remove that part of the filter and use start_time_utc instead"
            )
        return value


class FimIncidentsOptions(ServiceOptions):
    """``fim_incidents``."""

    settle_lag_seconds: int = Field(default=30, ge=0, le=86400)
    page_size: int = Field(default=1000, ge=1, le=1000)
    window_field: Literal["lastUpdatedBy.date", "createdBy.date"] = "lastUpdatedBy.date"
    include_events: bool = False
    events_tag: str | None = None


VM_SERVICES: dict[str, type[ServiceOptions]] = {
    "vm_scans": VmScansOptions,
    "host_list": HostListOptions,
    "host_list_detection": HostListDetectionOptions,
    "user_activity": UserActivityOptions,
}
FIM_SERVICES: dict[str, type[ServiceOptions]] = {
    "fim_events": FimEventsOptions,
    "fim_incidents": FimIncidentsOptions,
}

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


class VmCredentials(Strict):
    """``inputs.qualys.credentials``."""

    hostname: str | None = None
    base_url: str | None = None
    username: str = Field(min_length=1)
    password: SecretStr

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
    password: SecretStr
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
