"""The secrets step: each credential stored (sealed by a :class:`CredentialStore`, encrypted
with the host key when ``systemd-creds`` can, else plain and root only), kept or removed, and
``kioskvoice.service``'s drop-in that says where they are."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..config import secret_keys
from .files import _mkdir, write_file
from .problems import ApplyError
from .target import CREDENTIALS_DROPIN, CREDSTORE, CREDSTORE_ENCRYPTED, HOST_KEY, Paths


@dataclass(frozen=True, slots=True)
class SecretPlan:
    """What happens to one credential: ``store`` a new value, ``keep`` or ``remove`` it."""

    name: str
    action: str
    value: str = field(default="", repr=False)


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


def store_secrets(
    secrets: Iterable[SecretPlan], paths: Paths, store: CredentialStore, sealed: Mapping[str, bytes]
) -> list[str]:
    """Store, keep or remove each credential as planned (``sealed``: the stored bytes of each
    secret to store, from :meth:`CredentialStore.seal`); the status lines."""
    done: list[str] = []
    root = paths.root
    for secret in secrets:
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
    return done


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


def write_dropin(paths: Paths, store: CredentialStore) -> bool:
    """Write ``kioskvoice.service``'s credentials drop-in if it changed; whether it did (a live
    system then needs ``systemctl daemon-reload``)."""
    dropin = paths.at(CREDENTIALS_DROPIN)
    dropin_text = _dropin(paths, store).encode()
    old = dropin.read_bytes() if dropin.exists() else None
    if old != dropin_text:
        _mkdir(dropin.parent, 0o755)
        write_file(dropin, dropin_text)
    return old != dropin_text
