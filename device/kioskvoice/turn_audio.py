"""The turn's audio path: captured frames to ``input_audio_buffer.append``, nothing lost.

Frames arrive on the loop with their :class:`~kioskvoice.dsp.level.BlockLevel`. While the mic
is closed the last ``preroll_ms`` are kept, so the first syllable said just before the press
opens the turn. While it is open, a push-to-talk turn is kept whole (so it can be sent again on
a new session if the link fails before the reply starts) and measured: nothing goes on the wire
until the turn holds sound (:class:`~kioskvoice.dsp.level.TurnMeter`), then the backlog is sent
at once and the rest live. A silent turn therefore never reaches the model. Hands-free turns
stream as captured: the server's VAD decides, and the server keeps them.

Voice barge-in (``voice_barge_in``): every frame first passes the double-talk gate's verdict
(:mod:`kioskvoice.dsp.gate`, judged on the capture thread). While the kiosk's own voice plays,
frames wait in a look-back of :data:`LOOKBACK_FRAMES`; one that leaves it unclaimed goes on as
silence of the same length (the server's audio clock never skips, and its VAD never hears the
kiosk). When the gate finds the visitor, :class:`TalkOver` is posted at once and everything
still waiting goes out as captured: the gate needs a few hundred ms to be sure, and the
visitor's first word is in those.

While the kiosk *listens* (hands-free, between its replies), the only far end is its own cue
sounds and the echo of a reply that just ended. A gate that can judge holds those as echo and
finds the visitor in them (measured at -30 dBFS right after the listening beep: the whole
question reaches the server). One that cannot yet (:data:`~kioskvoice.dsp.gate.UNSURE`: a
fresh start, before the kiosk's first reply) lets the cue's echo through, as with voice
barge-in off; held frames of a reply still go out as silence. Holding it instead cost a
visitor who spoke right after the listening beep of a fresh kiosk their first 0.4-0.7 s
(measured: the server heard 1.1 s of a 1.8 s question).

Why the local gate triggers the barge-in (and the server's ``speech_started`` only backs it
up): the gate must judge every block anyway to keep the echo from the model, and the server's
VAD can only ever hear what the gate lets through, so it can never be earlier; waiting for it
would add the network round trip and its own speech window to the silence the visitor waits
for. The server's VAD still bounds and commits the turn (with its prefix padding), and its
``speech_started`` interrupts too when the gate had nothing to hold (the kiosk thinking).

In push-to-talk the mic is closed while the kiosk speaks, so what the gate lets out waits in
the pre-roll, stretched to hold the whole look-back when the visitor claims it; the turn their
voice opens is ended by them falling quiet for :data:`VOICE_END_S` (:class:`VoiceEnded`).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any

from .dsp.gate import CLEAR, UNSURE, VISITOR
from .dsp.level import BlockLevel, TurnMeter
from .events import TalkOver, VoiceEnded, VoiceHeard
from .realtime.protocol import Protocol
from .realtime.supervisor import Supervisor

log = logging.getLogger(__name__)

CHUNK_BYTES = 24000  # 0.5 s of 24 kHz PCM16 per append when a backlog or a resend goes out
BYTES_PER_S = 48000
LOOKBACK_FRAMES = 60
"""Frames the gate may hold while the kiosk speaks (1.2 s of 20 ms frames): more than the
gate's slowest confirmation of a visitor, so their onset is never replaced by silence."""

VOICE_END_S = 0.8
"""A turn opened by the visitor's voice (push-to-talk voice barge-in) ends after this long
with no block above the silence floor or judged speech, once it has held speech."""

Frame = tuple[bytes, BlockLevel]


class GatedStream:
    """Voice barge-in's stream: what the gate lets through, silence for the kiosk's echo.
    Pure; :meth:`push` returns the frames to pass on, in order, each exactly once."""

    def __init__(self, lookback: int = LOOKBACK_FRAMES) -> None:
        self._held: collections.deque[Frame] = collections.deque()
        self._lookback = lookback

    def push(self, pcm: bytes, level: BlockLevel, *, listening: bool = False) -> list[Frame]:
        """One frame in, the frames to send out. VISITOR: everything held goes out as
        captured, then this frame. CLEAR: what is held goes out as silence (the kiosk's own,
        unclaimed), this frame as captured. ECHO, and UNSURE while the kiosk replies: held;
        the oldest goes out as silence once more than the look-back waits. UNSURE while it
        ``listening`` (only its cue sounds play) with nothing held: out as captured."""
        if level.gate == VISITOR:  # the visitor claims what waits: their onset is in it
            out = [*self._held, (pcm, level)]
            self._held.clear()
            return out
        if listening and level.gate == UNSURE and not self._held:
            # Nothing can be judged yet, and nothing of the kiosk's reply waits (that is kept
            # out as ever): a visitor speaking after the listening cue must lose nothing.
            return [(pcm, level)]
        if level.gate == CLEAR:  # the echo is over: what waits was the kiosk's, unclaimed
            out = [(bytes(len(p)), held) for p, held in self._held]
            self._held.clear()
            return [*out, (pcm, level)]
        self._held.append((pcm, level))
        if len(self._held) <= self._lookback:
            return []
        old, old_level = self._held.popleft()
        return [(bytes(len(old)), old_level)]


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
        voice_barge_in: bool = False,
    ) -> None:
        self._sup = supervisor
        self._gated = GatedStream() if voice_barge_in else None
        self._visitor = False  # the gate's last verdict was VISITOR
        self._post = post
        self._preroll_frames = preroll_frames
        self.preroll: collections.deque[tuple[bytes, BlockLevel]] = collections.deque(
            maxlen=preroll_frames
        )
        self._by_voice = False  # the open turn was opened by the visitor's voice
        self._quiet_s = 0.0  # ... and has been quiet this long since it last held speech
        self._ended = False
        self.meter = TurnMeter(floor_dbfs)
        self.mic_open = False
        self.streaming = False  # hands-free: every frame goes out as captured
        self.listening = True
        """The kiosk is not replying (not thinking or speaking): the executor keeps this."""
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
        if self._gated is None:
            self._route(pcm, level)
            return
        visitor = level.gate == VISITOR
        if visitor and not self._visitor:
            log.info("the double-talk gate hears a visitor over the kiosk's voice")
            self._post(TalkOver())
            if not self.mic_open:  # push-to-talk: the look-back waits for the turn to open
                self.preroll = collections.deque(
                    self.preroll, maxlen=self._preroll_frames + self._gated._lookback + 1
                )
        elif level.gate == CLEAR and self.preroll.maxlen != self._preroll_frames:
            self.preroll = collections.deque(self.preroll, maxlen=self._preroll_frames)
        self._visitor = visitor
        for frame in self._gated.push(pcm, level, listening=self.listening):
            self._route(*frame)

    def _route(self, pcm: bytes, level: BlockLevel) -> None:
        if self.mic_open:
            self._take(pcm, level)
        else:
            self.preroll.append((pcm, level))

    def open(self, *, streaming: bool, by_voice: bool = False) -> None:
        """Start a turn with the pre-roll; ``streaming`` for a hands-free conversation;
        ``by_voice``: the visitor's voice opened it (post :class:`VoiceEnded` when they fall
        quiet)."""
        self.mic_open, self.streaming = True, streaming
        self.audio.clear()
        self._sent = 0
        self.appended = False
        self._session, self._gap = None, False
        self._by_voice, self._quiet_s, self._ended = by_voice, 0.0, False
        self.meter.reset()
        while self.preroll:
            self._take(*self.preroll.popleft())
        self.preroll = collections.deque(maxlen=self._preroll_frames)

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
        if self._by_voice and not self._ended:
            loud = level.voiced or level.dbfs >= self.meter.floor_dbfs
            self._quiet_s = 0.0 if loud else self._quiet_s + len(pcm) / BYTES_PER_S
            if self._quiet_s >= VOICE_END_S:
                self._ended = True
                self._post(VoiceEnded())
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
