"""The device registry: which kiosks may ask for secrets, as hashes of their tokens.

The file is TOML with one line per device, so that revoking a kiosk is deleting its line::

    [devices]
    "lobby" = { sha256 = "3f1c…", added = 2025-03-09T15:30:00Z }

Hashing: device tokens are 256-bit random strings made by :func:`new_token`, so a plain SHA-256
of the token is enough. A slow password hash (argon2, bcrypt) protects guessable secrets; no
guess can hit a 256-bit random value, so slowness would buy nothing but CPU per request (a
lever for anyone flooding the broker with bad tokens). A keyed hash (HMAC with a server pepper)
would only matter for low-entropy tokens too, and would add a second secret to manage. The file
is therefore not secret (a leaked registry cannot recreate a token), but it decides who gets
secrets, so it stays ``0600`` and is written atomically.

Lookups compare the presented token's digest with every stored digest using
:func:`hmac.compare_digest` and without stopping at a match: the time taken depends on the
number of devices only, not on how close a guess came.

The server (:class:`Registry`) re-reads the file whenever it changes, so ``add-device`` and
``revoke-device`` take effect on the next request without a restart, and replicas that share
(or are handed) the same file agree. The CLI functions (:func:`add_device`,
:func:`revoke_device`) edit the file line by line, keeping an operator's comments, under an
exclusive lock, and write it atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigError, KioskError

log = logging.getLogger("kioskvoice.broker")

TOKEN_PREFIX = "kvd_"
"""Device tokens start with this, so secret scanners and people can recognise them."""
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_NAME = re.compile(NAME_PATTERN)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEADER = (
    "# kioskvoice broker: the kiosks that may ask for secrets, one line each.\n"
    "# Deleting a device's line revokes it. Only SHA-256 hashes of the device tokens are\n"
    "# stored: no token can be recovered from this file.\n"
)


class RegistryError(KioskError, ValueError):
    """A registry change that cannot be made (unknown or duplicate name, bad layout)."""


@dataclass(frozen=True, slots=True)
class Device:
    """A registered device. ``digest`` is the SHA-256 of its token."""

    name: str
    digest: bytes
    added: datetime | None = None

    @property
    def fingerprint(self) -> str:
        """A short, non-secret label for the token (the first hex digits of its hash)."""
        return self.digest.hex()[:12]


def new_token() -> str:
    """A fresh device token: 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    """SHA-256 of ``token`` (see the module docstring for why no slow or keyed hash)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def check_name(name: str) -> str:
    """``name`` if it is a valid device name (letters, digits, ``_ . -``, at most 64), else
    :class:`RegistryError`. Names appear in logs, so they are kept to a safe alphabet."""
    if not _NAME.fullmatch(name):
        raise RegistryError(
            f"invalid device name {name[:70]!r}: use letters, digits, '_', '.', '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return name


def parse(text: str, source: Path | str = "registry") -> dict[str, Device]:
    """The devices in a registry file's ``text``; :class:`ConfigError` naming the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"registry error: {source}: {exc}") from None
    unknown = set(data) - {"devices"}
    if unknown:
        raise ConfigError(f"registry error: {source}: unknown table or key {sorted(unknown)[0]!r}")
    table = data.get("devices", {})
    if not isinstance(table, dict):
        raise ConfigError(f"registry error: {source}: 'devices' must be a table")
    devices: dict[str, Device] = {}
    seen: dict[bytes, str] = {}
    for name, entry in table.items():
        where = f"registry error: {source}: devices.{name[:70]}"
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: invalid device name")
        if not isinstance(entry, dict) or not set(entry) <= {"sha256", "added", "note"}:
            raise ConfigError(f'{where}: expected {{ sha256 = "...", added = ... }}')
        digest = entry.get("sha256")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ConfigError(f"{where}: sha256 must be 64 lower-case hex digits")
        added = entry.get("added")
        if added is not None and not isinstance(added, datetime):
            raise ConfigError(f"{where}: added must be a date-time")
        raw = bytes.fromhex(digest)
        if raw in seen:
            raise ConfigError(f"{where}: same token hash as device {seen[raw]!r}")
        seen[raw] = name
        devices[name] = Device(name, raw, added)
    return devices


def read_devices(path: Path) -> dict[str, Device]:
    """The devices in the registry at ``path``; none if the file does not exist yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"registry error: cannot read {path}: {exc}") from None
    return parse(text, path)


class Registry:
    """The server's view of the registry file, re-read whenever the file changes.

    Construction does no I/O. :meth:`refresh` (cheap: one ``stat``) is called before each
    lookup. A missing file means no devices. A file that becomes unreadable or invalid after a
    good load is logged and the last good contents stay in force (a broken hand edit must not
    lock every kiosk out); before any good load, every lookup fails.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loaded = False
        self.stale = False
        """True while the file on disk is newer than the contents in force (it is invalid)."""
        self.generation = 0
        """Incremented at every successful (re)load."""
        self._devices: list[tuple[str, bytes]] = []
        self._examined = False
        self._signature: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self._devices)

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self._devices}

    def refresh(self, *, strict: bool = False) -> None:
        """Re-read the file if it changed since the last read.

        With ``strict`` an unreadable or invalid file raises :class:`ConfigError` (used at
        start, so that ``serve`` refuses a broken registry with exit 78) instead of keeping the
        previous contents.
        """
        try:
            st = self.path.stat()
            signature: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            signature = None
        except OSError:
            signature = (-1, -1, -1)  # unreadable: the read below fails and says why
        if self._examined and signature == self._signature:
            return
        # Remembered before reading, so that a broken file is logged once, not per request.
        self._examined, self._signature = True, signature
        try:
            devices = read_devices(self.path) if signature is not None else {}
        except ConfigError as exc:
            self._fail(exc, strict)
            return
        if signature is None and not self.loaded:
            log.warning("registry %s does not exist yet: no device is registered", self.path)
        elif self.loaded:
            log.info(
                "registry reloaded: %d devices (%+d)",
                len(devices),
                len(devices) - len(self._devices),
            )
        self._devices = [(d.name, d.digest) for d in devices.values()]
        self.generation += 1
        self.loaded = True
        self.stale = False

    def _fail(self, exc: ConfigError, strict: bool) -> None:
        if strict:
            self._examined = False
            raise exc
        self.stale = self.loaded
        log.error(
            "%s; %s",
            exc,
            f"still serving the previous {len(self._devices)} devices"
            if self.loaded
            else "no device can be served",
        )

    def lookup(self, token: str) -> str | None:
        """The name of the device whose token this is, else None. Constant time in the token:
        every stored digest is compared, with :func:`hmac.compare_digest`."""
        digest = token_digest(token)
        found = None
        for name, stored in self._devices:
            if hmac.compare_digest(digest, stored):
                found = name
        return found


# --- editing the file (the CLI) ---------------------------------------------------------------


def add_device(path: Path, name: str, *, replace: bool = False) -> str:
    """Register ``name`` with a new token, store only its hash, and return the token.

    The caller shows the token once; it cannot be recovered later. An existing ``name`` is a
    :class:`RegistryError` unless ``replace`` (a new token for the same kiosk: the old one stops
    working at once).
    """
    check_name(name)
    token = new_token()
    added = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    line = f'"{name}" = {{ sha256 = "{token_digest(token).hex()}", added = {added} }}\n'
    with _locked(path):
        text = _read_text(path)
        before = parse(text, path) if text else {}
        if name in before:
            if not replace:
                raise RegistryError(
                    f"device {name!r} is already registered (revoke-device it first, or "
                    "add-device --replace to give it a new token)"
                )
            text = _without(text, name)
        if not text.strip():
            text = _HEADER + "\n[devices]\n"
        elif not text.endswith("\n"):
            text += "\n"
        text += line
        after = parse(text, path)
        expected = {k: v.digest for k, v in before.items() if k != name}
        expected[name] = token_digest(token)
        if {k: v.digest for k, v in after.items()} != expected:
            raise RegistryError(
                f"{path} has a layout this command cannot edit safely ([devices] must be the "
                "last table, one line per device); edit it by hand"
            )
        _write_atomically(path, text)
    return token


def revoke_device(path: Path, name: str) -> None:
    """Delete ``name``'s line; :class:`RegistryError` if it is not registered."""
    with _locked(path):
        text = _read_text(path)
        before = parse(text, path) if text else {}
        if name not in before:
            raise RegistryError(f"no device named {name[:70]!r} in {path}")
        text = _without(text, name)
        after = parse(text, path)
        if set(after) != set(before) - {name}:
            raise RegistryError(
                f"{path} has a layout this command cannot edit safely (one line per device); "
                "edit it by hand"
            )
        _write_atomically(path, text)


def list_devices(path: Path) -> list[Device]:
    """The registered devices, by name."""
    return sorted(read_devices(path).values(), key=lambda d: d.name)


def _without(text: str, name: str) -> str:
    key = re.compile(rf'^\s*(?:"{re.escape(name)}"|{re.escape(name)})\s*=')
    return "".join(line for line in text.splitlines(keepends=True) if not key.match(line))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"registry error: cannot read {path}: {exc}") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``'s sibling lock file, for read-modify-write cycles."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"registry error: cannot lock {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (mode 0600). Run as root, the file takes the owner and
    group of its directory: under systemd that is the broker's (dynamic) user, which must be
    able to read what root wrote."""
    directory = path.parent
    st = directory.stat()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fchmod(file.fileno(), 0o600)
            if os.geteuid() == 0:
                os.fchown(file.fileno(), st.st_uid, st.st_gid)
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def describe(devices: list[Device]) -> list[dict[str, Any]]:
    """``list-devices --json`` rows: name, added, fingerprint (never a token)."""
    return [
        {
            "name": d.name,
            "added": d.added.isoformat() if d.added else None,
            "fingerprint": d.fingerprint,
        }
        for d in devices
    ]
