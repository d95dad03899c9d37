"""Reply audio for the simulator: espeak-ng speech, or a tone pattern when espeak-ng is missing.

Output is always PCM16 little-endian mono at the requested rate, the Realtime wire format.
"""

from __future__ import annotations

import functools
import logging
import shutil
import struct
import subprocess
import zlib

import numpy as np
import soxr

__all__ = ["ESPEAK_EXECUTABLE", "synthesize"]

log = logging.getLogger(__name__)

ESPEAK_EXECUTABLE = "espeak-ng"
"""Name (or path) looked up with :func:`shutil.which`; tests patch it to force the fallback."""

_ESPEAK_TIMEOUT_S = 10.0
_MAX_BEEPS = 12
_BEEP_GAP_S = 0.08
_BEEP_AMPLITUDE = 0.3 * 32767
_FADE_S = 0.005


@functools.lru_cache(maxsize=64)
def synthesize(text: str, rate: int = 24000, voice: str | None = None) -> bytes:
    """Render ``text`` as PCM16 LE mono at ``rate`` Hz, in espeak-ng's ``voice`` (a name as
    ``espeak-ng --voices`` lists them, with an optional ``+variant``: ``en-us+m7``; default:
    espeak-ng's own; a name it does not know gives its own voice, or the tones where it
    refuses the name).

    Uses ``espeak-ng --stdout`` when it is installed and works; otherwise (or when it fails or
    times out) falls back to a beep pattern whose beep count and lengths follow the words, so
    different texts still sound different. Whitespace-only text yields ``b""``. Results are
    cached per ``(text, rate, voice)``; call ``synthesize.cache_clear()`` after changing
    :data:`ESPEAK_EXECUTABLE`. Blocking (runs a subprocess): call it off the event loop.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if not text.strip():
        return b""
    executable = shutil.which(ESPEAK_EXECUTABLE)
    if executable is not None:
        try:
            return _espeak(executable, text, rate, voice)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            log.warning("espeak-ng failed (%s); falling back to tones", type(exc).__name__)
    return _tones(text, rate)


def _espeak(executable: str, text: str, rate: int, voice: str | None) -> bytes:
    # Text goes through stdin so that text starting with "-" is never parsed as an option.
    proc = subprocess.run(
        [executable, "--stdout", *(["-v", voice] if voice else [])],
        input=text.encode("utf-8"),
        capture_output=True,
        timeout=_ESPEAK_TIMEOUT_S,
        check=True,
    )
    samples, source_rate = _parse_wav(proc.stdout)
    if samples.size == 0:
        raise ValueError("espeak-ng produced no audio")
    if source_rate != rate:
        samples = soxr.resample(samples, source_rate, rate)
    return samples.astype("<i2", copy=False).tobytes()


def _parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Return (mono int16 samples, sample rate) from a PCM16 WAV.

    espeak-ng streams to stdout, so its RIFF and data sizes are placeholders (0x7ffff000);
    the data chunk is therefore clamped to the bytes actually present.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE stream")
    pos = 12
    fmt: tuple[int, int, int] | None = None
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise ValueError("truncated fmt chunk")
            audio_format, channels, source_rate, _, _, bits = struct.unpack_from(
                "<HHIIHH", data, body
            )
            if audio_format != 1 or bits != 16 or channels < 1 or source_rate <= 0:
                raise ValueError("WAV is not PCM16")
            fmt = (channels, source_rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError("data chunk before fmt chunk")
            channels, source_rate, _ = fmt
            payload = data[body : body + size]
            frame = 2 * channels
            payload = payload[: len(payload) - len(payload) % frame]
            samples = np.frombuffer(payload, dtype="<i2")
            if channels > 1:
                mixed = samples.reshape(-1, channels).mean(axis=1)
                samples = np.round(mixed).astype(np.int16)
            return samples.astype(np.int16, copy=False), source_rate
        pos = body + size + (size & 1)
    raise ValueError("no data chunk")


def _tones(text: str, rate: int) -> bytes:
    """One beep per word (at most a dozen): pitch from a stable hash, length from word length."""
    words = text.split()[:_MAX_BEEPS]
    fade = max(1, int(_FADE_S * rate))
    gap = np.zeros(int(_BEEP_GAP_S * rate), dtype=np.float64)
    pieces: list[np.ndarray] = []
    for word in words:
        # crc32, not hash(): str hashes are salted per process and replies must be stable.
        freq = 440.0 + (zlib.crc32(word.encode("utf-8")) % 8) * 60.0
        duration = min(0.06 + 0.02 * len(word), 0.25)
        n = max(int(duration * rate), 2 * fade)
        t = np.arange(n, dtype=np.float64) / rate
        beep = _BEEP_AMPLITUDE * np.sin(2.0 * np.pi * freq * t)
        ramp = np.linspace(0.0, 1.0, fade)
        beep[:fade] *= ramp
        beep[-fade:] *= ramp[::-1]
        pieces.extend((beep, gap))
    signal = np.concatenate(pieces)
    return np.round(signal).astype("<i2").tobytes()
