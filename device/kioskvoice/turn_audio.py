"""The turn's audio path: captured frames to ``input_audio_buffer.append``, nothing lost.

Frames arrive on the loop with their :class:`~kioskvoice.dsp.level.BlockLevel`. While the mic
is closed the last ``preroll_ms`` are kept, so the first syllable said just before the press
opens the turn. While it is open, a push-to-talk turn is kept whole (so it can be sent again on
a new session if the link fails before the reply starts) and measured: nothing goes on the wire
until the turn holds sound (:class:`~kioskvoice.dsp.level.TurnMeter`), then the backlog is sent
at once and the rest live. A silent turn therefore never reaches the model. Hands-free turns
stream as captured: the server's VAD decides, and the server keeps them.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

from .dsp.level import BlockLevel, TurnMeter
from .events import VoiceHeard
from .realtime.protocol import Protocol
from .realtime.supervisor import Supervisor

log = logging.getLogger(__name__)

CHUNK_BYTES = 24000  # 0.5 s of 24 kHz PCM16 per append when a backlog or a resend goes out
BYTES_PER_S = 48000


class TurnAudio:
    """Owns the current turn's audio. Loop thread only; no I/O but ``supervisor.send``.

    ``post`` receives :class:`VoiceHeard` the moment the open turn first holds sound.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        post: Callable[[Any], None],
        *,
        preroll_frames: int,
        floor_dbfs: float,
    ) -> None:
        self._sup = supervisor
        self._post = post
        self.preroll: collections.deque[tuple[bytes, BlockLevel]] = collections.deque(
            maxlen=preroll_frames
        )
        self.meter = TurnMeter(floor_dbfs)
        self.mic_open = False
        self.streaming = False  # hands-free: every frame goes out as captured
        self.audio = bytearray()  # the push-to-talk turn, kept until its reply starts
        self._sent = 0  # bytes of ``audio`` handed to the link
        self.appended = False  # something of this turn went on the wire
        self._session: str | None = None
        self._gap = False

    @property
    def seconds(self) -> float:
        return len(self.audio) / BYTES_PER_S

    def frame(self, pcm: bytes, level: BlockLevel) -> None:
        """One captured frame (24 kHz PCM16 mono) and its level."""
        if self.mic_open:
            self._take(pcm, level)
        else:
            self.preroll.append((pcm, level))

    def open(self, *, streaming: bool) -> None:
        """Start a turn with the pre-roll; ``streaming`` for a hands-free conversation."""
        self.mic_open, self.streaming = True, streaming
        self.audio.clear()
        self._sent = 0
        self.appended = False
        self._session, self._gap = None, False
        self.meter.reset()
        while self.preroll:
            self._take(*self.preroll.popleft())

    def close(self) -> None:
        """Stop taking frames (the turn's audio stays until :meth:`forget`)."""
        self.mic_open = False

    def forget(self) -> None:
        """The turn is answered or abandoned: nothing left to send again."""
        self.audio.clear()
        self._sent = 0

    def _take(self, pcm: bytes, level: BlockLevel) -> None:
        if self.streaming:
            self._append(pcm)
            return
        self.audio += pcm
        if self.meter.add(level):
            self._post(VoiceHeard())
        if not self.meter.heard:
            return  # held back: a turn with nothing in it never reaches the model
        while self._sent < len(self.audio):
            chunk = bytes(self.audio[self._sent : self._sent + CHUNK_BYTES])
            self._sent += len(chunk)
            self._append(chunk)

    def _append(self, pcm: bytes) -> None:
        session = self._current_session()
        if self._session is None and not self._gap:
            self._session = session
        self.appended = True
        if session != self._session or not self._sup.send(Protocol.append, pcm, droppable=True):
            self._gap = True

    def _current_session(self) -> str | None:
        return self._sup.link.session_id if self._sup.link else None

    def deliver(self) -> None:
        """Commit the turn and ask for a response; first send its audio again if the live
        stream missed any of it or went to another session."""
        session = self._current_session()
        if self._gap or session != self._session or self._sent < len(self.audio):
            self._sup.send(Protocol.clear)
            for start in range(0, len(self.audio), CHUNK_BYTES):
                self._sup.send(Protocol.append, bytes(self.audio[start : start + CHUNK_BYTES]))
            log.info("sent the turn's %.1f s of audio again", self.seconds)
            self._session, self._gap, self._sent = session, False, len(self.audio)
        self._sup.send(Protocol.commit)
        self._sup.send(Protocol.response_create)

    def discard(self) -> None:
        """Drop the turn; the server's buffer is cleared only if anything reached it."""
        self.mic_open = False
        if self.appended:
            self._sup.send(Protocol.clear)
        self.forget()
