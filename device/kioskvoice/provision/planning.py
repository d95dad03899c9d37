"""Validation: the whole file is checked against the target's current state before anything
is written, and turned into the :class:`Plan` of what to apply."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config import Settings, secret_keys
from ..errors import ConfigError
from .config_file import _applied_text, _config_text
from .credentials import SecretPlan
from .network import NetworkSettings
from .problems import ApplyError, Problem, ProvisionError
from .redaction import MASK, WIFI_SECRET, Redactor, _secret_values
from .target import WIFI_KEYFILE, Paths, lookup_user
from .toml_writer import _deep_copy, dump_toml
from .wifi import read_keyfile_psk


class _FileSettings(Settings):
    """The kiosk settings from the given data alone: provisioning must not depend on the
    environment of the process that runs it."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, **_: Any) -> Any:
        return (init_settings,)


def _error_key(prefix: tuple[str, ...], loc: Sequence[Any], data: Any, missing: bool) -> str:
    # Follow the location through the data; pydantic's union branch tags ("int",
    # "list[...]") are not keys of the data, and the path ends there.
    path = list(prefix)
    node = data
    for i, part in enumerate(loc):
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_list or (isinstance(node, Mapping) and part in node):
            node = node[part]
        elif missing and i == len(loc) - 1 and isinstance(node, Mapping):
            pass
        else:
            break
        path.append(str(part))
    return ".".join(path) or "(file)"


def _problems(exc: ValidationError, data: Any, prefix: tuple[str, ...] = ()) -> list[Problem]:
    secrets = {".".join(k) for k in (*secret_keys(), WIFI_SECRET)}
    by_key: dict[str, list[str]] = {}
    for error in exc.errors():
        key = _error_key(prefix, error["loc"], data, error["type"] == "missing")
        kind, msg = error["type"], error["msg"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required"
        msg = msg.removeprefix("Value error, ")
        value = error.get("input")
        # Echo numbers and booleans only: a string might be a secret typed in the wrong place.
        if (
            key not in secrets
            and kind != "extra_forbidden"
            and isinstance(value, int | float | bool)
            and not isinstance(value, str)
        ):
            msg += f" (got {json.dumps(value)})"
        if msg not in by_key.setdefault(key, []):
            by_key[key].append(msg)
    return [Problem(key, "; ".join(msgs)) for key, msgs in by_key.items()]


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a valid provisioning file asks for, computed before anything is written."""

    settings: Settings
    network: NetworkSettings
    config_text: str
    applied_text: str
    secrets: tuple[SecretPlan, ...]
    wifi_psk: str | None = field(default=None, repr=False)
    redact: Redactor = field(default_factory=lambda: Redactor(()), repr=False)


def read_file(path: Path) -> tuple[str, dict[str, Any]]:
    """The provisioning file's text and TOML data (a UTF-8 byte-order mark, as Notepad may
    write, is fine). :class:`ProvisionError` if it is not UTF-8 TOML."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ProvisionError(path, [Problem("(file)", "not UTF-8 text")]) from None
    except OSError as exc:
        raise ApplyError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError(path, [Problem("(file)", f"invalid TOML: {exc}")]) from None
    except RecursionError:
        raise ProvisionError(path, [Problem("(file)", "invalid TOML: nested too deeply")]) from None


def plan(data: Mapping[str, Any], paths: Paths, text: str | None = None) -> Plan:
    """Validate the whole file against the target's current state and compute what to apply.

    ``text`` is the file as written (its comments are kept in the ``.applied`` copy). Reads
    only (stored credentials, the Wi-Fi keyfile, ``/etc/passwd``). Raises
    :class:`ProvisionError` listing every problem.
    """
    if text is None:
        text = dump_toml(data)
    redact = Redactor(_secret_values(data))
    problems: list[Problem] = []
    kiosk = {k: v for k, v in data.items() if k != "network"}
    raw_network = data.get("network", {})

    # Secrets: "" keeps the stored value (validated as a placeholder), absent removes it.
    secrets: list[SecretPlan] = []
    effective = _deep_copy(kiosk)
    for section, key in secret_keys():
        name = f"{section}.{key}"
        table = effective.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if value is None:
            secrets.append(SecretPlan(name, "remove"))
        elif isinstance(value, str) and value.strip() == "":
            if paths.stored(name) is not None:
                secrets.append(SecretPlan(name, "keep"))
                table[key] = MASK
            else:
                secrets.append(SecretPlan(name, "remove"))
                del table[key]
        elif isinstance(value, str):
            secrets.append(SecretPlan(name, "store", value.strip()))
    settings: Settings | None = None
    try:
        settings = _FileSettings(**effective)
    except ValidationError as exc:
        problems += _problems(exc, effective)
    if settings is not None:
        from ..realtime.credentials import credentials_from

        try:
            credentials_from(settings.realtime, {})
        except ConfigError as exc:
            key, _, msg = str(exc).removeprefix("config error: ").partition(": ")
            problems.append(Problem(key, msg.split(" (")[0]))

    network: NetworkSettings | None = None
    if not isinstance(raw_network, Mapping):
        problems.append(Problem("network", "must be a table ([network])"))
    else:
        try:
            network = NetworkSettings(**raw_network)
        except ValidationError as exc:
            problems += _problems(exc, raw_network, ("network",))
    wifi_psk: str | None = None
    if network is not None:
        wifi_psk, more = _check_network(network, raw_network, paths)
        problems += more

    if problems or settings is None or network is None:
        raise ProvisionError(paths.source, problems)
    return Plan(
        settings=settings,
        network=network,
        config_text=_config_text(kiosk, paths),
        applied_text=_applied_text(text, data),
        secrets=tuple(secrets),
        wifi_psk=wifi_psk,
        redact=redact,
    )


def _check_network(
    net: NetworkSettings, raw: Mapping[str, Any], paths: Paths
) -> tuple[str | None, list[Problem]]:
    """Cross-key and target-state checks; the Wi-Fi PSK to write (None: open network)."""
    problems = []
    secret = net.wifi_passphrase
    psk = secret.get_secret_value() if secret is not None else None
    if net.wifi_ssid is None:
        for key in ("wifi_passphrase", "wifi_country", "wifi_hidden"):
            if key in raw:
                problems.append(Problem(f"network.{key}", "needs network.wifi_ssid"))
    else:
        if net.wifi_country is None:
            problems.append(Problem("network.wifi_country", "required with wifi_ssid"))
        if psk == "":
            psk = read_keyfile_psk(paths.at(WIFI_KEYFILE))
            if psk is None:
                problems.append(
                    Problem("network.wifi_passphrase", '"" keeps the stored one, but none is')
                )
    if net.ssh_authorized_keys is not None and lookup_user(paths.root, net.ssh_user) is None:
        problems.append(Problem("network.ssh_user", f"no user {net.ssh_user} on this system"))
    return psk, problems
