"""systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING.

A no-op outside systemd (no ``$NOTIFY_SOCKET``). The watchdog interval is half of
``$WATCHDOG_USEC``, honoured only when ``$WATCHDOG_PID`` is unset or names this process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages for the service. Construction reads the environment only."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if self.enabled and usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 2_000_000

    def _send(self, message: str) -> None:
        if not self.enabled:
            return
        from systemd import daemon

        try:
            daemon.notify(message)
        except OSError as exc:  # systemd went away; nothing useful to do but say so once
            log.warning("sd_notify failed: %s", exc)
            self.enabled = False

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")
