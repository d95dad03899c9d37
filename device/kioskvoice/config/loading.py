"""Reading the configuration from its layered sources, turning every problem into one
single-line :class:`~kioskvoice.errors.ConfigError`, and rendering it back as TOML."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import paths
from ..errors import ConfigError
from .settings import ENV_DELIMITER, ENV_PREFIX, Settings, secret_keys

DEFAULT_CONFIG_PATH = paths.CONFIG


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error: {path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config error: {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    except RecursionError:
        raise ConfigError(f"config error: {path}: invalid TOML: nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"config error: {path}: cannot read: {exc.strerror}") from None


def _read_credentials(directory: str | None) -> dict[str, dict[str, str]]:
    """Secrets from systemd's ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=realtime.api_key``)."""
    if not directory:
        return {}
    out: dict[str, dict[str, str]] = {}
    for section, key in secret_keys():
        path = Path(directory) / f"{section}.{key}"
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"config error: {section}.{key}: cannot read credential {path}: {exc}"
            ) from None
        if value:
            out.setdefault(section, {})[key] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: Mapping[str, Any], env: Mapping[str, str]) -> str:
    loc = [str(p) for p in error["loc"]]
    key = ".".join(loc) or "(top level)"
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
    secret = tuple(loc[:2]) in secret_keys()
    # Only a single value is echoed: a check over a whole section (or the whole file) gets
    # the section as its input, secrets included.
    value = error.get("input")
    if not secret and error["type"] != "extra_forbidden" and "input" in error and _scalar(value):
        shown = json.dumps(value, default=str)
        msg += f" (got {shown[:60]})"
    env_name = ENV_PREFIX + ENV_DELIMITER.join(p.upper() for p in loc)
    if env_name in {k.upper() for k in env}:
        msg += f" [from ${env_name}]"
    return f"{key}: {msg}" if loc else msg


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _check_env_names(env: Mapping[str, str]) -> None:
    # pydantic-settings ignores KIOSKVOICE_* names that match no section; a typo there must
    # not pass silently (unknown keys *inside* a section are caught by extra="forbid").
    for name in env:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX):
            continue
        parts = upper[len(ENV_PREFIX) :].split(ENV_DELIMITER)
        if len(parts) != 2 or parts[0].lower() not in Settings.model_fields:
            raise ConfigError(
                f"config error: ${name}: unknown setting "
                f"(expected {ENV_PREFIX}<SECTION>{ENV_DELIMITER}<KEY>, sections: "
                f"{', '.join(Settings.model_fields)})"
            )


def load_config(path: Path | str | None = None) -> Settings:
    """Load and validate the configuration.

    ``path`` None means the default path, which may be absent. ``KIOSKVOICE_*`` and
    ``CREDENTIALS_DIRECTORY`` are read from the process environment.
    Raises :class:`ConfigError` with a one-line message naming each offending key.
    """
    env = os.environ
    _check_env_names(env)
    explicit = path is not None
    path = Path(path) if explicit else DEFAULT_CONFIG_PATH
    data: dict[str, Any] = {}
    if explicit or path.exists():
        data = _read_toml(path)
    data = _merge(data, _read_credentials(env.get("CREDENTIALS_DIRECTORY")))
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e, env) for e in exc.errors())
        raise ConfigError(f"config error: {problems}") from None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    return json.dumps(str(value), ensure_ascii=False)


def render_toml(settings: Settings) -> str:
    """The effective configuration as TOML, secrets masked; unset keys shown as comments."""
    dumped = settings.model_dump(mode="json")
    lines: list[str] = []
    for section, values in dumped.items():
        tables = values if isinstance(values, list) else [values]
        for table in tables:
            lines.append(f"[[{section}]]" if isinstance(values, list) else f"[{section}]")
            for key, value in table.items():
                if value is None:
                    lines.append(f"# {key} = (unset)")
                else:
                    lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
    return "\n".join(lines)
