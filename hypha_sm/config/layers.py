"""Layered settings with pydantic-settings, and validation errors people can act on.

Layers, lowest to highest: the TOML file, ``HYPHA_*`` environment variables, then command-line
flags. Nested tables merge key by key; arrays replace. Environment names map to keys by
lower-casing after the prefix, with ``__`` for nesting (``HYPHA_RESOURCES__GPU=24``); complex
values are JSON (``HYPHA_GATEWAY_ADDRESSES='["tcp://…"]'``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from hypha_sm.wire.bounds import MAX_JSON_DEPTH, json_problem, toml_problem

S = TypeVar("S", bound="LayeredSettings")


class ConfigError(Exception):
    """The configuration is invalid; the message names each key, its value and what is allowed."""


class LayeredSettings(BaseSettings):
    """Base of every settings class: TOML, then env, then flags (passed as init values)."""

    model_config = SettingsConfigDict(
        env_prefix="HYPHA_",
        env_nested_delimiter="__",
        extra="forbid",
        nested_model_default_partial_update=True,
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="least severe log lines written (any case: debug, info, ...)"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text: one readable line per record; json: one JSON object per line"
    )

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        return (
            value.upper()
            if value.lower() in ("debug", "info", "warning", "error")
            else value.lower()
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("toml_file"):
            sources.append(_FileRelativeToml(settings_cls, deep_merge=True))
        return tuple(sources)


class _FileRelativeToml(TomlConfigSettingsSource):
    """The TOML file's values, its relative paths taken relative to the file (not the cwd).

    ``hypha-sm run conf/worker.toml`` from anywhere finds ``node_key = "worker-key.pem"`` next
    to the file. Paths from ``HYPHA_*`` variables and flags stay relative to the cwd.
    """

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        toml_file = self.settings_cls.model_config.get("toml_file")
        if isinstance(toml_file, (str, Path)):
            _resolve_paths(self.settings_cls, data, Path(toml_file).absolute().parent)
        return data


def _is_path(annotation: Any) -> bool:
    return annotation is Path or any(_is_path(a) for a in get_args(annotation))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _resolve_paths(model: type[BaseModel], data: dict[str, Any], base: Path) -> None:
    """Make the relative paths in ``data`` (this model's fields, and nested ones) absolute."""
    for name, info in model.model_fields.items():
        key = info.alias if info.alias and info.alias in data else name
        if key not in data:
            continue
        value = data[key]
        if _is_path(info.annotation):
            if isinstance(value, str) and value and not Path(value).is_absolute():
                data[key] = str(base / value)
            elif isinstance(value, list):
                data[key] = [
                    str(base / v) if isinstance(v, str) and v and not Path(v).is_absolute() else v
                    for v in value
                ]
        elif isinstance(value, dict) and (sub := _model_of(info.annotation)) is not None:
            _resolve_paths(sub, value, base)


#: The command-line flag that sets a key, where it is not ``--`` and the key with dashes.
FLAG_NAMES = {
    "gateway_addresses": "--gateway",
    "listen_addresses": "--listen",
    "external_addresses": "--external",
}


def load_settings(
    cls: type[S],
    path: Path | None,
    flags: Mapping[str, Any],
    sources: Mapping[str, str] | None = None,
) -> S:
    """Load ``cls`` from the TOML file at ``path`` (if any), the environment and ``flags``.

    ``sources`` names where a flag's value came from when it was not a command-line flag
    (e.g. ``{"telemetry_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT"}``): an error names it.

    Raises:
        ConfigError: the file is missing or not TOML, or a value is invalid; fix the named key
            where the error says it was set (the file, a HYPHA_* variable, a flag).
    """
    given = {k: v for k, v in flags.items() if v is not None}
    labels = {k: FLAG_NAMES.get(k, "--" + k.replace("_", "-")) for k in given}
    labels.update({k: v for k, v in (sources or {}).items() if k in given})
    bound: type[S] = cls
    for name, value in os.environ.items():
        # pydantic-settings decodes complex values as JSON, which recurses per level.
        if name.startswith("HYPHA_") and json_problem(value) is not None:
            raise ConfigError(f"{name}: nested deeper than {MAX_JSON_DEPTH} levels")
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read it: {exc}") from None
        if toml_problem(text) is not None:
            raise ConfigError(
                f"{path}: arrays or tables nested deeper than {MAX_JSON_DEPTH} levels"
            )
        try:
            tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        # A subclass bound to this file: no shared state between loads.
        config = SettingsConfigDict(**{**cls.model_config, "toml_file": path})
        bound = type(cls.__name__, (cls,), {"model_config": config, "__module__": cls.__module__})
    try:
        return bound(**given)
    except ValidationError as exc:
        raise ConfigError(describe(exc, path, labels)) from None
    except SettingsError as exc:
        # A HYPHA_* value for a list or table that is not JSON: name the variable, not a trace.
        field = str(exc).split('field "', 1)[-1].split('"', 1)[0]
        variable = f"HYPHA_{field.upper()}"
        raise ConfigError(
            f"{variable}: not JSON for {field} (a list or table), e.g. "
            f"{variable}='[\"tcp://host:7000\"]'"
        ) from None


def describe(
    exc: ValidationError,
    path: Path | None,
    labels: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """One line per problem: ``source: key = value: what is allowed``.

    The source is where the value was set: a flag or variable in ``labels`` (by top-level
    key), else a HYPHA_* variable that is set for the key, else the file.
    """
    lines = []
    for error in exc.errors():
        source = _source(
            error["loc"], path, labels or {}, os.environ if environ is None else environ
        )
        where = f"{source}: " if source else ""
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "missing":
            lines.append(f"{where}{key}: missing (required)")
        elif error["type"] == "extra_forbidden":
            lines.append(f"{where}{key}: unknown key (check the spelling)")
        else:
            lines.append(f"{where}{key} = {error.get('input')!r}: {error['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _source(
    loc: tuple[int | str, ...],
    path: Path | None,
    labels: Mapping[str, str],
    environ: Mapping[str, str],
) -> str:
    if loc and loc[0] in labels:
        return labels[str(loc[0])]
    names: list[str] = []
    for part in loc:  # HYPHA_A__B names the key a.b; a list index ends the name
        if not isinstance(part, str):
            break
        names.append(part.upper())
    for n in range(len(names), 0, -1):
        variable = "HYPHA_" + "__".join(names[:n])
        if variable in environ:
            return variable
    return str(path) if path else ""


def check_tls_files(settings: object, addresses: Iterable[str]) -> None:
    """Refuse ``tls+tcp://`` addresses without all of ``cert_pem``, ``key_pem`` and ``trust_pem``.

    Raises:
        ValueError: naming the missing settings (pydantic reports it against the file).
    """
    if any(address.startswith("tls+tcp://") for address in addresses):
        missing = [n for n in ("cert_pem", "key_pem", "trust_pem") if getattr(settings, n) is None]
        if missing:
            raise ValueError(f"tls+tcp:// addresses need {', '.join(missing)}")
