"""What every service module declares besides its spec: an options model on :class:`ServiceOptions`
and a :class:`ServiceEntry` telling the composition root which input it belongs to and how to build
its page source. The explicit list of entries is :mod:`qualys_collector.services.catalog`.

Options models validate one ``inputs.<input>.services.<name>`` block: unknown keys are errors, and
the configuration loader names the key path of every problem.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qualys_collector.engine.pipeline import Stage
from qualys_collector.engine.source import PageSource, ServiceSpec

TAG_PATTERN = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+){1,15}$")


class StrictOptions(BaseModel):
    """Base for every options block: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


Flag = Literal[0, 1]


def flag(value: Any) -> Any:
    """Accept the seed's ``"1"``/``"0"`` strings, ints and booleans for 0/1 filters."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    return value


class ObfuscationRule(StrictOptions):
    """One field of the events to hash, mask or drop before they are stored."""

    field: str = Field(min_length=1, pattern=r"^[^.\s]+(\.[^.\s]+)*$")
    action: Literal["hash", "mask", "drop"]


class ServiceOptions(StrictOptions):
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

    @classmethod
    def config_warnings(cls, block: dict[str, Any], path: str) -> list[str]:
        """Warnings about a valid ``block`` at key ``path`` (keys accepted but without effect); none by default."""
        return []


#: The inputs a service can belong to: ``qualys`` (VM, one subscription's API) or ``qualys_fim`` (the gateway).
InputName = Literal["qualys", "qualys_fim"]


@dataclass(frozen=True)
class ServiceEntry:
    """One service as the configuration and the composition root see it.

    ``build(client, options)`` makes its page source from the input's Qualys client and a validated
    ``options`` model; ``enrich`` (optional) its enrichment stages.
    """

    spec: ServiceSpec
    input: InputName
    options: type[ServiceOptions]
    build: Callable[[Any, Any], PageSource]
    #: ``enrich(client, options, services)`` -> the service's enrichment stages (the page pipeline's slot);
    #: ``services`` are the validated options of every service of the same input.
    enrich: Callable[[Any, Any, Mapping[str, Any]], tuple[Stage, ...]] | None = None
    #: ``change_filter(options)`` -> the stages of the pipeline's change-filter slot.
    change_filter: Callable[[Any], tuple[Stage, ...]] | None = None

    @property
    def name(self) -> str:
        """The service's name (its key under ``services``)."""
        return self.spec.name
