"""Where things are and what the target system says: :class:`Paths` (the boot partition and
the root to configure, every path below it relative so that ``--root`` can move it), users
and groups from the root's own ``/etc``, and whether the root is a live, booted system."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

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
