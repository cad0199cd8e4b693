"""Render ``docs/configuration.md`` from the configuration models (``config/schema.py`` and each service's
own, in the catalog's order), so the reference cannot drift.

python -m qualys_collector.config.docs > docs/configuration.md
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from qualys_collector.config import schema
from qualys_collector.services.catalog import SERVICES
from qualys_collector.services.options import ObfuscationRule, ServiceOptions, StrictOptions
from qualys_collector.services.vm_params import VmOptions, WireParams
from qualys_collector.sinks.base import OutputBlock
from qualys_collector.sinks.registry import OUTPUT_TYPES

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("globals (YAML) / global_overrides (JSON)", schema.Globals),
    ("globals.persistence", schema.Persistence),
    ("globals.persistence.config", schema.PersistenceOptions),
    ("globals.metrics", schema.MetricsOptions),
    ("outputs.<name>", OutputBlock),
    *(
        (f"outputs.<name> with type: {output.name} — config", output.options)
        for output in OUTPUT_TYPES
        if output.options.model_fields
    ),
    ("inputs.qualys (VM)", schema.VmInput),
    ("inputs.qualys.credentials", schema.VmCredentials),
    ("inputs.qualys_fim (FIM)", schema.FimInput),
    ("inputs.qualys_fim.credentials", schema.FimCredentials),
    ("inputs.<input>.connection", schema.Connection),
    ("inputs.<input>.requests_limits", schema.RequestsLimits),
    ("every service (options shared by all six)", ServiceOptions),
    ("services.*.obfuscation[]", ObfuscationRule),
]


def service_sections() -> Iterator[tuple[str, type[BaseModel]]]:
    """Each service's options model (the catalog's order), then its nested blocks such as ``filters``."""
    for entry in SERVICES:
        yield f"services.{entry.name}", entry.options
        for name, field in entry.options.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, StrictOptions):
                yield f"services.{entry.name}.{name}", field.annotation


def _type(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    text = re.sub(r"qualys_collector\.(\w+\.)+", "", text)
    text = re.sub(r"typing\.|pydantic\.types\.", "", text)
    text = text.replace("NoneType", "None").replace("Annotated[Union[", "one of [")
    return text.replace("|", "\\|")


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return "(defaults below)"
    return f"`{value!r}`".replace("|", "\\|")


def parameter_sections() -> list[str]:
    """The VM services' Qualys parameters: which API versions offer each typed one, what ``extra_params`` refuses."""
    vm = [(entry.name, entry.options) for entry in SERVICES if issubclass(entry.options, VmOptions)]
    out = [
        "## Qualys request parameters (`filters` and `extra_params` of the VM services)",
        "",
        "Each `filters` key below is the Qualys parameter of the same name, sent as written (lists comma-separated,",
        "flags 0/1) and only when set, except the defaults shown. A key the service's `api_version` does not offer",
        "is ConfigError 13; `extra_params` (any other Qualys parameter, passed through) refuses the parameters the",
        "collector sends itself and the typed keys (ConfigError 14); a combination Qualys refuses is ConfigError 15.",
        "Sources for every parameter: docs/qualys_parameters.md.",
        "",
        "| service | `api_version` offered | typed keys offered only by some versions | `extra_params` may not name |",
        "|---|---|---|---|",
    ]
    for name, model in vm:
        assert issubclass(model, VmOptions)
        filters = model.model_fields.get("filters")
        kind = filters.annotation if filters is not None else None
        gated = []
        if isinstance(kind, type) and issubclass(kind, WireParams):
            for key, (first, last) in kind.VERSIONS.items():
                gated.append(f"`{key}` ({first or model.KNOWN_VERSIONS[0]}–{last or model.KNOWN_VERSIONS[-1]})")
        owned = sorted(model.OWNED) + [f"{prefix}*" for prefix in model.OWNED_PREFIXES]
        out.append(
            f"| `{name}` | {', '.join(model.KNOWN_VERSIONS)} | {', '.join(gated) or '–'} | "
            + ", ".join(f"`{key}`" for key in owned)
            + " |"
        )
    out.append("")
    return out


#: How the options shared by every service apply to ``qualys-collector backfill`` (each key checked to exist).
BACKFILL_KEYS = {
    "max_window_seconds": "caps each of the backfill's windows too; they follow each other at once (so do a "
    "live service's while it is behind), paced by the input's API budget",
    "settle_lag_seconds": "`--to` may be no later than now minus this (error 601)",
    "start_time_utc": "not used: the range is `--from`/`--to`; a range ending after it overlaps the live pull "
    "(warned: those events are delivered twice, once with `@backfill: true`)",
    "request_period_in_seconds": "not used between a backfill's windows; a failed cycle of a backfill hosted "
    "by `run` is retried after it",
    "enabled": "`false` keeps the service out of the live pull; it can still be backfilled",
}


def backfill_section() -> list[str]:
    """What each shared option means for a backfill."""
    out = [
        "## qualys-collector backfill",
        "",
        "`backfill -c FILE --service NAME --from T1 --to T2` pulls `[T1, T2)` with the service's own block; "
        "its checkpoint is the state row `<input id>@backfill/<service>` (README: Backfill).",
        "",
        "| key | in a backfill |",
        "|---|---|",
    ]
    for key, meaning in BACKFILL_KEYS.items():
        if key not in ServiceOptions.model_fields:  # pragma: no cover - the table names real keys only
            raise KeyError(key)
        out.append(f"| `{key}` | {meaning} |")
    return [*out, ""]


def render() -> str:
    """The whole reference as Markdown."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the configuration models by `python -m qualys_collector.config.docs`;",
        "a test fails when this file and the models disagree. See README.md for worked examples.",
        "",
    ]
    base_fields = set(ServiceOptions.model_fields)
    for title, model in [*SECTIONS, *service_sections()]:
        doc = inspect.getdoc(model) or ""
        out += [f"## {title}", "", doc.splitlines()[0] if doc else "", "", "| key | type | default |", "|---|---|---|"]
        for name, field in model.model_fields.items():
            if name == "source_path":
                continue
            inherited = model is not ServiceOptions and issubclass(model, ServiceOptions)
            if inherited and name in base_fields and field.default == ServiceOptions.model_fields[name].default:
                continue
            out.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} |")
        out.append("")
    out += parameter_sections()
    out += backfill_section()
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
