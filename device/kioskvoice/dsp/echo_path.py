"""The echo filter a run learnt, kept for the next: when it has proved itself, and how a fresh
canceller is primed with it.

A restart costs the echo canceller what it learnt of the room: for its first seconds a quiet
visitor talking over the kiosk stands out late. The chain therefore offers its filter, read
back as an impulse response (:meth:`~kioskvoice.dsp.speex.EchoCanceller.echo_path`), once
:class:`FilterProof` says it is worth keeping; :mod:`kioskvoice.echo_memory` keeps it next to
the delay, and at the next start :func:`prime` trains the fresh canceller with it.

Pure: numpy and the Speex binding, no clock, no I/O. The capture thread only.
"""

from __future__ import annotations

import math

import numpy as np

from .gate import FAR_ACTIVE_DBFS
from .speex import EchoCanceller

__all__ = [
    "PATH_BETTER_DB",
    "PATH_EVERY_S",
    "PATH_MIN_ERLE_DB",
    "PATH_MIN_S",
    "PRIME_S",
    "FilterProof",
    "prime",
    "tilted_noise",
]

PRIME_S = 2.0
"""Seconds of a synthetic far end played through a remembered echo path into a fresh echo
filter (see :func:`prime`). Measured offline in the virtual room (distortion 0.3): 1 to 5 s
all bring the first reply's echo reduction from 7-10 dB to 13-18 dB; longer priming settles
the filter's step size and leaves a little less for the real voice to correct."""
PATH_MIN_ERLE_DB = 6.0
"""A filter is worth remembering when the canceller alone (before the residual echo
suppression) takes at least this much off the kiosk's recent voice: an unconverged filter
takes about 3 dB, a converged one 9-12 dB with a cheap speaker (distortion 0.3), 6-8 dB with
a bad one (0.6), 20-30 dB with a clean one."""
PATH_MIN_S = 3.0
"""... and has heard at least this much of the kiosk's voice since it started afresh."""
PATH_EVERY_S = 1800.0
"""After the first, a filter is offered at most once per this much audio (an SD card need
not be written after every reply: a room changes slowly) ..."""
PATH_BETTER_DB = 3.0
"""... unless it takes at least this much more off the kiosk's voice than the last one
offered since the start: a filter first proved on little audio (the calibration sound cut by
a press, a first short reply) is replaced as soon as the canceller has learnt better, not half
an hour later. Each such offer must beat the last by this much, so they are few
(the figure cannot rise past what the room allows: 10-12 dB with a cheap speaker)."""


def tilted_noise(n: int, *, seed: int, rms_dbfs: float) -> np.ndarray:
    """``n`` samples of seeded noise tilted toward the lows, as a voice is (a first-order
    filter, +4 dB at the lowest frequencies against -8 dB at the highest), scaled to an RMS of
    ``rms_dbfs`` of PCM16 full scale: float64, not clipped. The same seed gives the same noise.
    """
    white = np.random.default_rng(seed).standard_normal(n + 1)
    noise = white[1:] + 0.6 * white[:-1]
    noise *= 32768.0 * 10.0 ** (rms_dbfs / 20.0) / float(np.std(noise))
    return noise


def prime(echo: EchoCanceller, path: np.ndarray, *, seconds: float = PRIME_S) -> None:
    """Train a fresh echo canceller on ``seconds`` of noise played through ``path`` (an
    impulse response as from :meth:`EchoCanceller.echo_path`, at the canceller's rate), so that
    it starts near where it was: the kiosk's first words after a start are cancelled as well as
    its last ones before it. Seeded: the same path primes the same filter every time.

    The noise ends in silence as long as the filter, with its echo dying away through
    ``path``: the canceller's memory of the far end is then silent, as a real start's is.
    (Without it, the first real blocks came out with the echo it predicts from the noise taken
    away from them: a burst of 160 ms that the server's VAD took for a visitor.)

    What primes it is synthetic: no sound of the room is kept anywhere, only its response.
    """
    n = echo.frame_size
    count = max(1, round(seconds * echo.sample_rate / n)) * n
    # Silence for as long as the canceller remembers far end (its filter), one frame more.
    pad = (-(-max(len(path), echo.filter_length) // n) + 1) * n
    lead = len(path)  # the path's own length of noise first, so the echo is whole from sample 0
    far = tilted_noise(lead + count, seed=0, rms_dbfs=-22.0)  # a voice's level at the speaker
    far = np.concatenate([far, np.zeros(pad)])
    size = 1 << (len(far) + len(path) - 2).bit_length()
    heard = np.fft.irfft(np.fft.rfft(far, size) * np.fft.rfft(path, size), size)
    far_pcm = np.clip(np.rint(far[lead:]), -32768, 32767).astype(np.int16).tobytes()
    heard_pcm = np.clip(np.rint(heard[lead : lead + count + pad]), -32768, 32767)
    heard_bytes = heard_pcm.astype(np.int16).tobytes()
    for start in range(0, 2 * (count + pad), 2 * n):
        echo.cancel_into(heard_bytes[start : start + 2 * n], far_pcm[start : start + 2 * n])


class FilterProof:
    """Whether the echo filter has proved itself, block by block: the canceller alone (before
    the residual echo suppression) takes at least :data:`PATH_MIN_ERLE_DB` off about the last
    second of the kiosk's voice, it has heard :data:`PATH_MIN_S` of that voice since it
    started afresh, and the far end has just been quiet for half a second (a pause: the
    filter is not read mid-word). The first time after a start or :meth:`reset`, then at most
    every :data:`PATH_EVERY_S` of audio, or sooner when it does :data:`PATH_BETTER_DB` better
    than the last one offered. A microphone that hears nothing of the kiosk (muted,
    unplugged) proves nothing.
    """

    def __init__(self, frame: int, frame_ms: int) -> None:
        block_s = frame_ms / 1000
        self._far_gate = 32768.0 * 32768.0 * 10.0 ** (FAR_ACTIVE_DBFS / 10.0)  # mean square
        self._pause = round(0.5 / block_s)
        self._min = round(PATH_MIN_S / block_s)
        self._every = round(PATH_EVERY_S / block_s)
        self._decay = math.exp(-block_s)  # energies over about the last second
        # A mic hearing the kiosk's voice at least this loud (mean square per sample, over the
        # decaying sums): -60 dBFS, far under any echo, far over a muted capture's zeros.
        self._heard_floor = 32768.0**2 * 1e-6 * frame / (1.0 - self._decay)
        self._erle = 10.0 ** (PATH_MIN_ERLE_DB / 10.0)
        self._better = 10.0 ** (PATH_BETTER_DB / 10.0)
        self.reset()

    def reset(self) -> None:
        """The echo filter starts afresh: what it proved so far no longer counts."""
        self._heard = 0  # far-end blocks since
        self._mic = self._left = 0.0  # decaying energies: mic, canceller's output
        self._quiet = 0
        self._since = self._every  # blocks since the last offer: the next is free
        self._offered_erle = math.inf  # mic over output energy of the last offer (none yet)

    def offered(self) -> None:
        """The filter was offered: the next offer waits :data:`PATH_EVERY_S`, or for a filter
        :data:`PATH_BETTER_DB` better."""
        self._since = 0
        self._offered_erle = self._mic / max(self._left, 1.0)

    def proved(self, mic: bytes, ref: bytes, cancelled: bytes | memoryview) -> bool:
        """One block: the canceller's input, the aligned reference and its output (read
        during the call only). True when the filter is to be offered now."""
        self._since += 1
        far = np.frombuffer(ref, dtype=np.int16).astype(np.float32)
        if float(np.dot(far, far)) >= self._far_gate * far.size:
            heard = np.frombuffer(mic, dtype=np.int16).astype(np.float32)
            left = np.frombuffer(cancelled, dtype=np.int16).astype(np.float32)
            # A visitor talking over the kiosk only lowers the figure: a filter is then not
            # offered, never a worse one.
            self._mic = self._decay * self._mic + float(np.dot(heard, heard))
            self._left = self._decay * self._left + float(np.dot(left, left))
            self._heard += 1
            self._quiet = 0
            return False
        self._quiet += 1
        return (
            self._quiet == self._pause
            and self._heard >= self._min
            and self._mic >= self._heard_floor
            and self._mic >= self._left * self._erle
            and (
                self._since >= self._every
                or self._mic >= max(self._left, 1.0) * self._offered_erle * self._better
            )
        )
