"""Capture and playback devices, and the one seam between their threads and the event loop.

Device strings: a PortAudio name (substring match, :mod:`.portaudio`) or ``wav:PATH``
(:mod:`.wavdev`); :func:`open_input` and :func:`open_output` pick by the string.
:mod:`.resilient` keeps them working while devices come and go.

Audio threads never touch asyncio objects directly: they hand blocks to
:meth:`FrameQueue.push_threadsafe`, the only crossing into the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .devices import WAV_PREFIX
from .player import Player
from .portaudio import PortAudioInput, PortAudioOutput
from .wavdev import WavInput, WavOutput

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


def open_input(pa: Any, spec: str, *, rate: int, channels: int, frame_ms: int) -> Any:
    """The capture device ``spec`` names (``pa``: a PortAudio instance, unused for ``wav:``)."""
    if spec.startswith(WAV_PREFIX):
        path = Path(spec[len(WAV_PREFIX) :]).expanduser()
        return WavInput(path, rate=rate, channels=channels, frame_ms=frame_ms)
    return PortAudioInput(pa, spec, rate=rate, channels=channels, frame_ms=frame_ms)


def open_output(pa: Any, spec: str, *, frame_ms: int, rate: int | None = None) -> Any:
    """The playback device ``spec`` names; ``rate`` None: the device's (``wav:``: 24 kHz)."""
    if spec.startswith(WAV_PREFIX):
        path = Path(spec[len(WAV_PREFIX) :]).expanduser()
        return WavOutput(path, frame_ms=frame_ms, rate=rate or 24000)
    return PortAudioOutput(pa, spec, frame_ms=frame_ms, rate=rate)
