"""``wav:`` devices: a WAV file as a microphone (looped, paced in real time by the monotonic
clock) or as a speaker (every block played is appended; the file is a valid WAV at any stop,
silence between replies is not written)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..dsp.resample import resample_all
from ..errors import AudioDeviceError
from ..wavio import WavWriter, read_wav
from .player import Player

log = logging.getLogger(__name__)

BlockCallback = Callable[[bytes], None]


class _PacedThread:
    """A thread calling ``step`` every ``period_s`` on the monotonic clock, until stopped."""

    def __init__(self, name: str, period_s: float, step: Callable[[], None]) -> None:
        self._period_s = period_s
        self._step = step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                log.exception("%s: audio step failed", self._thread.name)
            deadline += self._period_s
            delay = deadline - time.monotonic()
            if delay < -0.2:
                deadline = time.monotonic()  # fell far behind: resync rather than burst
            elif delay > 0:
                self._stop.wait(delay)


class WavInput:
    """A WAV file as a microphone: looped, one block every ``frame_ms`` in real time."""

    def __init__(self, path: Path, *, rate: int, channels: int, frame_ms: int) -> None:
        frames, file_rate, file_channels = read_wav(path)
        if file_channels != channels:
            raise AudioDeviceError(
                f"audio.input_channels={channels} but wav:{path} has {file_channels} channel(s)"
            )
        frames = resample_all(frames, file_rate, rate, channels)
        self.block_bytes = 2 * channels * rate * frame_ms // 1000
        if len(frames) < self.block_bytes:
            raise AudioDeviceError(f"wav:{path} is shorter than one {frame_ms} ms block")
        self.rate = rate
        self.channels = channels
        self.last_block_at = time.monotonic()
        self._frames = frames
        self._pos = 0
        self._on_block: BlockCallback | None = None
        self._thread = _PacedThread(f"wav-in:{path.name}", frame_ms / 1000, self._step)

    def start(self, on_block: BlockCallback) -> None:
        self._on_block = on_block
        self._thread.start()

    def _step(self) -> None:
        end = self._pos + self.block_bytes
        block = self._frames[self._pos : end]
        if len(block) < self.block_bytes:
            end = self.block_bytes - len(block)
            block += self._frames[:end]
        self._pos = end
        self.last_block_at = time.monotonic()
        assert self._on_block is not None
        self._on_block(block)

    def stop(self) -> None:
        self._thread.stop()


class WavOutput:
    """A WAV file as a speaker at 24 kHz: pulls a block every ``frame_ms`` in real time."""

    output_latency_s = 0.0  # a block is "heard" when it is written

    def __init__(self, path: Path, *, frame_ms: int, rate: int = 24000) -> None:
        self.rate = rate
        self.path = path
        self._frame_ms = frame_ms
        self._writer = WavWriter(path, rate)
        self._player: Player | None = None
        self._on_played: BlockCallback | None = None
        self._thread = _PacedThread(f"wav-out:{path.name}", frame_ms / 1000, self._step)

    def start(self, player: Player, on_played: BlockCallback | None = None) -> None:
        self._player = player
        self._on_played = on_played
        self._thread.start()

    def _step(self) -> None:
        assert self._player is not None
        block = self._player.pull()
        if block is not None:
            self._writer.write(block)
        if self._on_played is not None:
            self._on_played(block if block is not None else bytes(self._player.block_bytes))

    def stop(self) -> None:
        self._thread.stop()
        self._writer.close()
