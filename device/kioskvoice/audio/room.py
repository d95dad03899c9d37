"""``room:`` — a virtual acoustic room, for tests, the demo and integrators.

Set as both ``audio.input_device`` and ``audio.output_device`` (the same string), it is one
full-duplex device on one clock, paced in real time like ``wav:``: every block the kiosk plays
reaches its microphone through the room (a cheap speaker's soft clipping, a room impulse
response, a delay the kiosk is not told, at a level), with background noise, and a visitor
speaks into the room on request (:meth:`RoomDevice.say`, ``kioskvoice ctl say PATH``).

Options after the colon, comma-separated ``key=value``, all optional:

- ``rir=PATH.wav``: mono impulse response at any rate (default: a synthetic room, RT60 0.3 s);
- ``delay_ms=N``: extra playback-to-capture delay (default 0);
- ``echo_db=N``: active RMS of the kiosk's voice at the mic, in dBFS, for a voice played at
  -20 dBFS (default -25);
- ``distortion=N``: 0..1, soft clipping of a cheap speaker (default 0);
- ``noise_db=N``: RMS of the background noise, dBFS (default -60);
- ``visitor_db=N``: active RMS of the visitor at the mic, dBFS (default -30);
- ``out=PATH.wav``: records what the speaker played, every block (silence too, so a position
  in the file is a time), a valid WAV at any stop.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..dsp.resample import resample_all
from ..dsp.room import room_impulse_response
from ..errors import AudioDeviceError
from ..wavio import WavWriter, read_wav
from .player import Player
from .wavdev import _PacedThread

ROOM_PREFIX = "room:"
PLAYED_REFERENCE_DBFS = -20.0  # echo_db is defined for a voice played at this level
BlockCallback = Callable[[bytes], None]


@dataclass(frozen=True)
class RoomOptions:
    rir: Path | None = None
    delay_ms: float = 0.0
    echo_db: float = -25.0
    distortion: float = 0.0
    noise_db: float = -60.0
    visitor_db: float = -30.0
    out: Path | None = None

    @classmethod
    def parse(cls, spec: str) -> RoomOptions:
        """``room:key=value,...`` -> options; :class:`AudioDeviceError` names a bad one."""
        values: dict[str, object] = {}
        body = spec[len(ROOM_PREFIX) :].strip()
        for part in filter(None, (p.strip() for p in body.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key not in cls.__dataclass_fields__:
                known = ", ".join(cls.__dataclass_fields__)
                raise AudioDeviceError(f"{spec}: unknown option {part!r} (known: {known})")
            if key in ("rir", "out"):
                values[key] = Path(value).expanduser()
                continue
            try:
                number = float(value)
            except ValueError:
                raise AudioDeviceError(f"{spec}: {key} must be a number, got {value!r}") from None
            if not math.isfinite(number):
                raise AudioDeviceError(f"{spec}: {key} must be finite")
            values[key] = number
        options = cls(**values)  # type: ignore[arg-type]
        if not 0.0 <= options.distortion <= 1.0:
            raise AudioDeviceError(f"{spec}: distortion must be between 0 and 1")
        if not 0.0 <= options.delay_ms <= 2000.0:
            raise AudioDeviceError(f"{spec}: delay_ms must be between 0 and 2000")
        return options


def active_rms(samples: np.ndarray, rate: int) -> float:
    """RMS over the 20 ms frames within 30 dB of the loudest (speech, not its pauses)."""
    frame = max(1, rate // 50)
    count = len(samples) // frame
    if count == 0:
        return 0.0
    frames = samples[: count * frame].astype(np.float64).reshape(count, frame)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = rms[rms >= rms.max() * 10 ** (-30 / 20)]
    return float(np.sqrt(np.mean(loud**2))) if loud.size else 0.0


class RoomDevice:
    """The room as one duplex device at ``rate``: the player's blocks go in, the microphone's
    come out, ``channels`` wide (the room's mic copied to each). Threads: its own paced thread
    calls the callbacks; :meth:`say` may be called from any thread."""

    output_latency_s = 0.0  # the speaker is the room's: a played block is heard at once

    def __init__(self, spec: str, *, rate: int, channels: int, frame_ms: int) -> None:
        self.options = o = RoomOptions.parse(spec)
        self.rate = rate
        self.channels = channels
        self.block = rate * frame_ms // 1000
        self.last_block_at = time.monotonic()
        if o.rir is not None:
            pcm, rir_rate, rir_channels = read_wav(o.rir)
            if rir_channels != 1:
                raise AudioDeviceError(f"{spec}: rir must be mono")
            rir = np.frombuffer(resample_all(pcm, rir_rate, rate), dtype=np.int16) / 32768.0
        else:
            rir = room_impulse_response(rate, rng=np.random.default_rng(7))
        if not np.any(rir):
            raise AudioDeviceError(f"{spec}: the impulse response is silent")
        played_rms = 32768.0 * 10 ** (PLAYED_REFERENCE_DBFS / 20)
        # Gain so that a voice played at -20 dBFS (active) arrives at echo_db.
        target = 32768.0 * 10 ** (o.echo_db / 20)
        self._rir = rir * target / (played_rms * float(np.sqrt(np.sum(rir**2))))
        self._nfft = 1 << (self.block + len(rir) - 2).bit_length()
        self._rir_fft = np.fft.rfft(self._rir, self._nfft)
        self._tail = np.zeros(len(rir) - 1)
        delay = round(o.delay_ms * rate / 1000)
        self._delay_line = np.zeros(delay)
        self._noise_rms = 32768.0 * 10 ** (o.noise_db / 20)
        self._rng = np.random.default_rng(11)
        self._visitor = np.zeros(0)
        self._lock = threading.Lock()
        self._writer = WavWriter(o.out, rate) if o.out is not None else None
        self._player: Player | None = None
        self._on_block: BlockCallback | None = None
        self._on_played: BlockCallback | None = None
        self._thread = _PacedThread("room", frame_ms / 1000, self._step)

    # --- the visitor ---------------------------------------------------------------------------

    def say(self, pcm: bytes, rate: int) -> float:
        """The visitor speaks ``pcm`` (PCM16 mono at ``rate``) now, mixed with whatever plays;
        returns its length in seconds."""
        voice = np.frombuffer(resample_all(pcm, rate, self.rate), dtype=np.int16) / 1.0
        level = active_rms(voice, self.rate)
        if level > 0:
            voice *= 32768.0 * 10 ** (self.options.visitor_db / 20) / level
        with self._lock:
            pending = self._visitor
            length = max(len(pending), len(voice))
            mixed = np.zeros(length)
            mixed[: len(pending)] += pending
            mixed[: len(voice)] += voice
            self._visitor = mixed
        return len(voice) / self.rate

    # --- the duplex device ---------------------------------------------------------------------

    def start(self, on_block: BlockCallback, player: Player, on_played: BlockCallback) -> None:
        self._on_block, self._player, self._on_played = on_block, player, on_played
        self._thread.start()

    def _step(self) -> None:
        assert self._player is not None and self._on_block is not None
        played = self._player.pull() or bytes(2 * self.block)
        if self._on_played is not None:
            self._on_played(played)
        if self._writer is not None:
            self._writer.write(played)
        self._on_block(self._hear(np.frombuffer(played, dtype=np.int16) / 1.0))
        self.last_block_at = time.monotonic()

    def _hear(self, speaker: np.ndarray) -> bytes:
        distortion = self.options.distortion
        if distortion > 0:  # a cheap speaker's soft clipping: harmonics a linear AEC keeps
            # Unity gain for quiet sounds (echo_db stays the level at the mic), compressed
            # peaks: at 0.3 a voice played at -20 dBFS loses about 6 dB off its loudest peaks.
            drive = 1.0 + 9.0 * distortion
            speaker = 32768.0 * np.tanh(drive * speaker / 32768.0) / drive
        wet = np.fft.irfft(np.fft.rfft(speaker, self._nfft) * self._rir_fft, self._nfft)
        wet = wet[: len(speaker) + len(self._tail)]
        wet[: len(self._tail)] += self._tail
        echo, self._tail = wet[: len(speaker)], wet[len(speaker) :].copy()
        if len(self._delay_line):
            line = np.concatenate([self._delay_line, echo])
            echo, self._delay_line = line[: len(speaker)], line[len(speaker) :]
        mic = echo + self._rng.normal(0.0, self._noise_rms, len(speaker))
        with self._lock:
            take = min(len(self._visitor), len(speaker))
            mic[:take] += self._visitor[:take]
            self._visitor = self._visitor[take:]
        samples = np.clip(np.rint(mic), -32768, 32767).astype(np.int16)
        if self.channels > 1:
            samples = np.repeat(samples, self.channels)
        return samples.tobytes()

    def problem(self) -> str | None:
        return None

    def stop(self) -> None:
        self._thread.stop()
        if self._writer is not None:
            self._writer.close()
