"""WAV files for ``wav:`` devices, tests and recordings.

:class:`WavWriter` keeps the file a valid WAV after every write (it patches the RIFF and data
sizes each time), so a file being written when the process is killed is still playable.
"""

from __future__ import annotations

import struct
import threading
import wave
from pathlib import Path

from .errors import AudioDeviceError

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def read_wav(path: Path | str) -> tuple[bytes, int, int]:
    """Read a 16-bit PCM WAV: ``(frames, sample_rate, channels)``."""
    try:
        with wave.open(str(path), "rb") as wav:
            if wav.getsampwidth() != 2:
                raise AudioDeviceError(f"{path}: need 16-bit PCM, got {8 * wav.getsampwidth()}-bit")
            return wav.readframes(wav.getnframes()), wav.getframerate(), wav.getnchannels()
    except FileNotFoundError:
        raise AudioDeviceError(f"{path}: no such file") from None
    except (wave.Error, EOFError) as exc:
        raise AudioDeviceError(f"{path}: not a PCM WAV file ({exc})") from None
    except OSError as exc:
        raise AudioDeviceError(f"{path}: cannot read ({exc.strerror})") from None


def write_wav(path: Path | str, frames: bytes, rate: int, channels: int = 1) -> None:
    """Write a whole 16-bit PCM WAV file at once."""
    with WavWriter(path, rate, channels) as writer:
        writer.write(frames)


class WavWriter:
    """Appends 16-bit PCM frames to a WAV file that is valid after every :meth:`write`.

    Thread-safe; ``close`` is idempotent.
    """

    def __init__(self, path: Path | str, rate: int, channels: int = 1) -> None:
        self.path = Path(path)
        self.rate = rate
        self.channels = channels
        self._lock = threading.Lock()
        self._data_bytes = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("wb")
        except OSError as exc:
            raise AudioDeviceError(f"{self.path}: cannot write ({exc.strerror})") from None
        self._fh.write(self._header())
        self._fh.flush()

    def _header(self) -> bytes:
        block_align = 2 * self.channels
        return _HEADER.pack(
            b"RIFF",
            36 + self._data_bytes,
            b"WAVE",
            b"fmt ",
            16,
            1,
            self.channels,
            self.rate,
            self.rate * block_align,
            block_align,
            16,
            b"data",
            self._data_bytes,
        )

    def write(self, frames: bytes | bytearray | memoryview) -> None:
        with self._lock:
            if self._fh.closed:
                return
            self._fh.seek(0, 2)
            self._fh.write(frames)
            self._data_bytes += len(frames)
            self._fh.seek(0)
            self._fh.write(self._header())
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
