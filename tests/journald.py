"""A real systemd-journald for tests: the one already running, or a standalone one.

Test modules that need it define a session-scoped fixture calling :func:`acquire` and
:func:`release`. The standalone journald (root only) is reference-counted across modules: one
process for the whole session, stopped when the last module releases it, and the socket files
it created are removed so that later tests see no stale journal socket.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

from kioskvoice.system.logging import journal_available

JOURNALD = Path("/lib/systemd/systemd-journald")
SOCKET_DIR = Path("/run/systemd/journal")
_CREATED = ("socket", "stdout", "dev-log", "io.systemd.journal", "kernel-seqnum")

_proc: subprocess.Popen[bytes] | None = None
_refs = 0
_preexisting: set[Path] = set()


def acquire(timeout_s: float = 5.0) -> str | None:
    """Make sure a journald listens; None when one does, else the reason why not (to skip)."""
    global _proc, _refs, _preexisting
    if _proc is None and not journal_available():
        if os.geteuid() != 0:
            return "no systemd-journald runs and starting one needs root"
        if not JOURNALD.exists():
            return f"{JOURNALD} is not installed"
        _preexisting = {SOCKET_DIR / name for name in _CREATED if (SOCKET_DIR / name).exists()}
        _proc = subprocess.Popen(
            [str(JOURNALD)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        atexit.register(_stop)
        deadline = time.monotonic() + timeout_s
        while not journal_available():
            if _proc.poll() is not None or time.monotonic() > deadline:
                _stop()
                return "the standalone systemd-journald did not come up"
            time.sleep(0.05)
    _refs += 1
    return None


def release() -> None:
    """Undo one :func:`acquire`; the last one stops the journald this module started."""
    global _refs
    _refs = max(0, _refs - 1)
    if _refs == 0:
        _stop()


def _stop() -> None:
    global _proc
    if _proc is None:
        return
    _proc.terminate()
    try:
        _proc.wait(5)
    except subprocess.TimeoutExpired:
        _proc.kill()
        _proc.wait(5)
    _proc = None
    for name in _CREATED:
        path = SOCKET_DIR / name
        if path not in _preexisting:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def journal_json(*matches: str, since_us: int | None = None) -> list[dict[str, str]]:
    """``journalctl -o json`` for ``matches`` (``FIELD=value``), oldest first."""
    args = ["journalctl", "--no-pager", "-o", "json", *matches]
    if since_us is not None:
        args.insert(2, f"--since=@{since_us / 1_000_000:.6f}")
    out = subprocess.run(args, capture_output=True, text=True, timeout=20, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_for_entries(
    *matches: str, count: int = 1, since_us: int | None = None, timeout_s: float = 10.0
) -> list[dict[str, str]]:
    """Poll journalctl until at least ``count`` entries match (journald writes asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        entries = journal_json(*matches, since_us=since_us)
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def now_us() -> int:
    """The journal's clock (realtime, microseconds): for ``--since`` windows."""
    return time.time_ns() // 1000
