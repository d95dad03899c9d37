"""The host's identity steps: its name (``/etc/hostname``, ``/etc/hosts`` and, on a live
system, the running name) and who may log in over SSH (the admin's ``authorized_keys``)."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from .files import _mkdir, write_file
from .network import NetworkSettings
from .target import HOSTNAME_FILE, HOSTS_FILE, Paths, lookup_user


def set_hostname(hostname: str, paths: Paths, live: bool) -> str:
    """Write ``/etc/hostname`` and the ``127.0.1.1`` line of ``/etc/hosts``; on a ``live``
    system also set the running host name. The status line."""
    write_file(paths.at(HOSTNAME_FILE), f"{hostname}\n".encode())
    write_file(paths.at(HOSTS_FILE), _hosts_text(paths.at(HOSTS_FILE), hostname).encode())
    if live:
        with contextlib.suppress(OSError):
            socket.sethostname(hostname)
    return f"hostname: {hostname}"


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


def write_authorized_keys(net: NetworkSettings, paths: Paths) -> str:
    """Replace ``net.ssh_user``'s ``authorized_keys`` with ``net.ssh_authorized_keys`` (0600,
    in a 0700 ``.ssh``, owned by the user); the status line."""
    assert net.ssh_authorized_keys is not None  # the caller writes keys only when listed
    root = paths.root
    user = lookup_user(root, net.ssh_user)
    assert user is not None  # checked by plan()
    uid, ugid, home = user
    ssh_dir = root / home.relative_to("/") / ".ssh"
    _mkdir(ssh_dir, 0o700, uid, ugid)
    keys = "".join(f"{key}\n" for key in net.ssh_authorized_keys)
    header = "# Written by kioskvoice provision ([network] ssh_authorized_keys).\n"
    write_file(ssh_dir / "authorized_keys", (header + keys).encode(), 0o600, (uid, ugid))
    return f"ssh: {len(net.ssh_authorized_keys)} authorized keys for {net.ssh_user}"
