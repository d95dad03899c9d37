"""Writing on the target: atomic replacement with the final mode and owner, directories,
and shredding the boot partition's copy of the secrets."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


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
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        write_file_at(fd, path.name, data, mode, owner)
    finally:
        os.close(fd)


def write_file_at(
    dir_fd: int,
    name: str,
    data: bytes,
    mode: int | None = 0o644,
    owner: tuple[int, int] | None = (0, 0),
) -> None:
    """:func:`write_file` inside the open directory ``dir_fd``.

    Provisioning runs as root, sometimes in directories an unprivileged user controls (their
    ``.ssh``): the temporary name is unpredictable and created exclusively without following
    links, so nobody can plant a link there in advance and make root write through it; the
    rename replaces ``name`` itself, even when it is a link.
    """
    tmp = f".{name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, mode or 0o644, dir_fd=dir_fd)
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
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.close(fd)
    os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    with contextlib.suppress(OSError):
        os.fsync(dir_fd)


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
