"""PortAudio streams by device name: capture, playback, and one full-duplex stream when both
are the same card. Callbacks run on PortAudio's threads and only hand blocks on."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import AudioDeviceError
from .devices import find_device
from .player import Player

log = logging.getLogger(__name__)

BlockCallback = Callable[[bytes], None]


class _PortAudioStream:
    """What every PortAudio stream of ours shares: its health check and its teardown."""

    _stream: Any
    device: Any
    _direction = ""

    def problem(self) -> str | None:
        """Why the stream no longer runs, or None (see :func:`_stream_problem`)."""
        label = f"{self._direction} {self.device.name!r}".strip()
        return _stream_problem(self._stream, label)

    def stop(self) -> None:
        _close_stream(self._stream)

    @property
    def output_latency_s(self) -> float:
        """PortAudio's estimate of the time from a played block's callback to the speaker
        (0 for a capture stream, or when PortAudio cannot say)."""
        if self._direction == "input":
            return 0.0
        try:
            return max(0.0, float(self._stream.get_output_latency()))
        except (OSError, ValueError, AttributeError):
            return 0.0


class PortAudioInput(_PortAudioStream):
    """A PortAudio capture stream found by name, delivering blocks from its callback thread."""

    _direction = "input"

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


class PortAudioOutput(_PortAudioStream):
    """A PortAudio playback stream found by name, at ``rate`` (default: the device's default
    rate), mono, or stereo with the same samples on both channels when the device refuses
    mono. ``last_pull_at`` is when the stream last asked for a block."""

    _direction = "output"

    def __init__(self, pa: Any, name: str, *, frame_ms: int, rate: int | None = None) -> None:
        import pyaudio

        self.device = find_device(pa, name, direction="output", channels=1)
        self.rate = rate or self.device.default_rate
        self._block_samples = self.rate * frame_ms // 1000
        self._player: Player | None = None
        self._on_played: BlockCallback | None = None
        self.last_pull_at = time.monotonic()
        self.channels = 0
        error: Exception | None = None
        for channels in (1, 2):
            if channels > 1 and self.device.max_output_channels < channels:
                break
            try:
                self._stream = pa.open(
                    format=pyaudio.paInt16,
                    channels=channels,
                    rate=self.rate,
                    output=True,
                    output_device_index=self.device.index,
                    frames_per_buffer=self._block_samples,
                    stream_callback=self._callback,
                    start=False,
                )
            except (OSError, ValueError) as exc:
                error = exc
                continue
            self.channels = channels
            break
        if not self.channels:
            raise AudioDeviceError(
                f"cannot open output {self.device.name!r} at {self.rate} Hz: {error}"
            ) from None

    def _callback(self, data: Any, frames: int, time_info: Any, status: int) -> tuple:
        import pyaudio

        self.last_pull_at = time.monotonic()
        block = _pull(self._player, frames)
        if self._on_played is not None:
            try:
                self._on_played(block)
            except Exception:
                log.exception("playback callback failed")
        return (_spread(block, self.channels), pyaudio.paContinue)

    def start(self, player: Player, on_played: BlockCallback | None = None) -> None:
        self._player = player
        self._on_played = on_played
        self._stream.start_stream()


class PortAudioDuplex(_PortAudioStream):
    """One full-duplex PortAudio stream on one device: capture and playback in the same
    callback, on one clock.

    PyAudio opens both directions with one channel count, so the device must offer
    ``channels`` for output too (the speaker gets the mono reply on every channel); the
    output runs at the capture ``rate``. In each callback the player's block is pulled and
    handed to ``on_played`` (the echo canceller's reference) *before* the captured block goes
    to ``on_block``, as the offline ``kioskvoice dsp`` tool does.
    """

    def __init__(self, pa: Any, name: str, *, rate: int, channels: int, frame_ms: int) -> None:
        import pyaudio

        self.device = find_device(pa, name, direction="input", channels=channels)
        if self.device.max_output_channels < channels:
            raise AudioDeviceError(
                f"{self.device.name!r} has {self.device.max_output_channels} output channel(s), "
                f"full duplex needs {channels}"
            )
        self.rate = rate
        self.channels = channels
        self.last_block_at = self.last_pull_at = time.monotonic()
        self._on_block: BlockCallback | None = None
        self._player: Player | None = None
        self._on_played: BlockCallback | None = None
        try:
            self._stream = pa.open(
                format=pyaudio.paInt16,
                channels=channels,
                rate=rate,
                input=True,
                output=True,
                input_device_index=self.device.index,
                output_device_index=self.device.index,
                frames_per_buffer=rate * frame_ms // 1000,
                stream_callback=self._callback,
                start=False,
            )
        except (OSError, ValueError) as exc:
            raise AudioDeviceError(
                f"cannot open {self.device.name!r} full duplex at {rate} Hz, {channels} ch: {exc}"
            ) from None

    def _callback(self, data: bytes, frames: int, time_info: Any, status: int) -> tuple:
        import pyaudio

        self.last_block_at = self.last_pull_at = time.monotonic()
        block = _pull(self._player, frames)
        try:
            if self._on_played is not None:
                self._on_played(block)
            if self._on_block is not None:
                self._on_block(data)
        except Exception:
            log.exception("duplex callback failed")
        return (_spread(block, self.channels), pyaudio.paContinue)

    def start(
        self, on_block: BlockCallback, player: Player, on_played: BlockCallback | None = None
    ) -> None:
        self._on_block = on_block
        self._player = player
        self._on_played = on_played
        self._stream.start_stream()


def _pull(player: Player | None, frames: int) -> bytes:
    """The player's next block for a device asking for ``frames`` mono frames, or silence."""
    block = None
    if player is not None and frames * 2 == player.block_bytes:
        block = player.pull()
    return block if block is not None else bytes(2 * frames)


def _spread(block: bytes, channels: int) -> bytes:
    """Mono PCM16 to ``channels`` identical interleaved channels."""
    if channels == 1:
        return block
    return np.repeat(np.frombuffer(block, dtype=np.int16), channels).tobytes()


def _stream_problem(stream: Any, what: str) -> str | None:
    """None while a started stream runs; else why not (it raised, or stopped by itself)."""
    try:
        if stream.is_active():
            return None
    except OSError as exc:
        return f"{what}: {exc}"
    return f"{what}: the stream stopped"


def _close_stream(stream: Any) -> None:
    # A stream on an unplugged device raises on stop; closing is all that is left to do.
    with contextlib.suppress(OSError):
        stream.stop_stream()
    with contextlib.suppress(OSError):
        stream.close()
