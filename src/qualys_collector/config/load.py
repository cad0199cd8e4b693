"""Load a configuration file (YAML or JSON, by extension) into :class:`CollectorConfig`.

Order of work: parse the file, merge ``global_overrides`` into ``globals``, resolve ``${ENV}`` and
``*_file`` secrets, normalise the seed's ``vm_scans::`` typo, check ``start_time_utc`` with the seed's
InitVariablesError numbers, validate each service with its own model, then the whole. Every problem
becomes a :class:`ConfigError` naming the key path, the bad value (never a secret) and the fix.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from qualys_collector.config.schema import CollectorConfig
from qualys_collector.errors import ConfigError
from qualys_collector.model import SEED_DATETIME_FORMAT, utcnow
from qualys_collector.redact import is_secret_key, register_secret
from qualys_collector.services.catalog import options_models
from qualys_collector.services.options import ServiceOptions
from qualys_collector.services.vm_params import ERROR_TYPE as COLLECTOR_ERROR
from qualys_collector.sinks.registry import output_type_names

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_INPUT_SERVICES: dict[str, dict[str, type[ServiceOptions]]] = {
    "qualys": options_models("qualys"),
    "qualys_fim": options_models("qualys_fim"),
}


def load_config(path: Path, *, warn: Callable[[str], None] | None = None) -> CollectorConfig:
    """Read, check and validate the configuration at ``path``. Raises :class:`ConfigError`."""
    warnings: list[str] = []
    raw = _read(path)
    config = build_config(raw, warnings=warnings, base_dir=path.parent)
    for message in warnings:
        (warn or (lambda _m: None))(message)
    return config.model_copy(update={"source_path": path})


#: How many values a YAML file may hold once its aliases are expanded (a real configuration has a few hundred).
MAX_YAML_VALUES = 100_000


def _safe_yaml(text: str, name: str) -> Any:
    """``yaml.safe_load``, but a file whose aliases expand past :data:`MAX_YAML_VALUES` values (an alias
    "billion laughs": 1.5 KB that expands to 9**9 strings) is refused before anything walks it."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded = _expanded_size(node, {})
        if expanded > MAX_YAML_VALUES:
            raise ConfigError(
                "",
                f"{name}: its YAML aliases (*name) expand to more than {MAX_YAML_VALUES:,} values "
                f"({expanded:,}); refused as an alias bomb",
                fix="write the repeated blocks out, or use far fewer nested aliases",
                code=12,
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """The number of values ``node`` stands for once every alias is copied out (linear in the file's size)."""
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = 1  # a recursive alias counts once
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = size
    return size


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "", f"configuration file {path} does not exist", fix="pass -c with an existing file", code=11
        ) from None
    except OSError as exc:
        raise ConfigError(
            "", f"cannot read {path}: {exc.strerror}", fix="check the file's permissions", code=11
        ) from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = _safe_yaml(text, path.name)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(
                "",
                f"{path.name}: unknown configuration type {suffix!r}",
                fix="name the file *.yaml, *.yml or *.json",
                code=11,
            )
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            "", f"{path.name} is not valid YAML{where}", fix="correct the YAML syntax there", code=11
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            "",
            f"{path.name} is not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            fix="correct the JSON syntax there (straight double quotes around every key and string)",
            code=11,
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            "", f"{path.name} must hold a mapping with 'inputs'", fix="see README, Configuration", code=11
        )
    return data


def build_config(raw: dict[str, Any], *, warnings: list[str], base_dir: Path | None = None) -> CollectorConfig:
    """Validate an already parsed configuration mapping (both seed shapes)."""
    data = dict(raw)
    overrides = data.pop("global_overrides", None)
    if overrides is not None:
        if not isinstance(overrides, dict):
            raise ConfigError("global_overrides", "must be a mapping", fix='use {"debug": false, ...}')
        data["globals"] = {**(data.get("globals") or {}), **overrides}
    data = _resolve_secrets(data, "", base_dir or Path())
    if "inputs" not in data or not isinstance(data["inputs"], dict) or not data["inputs"]:
        raise ConfigError("inputs", "is missing or empty", fix="add an 'inputs' block with 'qualys' or 'qualys_fim'")
    globals_block = data.get("globals") or {}
    if not isinstance(globals_block, dict):
        raise ConfigError("globals", "must be a mapping", fix="see README, Configuration")
    known = {"debug", "id", "name", "persistence", "outbox_max_bytes", "event_max_bytes", "metrics"}
    for key in list(globals_block):
        if key not in known:
            warnings.append(f"[WARNING] Illegal global setting has been ignored -> {key}: {globals_block[key]!r}")
            globals_block = {k: v for k, v in globals_block.items() if k != key}
    data["globals"] = globals_block
    data["inputs"] = {name: _input(name, block, warnings) for name, block in data["inputs"].items()}
    if not any(block.get("enabled", True) for block in data["inputs"].values()):
        warnings.append("Every input is disabled: nothing will be pulled")
    try:
        return CollectorConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, "") from None


def _input(name: str, block: Any, warnings: list[str]) -> dict[str, Any]:
    path = f"inputs.{name}"
    services_by_name = _INPUT_SERVICES.get(name)
    if services_by_name is None:
        raise ConfigError(path, "unknown input", fix="use 'qualys' (VM) or 'qualys_fim' (FIM)")
    if not isinstance(block, dict):
        raise ConfigError(path, "must be a mapping", fix="see README, Configuration")
    out: dict[str, Any] = {str(k): v for k, v in block.items()}
    services = out.get("services")
    if not isinstance(services, dict) or not services:
        raise ConfigError(
            f"{path}.services",
            "is missing or empty",
            fix=f"list at least one of: {', '.join(services_by_name)}",
        )
    parsed: dict[str, ServiceOptions] = {}
    for raw_name, options in services.items():
        service = str(raw_name)
        if service.endswith(":"):
            service = service.rstrip(":")
            warnings.append(
                f"{path}.services.{raw_name}: trailing ':' in the service name (copied from the documentation) "
                f"was read as '{service}'; write '{service}:' to silence this warning"
            )
        spath = f"{path}.services.{service}"
        model = services_by_name.get(service)
        if model is None:
            raise ConfigError(spath, "unknown service", fix=f"use one of: {', '.join(services_by_name)}")
        if service in parsed:
            raise ConfigError(spath, "is defined twice", fix="keep one block per service")
        options = dict(options or {})
        if "start_time_in_utc" in options:  # the FIM seed's spelling
            options.setdefault("start_time_utc", options.pop("start_time_in_utc"))
        if "start_time_utc" in options:
            options["start_time_utc"] = _start_time(options["start_time_utc"], f"{spath}.start_time_utc")
        warnings += model.config_warnings(options, spath)
        try:
            parsed[service] = model.model_validate(options)
        except ValidationError as exc:
            raise _config_error(exc, spath) from None
    out["services"] = parsed
    return out


def _start_time(value: Any, path: str) -> dt.datetime | None:
    """The seeds' InitVariablesError 2 (format) and 3 (future) for ``start_time_utc``."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        parsed = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        text = parsed.astimezone(dt.UTC).strftime(SEED_DATETIME_FORMAT)
    else:
        text = str(value)
        try:
            parsed = dt.datetime.strptime(text, SEED_DATETIME_FORMAT).replace(tzinfo=dt.UTC)
        except ValueError:
            raise ConfigError(
                path,
                f"start_time_utc value: {text} does not comply with required format: {SEED_DATETIME_FORMAT}",
                code=2,
                fix='write it like "2023-07-11T01:23:01Z" (UTC, seconds, trailing Z)',
            ) from None
    now = utcnow()
    if parsed > now:
        raise ConfigError(
            path,
            f"Invalid start_time_in_utc: {text}. Must be in the past (now is {now.strftime(SEED_DATETIME_FORMAT)}).",
            code=3,
            fix="enter a start_time_utc earlier than the current date",
        )
    return parsed


def _resolve_secrets(node: Any, path: str, base_dir: Path) -> Any:
    """Expand ``${VAR}`` in strings and ``<key>_file`` entries; register secret values for masking."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            key_path = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and key.endswith("_file") and is_secret_key(key[: -len("_file")]):
                target = key[: -len("_file")]
                if target in node:
                    raise ConfigError(key_path, f"both {target} and {key} are set", fix="keep only one of them")
                out[target] = _read_secret_file(value, key_path, base_dir)
                register_secret(out[target])
                continue
            resolved = _resolve_secrets(value, key_path, base_dir)
            if isinstance(key, str) and is_secret_key(key) and isinstance(resolved, str):
                register_secret(resolved)
            out[key] = resolved
        return out
    if isinstance(node, list):
        return [_resolve_secrets(item, f"{path}[{i}]", base_dir) for i, item in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(
                    path, f"environment variable {name} is not set", fix=f"export {name} before starting the collector"
                )
            return os.environ[name]

        return _ENV_REF.sub(replace, node)
    return node


def _read_secret_file(value: Any, path: str, base_dir: Path) -> str:
    file_path = Path(str(value))
    if not file_path.is_absolute():
        file_path = base_dir / file_path
    try:
        secret = file_path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(path, f"cannot read {file_path}: {exc.strerror}", fix="point it at a readable file") from None
    if not secret:
        raise ConfigError(path, f"{file_path} is empty", fix="write the secret into that file")
    return secret


def _config_error(exc: ValidationError, prefix: str) -> ConfigError:
    lines: list[str] = []
    code: int | None = None
    fix: str | None = None
    for error in exc.errors():
        parts = [str(part) for part in error["loc"] if not str(part).startswith("function-")]
        own = error.get("ctx", {}) if error["type"] == COLLECTOR_ERROR else {}
        loc = ".".join([*_drop_output_type(parts), *([str(own["key"])] if own.get("key") else [])])
        key_path = ".".join(part for part in (prefix, loc) if part)
        if own and not lines:  # a check of our own carries its number and fix (errors 13-15)
            code, fix = int(own["code"]), str(own["fix"])
        message = str(error["msg"]).removeprefix("Value error, ")
        value = error.get("input")
        shown = ""
        plain = isinstance(value, str | int | float | bool) or value is None
        secretive = any(is_secret_key(part) or part in ("credentials", "proxy") for part in key_path.split("."))
        if error["type"] not in ("missing", "extra_forbidden", COLLECTOR_ERROR) and not secretive and plain:
            shown = f" (got {value!r})"
        if error["type"] == "extra_forbidden":
            message = "unknown key; check its spelling and its place in the file (see README, Configuration)"
        elif error["type"] == "missing":
            message = "is required"
        lines.append(f"{key_path}: {message}{shown}")
    first, *rest = lines
    path, _, message = first.partition(": ")
    if rest:
        message = message + "\n  " + "\n  ".join(rest)
    return ConfigError(path, message, code=code, fix=fix)


def _drop_output_type(parts: list[str]) -> list[str]:
    """Pydantic names the union member after the output's name (``outputs.x.file.config``); drop it."""
    if len(parts) > 2 and parts[0] == "outputs" and parts[2] in output_type_names():
        return parts[:2] + parts[3:]
    return parts
