"""Live echo figures: how much of the kiosk's own voice the chain removes, measured while it speaks.

The capture thread folds every DSP block into an :class:`EchoMeter`: the echo canceller's mic
(before the canceller) and the chain's output (after the canceller and the residual echo
suppression, before any post gain), counted only on *far-end-only* blocks: the reference is
active and the block is not double talk (the output's Speex speech probability says speech
*and* the block passed the canceller nearly whole: see :data:`DOUBLE_TALK_DB`); double talk
would count the visitor's voice as residual echo. Known limit: a diverged canceller whose
output Speex takes for speech is not counted either, so the figure is an upper bound then.

Crossing to the loop is lock-free: after each block the meter replaces :attr:`EchoMeter.tally`
with a new immutable :class:`EchoTally` (running totals); one attribute assignment is atomic,
so the loop reads a consistent tuple at any time. The loop subtracts two tallies (the start and
the end of a reply) with :func:`figures`.

Pure and cheap: numpy over one block, no clock, no I/O.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

FAR_ACTIVE_DBFS = -50.0
"""A reference block at least this loud (RMS) means the kiosk is speaking."""
SPEECH_PROBABILITY = 0.5
"""An output block judged speech this likely by Speex *and* ..."""
DOUBLE_TALK_DB = 10.0
"""... reduced by less than this (a visitor's voice passes the canceller nearly whole) is
double talk and not counted. The speech probability alone would drop the blocks whose residual
echo Speex takes for speech, and flatter the figure by 10 to 15 dB."""
FLOOR_DBFS = -120.0
"""The level reported for a residual of digital silence."""

_FULL_SCALE_SQ = 32768.0 * 32768.0


class EchoTally(NamedTuple):
    """Running totals over far-end-only blocks (immutable: a snapshot)."""

    mic_energy: float = 0.0
    """Sum of squared mic samples (before the canceller)."""
    out_energy: float = 0.0
    """Sum of squared output samples (after the canceller and residual echo suppression)."""
    samples: int = 0
    """Samples counted."""


class EchoFigures(NamedTuple):
    """Echo reduction over a stretch of far-end-only audio."""

    erle_db: float
    """Echo return loss enhancement: mic energy over output energy, dB."""
    residual_dbfs: float
    """RMS of what is left of the echo, dBFS."""
    seconds: float
    """How much far-end-only audio the figures cover."""


class EchoMeter:
    """Capture thread: :meth:`add` once per DSP block. Any thread: read :attr:`tally`."""

    def __init__(self, *, far_active_dbfs: float = FAR_ACTIVE_DBFS) -> None:
        self._far_gate = _FULL_SCALE_SQ * 10.0 ** (far_active_dbfs / 10.0)  # mean square
        self._double_talk = 10.0 ** (DOUBLE_TALK_DB / 10.0)
        self.tally = EchoTally()

    def add(self, mic: bytes, ref: bytes, out: bytes, speech_probability: float) -> None:
        """Fold in one block: ``mic`` the canceller's input, ``ref`` the aligned reference,
        ``out`` the chain's output (PCM16 mono, the same length)."""
        far = np.frombuffer(ref, dtype=np.int16).astype(np.float32)
        if far.size == 0 or float(np.dot(far, far)) < self._far_gate * far.size:
            return
        m = np.frombuffer(mic, dtype=np.int16).astype(np.float32)
        o = np.frombuffer(out, dtype=np.int16).astype(np.float32)
        mic_energy, out_energy = float(np.dot(m, m)), float(np.dot(o, o))
        if speech_probability >= SPEECH_PROBABILITY and out_energy * self._double_talk > mic_energy:
            return
        t = self.tally
        self.tally = EchoTally(
            t.mic_energy + mic_energy, t.out_energy + out_energy, t.samples + m.size
        )


def figures(before: EchoTally, after: EchoTally, rate: int) -> EchoFigures | None:
    """The figures of the far-end-only audio counted between two tallies of one meter; None
    when nothing was counted."""
    samples = after.samples - before.samples
    if samples <= 0:
        return None
    mic = max(after.mic_energy - before.mic_energy, 0.0)
    out = max(after.out_energy - before.out_energy, 0.0)
    erle = 10.0 * math.log10(max(mic, 1.0) / max(out, 1.0))
    mean = out / samples
    residual = 10.0 * math.log10(mean / _FULL_SCALE_SQ) if mean > 0 else FLOOR_DBFS
    return EchoFigures(erle, max(residual, FLOOR_DBFS), samples / rate)
