"""The echo delay and the echo filter, remembered across restarts.

With ``[dsp] reference_delay_ms = "auto"`` the capture chain finds the playback-to-capture
delay about half a second into the kiosk's first reply, then moves the reference and starts
its echo filter afresh, and the filter needs a few seconds of the kiosk's voice to learn the
room. After a restart that cost the first reply its first seconds of cancellation: a quiet
visitor talking over it stood out late (at -30 dBFS, 10 dB under the echo: 1-4 s). Both are
properties of the hardware and the room, so the kiosk keeps the last delay it found and the
last filter that proved itself in ``echo.json`` in the service's state directory
(``$STATE_DIRECTORY``, which systemd's ``StateDirectory=`` sets: ``/var/lib/kioskvoice``),
and starts aligned with the filter primed (:func:`kioskvoice.dsp.echo_path.prime`). The chain
still checks the delay against every reply and moves it when the hardware changed, as it
would from nothing; a filter from another room is no worse a start than none (measured
offline: the first reply's echo reduction and a visitor's latency as from nothing).

What is kept is the room's *response* (the filter's impulse response, a few thousand numbers),
never a sound the kiosk heard: nothing a visitor said can be read back from the file.

The file is tied to the audio setup it was measured with (the device *names*, rates, block):
another setup ignores it. A different card behind the same name (``default``, or ALSA numbers
that swap between boots) starts from the old delay and filter, and the chain finds the new
ones in its first reply, as it would from nothing. Without ``$STATE_DIRECTORY`` (the daemon
outside systemd) nothing is kept. A file that cannot be read or written is a one-line
warning, never an error: the chain learns the room itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

log = logging.getLogger(__name__)

FILE = "echo.json"
MAX_PATH_SAMPLES = 65536
"""The longest echo path kept: the longest filter (``tail_ms`` 1000) at 48 kHz, and more."""
MAX_BYTES = 512 * 1024  # the setup, a number and the path in base64 (4/3 of 4 bytes a sample)
MAX_PATH_GAIN = 100.0  # no echo path has a tap of 40 dB gain: the file is damaged


class Remembered(NamedTuple):
    """What the last run learnt for this setup."""

    delay_ms: float
    """The reference's alignment: the chain's ``delay_hint_ms``."""
    echo_path: np.ndarray | None
    """The echo filter's impulse response at that alignment (float64), or None."""


class EchoMemory:
    """The delay and filter kept for one audio ``setup`` (a JSON-able dict) in ``directory``
    (None: keep nothing). :meth:`load`, :meth:`save` and :meth:`write` do file I/O: call them
    at start-up or off the event loop; :meth:`keep` does none."""

    def __init__(self, directory: Path | None, setup: dict[str, Any]) -> None:
        self.path = directory / FILE if directory is not None else None
        self._setup = setup
        self._lock = threading.Lock()
        self._latest: tuple[float, np.ndarray | None] = (0.0, None)

    @classmethod
    def from_environment(cls, setup: dict[str, Any]) -> EchoMemory:
        """In systemd's state directory (the first of ``$STATE_DIRECTORY``), if set."""
        value = os.environ.get("STATE_DIRECTORY", "")
        first = value.split(":")[0]
        return cls(Path(first) if first else None, setup)

    def load(self, max_delay_ms: float) -> Remembered | None:
        """What is kept for this setup (a delay within 0..``max_delay_ms``, and the filter if
        one was kept and is sound); None if there is nothing."""
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
        if not 0.0 <= delay <= max_delay_ms:
            return None
        path = kept.get("echo_path")
        if path is None:
            return Remembered(float(delay), None)
        try:
            return Remembered(float(delay), _decode(path))
        except ValueError as exc:
            log.warning("%s: echo_path not used (%s); the filter learns afresh", self.path, exc)
            return Remembered(float(delay), None)

    def keep(self, delay_ms: float, echo_path: np.ndarray | None = None) -> None:
        """What the next :meth:`write` writes: ``delay_ms`` for this setup, and the filter
        learnt at that alignment (None: no filter; one kept before belongs to another alignment
        and goes). Call it in the order things were learnt (one thread): writes that overlap
        in executor threads then all write the latest."""
        self._latest = (delay_ms, echo_path)

    def write(self) -> None:
        """Write what was last kept, atomically and synced: a crash or a power cut leaves the
        old file or the new one."""
        if self.path is None:
            return
        with self._lock:
            self._write(self.path, *self._latest)

    def save(self, delay_ms: float, echo_path: np.ndarray | None = None) -> None:
        """:meth:`keep`, then :meth:`write`."""
        self.keep(delay_ms, echo_path)
        self.write()

    def _write(self, path: Path, delay_ms: float, echo_path: np.ndarray | None) -> None:
        # To a thousandth of a ms: the same sample comes back at any rate up to 96 kHz (the
        # filter is tied to it; one sample off costs a primed filter a third of its effect).
        record: dict[str, Any] = {"setup": self._setup, "delay_ms": round(delay_ms, 3)}
        if echo_path is not None:
            # float32, little-endian, base64: a 160 ms filter at 16 kHz is 14 KB.
            raw = np.asarray(echo_path, dtype="<f4").tobytes()
            record["echo_path"] = base64.b64encode(raw).decode("ascii")
        data = json.dumps(record, indent=1)
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
                "%s: not written (%s); the echo delay and filter are learnt afresh next start",
                path,
                exc,
            )


def _decode(text: object) -> np.ndarray:
    """An echo path as kept by :meth:`EchoMemory.save`; ValueError (one line) if damaged."""
    if not isinstance(text, str):
        raise ValueError("not a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None
    if not raw or len(raw) % 4 or len(raw) // 4 > MAX_PATH_SAMPLES:
        raise ValueError(f"{len(raw)} bytes is no path of 1..{MAX_PATH_SAMPLES} float32 samples")
    path = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    if not np.all(np.isfinite(path)) or not np.any(path):
        raise ValueError("not finite, or silent")
    if float(np.max(np.abs(path))) > MAX_PATH_GAIN:
        raise ValueError(f"a gain over {MAX_PATH_GAIN:g}")
    return path
