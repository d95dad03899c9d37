"""Capture and playback devices, and the one seam between their threads and the event loop.

Device strings: a PortAudio name (substring match) or ``wav:PATH``. A ``wav:`` input loops the
file paced in real time by the monotonic clock; a ``wav:`` output appends every block the
player plays (silence between replies is not written) and stays a valid WAV at any stop.

Audio threads never touch asyncio objects directly: they hand blocks to
:meth:`FrameQueue.push_threadsafe`, the only crossing into the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..dsp.resample import resample_all
from ..errors import AudioDeviceError
from .devices import WAV_PREFIX, find_device, open_portaudio
from .player import Player
from .wavio import WavWriter, read_wav

log = logging.getLogger(__name__)

BlockCallback = Callable[[bytes], None]


class FrameQueue:
    """Bounded queue of audio frames from a device thread to the event loop.

    When full, the oldest frame is dropped and counted: a stalled consumer must never block
    the capture thread, and the newest audio is the most useful.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, maxlen: int = 50) -> None:
        self._loop = loop
        self._frames: collections.deque[bytes] = collections.deque()
        self._maxlen = maxlen
        self._ready = asyncio.Event()
        self.dropped = 0

    def push_threadsafe(self, frame: bytes) -> None:
        """Called from any thread."""
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(self._push, frame)

    def _push(self, frame: bytes) -> None:
        if len(self._frames) >= self._maxlen:
            self._frames.popleft()
            self.dropped += 1
        self._frames.append(frame)
        self._ready.set()

    async def get(self) -> bytes:
        while not self._frames:
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()

    def clear(self) -> None:
        self._frames.clear()


class InputDevice(Protocol):
    rate: int
    channels: int
    last_block_at: float

    def start(self, on_block: BlockCallback) -> None: ...
    def stop(self) -> None: ...


class OutputDevice(Protocol):
    rate: int

    def start(self, player: Player, on_played: BlockCallback | None = None) -> None: ...
    def stop(self) -> None: ...


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


class PortAudioInput:
    """A PortAudio capture stream found by name, delivering blocks from its callback thread."""

    def __init__(self, pa: Any, name: str, *, rate: int, channels: int, frame_ms: int) -> None:
        import pyaudio

        self.device = find_device(pa, name, direction="input", channels=channels)
        self.rate = rate
        self.channels = channels
        self.last_block_at = time.monotonic()
        self._on_block: BlockCallback | None = None
        try:
            self._stream = pa.open(
                format=pyaudio.paInt16,
                channels=channels,
                rate=rate,
                input=True,
                input_device_index=self.device.index,
                frames_per_buffer=rate * frame_ms // 1000,
                stream_callback=self._callback,
                start=False,
            )
        except (OSError, ValueError) as exc:
            raise AudioDeviceError(
                f"cannot open input {self.device.name!r} at {rate} Hz, {channels} ch: {exc}"
            ) from None

    def _callback(self, data: bytes, frames: int, time_info: Any, status: int) -> tuple:
        import pyaudio

        self.last_block_at = time.monotonic()
        try:
            assert self._on_block is not None
            self._on_block(data)
        except Exception:
            log.exception("capture callback failed")
        return (None, pyaudio.paContinue)

    def start(self, on_block: BlockCallback) -> None:
        self._on_block = on_block
        self._stream.start_stream()

    def stop(self) -> None:
        _close_stream(self._stream)


class PortAudioOutput:
    """A PortAudio playback stream found by name, at the device's default rate, mono."""

    def __init__(self, pa: Any, name: str, *, frame_ms: int) -> None:
        import pyaudio

        self.device = find_device(pa, name, direction="output", channels=1)
        self.rate = self.device.default_rate
        self._block_samples = self.rate * frame_ms // 1000
        self._player: Player | None = None
        self._on_played: BlockCallback | None = None
        try:
            self._stream = pa.open(
                format=pyaudio.paInt16,
                channels=1,
                rate=self.rate,
                output=True,
                output_device_index=self.device.index,
                frames_per_buffer=self._block_samples,
                stream_callback=self._callback,
                start=False,
            )
        except (OSError, ValueError) as exc:
            raise AudioDeviceError(
                f"cannot open output {self.device.name!r} at {self.rate} Hz: {exc}"
            ) from None

    def _callback(self, data: Any, frames: int, time_info: Any, status: int) -> tuple:
        import pyaudio

        block = None
        if self._player is not None and frames * 2 == self._player.block_bytes:
            block = self._player.pull()
        if block is None:
            block = bytes(2 * frames)
        if self._on_played is not None:
            self._on_played(block)
        return (block, pyaudio.paContinue)

    def start(self, player: Player, on_played: BlockCallback | None = None) -> None:
        self._player = player
        self._on_played = on_played
        self._stream.start_stream()

    def stop(self) -> None:
        _close_stream(self._stream)


def _close_stream(stream: Any) -> None:
    # A stream on an unplugged device raises on stop; closing is all that is left to do.
    with contextlib.suppress(OSError):
        stream.stop_stream()
    with contextlib.suppress(OSError):
        stream.close()


class AudioSystem:
    """Opens the configured devices; owns the PortAudio instance when one is needed."""

    def __init__(self) -> None:
        self._pa: Any = None

    def _portaudio(self) -> Any:
        if self._pa is None:
            self._pa = open_portaudio()
        return self._pa

    def open_input(self, spec: str, *, rate: int, channels: int, frame_ms: int) -> InputDevice:
        if spec.startswith(WAV_PREFIX):
            path = Path(spec[len(WAV_PREFIX) :]).expanduser()
            return WavInput(path, rate=rate, channels=channels, frame_ms=frame_ms)
        return PortAudioInput(
            self._portaudio(), spec, rate=rate, channels=channels, frame_ms=frame_ms
        )

    def open_output(self, spec: str, *, frame_ms: int) -> OutputDevice:
        if spec.startswith(WAV_PREFIX):
            path = Path(spec[len(WAV_PREFIX) :]).expanduser()
            return WavOutput(path, frame_ms=frame_ms)
        return PortAudioOutput(self._portaudio(), spec, frame_ms=frame_ms)

    def close(self) -> None:
        if self._pa is not None:
            self._pa.terminate()
            self._pa = None
