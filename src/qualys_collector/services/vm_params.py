"""Typed Qualys VM request parameters: the options users ask for most, each checked for its type, its
allowed values and the API version that offers it, and ``extra_params`` for everything else.

Every field of a parameter model is named exactly as Qualys spells the parameter, so :meth:`WireParams.wire`
sends it as written; ``None`` means "not sent" (Qualys' own default applies). What the collector itself
sends (``action``, ``ids``, ``id_min``, ``truncation_limit``, the window's dates, the output format...) is
*owned*: ``extra_params`` refuses it (ConfigError 14), because a user value would break paging, windows or
parsing. A parameter the chosen ``api_version`` does not offer is ConfigError 13, a combination Qualys
refuses is ConfigError 15 — all before any network call. Sources: docs/qualys_parameters.md.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from qualys_collector.services.options import Flag, ServiceOptions, StrictOptions, flag

#: The error type :mod:`qualys_collector.config.load` turns into a ConfigError with the code and fix it carries.
ERROR_TYPE = "collector_config"
VERSION_PATTERN = r"^[2-9]\.\d$"


def config_error(code: int, message: str, fix: str, key: str = "") -> PydanticCustomError:
    """A validation error that becomes ConfigError ``code`` with ``fix``, at ``key`` below the model's path."""
    return PydanticCustomError(
        ERROR_TYPE, message.replace("{", "(").replace("}", ")"), {"code": code, "fix": fix, "key": key}
    )


def version(value: str) -> tuple[int, int]:
    """``"5.0"`` -> ``(5, 0)``."""
    major, _, minor = value.partition(".")
    return int(major), int(minor or 0)


def _ids(value: Any, what: str) -> Any:
    """IDs and ``low-high`` ranges as a list of strings, from a list, an int or a comma string."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError(f"{what} are numbers or ranges like 1-3 (got {item!r})")  # noqa: TRY004 - pydantic reports ValueError
        text = str(item).strip()
        low, dash, high = text.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()) or (dash and int(high) < int(low)):
            raise ValueError(f"{what} are numbers or ranges like 1-3 (got {text!r})")
        out.append(text)
    if not out:
        raise ValueError(f"name at least one of the {what}, or remove the key")
    return out


def _names(value: Any) -> Any:
    """A list of non-empty strings, from a list or a comma string."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    out = [str(item).strip() for item in items if not isinstance(item, dict | list)]
    if len(out) != len(items) or not all(out):
        raise ValueError("a list of names (or a comma-separated string) without empty entries")
    if any("," in item for item in out):
        raise ValueError("a name cannot contain ','")
    return out


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


class WireParams(StrictOptions):
    """Parameter fields named as Qualys names them; ``VERSIONS`` says which API versions offer a parameter
    (``(first, last)``, ``None`` for unbounded); the others are offered by every version."""

    VERSIONS: ClassVar[dict[str, tuple[str | None, str | None]]] = {}
    #: What replaced a parameter in later API versions.
    SUCCESSORS: ClassVar[dict[str, str]] = {}
    #: Fields accepted but never sent (the seed's ``details`` under host list detection).
    NOT_SENT: ClassVar[frozenset[str]] = frozenset()

    def wire(self) -> dict[str, str]:
        """The set parameters, as Qualys expects their values (lists comma-separated, flags 0/1)."""
        return {
            name: _encode(value)
            for name in type(self).model_fields
            if name not in self.NOT_SENT and (value := getattr(self, name)) is not None
        }

    def version_problem(self, api_version: str) -> tuple[str, str] | None:
        """``(parameter, what to do)`` for the first set parameter ``api_version`` does not offer."""
        have = version(api_version)
        for name, (first, last) in self.VERSIONS.items():
            if getattr(self, name, None) is None:
                continue
            if first is not None and have < version(first):
                return name, f"it needs api_version {first} or later: raise api_version or remove it"
            if last is not None and have > version(last):
                instead = self.SUCCESSORS.get(name)
                return name, f"api_version {last} is the last that offers it: " + (
                    f"use {instead} instead, or api_version: {last}" if instead else "remove it"
                )
        return None


def _id_list(value: Any) -> Any:
    return _ids(value, "IDs")


def _qid_list(value: Any) -> Any:
    return _ids(value, "QIDs")


def _comma_list(value: Any) -> Any:
    return [part.strip() for part in value.split(",")] if isinstance(value, str) else value


class HostScope(WireParams):
    """Which hosts: asset groups, operating system, networks, asset tags, cloud metadata (host list and
    host list detection alike)."""

    ag_ids: list[str] | None = None
    ag_titles: list[str] | None = None
    os_pattern: str | None = Field(default=None, min_length=1, max_length=1024)
    network_ids: list[str] | None = None
    use_tags: Flag | None = None
    tag_set_by: Literal["id", "name"] | None = None
    tag_include_selector: Literal["any", "all"] | None = None
    tag_exclude_selector: Literal["any", "all"] | None = None
    tag_set_include: list[str] | None = None
    tag_set_exclude: list[str] | None = None
    host_metadata: Literal["all", "ec2", "azure", "google"] | None = None
    host_metadata_fields: list[str] | None = None
    cloud_tag_fields: list[str] | None = None

    _scope_flags = field_validator("use_tags", mode="before")(flag)
    _scope_ids = field_validator("ag_ids", "network_ids", mode="before")(_id_list)
    _named = field_validator(
        "ag_titles", "tag_set_include", "tag_set_exclude", "host_metadata_fields", "cloud_tag_fields", mode="before"
    )(_names)

    #: The fields that choose hosts (the others shape what is shown of them).
    HOST_FILTERS: ClassVar[tuple[str, ...]] = (
        "ag_ids",
        "ag_titles",
        "os_pattern",
        "network_ids",
        "use_tags",
        "tag_set_by",
        "tag_include_selector",
        "tag_exclude_selector",
        "tag_set_include",
        "tag_set_exclude",
    )

    def host_filters(self) -> dict[str, str]:
        """The parameters that choose hosts, for a host list of the same hosts."""
        return {k: v for k, v in self.wire().items() if k in self.HOST_FILTERS}

    @field_validator("os_pattern")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and ("\n" in value or "\r" in value):
            raise ValueError("os_pattern is one line (a PCRE regular expression, as Qualys reads it)")
        return value

    @field_validator("host_metadata", "tag_set_by", "tag_include_selector", "tag_exclude_selector", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _combinations(self) -> HostScope:
        if self.ag_ids is not None and self.ag_titles is not None:
            raise config_error(15, "ag_ids and ag_titles cannot be sent together", "keep one of them", "ag_titles")
        tag_keys = ("tag_set_by", "tag_include_selector", "tag_exclude_selector", "tag_set_include", "tag_set_exclude")
        used = [k for k in tag_keys if getattr(self, k) is not None]
        if used and self.use_tags != 1:
            raise config_error(
                15, f"{used[0]} only applies with use_tags: 1", "add use_tags: 1 beside it (or remove it)", used[0]
            )
        if (self.tag_set_by or "id") == "id":
            for key in ("tag_set_include", "tag_set_exclude"):
                values = getattr(self, key) or []
                if not all(v.isdigit() for v in values):
                    raise config_error(
                        10,
                        f"{key} holds tag names but tag_set_by is id (the default)",
                        "write tag IDs, or add tag_set_by: name",
                        key,
                    )
        if self.host_metadata_fields is not None and self.host_metadata is None:
            raise config_error(
                15,
                "host_metadata_fields only applies with host_metadata",
                "add host_metadata: all (or ec2...)",
                "host_metadata_fields",
            )
        return self


def _severities(value: Any) -> Any:
    """``[4, 5]``, ``5``, ``"3-5"`` or ``"4,5"`` -> the sorted severities."""
    if value is None:
        return None
    found: set[int] = set()
    for part in value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]:
        text = str(part).strip() if not isinstance(part, bool) else "?"
        low, dash, high = text.partition("-")
        if not (low.isdigit() and (not dash or high.isdigit())):
            raise ValueError(f"severities are 1-5, listed or as a range like 3-5 (got {text!r})")
        lo, hi = int(low), int(high) if dash else int(low)
        if not 1 <= lo <= hi <= 5:
            raise ValueError(f"severities are 1-5, listed or as a range like 3-5 (got {text!r})")
        found.update(range(lo, hi + 1))
    if not found:
        raise ValueError("name at least one severity (1-5), or remove the key")
    return sorted(found)


ArfFilter = Literal[0, 1, 2, 3, 4]
ArfKey = Literal["non-running-kernel", "non-running-service", "config-not-exploitable"]


class DetectionParams(HostScope):
    """The host list detection parameters users ask for most (each as Qualys names it)."""

    VERSIONS: ClassVar[dict[str, tuple[str | None, str | None]]] = {
        "arf_kernel_filter": (None, "2.0"),
        "arf_service_filter": (None, "2.0"),
        "arf_config_filter": (None, "2.0"),
        "show_arf_data": ("3.0", None),
        "arf_filter_keys": ("3.0", None),
    }
    SUCCESSORS: ClassVar[dict[str, str]] = dict.fromkeys(
        ("arf_kernel_filter", "arf_service_filter", "arf_config_filter"), "show_arf_data: 1 with arf_filter_keys"
    )

    show_qds: Flag = 1
    show_qds_factors: Flag = 1
    qds_min: int | None = Field(default=None, ge=1, le=100)
    qds_max: int | None = Field(default=None, ge=1, le=100)
    severities: list[int] | None = None
    qids: list[str] | None = None
    include_vuln_type: Literal["confirmed", "potential"] | None = None
    show_igs: Flag | None = None
    include_ignored: Flag | None = None
    include_disabled: Flag | None = None
    show_results: Flag | None = None
    filter_superseded_qids: Flag | None = None
    arf_kernel_filter: ArfFilter | None = None
    arf_service_filter: ArfFilter | None = None
    arf_config_filter: ArfFilter | None = None
    show_arf_data: Flag | None = None
    arf_filter_keys: list[ArfKey] | None = None
    show_cloud_tags: Flag | None = None

    _detection_flags = field_validator(
        "show_qds",
        "show_qds_factors",
        "show_igs",
        "include_ignored",
        "include_disabled",
        "show_results",
        "filter_superseded_qids",
        "show_arf_data",
        "show_cloud_tags",
        mode="before",
    )(flag)
    _severities = field_validator("severities", mode="before")(_severities)
    _qids = field_validator("qids", mode="before")(_qid_list)
    _keys = field_validator("arf_filter_keys", mode="before")(_comma_list)

    @field_validator("include_vuln_type", mode="before")
    @classmethod
    def _vuln_type(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _scores(self) -> DetectionParams:
        for key in ("qds_min", "qds_max"):
            if getattr(self, key) is not None and self.show_qds != 1:
                raise config_error(15, f"{key} filters on QDS, which show_qds: 0 turns off", "set show_qds: 1", key)
        if self.qds_min is not None and self.qds_max is not None and self.qds_min > self.qds_max:
            raise config_error(15, "qds_min is above qds_max", "swap them (1 <= qds_min <= qds_max <= 100)", "qds_min")
        if self.show_qds_factors == 1 and self.show_qds != 1:
            raise config_error(
                15,
                "show_qds_factors explains a QDS that show_qds: 0 leaves out",
                "set both to 1 or both to 0",
                "show_qds_factors",
            )
        return self


class HostListParams(HostScope):
    """The host list's TruRisk and asset criticality parameters, and its host scope."""

    show_trurisk: Flag | None = None
    show_trurisk_factors: Flag | None = None
    trurisk_min: int | None = Field(default=None, ge=0, le=1000)
    trurisk_max: int | None = Field(default=None, ge=0, le=1000)

    _trurisk_flags = field_validator("show_trurisk", "show_trurisk_factors", mode="before")(flag)

    @model_validator(mode="after")
    def _scores(self) -> HostListParams:
        for key in ("trurisk_min", "trurisk_max", "show_trurisk_factors"):
            if getattr(self, key) is not None and self.show_trurisk != 1:
                raise config_error(15, f"{key} needs the TruRisk score", "add show_trurisk: 1 beside it", key)
        if self.trurisk_min is not None and self.trurisk_max is not None and self.trurisk_min > self.trurisk_max:
            raise config_error(15, "trurisk_min is above trurisk_max", "swap them (0-1000)", "trurisk_min")
        return self


#: Parameters every VM list request owns: the operation, paging, the answer's shape.
COMMON_OWNED = frozenset({"action", "echo_request", "output_format", "truncation_limit", "id_min", "id_max"})
_PARAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def check_extra_params(
    value: dict[str, Any],
    *,
    owned: frozenset[str],
    owned_prefixes: tuple[str, ...] = (),
    typed: frozenset[str] = frozenset(),
    section: str = "filters",
) -> dict[str, str]:
    """``extra_params`` as the strings sent, or a ConfigError for a name the collector owns (14) or types (14)."""
    out: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not _PARAM_NAME.match(name):
            raise config_error(
                10, f"{name!r} is not a Qualys parameter name", "use the lowercase name Qualys documents", str(name)
            )
        if name in owned or name.startswith(owned_prefixes):
            raise config_error(
                14,
                f"{name} is set by the collector itself (paging, windows or the answer's format)",
                "remove it from extra_params; the collector sends it",
                name,
            )
        if name in typed:
            raise config_error(
                14, f"{name} is a typed option", f"write it under {section}.{name}, where its value is checked", name
            )
        if isinstance(item, list):
            if not item or any(isinstance(v, bool | dict | list) or v is None for v in item):
                raise config_error(10, f"{name}: a list of strings or numbers", "list its values", name)
            out[name] = ",".join(str(v) for v in item)
        elif isinstance(item, bool):
            out[name] = str(int(item))
        elif isinstance(item, str | int | float):
            out[name] = str(item)
        else:
            raise config_error(
                10, f"{name}: a string, a number or a list", "write its value as Qualys expects it", name
            )
    return out


class VmOptions(ServiceOptions):
    """What every VM service adds: its API version and ``extra_params``, checked against its ``filters``."""

    #: The versions of this service's endpoint Qualys offers (the first is the oldest).
    KNOWN_VERSIONS: ClassVar[tuple[str, ...]] = ("2.0",)
    #: Parameters the collector sends itself: ``extra_params`` may not name them (ConfigError 14).
    OWNED: ClassVar[frozenset[str]] = COMMON_OWNED
    OWNED_PREFIXES: ClassVar[tuple[str, ...]] = ()

    api_version: str = Field(default="2.0", pattern=VERSION_PATTERN)
    #: Any other Qualys parameter, sent as given (lists comma-separated, booleans 0/1).
    extra_params: dict[str, str] = Field(default_factory=dict)

    @field_validator("extra_params", mode="before")
    @classmethod
    def _extra(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        filters = cls.model_fields.get("filters")
        model = filters.annotation if filters is not None else None
        typed = frozenset(model.model_fields if isinstance(model, type) and issubclass(model, WireParams) else ())
        return check_extra_params(value, owned=cls.OWNED, owned_prefixes=cls.OWNED_PREFIXES, typed=typed)

    @model_validator(mode="after")
    def _versions(self) -> VmOptions:
        if self.api_version not in self.KNOWN_VERSIONS:
            raise config_error(
                13,
                f"Qualys offers this API as version {', '.join(self.KNOWN_VERSIONS)}, not {self.api_version}",
                f"use api_version: {self.KNOWN_VERSIONS[-1]} (the active one) or remove the key",
                "api_version",
            )
        filters = getattr(self, "filters", None)
        problem = filters.version_problem(self.api_version) if isinstance(filters, WireParams) else None
        if problem is not None:
            name, fix = problem
            raise config_error(13, f"api_version {self.api_version} does not offer {name}", fix, f"filters.{name}")
        return self
