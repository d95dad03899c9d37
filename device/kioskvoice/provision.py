"""``kioskvoice provision``: first-boot import of the configuration an installer drops on the
boot partition (``/boot/firmware/kioskvoice.toml``), run by ``kioskvoice-provision.service``.

The file has the format of ``/etc/kioskvoice/kioskvoice.toml`` plus an optional ``[network]``
section (Wi-Fi, hostname, SSH keys; :class:`NetworkSettings`). Contract:

- The **whole** file is validated first, against the target root's current state. If anything
  is wrong nothing is applied: ``kioskvoice-status.txt`` on the boot partition names every bad
  key, ``/run/kioskvoice-provision.failed`` tells the kiosk to show its error pattern, and the
  exit code is 78.
- Otherwise it writes ``/etc/kioskvoice/kioskvoice.toml`` (0640 root:kioskvoice, no secrets),
  moves the secrets off the FAT partition (``realtime.api_key`` and ``realtime.device_token``
  into systemd's credential store, encrypted with the host key when ``systemd-creds`` can, else
  plain 0600; the Wi-Fi passphrase into a NetworkManager keyfile, 0600), sets the hostname and
  the admin user's ``authorized_keys``, rewrites the boot copy with secrets blanked as
  ``kioskvoice.toml.applied``, and writes the status file.
- In the ``.applied`` copy a secret reads ``""``: dropping that file back (renamed
  ``kioskvoice.toml``) keeps the stored secret. A secret key left out removes it. ``[network]``
  keys left out leave that part of the system as it is.
- No secret is ever printed, logged or written anywhere but its store: every text this module
  emits passes through a redactor that knows the file's secret values.

``--boot`` and ``--root`` re-root every path, so tests run against temporary trees; live side
effects (the running hostname, ``systemctl daemon-reload``, ``iw reg set``) happen only when
``--root`` is the real ``/`` of a booted systemd, never in a chroot.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator

from .config import Settings, secret_keys
from .errors import ConfigError, KioskError

EX_OK = 0
EX_FAILURE = 1
EX_CONFIG = 78

BOOT_DIR = Path("/boot/firmware")
SOURCE_NAME = "kioskvoice.toml"
APPLIED_NAME = "kioskvoice.toml.applied"
STATUS_NAME = "kioskvoice-status.txt"

# Paths below the target root (relative, so that --root can move them).
CONFIG_FILE = Path("etc/kioskvoice/kioskvoice.toml")
CREDSTORE = Path("etc/credstore")
CREDSTORE_ENCRYPTED = Path("etc/credstore.encrypted")
CREDENTIALS_DROPIN = Path("etc/systemd/system/kioskvoice.service.d/50-provision-credentials.conf")
WIFI_KEYFILE = Path("etc/NetworkManager/system-connections/kioskvoice-wifi.nmconnection")
REGDOM_CONF = Path("etc/modprobe.d/cfg80211_regdomain.conf")
HOSTNAME_FILE = Path("etc/hostname")
HOSTS_FILE = Path("etc/hosts")
HOST_KEY = Path("var/lib/systemd/credential.secret")
FAILED_MARKER = Path("run/kioskvoice-provision.failed")
SERVICE_GROUP = "kioskvoice"
WIFI_SECRET = ("network", "wifi_passphrase")
MASK = "********"
# A fixed connection UUID: re-provisioning replaces the same NetworkManager connection.
WIFI_UUID = uuid.uuid5(uuid.NAMESPACE_URL, "https://kioskvoice/provision/wifi")

_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_HEX_PSK = re.compile(r"[0-9a-fA-F]{64}")
_SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class ProvisionError(ConfigError):
    """The provisioning file is invalid; ``problems`` names every bad key (exit 78)."""

    def __init__(self, path: Path, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{path}: {count}: " + "; ".join(str(p) for p in problems))


class ApplyError(KioskError, OSError):
    """Applying a valid file failed part way (I/O, ``systemd-creds``); exit 1, retried at the
    next boot because the file stays in place."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One bad key: ``key`` is dotted (``audio.frame_ms``, ``network.ssh_authorized_keys.1``)
    or ``(file)``; ``message`` never contains a secret."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class NetworkSettings(BaseModel):
    """The ``[network]`` section: one-time system setup, only in the provisioning file."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    hostname: str | None = None
    """The kiosk's host name (letters, digits, hyphens; at most 63)."""
    wifi_ssid: str | None = None
    """Name of the Wi-Fi network to join (1 to 32 bytes)."""
    wifi_passphrase: SecretStr | None = None
    """WPA2 passphrase: 8 to 63 printable ASCII characters or 64 hex digits. Leave it out for
    an open network; ``""`` keeps the passphrase stored on the kiosk."""
    wifi_country: str | None = None
    """ISO 3166-1 country code (``GB``, ``DE``, ``US``): which radio channels are legal."""
    wifi_hidden: bool = False
    """True when the network does not broadcast its name."""
    ssh_user: str = "admin"
    """The account whose ``authorized_keys`` is written (the image's admin user)."""
    ssh_authorized_keys: list[str] | None = None
    """OpenSSH public keys allowed to log in as ``ssh_user``; replaces the current list."""

    @field_validator("hostname")
    @classmethod
    def _check_hostname(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.lower()
        if not _HOSTNAME.fullmatch(name):
            raise ValueError(
                "must be 1 to 63 letters, digits or hyphens, not starting or ending with a hyphen"
            )
        return name

    @field_validator("wifi_ssid")
    @classmethod
    def _check_ssid(cls, value: str | None) -> str | None:
        if value is not None and not 1 <= len(value.encode()) <= 32:
            raise ValueError("must be 1 to 32 bytes long")
        return value

    @field_validator("wifi_passphrase")
    @classmethod
    def _check_passphrase(cls, value: SecretStr | None) -> SecretStr | None:
        # Messages name the rule, never the value.
        if value is None:
            return None
        text = value.get_secret_value()
        if text == "" or _HEX_PSK.fullmatch(text):
            return value
        if not 8 <= len(text) <= 63:
            raise ValueError("must be 8 to 63 characters (or 64 hex digits)")
        if not all(" " <= ch <= "~" for ch in text):
            raise ValueError("must be printable ASCII characters only")
        return value

    @field_validator("wifi_country")
    @classmethod
    def _check_country(cls, value: str | None) -> str | None:
        if value is None:
            return None
        code = value.upper()
        if not _COUNTRY.fullmatch(code):
            raise ValueError("must be a two-letter ISO 3166-1 country code such as GB or US")
        return code

    @field_validator("ssh_user")
    @classmethod
    def _check_user(cls, value: str) -> str:
        if not _USER.fullmatch(value):
            raise ValueError("must be a user name (lower-case letters, digits, _ and -)")
        return value

    @field_validator("ssh_authorized_keys")
    @classmethod
    def _check_keys(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        bad = [str(i) for i, key in enumerate(value) if not is_ssh_public_key(key)]
        if bad:
            raise ValueError(
                f"entries {', '.join(bad)} (counting from 0) are not OpenSSH public keys "
                "(type, base64 key, optional comment: the line of an id_*.pub file)"
            )
        return [key.strip() for key in value]


def is_ssh_public_key(line: str) -> bool:
    """Whether ``line`` is one OpenSSH public key line (``TYPE BASE64 [COMMENT]``, no options)
    whose encoded blob names the same key type."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in _SSH_KEY_TYPES or "\n" in line.strip():
        return False
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(blob) < 4:
        return False
    length = int.from_bytes(blob[:4], "big")
    return blob[4 : 4 + length] == parts[0].encode()


# --- paths and the target system --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Paths:
    """Where things are: ``boot`` is the FAT partition, ``root`` the system to configure."""

    boot: Path = BOOT_DIR
    root: Path = Path("/")

    @property
    def source(self) -> Path:
        return self.boot / SOURCE_NAME

    @property
    def applied(self) -> Path:
        return self.boot / APPLIED_NAME

    @property
    def status(self) -> Path:
        return self.boot / STATUS_NAME

    def at(self, relative: Path) -> Path:
        """``relative`` below the target root."""
        return self.root / relative

    def credential(self, name: str, encrypted: bool) -> Path:
        return self.at(CREDSTORE_ENCRYPTED if encrypted else CREDSTORE) / name

    def stored(self, name: str) -> Path | None:
        """The file that holds credential ``name`` now (encrypted first), or None."""
        for encrypted in (True, False):
            path = self.credential(name, encrypted)
            with contextlib.suppress(OSError):
                if path.stat().st_size > 0:
                    return path
        return None


def _table(path: Path) -> dict[str, list[str]]:
    """``/etc/passwd`` or ``/etc/group`` of the target root, by name; empty when missing."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    return {row[0]: row for row in (line.split(":") for line in lines) if len(row) >= 4}


def lookup_group(root: Path, name: str) -> int | None:
    """The gid of group ``name`` in the target root's ``/etc/group``."""
    row = _table(root / "etc/group").get(name)
    return int(row[2]) if row and row[2].isdigit() else None


def lookup_user(root: Path, name: str) -> tuple[int, int, Path] | None:
    """``(uid, gid, home)`` of user ``name`` in the target root's ``/etc/passwd``."""
    row = _table(root / "etc/passwd").get(name)
    if not row or len(row) < 6 or not row[2].isdigit() or not row[3].isdigit():
        return None
    return int(row[2]), int(row[3]), Path(row[5])


def is_live(root: Path) -> bool:
    """Whether ``root`` is the real root of a system booted with systemd (not a chroot, not a
    temporary tree): only then are running-system side effects allowed."""
    try:
        if root.resolve() != Path("/") or not Path("/run/systemd/system").is_dir():
            return False
        here, init = os.stat("/"), os.stat("/proc/1/root")
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (init.st_dev, init.st_ino)


# --- the credential store ---------------------------------------------------------------------


class CredentialStore(Protocol):
    """Turns a secret into the bytes of its credential file."""

    encrypted: bool
    note: str

    def seal(self, name: str, value: str) -> bytes:
        """The credential file's content for ``value`` under credential id ``name``."""
        ...


class PlainStore:
    """``/etc/credstore/<name>``, mode 0600, readable by root only (``LoadCredential=``)."""

    encrypted = False

    def __init__(self, note: str = "plain, root only") -> None:
        self.note = note

    def seal(self, name: str, value: str) -> bytes:
        return value.encode()


class SystemdCredsStore:
    """``systemd-creds encrypt --with-key=host`` into ``/etc/credstore.encrypted/<name>``
    (``LoadCredentialEncrypted=``). The host key of a non-``/`` root is that root's own
    ``/var/lib/systemd/credential.secret`` (``$SYSTEMD_CREDENTIAL_SECRET``)."""

    encrypted = True
    note = "encrypted with the host key"

    def __init__(self, executable: str, env: Mapping[str, str]) -> None:
        self._exe = executable
        self._env = dict(env)

    @classmethod
    def open(cls, root: Path) -> SystemdCredsStore:
        """Set up the host key if needed; :class:`ApplyError` if that cannot be done."""
        exe = shutil.which("systemd-creds")
        if exe is None:
            raise ApplyError("systemd-creds is not installed")
        env = dict(os.environ)
        env.pop("SYSTEMD_CREDENTIAL_SECRET", None)
        if root.resolve() != Path("/"):
            key = root / HOST_KEY
            key.parent.mkdir(parents=True, exist_ok=True)
            env["SYSTEMD_CREDENTIAL_SECRET"] = str(key)
        store = cls(exe, env)
        store._run(["setup"], b"")
        return store

    def _run(self, args: list[str], data: bytes) -> bytes:
        try:
            done = subprocess.run(
                [self._exe, *args], input=data, capture_output=True, env=self._env, timeout=120
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ApplyError(f"systemd-creds {args[0]}: {exc}") from None
        if done.returncode != 0:
            # The secret goes in on stdin, so stderr cannot hold it.
            why = done.stderr.decode(errors="replace").strip().splitlines()
            raise ApplyError(f"systemd-creds {args[0]} failed: {why[-1] if why else 'no output'}")
        return done.stdout

    def seal(self, name: str, value: str) -> bytes:
        return self._run(["encrypt", "--with-key=host", f"--name={name}", "-", "-"], value.encode())


def open_store(root: Path) -> CredentialStore:
    """The encrypted store when ``systemd-creds`` works here, else the plain one."""
    try:
        return SystemdCredsStore.open(root)
    except ApplyError as exc:
        return PlainStore(f"plain, root only ({exc})")


# --- validation -------------------------------------------------------------------------------


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


def _secret_values(data: Mapping[str, Any]) -> list[str]:
    """Every secret string in the file, wherever validation will find it valid or not."""
    out = []
    for section, key in (*secret_keys(), WIFI_SECRET):
        table = data.get(section)
        value = table.get(key) if isinstance(table, Mapping) else None
        if isinstance(value, str) and value:
            out.append(value)
    return out


class Redactor:
    """Replaces every known secret value with ``********`` in any text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so that a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


@dataclass(frozen=True, slots=True)
class SecretPlan:
    """What happens to one credential: ``store`` a new value, ``keep`` or ``remove`` it."""

    name: str
    action: str
    value: str = field(default="", repr=False)


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
        from .realtime.credentials import credentials_from

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


# --- rendering --------------------------------------------------------------------------------


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # JSON's escapes are TOML's; DEL is the one control character JSON leaves alone.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def dump_toml(data: Mapping[str, Any], _prefix: tuple[str, ...] = ()) -> str:
    """``data`` (as ``tomllib`` returns it) as a TOML document: plain keys first, then tables
    and arrays of tables. ``tomllib.loads(dump_toml(d)) == d``."""
    lines: list[str] = []
    nested = []
    for key, value in data.items():
        if isinstance(value, Mapping) or _is_table_array(value):
            nested.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in nested:
        path = (*_prefix, key)
        header = ".".join(_toml_key(p) for p in path)
        for item in [value] if isinstance(value, Mapping) else value:
            body = dump_toml(item, path).strip("\n")
            lines += ["", f"[{header}]" if item is value else f"[[{header}]]"]
            lines += [body] if body else []
    return "\n".join(lines).strip("\n") + "\n"


def _without_secrets(data: Mapping[str, Any], blank: bool) -> dict[str, Any]:
    """A copy with every secret value blanked (``""``) or removed."""
    out = _deep_copy(data)
    for section, key in (*secret_keys(), WIFI_SECRET):
        table = out.get(section)
        if isinstance(table, dict) and key in table:
            if blank:
                table[key] = ""
            else:
                del table[key]
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _config_text(kiosk: Mapping[str, Any], paths: Paths) -> str:
    header = (
        f"# Written by kioskvoice provision from {paths.source}.\n"
        "# Secrets are not here: they are systemd credentials (/etc/credstore*).\n"
        "# To change this kiosk, edit kioskvoice.toml.applied on the boot partition, rename it\n"
        "# kioskvoice.toml and restart; edits made here are replaced by the next provisioning.\n"
    )
    body = dump_toml(_without_secrets(kiosk, blank=False))
    return header + ("\n" + body if body.strip() else "")


_TABLE_LINE = re.compile(r"\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(#.*)?")
_STRING_VALUE = r"""(\s*=\s*)("(?:[^"\\]|\\.)*"|'[^']*')"""


def blank_secrets(text: str) -> str | None:
    """``text`` with every secret's value replaced by ``""``, comments and layout kept; None
    when the file writes a secret in a form this line editor does not handle (dotted keys,
    inline tables, multi-line strings)."""
    secret_keys_by_table: dict[str, set[str]] = {}
    for section, key in (*secret_keys(), WIFI_SECRET):
        secret_keys_by_table.setdefault(section, set()).add(key)
    out, table = [], ""
    for line in text.splitlines(keepends=True):
        header = _TABLE_LINE.fullmatch(line.rstrip("\r\n"))
        if header:
            table = header.group(1)
        for key in secret_keys_by_table.get(table, ()):
            line = re.sub(rf"^(\s*{key}){_STRING_VALUE}", r'\1\2""', line)
        out.append(line)
    return "".join(out)


def _applied_text(text: str, data: Mapping[str, Any]) -> str:
    """The boot copy to keep: the installer's own text with secrets blanked when that can be
    verified, else the data re-rendered."""
    header = (
        "# Applied by kioskvoice provision (see kioskvoice-status.txt). Secrets were moved off\n"
        '# this card and read "" here: left "" they keep the stored value, a new value\n'
        "# replaces it, a removed line deletes it. To change the kiosk, edit this file, rename\n"
        "# it kioskvoice.toml and restart the kiosk.\n\n"
    )
    expected = _without_secrets(data, blank=True)
    # A re-provisioned .applied copy carries the header already.
    edited = blank_secrets(text.removeprefix(header))
    with contextlib.suppress(tomllib.TOMLDecodeError):
        if edited is not None and tomllib.loads(edited) == expected:
            return header + edited
    return header + dump_toml(expected)


# --- NetworkManager keyfile -------------------------------------------------------------------


def _keyfile_escape(text: str) -> str:
    # GKeyFile string escapes; spaces at either end would otherwise be trimmed.
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    stripped = out.strip(" ")
    lead = len(out) - len(out.lstrip(" "))
    trail = len(out) - len(out.rstrip(" "))
    return "\\s" * lead + stripped + "\\s" * trail if stripped else "\\s" * len(out)


def _keyfile_unescape(text: str) -> str:
    table = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    return re.sub(r"\\(.)", lambda m: table.get(m.group(1), m.group(1)), text)


def _keyfile_ssid(ssid: str) -> str:
    raw = ssid.encode()
    plain = all(0x20 <= b < 0x7F for b in raw) and not any(c in ssid for c in ";\\")
    if plain and ssid == ssid.strip(" "):
        return ssid
    # The byte-list form takes any SSID (spaces, ';', non-ASCII) without escaping rules.
    return "".join(f"{b};" for b in raw)


def wifi_keyfile(ssid: str, psk: str | None, hidden: bool) -> str:
    """A NetworkManager keyfile for a WPA2-PSK (or open) network that autoconnects forever."""
    lines = [
        "# Written by kioskvoice provision ([network] in /boot/firmware/kioskvoice.toml).",
        "[connection]",
        "id=kioskvoice-wifi",
        f"uuid={WIFI_UUID}",
        "type=wifi",
        "autoconnect=true",
        # 0: retry forever (NetworkManager's default gives up after 4 failures).
        "autoconnect-retries=0",
        "",
        "[wifi]",
        "mode=infrastructure",
        f"ssid={_keyfile_ssid(ssid)}",
    ]
    if hidden:
        lines.append("hidden=true")
    if psk is not None:
        lines += ["", "[wifi-security]", "key-mgmt=wpa-psk", f"psk={_keyfile_escape(psk)}"]
    lines += ["", "[ipv4]", "method=auto", "", "[ipv6]", "addr-gen-mode=default", "method=auto"]
    return "\n".join(lines) + "\n"


def read_keyfile_psk(path: Path) -> str | None:
    """The PSK in an existing keyfile's ``[wifi-security]`` section, or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    section = ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section == "[wifi-security]" and line.startswith("psk="):
            return _keyfile_unescape(line[4:])
    return None


# --- writing ----------------------------------------------------------------------------------


def _chown(fd_or_path: int | Path, uid: int, gid: int) -> None:
    if os.geteuid() != 0:  # an unprivileged test run: ownership stays the caller's
        return
    if isinstance(fd_or_path, int):
        os.fchown(fd_or_path, uid, gid)
    else:
        os.chown(fd_or_path, uid, gid)


def _mkdir(path: Path, mode: int, uid: int = 0, gid: int = 0) -> None:
    """Create ``path`` (and missing parents, 0755 root) with ``mode`` and owner if missing."""
    if path.is_dir():
        return
    _mkdir(path.parent, 0o755)
    path.mkdir(mode=mode)
    os.chmod(path, mode)
    _chown(path, uid, gid)


def write_file(
    path: Path, data: bytes, mode: int | None = 0o644, owner: tuple[int, int] | None = (0, 0)
) -> None:
    """Atomically replace ``path``: written to a temporary file that has its final mode and
    owner before the first byte, fsynced, renamed over. ``mode``/``owner`` None (FAT) keep
    what the file system gives."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode or 0o644)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        if owner is not None:
            _chown(fd, *owner)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _shred(path: Path) -> None:
    """Overwrite ``path`` in place with zeros, then remove it. On FAT the same clusters are
    rewritten; the SD card's wear levelling may still keep old blocks (see image/README.md)."""
    with contextlib.suppress(OSError):
        size = path.stat().st_size
        with path.open("r+b") as fh:
            fh.write(b"\0" * size)
            fh.flush()
            os.fsync(fh.fileno())
    path.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _dropin(paths: Paths, store: CredentialStore) -> str:
    lines = [
        "# Written by kioskvoice provision: where this kiosk's secrets are.",
        "[Service]",
        "LoadCredential=",
    ]
    for section, key in secret_keys():
        name = f"{section}.{key}"
        where = paths.stored(name)
        encrypted = store.encrypted if where is None else where.parent.name == "credstore.encrypted"
        directive = "LoadCredentialEncrypted" if encrypted else "LoadCredential"
        source = Path("/") / (CREDSTORE_ENCRYPTED if encrypted else CREDSTORE) / name
        lines.append(f"{directive}={name}:{source}")
    return "\n".join(lines) + "\n"


def apply(the_plan: Plan, paths: Paths, store: CredentialStore) -> list[str]:
    """Write everything ``the_plan`` asks for; the status lines (no secrets).

    Secrets are sealed before the first write, so a failing ``systemd-creds`` changes nothing.
    Raises :class:`ApplyError` on failure; the boot file then stays for the next boot.
    """
    sealed: dict[str, bytes] = {}
    for secret in the_plan.secrets:
        if secret.action == "store":
            sealed[secret.name] = store.seal(secret.name, secret.value)
    done: list[str] = []
    try:
        done += _apply_files(the_plan, paths, store, sealed)
    except OSError as exc:
        raise ApplyError(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None
    return done


def _apply_files(
    the_plan: Plan, paths: Paths, store: CredentialStore, sealed: Mapping[str, bytes]
) -> list[str]:
    done: list[str] = []
    root = paths.root
    gid = lookup_group(root, SERVICE_GROUP)
    config_dir = paths.at(CONFIG_FILE).parent
    _mkdir(config_dir, 0o750, 0, gid or 0)
    write_file(paths.at(CONFIG_FILE), the_plan.config_text.encode(), 0o640, (0, gid or 0))
    if gid is None:
        done.append(f"configuration: /{CONFIG_FILE} (0640 root:root: no group {SERVICE_GROUP})")
    else:
        done.append(f"configuration: /{CONFIG_FILE}")

    for secret in the_plan.secrets:
        plain, encrypted = paths.credential(secret.name, False), paths.credential(secret.name, True)
        if secret.action == "store":
            target, other = (encrypted, plain) if store.encrypted else (plain, encrypted)
            _mkdir(target.parent, 0o700)
            write_file(target, sealed[secret.name], 0o600, (0, 0))
            other.unlink(missing_ok=True)
            done.append(f"{secret.name}: stored in /{target.relative_to(root)} ({store.note})")
        elif secret.action == "keep":
            done.append(f"{secret.name}: kept (already stored)")
        else:
            removed = [p for p in (plain, encrypted) if p.exists()]
            for path in removed:
                path.unlink()
            done.append(f"{secret.name}: {'removed' if removed else 'not set'}")
    dropin = paths.at(CREDENTIALS_DROPIN)
    dropin_text = _dropin(paths, store).encode()
    old = dropin.read_bytes() if dropin.exists() else None
    if old != dropin_text:
        _mkdir(dropin.parent, 0o755)
        write_file(dropin, dropin_text)

    net = the_plan.network
    live = is_live(root)
    if net.wifi_ssid is not None:
        keyfile = paths.at(WIFI_KEYFILE)
        _mkdir(keyfile.parent, 0o700)
        text = wifi_keyfile(net.wifi_ssid, the_plan.wifi_psk, net.wifi_hidden)
        write_file(keyfile, text.encode(), 0o600, (0, 0))
        regdom = paths.at(REGDOM_CONF)
        _mkdir(regdom.parent, 0o755)
        write_file(regdom, f"options cfg80211 ieee80211_regdom={net.wifi_country}\n".encode())
        security = "WPA2 passphrase" if the_plan.wifi_psk is not None else "open network"
        done.append(
            f"wifi: {json.dumps(net.wifi_ssid, ensure_ascii=False)} ({security}, country "
            f"{net.wifi_country}) in /{WIFI_KEYFILE}"
        )
        if live and shutil.which("iw"):
            subprocess.run(["iw", "reg", "set", str(net.wifi_country)], check=False, timeout=10)
    if net.hostname is not None:
        write_file(paths.at(HOSTNAME_FILE), f"{net.hostname}\n".encode())
        write_file(paths.at(HOSTS_FILE), _hosts_text(paths.at(HOSTS_FILE), net.hostname).encode())
        if live:
            with contextlib.suppress(OSError):
                socket.sethostname(net.hostname)
        done.append(f"hostname: {net.hostname}")
    if net.ssh_authorized_keys is not None:
        user = lookup_user(root, net.ssh_user)
        assert user is not None  # checked by plan()
        uid, ugid, home = user
        ssh_dir = root / home.relative_to("/") / ".ssh"
        _mkdir(ssh_dir, 0o700, uid, ugid)
        keys = "".join(f"{key}\n" for key in net.ssh_authorized_keys)
        header = "# Written by kioskvoice provision ([network] ssh_authorized_keys).\n"
        write_file(ssh_dir / "authorized_keys", (header + keys).encode(), 0o600, (uid, ugid))
        done.append(f"ssh: {len(net.ssh_authorized_keys)} authorized keys for {net.ssh_user}")

    if live and old != dropin_text and shutil.which("systemctl"):
        # kioskvoice.service is still waiting for this unit: the reload makes it see the drop-in.
        subprocess.run(["systemctl", "daemon-reload"], check=False, timeout=60)
    paths.at(FAILED_MARKER).unlink(missing_ok=True)
    return done


def _hosts_text(path: Path, hostname: str) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = ["127.0.0.1\tlocalhost", "::1\t\tlocalhost ip6-localhost ip6-loopback"]
    entry = f"127.0.1.1\t{hostname}"
    replaced = [entry if line.split()[:1] == ["127.0.1.1"] else line for line in lines]
    if entry not in replaced:
        replaced.append(entry)
    return "\n".join(replaced) + "\n"


# --- the command ------------------------------------------------------------------------------


def provision(paths: Paths, store: CredentialStore | None = None) -> tuple[int, list[str]]:
    """Run the whole provisioning: ``(exit code, status lines)``; the status file, the boot
    copy and the failure marker are written here. ``store`` None picks the best available.

    Exit codes: 0 applied (or no file), 78 invalid file (nothing applied), 1 apply failure.
    """
    if not paths.source.exists():
        return EX_OK, [f"nothing to do: no {paths.source}"]
    redact = Redactor(())
    try:
        text, data = read_file(paths.source)
        redact = Redactor(_secret_values(data))
        the_plan = plan(data, paths, text)
    except ProvisionError as exc:
        lines = [
            f"kioskvoice provisioning: NOT applied. {paths.source.name} has "
            f"{len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}; "
            "nothing was changed.",
            *(f"  {p}" for p in exc.problems),
            f"Fix {paths.source.name} on the boot partition and restart the kiosk.",
        ]
        _write_status(paths, lines, redact)
        marker = paths.at(FAILED_MARKER)
        with contextlib.suppress(OSError):
            _mkdir(marker.parent, 0o755)
            write_file(marker, redact("\n".join(str(p) for p in exc.problems) + "\n").encode())
        raise
    if store is None:
        store = open_store(paths.root)
    try:
        done = apply(the_plan, paths, store)
        try:
            write_file(paths.applied, the_plan.applied_text.encode(), None, None)
        except OSError as exc:
            raise ApplyError(f"{paths.applied}: {exc.strerror or exc}") from None
    except ApplyError as exc:
        _write_status(
            paths,
            [
                f"kioskvoice provisioning: FAILED while applying: {exc}",
                f"{paths.source.name} was left in place and is tried again at the next boot.",
            ],
            redact,
        )
        raise
    _shred(paths.source)
    lines = [
        f"kioskvoice provisioning: applied {paths.source.name} (now {APPLIED_NAME}, "
        "secrets blanked)",
        *(f"  {line}" for line in done),
    ]
    _write_status(paths, lines, redact)
    return EX_OK, [redact(line) for line in lines]


def _write_status(paths: Paths, lines: Sequence[str], redact: Redactor) -> None:
    text = redact("\n".join(lines) + "\n")
    with contextlib.suppress(OSError):
        write_file(paths.status, text.encode(), None, None)


def check(paths: Paths) -> list[str]:
    """Validate only (``--check``): what would be applied; :class:`ProvisionError` if invalid.
    Writes nothing."""
    text, data = read_file(paths.source)
    the_plan = plan(data, paths, text)
    net = the_plan.network
    lines = [f"{paths.source}: valid"]
    lines += [f"  {s.name}: {s.action}" for s in the_plan.secrets]
    if net.wifi_ssid is not None:
        lines.append(f"  wifi: {json.dumps(net.wifi_ssid, ensure_ascii=False)}")
    if net.hostname is not None:
        lines.append(f"  hostname: {net.hostname}")
    if net.ssh_authorized_keys is not None:
        lines.append(f"  ssh: {len(net.ssh_authorized_keys)} keys for {net.ssh_user}")
    return [the_plan.redact(line) for line in lines]


def add_parser(subparsers: Any) -> None:
    """Register ``provision`` on the ``kioskvoice`` command's subparsers."""
    p = subparsers.add_parser(
        "provision",
        help="apply the boot partition's kioskvoice.toml (first boot, re-provisioning)",
        description="Validate /boot/firmware/kioskvoice.toml and apply it: the config, "
        "secrets into the credential store, Wi-Fi, hostname, SSH keys. Nothing is applied "
        "if anything is wrong (exit 78); kioskvoice-status.txt on the boot partition says why.",
    )
    p.add_argument(
        "--boot", type=Path, default=BOOT_DIR, metavar="DIR", help="boot partition (%(default)s)"
    )
    p.add_argument(
        "--root", type=Path, default=Path("/"), metavar="DIR", help="system root (%(default)s)"
    )
    p.add_argument(
        "--check", action="store_true", help="validate only, print what would be applied"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Provision (or ``--check``); exit 0, 78 (invalid file) or 1 (failed while applying).
    One line per outcome on stdout, one error line on stderr; never a secret."""
    paths = Paths(boot=args.boot, root=args.root)
    try:
        lines = check(paths) if args.check else provision(paths)[1]
    except ProvisionError as exc:
        redact = _redactor_for(paths)
        print(f"kioskvoice provision: {redact(str(exc))}", file=sys.stderr)
        return EX_CONFIG
    except ApplyError as exc:
        print(f"kioskvoice provision: {_redactor_for(paths)(str(exc))}", file=sys.stderr)
        return EX_FAILURE
    print("\n".join(lines))
    return EX_OK


def _redactor_for(paths: Paths) -> Redactor:
    try:
        return Redactor(_secret_values(tomllib.loads(paths.source.read_text("utf-8-sig"))))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return Redactor(())


def main(argv: Sequence[str] | None = None) -> int:
    """``kioskvoice provision`` on its own (tests, ``python -m kioskvoice.provision``)."""
    parser = argparse.ArgumentParser(prog="kioskvoice")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["provision", *(argv or [])])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
