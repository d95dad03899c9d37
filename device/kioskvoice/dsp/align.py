"""Keeping the far-end reference in step with the echo.

:class:`ReferenceFifo` carries what the speaker played from the playback thread to the capture
thread. It is indexed by sample count, not by wall-clock time: the reader takes, for each
captured block, the reference samples that were written ``delay`` samples before the newest
one. In full duplex (capture and playback in the same callback) and offline that relation is
exact. With separate streams the write head jitters by up to one playback block at the moment
of a read, and the clocks may drift; the FIFO watches the average lag over a window and
re-anchors when it moves by more than a playback block (a restarted or stalled stream), and
the delay estimator takes care of the fine alignment.

:class:`DelayEstimator` finds the echo's delay behind the reference by a generalised
cross-correlation (PHAT-weighted, at 4 kHz) of the mic and the reference while the far end is
active: the first clear peak at once (about 1 s into the kiosk's first reply), later only when
two consecutive windows agree, so that a double-talk window cannot move the alignment.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import soxr

__all__ = ["DelayEstimate", "DelayEstimator", "ReferenceFifo"]


class ReferenceFifo:
    """Thread-safe FIFO of mono PCM16 reference samples with a target lag.

    :meth:`write` from the playback thread, :meth:`read` (and the setters) from the capture
    thread. ``delay`` is the number of samples between the newest sample written and the end
    of the block read. ``capacity`` bounds the history kept (samples); ``window`` is the number
    of reads averaged before the lag is checked, ``tolerance`` the average deviation (samples)
    that makes the reader re-anchor.
    """

    def __init__(
        self, *, delay: int = 0, capacity: int = 32000, window: int = 100, tolerance: int = 480
    ) -> None:
        if delay < 0 or capacity <= 0 or window <= 0 or tolerance <= 0:
            raise ValueError("delay must be >= 0; capacity, window and tolerance > 0")
        self._lock = threading.Lock()
        self._buf = bytearray()
        self._base = 0  # sample index of self._buf[0]
        self._written = 0  # samples written since the start
        self._read_at: int | None = None  # sample index of the next read; None: not anchored
        self._delay = min(delay, capacity // 2)
        self._capacity = capacity
        self._window = window
        self._tolerance = tolerance
        self._lag_sum = 0
        self._lag_count = 0
        self.jump = 0
        """Samples skipped (+) or repeated (-) by the last :meth:`read` (0 when in step)."""
        self.reanchors = 0
        """How many times the reader re-anchored on its own (stream stalls, restarts, drift)."""

    @classmethod
    def for_blocks(
        cls, rate: int, frame_ms: int, *, delay: int = 0, max_delay_ms: int = 500
    ) -> ReferenceFifo:
        """The FIFO as the capture chain sizes it for blocks of ``frame_ms`` at ``rate``:
        room for ``max_delay_ms`` plus a second, the lag averaged over a second, and a
        re-anchor when it moves by more than a block plus 5 ms (playback blocks may be up to
        a block longer than capture blocks)."""
        return cls(
            delay=delay,
            capacity=rate * (max_delay_ms + 1000) // 1000,
            window=max(1, 1000 // frame_ms),
            tolerance=rate * (frame_ms + 5) // 1000,
        )

    @property
    def delay(self) -> int:
        return self._delay

    def set_delay(self, delay: int) -> None:
        """Change the target lag; the next read jumps to it (capture thread)."""
        delay = max(0, min(delay, self._capacity // 2))
        if self._read_at is not None:
            self._read_at -= delay - self._delay
        self._delay = delay
        self._lag_sum = self._lag_count = 0

    def reset(self) -> None:
        """Forget the anchor: the next read re-anchors on the write head (capture thread)."""
        self._read_at = None
        self._lag_sum = self._lag_count = 0

    def write(self, pcm: bytes | bytearray | memoryview) -> None:
        """Append what the speaker played (playback thread)."""
        with self._lock:
            self._buf += pcm
            self._written += len(pcm) // 2
            excess = len(self._buf) - 2 * self._capacity
            if excess > 0:
                excess += excess % 2
                del self._buf[:excess]
                self._base += excess // 2

    def read(self, n: int) -> bytes:
        """The ``n`` reference samples for the next ``n`` captured samples (capture thread).

        Samples never written (a stalled speaker) or already dropped read as silence.
        """
        with self._lock:
            written = self._written
            start = self._read_at
            jump = 0
            if start is None:
                start = written - self._delay - n
            else:
                lag = written - start - n
                if abs(lag - self._delay) > self._capacity // 2:
                    jump = lag - self._delay  # far out (a long stall): re-anchor at once
                else:
                    self._lag_sum += lag
                    self._lag_count += 1
                    if self._lag_count >= self._window:
                        mean = self._lag_sum / self._lag_count
                        self._lag_sum = self._lag_count = 0
                        if abs(mean - self._delay) > self._tolerance:
                            jump = round(mean - self._delay)
                if jump:
                    start += jump
                    self.reanchors += 1
            self._read_at = start + n
            self.jump = jump
            offset = start - self._base
            available = len(self._buf) // 2
            if offset >= 0 and offset + n <= available:
                return bytes(self._buf[2 * offset : 2 * (offset + n)])
            out = bytearray(2 * n)
            lo, hi = max(offset, 0), min(offset + n, available)
            if lo < hi:
                out[2 * (lo - offset) : 2 * (hi - offset)] = self._buf[2 * lo : 2 * hi]
            return bytes(out)


@dataclass(frozen=True, slots=True)
class DelayEstimate:
    """One confirmed delay estimate."""

    lag: int
    """Samples (at the chain's rate) by which the echo follows the reference given to it."""
    confidence: float
    """Peak-to-sidelobe ratio of the weighted cross-correlation (higher is surer)."""


class DelayEstimator:
    """Estimates how far the echo in the mic lags the reference, from blocks of both.

    Feed every block with :meth:`push` (mono PCM16 ``bytes`` of equal length, at ``rate``).
    Every ``hop_ms`` of audio it correlates the last ``window_ms`` — when the reference was
    playing — over lags from ``-min_lag_ms`` to ``max_delay_ms``. It returns a
    :class:`DelayEstimate` for the first window whose peak is clear (``sure_confidence``), and
    after that when two consecutive windows agree within ``agree_ms``. Once it has returned
    one it looks every ``settled_hop_ms`` only, until :meth:`clear` or until a window
    disagrees with the last estimate (then it looks every ``hop_ms`` again).
    Per block it only keeps references to the blocks; the FFTs run once per hop (about 2 ms
    of CPU on a laptop core).
    """

    ANALYSIS_RATE = 4000

    def __init__(
        self,
        rate: int,
        *,
        max_delay_ms: int = 500,
        min_lag_ms: int = 100,
        window_ms: int = 1000,
        hop_ms: int = 250,
        settled_hop_ms: int = 4000,
        agree_ms: float = 1.0,
        min_confidence: float = 8.0,
        sure_confidence: float = 20.0,
        min_rms: float = 30.0,
    ) -> None:
        self.rate = rate
        self._max = max_delay_ms * self.ANALYSIS_RATE // 1000
        self._min = min_lag_ms * self.ANALYSIS_RATE // 1000
        self._window = rate * window_ms // 1000
        self._fast_hop = self._hop = rate * hop_ms // 1000
        self._settled_hop = rate * settled_hop_ms // 1000
        self._agree = agree_ms * rate / 1000
        self._min_confidence = min_confidence
        self._sure = sure_confidence
        self._min_rms = min_rms
        analysed = self._window * self.ANALYSIS_RATE // rate
        self._nfft = 1 << int(np.ceil(np.log2(analysed + self._max + self._min + 1)))
        self._mic: deque[bytes] = deque()
        self._ref: deque[bytes] = deque()
        self._held = 0  # samples held in the deques
        self._since = 0  # samples since the last analysis
        self._previous: DelayEstimate | None = None
        self._confirmed: int | None = None
        self.last: DelayEstimate | None = None
        """The last window's estimate, confirmed or not (for diagnostics)."""

    def clear(self) -> None:
        """Forget the history (the reference was re-aligned)."""
        self._mic.clear()
        self._ref.clear()
        self._held = self._since = 0
        self._previous = None
        self._confirmed = None
        self._hop = self._fast_hop

    def push(self, mic: bytes, ref: bytes) -> DelayEstimate | None:
        """Add one block of each; returns a confirmed estimate now and then, else None."""
        self._mic.append(mic)
        self._ref.append(ref)
        n = len(mic) // 2
        self._held += n
        self._since += n
        while self._held - len(self._mic[0]) // 2 >= self._window:
            self._held -= len(self._mic.popleft()) // 2
            self._ref.popleft()
        if self._since < self._hop or self._held < self._window:
            return None
        self._since = 0
        estimate = self.analyse(b"".join(self._mic), b"".join(self._ref))
        self.last = estimate
        previous, self._previous = self._previous, estimate
        if estimate is None:
            return None
        if self._confirmed is not None and abs(estimate.lag - self._confirmed) > self._agree:
            self._hop = self._fast_hop  # the delay moved: look again soon
        # Before the first confirmation one clear window is enough; afterwards two must agree.
        sure = self._confirmed is None and estimate.confidence >= self._sure
        if not sure and (previous is None or abs(estimate.lag - previous.lag) > self._agree):
            return None
        self._hop = self._settled_hop
        self._confirmed = estimate.lag
        return estimate

    def analyse(self, mic: bytes, ref: bytes) -> DelayEstimate | None:
        """One window: the lag of the strongest weighted correlation peak, or None when the
        reference is too quiet or the peak is not clear."""
        x = soxr.resample(np.frombuffer(ref, dtype=np.int16), self.rate, self.ANALYSIS_RATE, "LQ")
        if float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) < self._min_rms:
            return None
        y = soxr.resample(np.frombuffer(mic, dtype=np.int16), self.rate, self.ANALYSIS_RATE, "LQ")
        spectrum = np.fft.rfft(y, self._nfft) * np.conj(np.fft.rfft(x, self._nfft))
        magnitude = np.abs(spectrum)
        # PHAT weighting with a floor: whitening sharpens the peak in a reverberant room, the
        # floor keeps empty bins (above the speech band, below the noise) from adding noise.
        spectrum /= np.maximum(magnitude, 1e-3 * float(magnitude.max()) + 1e-12)
        correlation = np.fft.irfft(spectrum, self._nfft)
        # Lags -min..max: the tail of the circular correlation holds the negative ones.
        lags = np.concatenate((correlation[-self._min :], correlation[: self._max + 1]))
        peak = int(np.argmax(lags))
        height = float(lags[peak])
        guard = max(2, self.ANALYSIS_RATE // 500)  # +-2 ms around the peak
        sidelobes = np.concatenate((lags[: max(peak - guard, 0)], lags[peak + guard + 1 :]))
        spread = float(np.std(sidelobes)) if len(sidelobes) else 0.0
        confidence = height / spread if spread > 0 else 0.0
        if confidence < self._min_confidence:
            return None
        # Sub-sample peak by parabolic interpolation, then back to the chain's rate.
        offset = 0.0
        if 0 < peak < len(lags) - 1:
            a, b, c = lags[peak - 1], lags[peak], lags[peak + 1]
            denominator = a - 2 * b + c
            if denominator < 0:
                offset = 0.5 * (a - c) / denominator
        lag = (peak - self._min + offset) * self.rate / self.ANALYSIS_RATE
        return DelayEstimate(lag=round(lag), confidence=confidence)
