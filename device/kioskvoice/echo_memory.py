"""The echo delay, remembered across restarts.

With ``[dsp] reference_delay_ms = "auto"`` the capture chain finds the playback-to-capture
delay about half a second into the kiosk's first reply, then moves the reference and starts
its echo filter afresh. After a restart that costs the first reply its first seconds of
cancellation: a quiet visitor talking over it stands out late. The delay is a property of the
hardware, so the kiosk keeps the last one it found in ``echo.json`` in the service's state
directory (``$STATE_DIRECTORY``, which systemd's ``StateDirectory=`` sets: ``/var/lib/
kioskvoice``) and starts aligned. The chain still checks it against every reply and moves it
when the hardware changed, as it would from nothing.

The file is tied to the audio setup it was measured with (the device *names*, rates, block):
another setup ignores it. A different card behind the same name (``default``, or ALSA numbers
that swap between boots) starts from the old delay, and the chain finds the new one in its
first reply, as it would from nothing. Without ``$STATE_DIRECTORY`` (the daemon outside
systemd) nothing is kept. A file that cannot be read or written is a one-line warning, never
an error: the chain finds the delay itself.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE = "echo.json"
MAX_BYTES = 4096  # the file holds a few device names and a number


class EchoDelayMemory:
    """The delay kept for one audio ``setup`` (a JSON-able dict) in ``directory`` (None: keep
    nothing). :meth:`load` and :meth:`save` do file I/O: call them at start-up or off the
    event loop."""

    def __init__(self, directory: Path | None, setup: dict[str, Any]) -> None:
        self.path = directory / FILE if directory is not None else None
        self._setup = setup
        self._lock = threading.Lock()
        self._latest: float | None = None

    @classmethod
    def from_environment(cls, setup: dict[str, Any]) -> EchoDelayMemory:
        """In systemd's state directory (the first of ``$STATE_DIRECTORY``), if set."""
        value = os.environ.get("STATE_DIRECTORY", "")
        first = value.split(":")[0]
        return cls(Path(first) if first else None, setup)

    def load(self, max_delay_ms: float) -> float | None:
        """The delay kept for this setup, in ms (0..``max_delay_ms``); None if there is none."""
        if self.path is None:
            return None
        try:
            if not self.path.is_file():  # a FIFO or a device would block or never end
                if self.path.exists():
                    raise ValueError("not a regular file")
                return None
            with self.path.open("rb") as f:
                data = f.read(MAX_BYTES + 1)
            if len(data) > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES} bytes")
            kept = json.loads(data.decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            reason = type(exc).__name__ if isinstance(exc, RecursionError) else exc
            log.warning("%s: not read (%s); the echo delay is found afresh", self.path, reason)
            return None
        if not isinstance(kept, dict) or kept.get("setup") != self._setup:
            return None  # another setup's (or no) delay: find this one afresh
        delay = kept.get("delay_ms")
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            return None
        return float(delay) if 0.0 <= delay <= max_delay_ms else None

    def save(self, delay_ms: float) -> None:
        """Keep ``delay_ms`` for this setup (atomically and synced: a crash or a power cut
        leaves the old file or the new one). Calls may overlap (executor threads): the file
        ends with the value of the last call."""
        if self.path is None:
            return
        self._latest = delay_ms
        with self._lock:
            self._write(self.path, self._latest)

    def _write(self, path: Path, delay_ms: float) -> None:
        data = json.dumps({"setup": self._setup, "delay_ms": round(delay_ms, 1)}, indent=1)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".echo-", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(data + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning(
                "%s: not written (%s); the echo delay is found afresh next start", path, exc
            )
