"""systemd's notify protocol: READY, STATUS, WATCHDOG, STOPPING.

A no-op outside systemd (no ``$NOTIFY_SOCKET``). Messages are datagrams to the socket that
``$NOTIFY_SOCKET`` names (a path, or ``@name`` for the abstract namespace), as ``sd_notify(3)``
sends them; reading the socket from the given environment rather than the process's keeps the
notifier testable. The watchdog is enabled by ``$WATCHDOG_USEC``, honoured only when
``$WATCHDOG_PID`` is unset or names this process.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

# Ping a little more often than systemd's recommended half of WATCHDOG_USEC, so that event
# loop jitter never stretches one interval past half.
WATCHDOG_FRACTION = 0.45


class Notifier:
    """Sends sd_notify messages for the service. Construction reads the environment only.

    ``enabled`` is true when ``$NOTIFY_SOCKET`` is set; ``watchdog_interval_s`` is how often
    :meth:`watchdog` must be called (None: systemd expects no pings). Sending never raises and
    never blocks: a full queue drops that one message; an unreachable socket disables the
    notifier with one warning.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.enabled = bool(address)
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if self.enabled and usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 1_000_000 * WATCHDOG_FRACTION

    def _send(self, message: str) -> None:
        if not self.enabled:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode(), self._address)
        except BlockingIOError:
            log.debug("sd_notify queue full; dropped %s", message.split("=", 1)[0])
        except OSError as exc:  # systemd went away; nothing useful to do but say so once
            log.warning("sd_notify failed: %s", exc.strerror or exc)
            self.enabled = False

    def ready(self, status: str) -> None:
        """Startup is complete: config loaded, devices open."""
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        """A one-line state for ``systemctl status``."""
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        """Proof of life; call every ``watchdog_interval_s`` while the kiosk makes progress."""
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown has begun."""
        self._send("STOPPING=1\nSTATUS=stopping")
