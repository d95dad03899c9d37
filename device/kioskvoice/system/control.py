"""The local control socket: JSON lines over a unix stream socket.

Request: ``{"cmd": "status" | "press" | "release" | "reset" | "say", ...}``; reply: one JSON
object with ``ok``. ``reset`` starts a new visitor (the conversation is forgotten); ``say``
(with ``"path"``: a mono WAV) has the visitor in a ``room:`` device speak that file.
The socket is created mode 0660 so the service's group (and root) may use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ControlError
from .control_client import MAX_LINE

log = logging.getLogger(__name__)

COMMANDS = ("status", "press", "release", "reset", "say")
MAX_CLIENTS = 8  # ctl, diag and a watcher or two; more is a runaway script or an attack


class ControlServer:
    """Serves ``handler(cmd, request) -> dict`` on a unix socket; one request per line. A
    handler raising ValueError refuses the request with its message (one line)."""

    def __init__(
        self,
        path: Path,
        handler: Callable[[str, dict[str, Any]], dict[str, Any]],
        *,
        timeout_s: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self._handler = handler
        self._timeout_s = timeout_s
        self._server: asyncio.base_events.Server | None = None
        self._clients = 0

    async def start(self) -> None:
        """Bind the socket. A stale socket file is replaced; a live one is an error."""
        if self.path.exists():
            if _is_alive(self.path):
                raise ControlError(f"control socket {self.path} is in use by another process")
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=MAX_LINE
        )
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            writer.write(b'{"ok": false, "error": "busy: too many control connections"}\n')
            with contextlib.suppress(ConnectionError):
                writer.close()
            return
        self._clients += 1
        try:
            while True:
                async with asyncio.timeout(self._timeout_s * 12):
                    line = await reader.readline()
                if not line:
                    break
                writer.write(json.dumps(self._answer(line)).encode() + b"\n")
                async with asyncio.timeout(self._timeout_s):
                    await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass  # idle, vanished or oversized client: just hang up
        finally:
            self._clients -= 1
            writer.close()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            cmd = request["cmd"]
        except (ValueError, KeyError, TypeError, RecursionError):  # nesting: a hostile line
            return {"ok": False, "error": 'expected {"cmd": "status|press|release|reset|say"}'}
        if cmd not in COMMANDS:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        try:
            return {"ok": True, **self._handler(cmd, request)}
        except ValueError as exc:
            return {"ok": False, "error": str(exc).splitlines()[0] if str(exc) else "refused"}
        except Exception as exc:  # the daemon must outlive a bad request
            log.exception("control command %s failed", cmd)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _is_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True
