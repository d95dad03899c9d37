"""The host's identity steps: its name (``/etc/hostname``, ``/etc/hosts`` and, on a live
system, the running name) and who may log in over SSH (the admin's ``authorized_keys``)."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

from .files import _chown, _mkdir, write_file, write_file_at
from .network import NetworkSettings
from .problems import ApplyError
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
    in a 0700 ``.ssh``, owned by the user); the status line.

    The user owns their home, so ``.ssh`` may be anything they made it: a link to ``/etc``
    or ``/root/.ssh`` would have root write the keys there. A ``.ssh`` that is not a plain
    directory is refused (:class:`ApplyError`), and the file is written through a directory
    descriptor opened without following links.
    """
    assert net.ssh_authorized_keys is not None  # the caller writes keys only when listed
    root = paths.root
    user = lookup_user(root, net.ssh_user)
    assert user is not None  # checked by plan()
    uid, ugid, home = user
    ssh_dir = root / home.relative_to("/") / ".ssh"
    try:
        st = os.lstat(ssh_dir)
    except FileNotFoundError:
        _mkdir(ssh_dir, 0o700, uid, ugid)
    else:
        if not stat.S_ISDIR(st.st_mode):
            raise ApplyError(
                f"{ssh_dir} is not a plain directory (a symbolic link?): "
                "refusing to write authorized_keys through it"
            )
    try:
        fd = os.open(ssh_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ApplyError(f"{ssh_dir}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o700)
        _chown(fd, uid, ugid)
        keys = "".join(f"{key}\n" for key in net.ssh_authorized_keys)
        header = "# Written by kioskvoice provision ([network] ssh_authorized_keys).\n"
        write_file_at(fd, "authorized_keys", (header + keys).encode(), 0o600, (uid, ugid))
    finally:
        os.close(fd)
    return f"ssh: {len(net.ssh_authorized_keys)} authorized keys for {net.ssh_user}"
