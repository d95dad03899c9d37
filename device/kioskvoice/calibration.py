"""A fresh kiosk learns its room before the first visitor: the calibration sound.

A kiosk that has learnt nothing of its room yet (a fresh install, new audio devices,
``echo.json`` deleted) finds the echo delay in its first reply, starts its echo filter afresh
there, and needs seconds of its own voice to learn the room: a visitor talking over that first
reply was heard late (at -30 dBFS, 10 dB under the echo: 1-4 s in the daemon, or not at all).
So with voice barge-in on, ``[dsp] reference_delay_ms = "auto"``, ``[dsp] calibrate`` (the
default) and a state directory to keep the result in, such a kiosk plays :data:`SECONDS` of
soft noise once at start. Noise excites every band at once: the delay is found in its first
second, the filter converges in the rest and proves itself
(:class:`~kioskvoice.dsp.echo_path.FilterProof`), and :mod:`kioskvoice.echo_memory` keeps it,
so every later start is primed and plays nothing.

The double-talk gate learns afresh once the sound has ended (:meth:`CaptureChain.relearn_gate
<kioskvoice.dsp.chain.CaptureChain.relearn_gate>`): what a linear canceller leaves of noise is
far less than what it leaves of a distorting speaker's voice, and a gate that expected the
noise's residual took the first reply's first syllables for a visitor (measured offline).

Measured offline (the real room device and chain, six rooms at distortion 0.3 and 0.5, six
voices; a visitor at -30 dBFS 0.5 to 4.5 s into the first reply): after the sound, 0 of 44
talk-overs from 1.5 s in were found later than 500 ms (median 150 ms, as a kiosk in service);
without it 45 of 66 were late and many never found. No false visitor in 283 s of replies.

A press during the sound stops it at once: the visitor's beep and question come first (the
canceller keeps what it learnt; it learns the rest in the first reply).
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from .audio.player import Player
from .dsp.chain import CaptureChain
from .dsp.echo_path import tilted_noise
from .events import State
from .system.logging import log_event

log = logging.getLogger(__name__)

SECONDS = 4.0
"""How long the sound is: the delay estimator's first window (about 1 s), then the
:data:`~kioskvoice.dsp.echo_path.PATH_MIN_S` a filter needs to prove itself."""
LEVEL_DBFS = -28.0
"""Its RMS at the speaker: under a reply's voice (about -20 dBFS), over a quiet room."""
ITEM = "calibration"
RATE = 24000  # the player's source rate
ECHO_S = 0.5  # after the sound, its echo dies away before the gate learns afresh
FADE_S = 0.3


def calibration_sound(seconds: float = SECONDS, rate: int = RATE) -> bytes:
    """Seeded noise tilted toward the lows (as a voice is), faded in and out: PCM16 mono."""
    noise = tilted_noise(int(seconds * rate), seed=16, rms_dbfs=LEVEL_DBFS)
    fade = int(FADE_S * rate)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
    noise[:fade] *= ramp
    noise[-fade:] *= ramp[::-1]
    return np.clip(np.rint(noise), -32768, 32767).astype(np.int16).tobytes()


class Calibration:
    """Plays the sound once (:meth:`run`, on the loop) and stops it on the first press
    (:meth:`on_state`, a state listener). Construction does no I/O."""

    def __init__(self, player: Player, chain: CaptureChain) -> None:
        self._player = player
        self._chain = chain
        self._playing = False

    async def run(self) -> None:
        """Play it to its end (or until a press stops it), then let the gate learn afresh."""
        pcm = calibration_sound()
        log_event(
            log,
            logging.INFO,
            "echo_calibration",
            f"nothing learnt of this room yet: {SECONDS:g} s of soft noise to learn it",
        )
        self._playing = True
        self._player.feed(ITEM, pcm)
        self._player.finish()
        want_ms = len(pcm) * 1000 // (2 * RATE) - 50  # the resampler may end a little short
        # The device thread plays it: its progress is polled, at most until a stalled device
        # would have played it twice over.
        for _ in range(int(2 * SECONDS / 0.1)):
            if not self._playing or self._player.played_ms(ITEM) >= want_ms:
                break
            await asyncio.sleep(0.1)
        stopped = not self._playing
        self._playing = False
        await asyncio.sleep(ECHO_S)
        self._chain.relearn_gate()
        if stopped:
            log_event(log, logging.INFO, "echo_calibration", "calibration sound cut by a press")

    def on_state(self, new: State) -> None:
        """The kiosk left idle (a press): the visitor comes first."""
        if self._playing and new not in (State.IDLE, State.OFFLINE):
            self._playing = False
            self._player.flush()
