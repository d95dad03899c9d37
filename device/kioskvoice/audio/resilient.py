"""Capture and playback that survive devices coming and going: the daemon's audio."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import AudioDeviceError
from .devices import WAV_PREFIX, open_portaudio
from .player import Player
from .portaudio import PortAudioDuplex
from .room import ROOM_PREFIX, RoomDevice
from .streams import BlockCallback, open_input, open_output

log = logging.getLogger(__name__)

LostCallback = Callable[[str], None]

STALL_S = 1.5
"""No captured block (or playback callback) this long means the device is lost."""


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

    @property
    def output_latency_s(self) -> float:
        """From a block handed to the output stream to its sound leaving the speaker."""
        stream = self.duplex if self.duplex is not None else self.speaker
        return float(getattr(stream, "output_latency_s", 0.0))

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
        stall_s: float = STALL_S,
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
        room = _room(self.input_spec, self.output_spec, self.rate, self.channels, self.frame_ms)
        if room is not None:
            return _Session(None, duplex=room)  # type: ignore[arg-type]
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
        return open_input(
            pa, self.input_spec, rate=self.rate, channels=self.channels, frame_ms=self.frame_ms
        )

    def _open_output(self, pa: Any) -> Any:
        return open_output(pa, self.output_spec, frame_ms=self.frame_ms, rate=self.output_rate)

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
        # What was handed to the device is not heard yet for this long: truncating a reply
        # on barge-in counts only what left the speaker (each opening may differ).
        self._player.output_latency_s = session.output_latency_s
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


def room_of(audio: ResilientAudio) -> RoomDevice | None:
    """The virtual room ``audio`` runs on, when its devices are one (``room:``)."""
    session = audio._session
    duplex = session.duplex if session is not None else None
    return duplex if isinstance(duplex, RoomDevice) else None


def _room(
    input_spec: str, output_spec: str, rate: int, channels: int, frame_ms: int
) -> RoomDevice | None:
    """A ``room:`` device when the specs name one (both must: it is the microphone and the
    speaker at once), else None."""
    if ROOM_PREFIX not in (input_spec[:5], output_spec[:5]):
        return None
    if input_spec != output_spec:
        raise AudioDeviceError(
            "a room: device is the microphone and the speaker at once: set "
            "audio.input_device and audio.output_device to the same room: string"
        )
    return RoomDevice(input_spec, rate=rate, channels=channels, frame_ms=frame_ms)
