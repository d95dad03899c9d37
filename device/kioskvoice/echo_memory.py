"""The echo delay, remembered across restarts.

With ``[dsp] reference_delay_ms = "auto"`` the capture chain finds the playback-to-capture
delay about half a second into the kiosk's first reply, then moves the reference and starts
its echo filter afresh. After a restart that costs the first reply its first seconds of
cancellation: a quiet visitor talking over it stands out late. The delay is a property of the
hardware, so the kiosk keeps the last one it found in ``echo.json`` in the service's state
directory (``$STATE_DIRECTORY``, which systemd's ``StateDirectory=`` sets: ``/var/lib/
kioskvoice``) and starts aligned. The chain still checks it against every reply and moves it
when the hardware changed, as it would from nothing.

The file is tied to the audio setup it was measured with (devices, rates, block): another
setup ignores it. Without ``$STATE_DIRECTORY`` (the daemon outside systemd) nothing is kept.
A file that cannot be read or written is a one-line warning, never an error: the chain finds
the delay itself.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILE = "echo.json"


class EchoDelayMemory:
    """The delay kept for one audio ``setup`` (a JSON-able dict) in ``directory`` (None: keep
    nothing). :meth:`load` and :meth:`save` do file I/O: call them at start-up or off the
    event loop."""

    def __init__(self, directory: Path | None, setup: dict[str, Any]) -> None:
        self.path = directory / FILE if directory is not None else None
        self._setup = setup

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
            kept = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            log.warning("%s: not read (%s); the echo delay is found afresh", self.path, exc)
            return None
        if not isinstance(kept, dict) or kept.get("setup") != self._setup:
            return None  # another setup's (or no) delay: find this one afresh
        delay = kept.get("delay_ms")
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            return None
        return float(delay) if 0.0 <= delay <= max_delay_ms else None

    def save(self, delay_ms: float) -> None:
        """Keep ``delay_ms`` for this setup (atomically: a crash leaves the old file or the
        new one)."""
        if self.path is None:
            return
        data = json.dumps({"setup": self._setup, "delay_ms": round(delay_ms, 1)}, indent=1)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".echo-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(data + "\n")
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("%s: not written (%s); the echo delay is found afresh next start",
                        self.path, exc)  # fmt: skip
