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

import numpy as np

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


LostCallback = Callable[[str], None]


class _Session:
    """The devices of one opening: a duplex stream, or an input and an output; and the
    PortAudio instance they were opened on (None for ``wav:`` devices alone)."""

    def __init__(
        self,
        pa: Any,
        *,
        duplex: PortAudioDuplex | None = None,
        mic: Any = None,
        speaker: Any = None,
    ) -> None:
        self.pa = pa
        self.duplex = duplex
        self.mic = mic
        self.speaker = speaker

    @property
    def output_rate(self) -> int:
        return self.duplex.rate if self.duplex is not None else self.speaker.rate

    def start(self, on_block: BlockCallback, player: Player, on_played: BlockCallback) -> None:
        if self.duplex is not None:
            self.duplex.start(on_block, player, on_played)
        else:
            self.speaker.start(player, on_played)
            self.mic.start(on_block)

    def problem(self, now: float, stall_s: float) -> str | None:
        """Why this opening no longer works, or None."""
        for stream in (self.duplex, self.mic, self.speaker):
            if stream is None:
                continue
            check = getattr(stream, "problem", None)
            reason = check() if check is not None else None
            if reason is not None:
                return reason
            name = getattr(getattr(stream, "device", None), "name", "wav")
            block_at = getattr(stream, "last_block_at", None)
            if block_at is not None and now - block_at > stall_s:
                return f"no audio from {name!r} for {now - block_at:.1f} s"
            pull_at = getattr(stream, "last_pull_at", None)
            if pull_at is not None and now - pull_at > stall_s:
                return f"no playback callback from {name!r} for {now - pull_at:.1f} s"
        return None

    def close(self) -> None:
        """Stop the streams and terminate PortAudio (a wedged driver can hang here)."""
        for stream in (self.duplex, self.mic, self.speaker):
            if stream is not None:
                stream.stop()
        if self.pa is not None:
            with contextlib.suppress(Exception):
                self.pa.terminate()
            self.pa = None


class ResilientAudio:
    """Capture and playback that survive devices coming and going.

    ``input_spec``/``output_spec`` are PortAudio names or ``wav:PATH``. When both name the same
    PortAudio device and it offers ``channels`` both ways, one full-duplex stream carries
    capture and playback (one clock, one callback); otherwise two streams.

    A supervisor thread watches the streams every ``poll_s``. A stream that raises or stops,
    or no captured block (or no playback callback) for ``stall_s`` (1.5 s: a loss is known
    within 2 s), means the device is lost:
    ``on_lost(reason)`` is called, the streams are closed, PortAudio is terminated, and every
    ``retry_s`` a new PortAudio instance (which re-enumerates the devices) tries to open the
    devices by name again; once blocks flow again ``on_back()`` is called. Both callbacks run
    on the supervisor thread.

    :attr:`last_progress_at` (monotonic) advances while capture flows and while recovery
    attempts run normally; it stops when a PortAudio call wedges (a driver hanging in close,
    PortAudio issue #1037), which is what a watchdog should catch.

    Lifecycle: construct (no I/O), :meth:`open` (opens the devices or raises
    :class:`AudioDeviceError`; :attr:`output_rate` is then known, for the player), then
    :meth:`start`, then :meth:`stop` (blocks up to about ``stall_s``: call it off the loop).
    """

    def __init__(
        self,
        input_spec: str,
        output_spec: str,
        *,
        rate: int,
        channels: int,
        frame_ms: int,
        on_lost: LostCallback | None = None,
        on_back: Callable[[], None] | None = None,
        stall_s: float = 1.5,
        retry_s: float = 1.0,
        poll_s: float = 0.1,
        duplex: bool = True,
        portaudio: Callable[[], Any] = open_portaudio,
    ) -> None:
        self.input_spec = input_spec
        self.output_spec = output_spec
        self.rate = rate
        self.channels = channels
        self.frame_ms = frame_ms
        self.on_lost = on_lost
        self.on_back = on_back
        self._stall_s = stall_s
        self._retry_s = retry_s
        self._poll_s = poll_s
        self._want_duplex = (
            duplex and input_spec == output_spec and not input_spec.startswith(WAV_PREFIX)
        )
        self._portaudio = portaudio
        self._session: _Session | None = None
        self._generation = 0
        self._on_block: BlockCallback | None = None
        self._on_played: BlockCallback | None = None
        self._player: Player | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "closed"  # closed, running, lost, starting
        self._started_at = 0.0
        self._next_try = 0.0
        self._delivered_at = 0.0
        self.output_rate: int | None = None
        """The speaker's rate, known after :meth:`open` (the capture rate in full duplex)."""
        self.duplex = False
        """True when one full-duplex stream is in use."""
        self.lost: str | None = None
        """Why the devices are lost, while they are; None otherwise."""
        self.losses = 0
        """How many times the devices were lost."""
        self.last_progress_at = time.monotonic()

    @property
    def output_block_samples(self) -> int:
        """Samples per playback block (for :class:`Player`)."""
        assert self.output_rate is not None, "open() first"
        return self.output_rate * self.frame_ms // 1000

    # --- opening -------------------------------------------------------------------------

    def open(self) -> None:
        """Open the devices now; raises :class:`AudioDeviceError` if they are not there."""
        session = self._open_session()
        self._session = session
        self.output_rate = session.output_rate
        self.duplex = session.duplex is not None
        # Keep the first opening's shape: the player was built for its output rate.
        self._want_duplex = self.duplex

    def _open_session(self) -> _Session:
        needs_pa = not (
            self.input_spec.startswith(WAV_PREFIX) and self.output_spec.startswith(WAV_PREFIX)
        )
        pa = self._portaudio() if needs_pa else None
        session = _Session(pa)
        try:
            if self._want_duplex:
                try:
                    session.duplex = PortAudioDuplex(
                        pa,
                        self.input_spec,
                        rate=self.rate,
                        channels=self.channels,
                        frame_ms=self.frame_ms,
                    )
                    return session
                except AudioDeviceError as exc:
                    if self.output_rate is None:
                        log.info("full duplex unavailable, using two streams: %s", exc)
            session.mic = self._open_input(pa)
            session.speaker = self._open_output(pa)
            return session
        except BaseException:
            session.close()
            raise

    def _open_input(self, pa: Any) -> Any:
        if self.input_spec.startswith(WAV_PREFIX):
            path = Path(self.input_spec[len(WAV_PREFIX) :]).expanduser()
            return WavInput(path, rate=self.rate, channels=self.channels, frame_ms=self.frame_ms)
        return PortAudioInput(
            pa, self.input_spec, rate=self.rate, channels=self.channels, frame_ms=self.frame_ms
        )

    def _open_output(self, pa: Any) -> Any:
        if self.output_spec.startswith(WAV_PREFIX):
            path = Path(self.output_spec[len(WAV_PREFIX) :]).expanduser()
            return WavOutput(path, frame_ms=self.frame_ms, rate=self.output_rate or 24000)
        return PortAudioOutput(pa, self.output_spec, frame_ms=self.frame_ms, rate=self.output_rate)

    # --- running -------------------------------------------------------------------------

    def start(
        self, on_block: BlockCallback, player: Player, on_played: BlockCallback | None = None
    ) -> None:
        """Start capture (``on_block`` gets each raw interleaved block) and playback (blocks
        pulled from ``player``, each then given to ``on_played``), and the supervisor."""
        if self._session is None:
            self.open()
        self._on_block = on_block
        self._player = player
        self._on_played = on_played
        assert self._session is not None
        self._start_session(self._session)
        self._state = "running"
        self.last_progress_at = time.monotonic()
        self._thread = threading.Thread(target=self._supervise, name="audio-supervisor")
        self._thread.daemon = True
        self._thread.start()

    def _start_session(self, session: _Session) -> None:
        self._generation += 1
        generation = self._generation
        on_block, on_played = self._on_block, self._on_played

        def deliver(block: bytes) -> None:
            if generation == self._generation and on_block is not None:
                self._delivered_at = time.monotonic()
                on_block(block)

        def played(block: bytes) -> None:
            if generation == self._generation and on_played is not None:
                on_played(block)

        assert self._player is not None
        self._started_at = time.monotonic()
        session.start(deliver, self._player, played)

    def _supervise(self) -> None:
        while not self._stop.wait(self._poll_s):
            now = time.monotonic()
            try:
                if self._state == "running":
                    assert self._session is not None
                    problem = self._session.problem(now, self._stall_s)
                    if problem is None:
                        self.last_progress_at = now
                    else:
                        self._lose(problem)
                elif self._state == "starting":
                    if self._delivered_at >= self._started_at:
                        self._state = "running"
                        self.lost = None
                        log.info("audio devices are back")
                        self._notify(self.on_back)
                    elif now - self._started_at > self._stall_s:
                        self._close_session()  # opened, but nothing flows: try again
                        self._state = "lost"
                        self._next_try = time.monotonic() + self._retry_s
                elif self._state == "lost" and now >= self._next_try:
                    self._reopen()
                if self._state != "running":
                    self.last_progress_at = time.monotonic()
            except Exception:
                log.exception("audio supervisor step failed")

    def _lose(self, reason: str) -> None:
        self._state = "lost"
        self.lost = reason
        self.losses += 1
        log.warning("audio device lost: %s", reason)
        self._notify(self.on_lost, reason)
        self._close_session()
        self._next_try = time.monotonic() + self._retry_s

    def _reopen(self) -> None:
        try:
            session = self._open_session()
        except (AudioDeviceError, OSError) as exc:
            log.debug("audio devices not back yet: %s", exc)
            self._next_try = time.monotonic() + self._retry_s
            return
        self._session = session
        try:
            self._start_session(session)
        except OSError as exc:
            log.debug("audio devices opened but did not start: %s", exc)
            self._close_session()
            self._next_try = time.monotonic() + self._retry_s
            return
        self._state = "starting"

    def _close_session(self) -> None:
        session, self._session = self._session, None
        self._generation += 1  # late callbacks from the old streams are dropped
        if session is not None:
            session.close()

    def _notify(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("audio device callback failed")

    def stop(self) -> None:
        """Stop supervising and close everything (idempotent)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._stall_s + 1.0)
            if thread.is_alive():
                log.error("audio supervisor is stuck in a PortAudio call; abandoning it")
                return
        self._close_session()
        self._state = "closed"
