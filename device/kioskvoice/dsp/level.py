"""Is anybody there? Per-block levels of the captured audio, and a verdict per turn.

The capture thread measures each block once (:func:`measure`): the level of the cleaned audio
(after echo cancellation and noise suppression, so the kiosk's own beep at the press is not
mistaken for a visitor), the raw samples at full scale (clipping), and the Speex speech
probability. The loop folds a turn's blocks into a :class:`TurnMeter`, which decides whether
the turn held anything worth sending and whether the microphone clipped.

Pure and cheap: numpy over one block, no state but the meter's counters, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CLIP_SAMPLE = 32700
"""A raw sample this close to full scale counts as clipped."""
CLIP_WARN_FRACTION = 0.005
"""A turn with at least this share of clipped samples is logged as clipping (0.5 %)."""
SPEECH_PROBABILITY = 0.5
"""A Speex speech probability from here on counts as speech."""
SILENT_DBFS = -120.0
"""The level reported for digital silence or a stuck (constant) channel."""


@dataclass(frozen=True, slots=True)
class BlockLevel:
    """One captured block, measured."""

    dbfs: float
    """RMS of the cleaned audio with its DC removed (a stuck channel is silent), dBFS."""
    clipped: int
    """Raw samples, over all captured channels, at full scale."""
    samples: int
    """Raw samples, over all captured channels."""
    voiced: bool
    """The Speex preprocessor judged the block to be speech (False without the DSP)."""
    gate: int = 0
    """The double-talk gate's verdict (:mod:`kioskvoice.dsp.gate`: 0 CLEAR, 1 ECHO, 2 VISITOR,
    3 UNSURE; always CLEAR without the DSP)."""


def rms_dbfs(pcm: bytes) -> float:
    """RMS level of PCM16 with its mean removed, in dBFS (:data:`SILENT_DBFS` for nothing)."""
    samples = np.frombuffer(pcm, dtype=np.int16, count=len(pcm) // 2).astype(np.float32)
    if samples.size == 0:
        return SILENT_DBFS
    rms = float(np.sqrt(np.mean(np.square(samples - samples.mean()))))
    return max(SILENT_DBFS, 20 * math.log10(rms / 32768.0)) if rms > 0 else SILENT_DBFS


def measure(
    raw: bytes, mono: bytes, clean: bytes, speech_probability: float | None, gate: int = 0
) -> BlockLevel:
    """Measure one block: ``raw`` as captured (any channels), ``mono`` the picked or mixed
    voice channel, ``clean`` the chain's output before resampling, ``speech_probability``
    from Speex (None without the DSP), ``gate`` the double-talk gate's verdict.

    A voice channel whose samples do not move is dead or stuck and measures as silence:
    the echo canceller's DC filter turns a constant into a ringing that looks like sound.
    """
    samples = np.frombuffer(raw, dtype=np.int16, count=len(raw) // 2)
    clipped = int(np.count_nonzero(np.abs(samples.astype(np.int32)) >= CLIP_SAMPLE))
    voice = np.frombuffer(mono, dtype=np.int16, count=len(mono) // 2)
    if voice.size == 0 or int(voice.max()) - int(voice.min()) <= 1:
        return BlockLevel(SILENT_DBFS, clipped, int(samples.size), False, gate)
    voiced = speech_probability is not None and speech_probability >= SPEECH_PROBABILITY
    return BlockLevel(rms_dbfs(clean), clipped, int(samples.size), voiced, gate)


class TurnMeter:
    """What one turn's blocks add up to.

    A turn is *heard* as soon as one block is above ``floor_dbfs`` or judged speech: the
    test is lenient on purpose, because sending a noisy turn costs little and eating a quiet
    visitor's question costs the visit.
    """

    def __init__(self, floor_dbfs: float) -> None:
        self.floor_dbfs = floor_dbfs
        self.reset()

    def reset(self) -> None:
        """Start a new turn."""
        self.heard = False
        self.peak_dbfs = SILENT_DBFS
        self.clipped = 0
        self.samples = 0

    def add(self, level: BlockLevel) -> bool:
        """Fold in one block; True when this block is the one that made the turn heard."""
        self.peak_dbfs = max(self.peak_dbfs, level.dbfs)
        self.clipped += level.clipped
        self.samples += level.samples
        if self.heard or not (level.voiced or level.dbfs >= self.floor_dbfs):
            return False
        self.heard = True
        return True

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.samples if self.samples else 0.0

    @property
    def clipping(self) -> bool:
        """Enough of the turn was clipped for an installer to turn the gain down."""
        return self.clipped_fraction >= CLIP_WARN_FRACTION
