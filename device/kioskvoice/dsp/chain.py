"""The capture chain: what happens to each captured block before it reaches the model.

Per block, in the capture thread:

1. channel pick (a strided slice) or mix (the average of a set of channels);
2. echo cancellation (Speex MDF) against the far-end reference, which the playback thread
   hands over through :meth:`CaptureChain.far_end` (what the speaker played, after the
   limiter) and a :class:`~kioskvoice.dsp.align.ReferenceFifo` keeps in step with the echo;
   with ``reference_delay_ms="auto"`` a :class:`~kioskvoice.dsp.align.DelayEstimator` finds
   the playback-to-capture delay while the kiosk speaks and re-aligns when it drifts;
3. the Speex preprocessor linked to the echo state: residual echo suppression and denoise;
4. gain control, if any (``agc``: ``off``, ``speex`` or ``post``, see :class:`DspOptions`);
5. soxr to the model's 24 kHz (LQ on purpose: HQ holds back 21 ms that a release would cut).

The same object runs live and offline (``kioskvoice dsp``): offline, each reference block is
written just before the matching mic block is processed, exactly as in a full-duplex callback.

Hot path: ``bytes`` go to libspeexdsp without conversion; numpy is used for a channel mix, the
post-chain gain, the resampler, and the per-block measures beside the audio (echo figures,
the double-talk gate with talk-over, the filter's proof with a memory to keep it in).

With ``auto``, the filter of a run can start the next one (:mod:`kioskvoice.dsp.echo_path`):
the chain offers it once it has proved itself (:attr:`CaptureChain.on_echo_path`), and primes
a fresh canceller with one given at construction (``echo_path``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .align import DelayEstimate, DelayEstimator, ReferenceFifo
from .echo_path import FilterProof, prime
from .echo_stats import EchoMeter
from .gate import CLEAR, EchoGate
from .level import BlockLevel, measure
from .resample import Resampler
from .speex import EchoCanceller, Preprocessor

__all__ = [
    "GUARD_MS",
    "MODEL_RATE",
    "ROOM_MS",
    "CaptureChain",
    "DspOptions",
    "PostGain",
]

MODEL_RATE = 24000
GUARD_MS = 10
"""The reference is given to the echo canceller this much before the echo's direct path, so
that it is never later than the echo (the filter's first taps cover the guard)."""
ROOM_MS = 150
"""Room reverberation the echo filter covers after the direct path, with ``tail_ms="auto"``."""
AgcMode = Literal["off", "speex", "post"]


@dataclass(frozen=True, slots=True)
class DspOptions:
    """Settings of the echo canceller, preprocessor and gain control (the ``[dsp]`` section).

    Raises ValueError on construction when a value is out of range.
    """

    enabled: bool = True
    """Echo cancellation, preprocessing and gain control on; off: channel pick and resampling
    only."""
    reference_delay_ms: int | Literal["auto"] = "auto"
    """Playback-to-capture delay in ms (0..1000): how much later the echo of a played sample
    reaches the chain. ``auto``: estimated from the kiosk's own replies and followed when it
    drifts. ``kioskvoice dsp`` prints the delay it finds in a recording."""
    tail_ms: int | Literal["auto"] = "auto"
    """Echo filter length in ms (20..1000), counted from the aligned reference: it covers the
    guard (10 ms) and the room's reverberation. ``auto``: 10 + 150 ms."""
    denoise: bool = True
    """Stationary noise suppression; also what applies the residual echo suppression."""
    noise_suppress_db: int = -30
    """Maximum noise attenuation, dB (-60..0)."""
    echo_suppress_db: int = -40
    """Maximum residual echo attenuation while only the kiosk speaks, dB (-90..0)."""
    echo_suppress_active_db: int = -15
    """Maximum residual echo attenuation while the visitor also speaks, dB (-90..0)."""
    agc: AgcMode = "off"
    """Gain control after the echo canceller: ``off``; ``post``: a slow gain toward
    ``agc_level_dbfs`` that only adapts while the kiosk is silent; ``speex``: the Speex
    preprocessor's AGC (measured to pump residual echo up: not recommended)."""
    agc_level_dbfs: int = -24
    """Gain control target: the RMS level of speech, dBFS (-40..-6)."""
    agc_max_gain_db: int = 20
    """Largest gain the ``post`` gain control applies, dB (0..40)."""
    max_delay_ms: int = 500
    """Largest delay ``auto`` looks for, ms (50..1000)."""

    def __post_init__(self) -> None:
        def check(name: str, value: object, lo: int, hi: int) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an int within {lo}..{hi}, got {value!r}")

        if self.reference_delay_ms != "auto":
            check("reference_delay_ms", self.reference_delay_ms, 0, 1000)
        if self.tail_ms != "auto":
            check("tail_ms", self.tail_ms, 20, 1000)
        check("noise_suppress_db", self.noise_suppress_db, -60, 0)
        check("echo_suppress_db", self.echo_suppress_db, -90, 0)
        check("echo_suppress_active_db", self.echo_suppress_active_db, -90, 0)
        if self.agc not in ("off", "speex", "post"):
            raise ValueError(f"agc must be off, speex or post, got {self.agc!r}")
        check("agc_level_dbfs", self.agc_level_dbfs, -40, -6)
        check("agc_max_gain_db", self.agc_max_gain_db, 0, 40)
        check("max_delay_ms", self.max_delay_ms, 50, 1000)

    @property
    def tail(self) -> int:
        """The echo filter length in ms, ``auto`` resolved."""
        return GUARD_MS + ROOM_MS if self.tail_ms == "auto" else self.tail_ms


class PostGain:
    """Slow automatic gain after the echo canceller, frozen while the far end plays.

    The gain only adapts on blocks where the reference has been silent for ``hold_ms`` (the
    room's echo has died away) and the output is above a speech gate, so residual echo and
    pauses never pump it up. It rises at most ``rise_db_s`` and falls at most ``fall_db_s``
    per second, is ramped within each block, and is cut so that a block never clips.
    """

    def __init__(
        self,
        rate: int,
        frame_size: int,
        *,
        target_dbfs: float = -24.0,
        max_gain_db: float = 20.0,
        hold_ms: int = 500,
        gate_dbfs: float = -55.0,
        rise_db_s: float = 6.0,
        fall_db_s: float = 20.0,
    ) -> None:
        seconds = frame_size / rate
        self._target = target_dbfs
        self._max_db = max_gain_db
        self._hold_blocks = max(1, round(hold_ms / 1000 / seconds))
        self._gate = gate_dbfs
        self._far_gate = 32768.0 * 10.0 ** (-50.0 / 20.0)
        self._rise = rise_db_s * seconds
        self._fall = fall_db_s * seconds
        self._ramp = np.linspace(0.0, 1.0, frame_size, endpoint=False, dtype=np.float32)
        self._hold = 0
        self.gain_db = 0.0

    def process(self, block: bytes, ref: bytes) -> bytes:
        """Apply the gain to one block (``ref``: the reference block that went with it)."""
        far = np.frombuffer(ref, dtype=np.int16)
        if int(np.abs(far).max(initial=0)) > self._far_gate:
            self._hold = self._hold_blocks
        elif self._hold:
            self._hold -= 1
        samples = np.frombuffer(block, dtype=np.int16).astype(np.float32)
        before = self.gain_db
        if not self._hold:
            rms = float(np.sqrt(np.mean(samples * samples)))
            level = 20.0 * np.log10(max(rms, 1e-3) / 32768.0)
            if level > self._gate:
                wanted = min(max(self._target - level, 0.0), self._max_db)
                step = wanted - before
                self.gain_db = before + min(max(step, -self._fall), self._rise)
        if before == self.gain_db == 0.0:
            return block
        start, stop = 10.0 ** (before / 20.0), 10.0 ** (self.gain_db / 20.0)
        gains = start + (stop - start) * self._ramp
        out = samples * gains
        peak = float(np.abs(out).max(initial=0.0))
        if peak > 32767.0:
            out *= 32767.0 / peak
            self.gain_db = min(self.gain_db, 20.0 * np.log10(32767.0 / peak * stop))
        return np.round(out).astype(np.int16).tobytes()


def _picker(channels: int, channel: int | Sequence[int]) -> Callable[[bytes], bytes] | None:
    """The channel pick or mix for interleaved PCM16 blocks; None when there is nothing to do."""
    chosen = [channel] if isinstance(channel, int) else list(channel)
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"channel must be one channel or a set of distinct channels: {channel}")
    for c in chosen:
        if not isinstance(c, int) or not 0 <= c < channels:
            raise ValueError(f"channel {c} out of range for {channels} channels")
    if channels == 1:
        return None
    if len(chosen) == 1:
        first = chosen[0]
        # A strided slice of a memoryview: one C-level copy, no numpy.
        return lambda block: memoryview(block).cast("h")[first::channels].tobytes()
    count = len(chosen)
    half = count // 2

    def mix(block: bytes) -> bytes:
        frames = np.frombuffer(block, dtype=np.int16).reshape(-1, channels)
        total = frames[:, chosen].sum(axis=1, dtype=np.int32)
        return ((total + half) // count).astype(np.int16).tobytes()

    return mix


class CaptureChain:
    """Turns interleaved PCM16 blocks of ``channels`` channels at ``rate`` into 24 kHz mono.

    ``channel`` is one channel index or a sequence of channels to average. ``frame_ms`` is the
    DSP block (blocks of any other length are re-blocked). ``options=None`` (or
    ``enabled=False``) means channel pick and resampling only. ``out_rate`` is the rate of the
    blocks given to :meth:`far_end` (the speaker's; default ``rate``). ``talk_over``: judge
    every block with the double-talk gate (:attr:`verdict`), for voice barge-in.
    ``delay_hint_ms``: with ``reference_delay_ms="auto"``, the delay found before (e.g. in the
    last run, :mod:`kioskvoice.echo_memory`): the chain starts aligned there, and moves only
    if the kiosk's replies show it is wrong (ignored outside 0..``max_delay_ms``).
    ``echo_path``: the echo filter learnt at that delay (:attr:`on_echo_path` of the last run):
    the fresh filter is primed with it (:func:`~kioskvoice.dsp.echo_path.prime`) and starts
    converged; ignored without a ``delay_hint_ms`` that is taken.

    Threads: :meth:`process` from the capture thread only, :meth:`far_end` from the playback
    thread only (the two may be the same thread).
    """

    def __init__(
        self,
        *,
        rate: int,
        channels: int,
        channel: int | Sequence[int],
        frame_ms: int = 20,
        options: DspOptions | None = None,
        out_rate: int | None = None,
        talk_over: bool = False,
        delay_hint_ms: float | None = None,
        echo_path: np.ndarray | None = None,
    ) -> None:
        if frame_ms not in (10, 20):
            raise ValueError(f"frame_ms must be 10 or 20, got {frame_ms}")
        self.rate = rate
        self.channels = channels
        self.channel = channel
        self.frame_ms = frame_ms
        self.out_rate = out_rate or rate
        self.options = options or DspOptions(enabled=False)
        self._pick = _picker(channels, channel)
        # LQ: its 6 ms filter delay is what a release cuts off the end of a turn (HQ: 21 ms).
        self._resampler = Resampler(rate, MODEL_RATE, quality="LQ")
        self.last_clean = b""
        """The last block's output at the DSP rate, before resampling (for tools and tests)."""
        self.delay_ms: float | None = None
        """The playback-to-capture delay in use (configured or estimated); None until
        ``auto`` has found one."""
        self.realigns = 0
        """How many times ``auto`` moved the reference."""
        self.on_delay: Callable[[float, float], None] | None = None
        """Called from the capture thread with ``(delay_ms, confidence)`` when ``auto``
        (re-)aligns the reference."""
        self.on_echo_path: Callable[[float, np.ndarray], None] | None = None
        """Called from the capture thread with ``(delay_ms, path)`` when the echo filter has
        proved itself (:class:`~kioskvoice.dsp.echo_path.FilterProof`): the reference's
        alignment and the filter's impulse response, for the next start's ``delay_hint_ms``
        and ``echo_path``."""
        self.primed = False
        """The echo filter started from a remembered ``echo_path``."""
        self.echo = EchoMeter()
        """Live echo figures over far-end-only blocks (its ``tally`` may be read from any
        thread); nothing is counted when the DSP is off."""
        self.gate: EchoGate | None = None
        """The double-talk gate's judge, only with ``talk_over`` (voice barge-in) and the DSP:
        its FFTs and quantiles each block are wasted on a kiosk whose mic is closed while it
        speaks. None: every verdict is CLEAR."""
        self.verdict = CLEAR
        """The gate's verdict on the last block (see :mod:`kioskvoice.dsp.gate`)."""
        self._relearn = False
        self._dsp = self.options.enabled
        if not self._dsp:
            return
        o = self.options
        self.frame = rate * frame_ms // 1000
        self._nbytes = 2 * self.frame
        self._pending = bytearray()
        self._guard = rate * GUARD_MS // 1000
        self._ref_resampler = (
            None if self.out_rate == rate else Resampler(self.out_rate, rate, quality="LQ")
        )
        delay = 0
        hinted = False
        reach_back_ms = 100  # how far before the reference ``auto`` looks for the echo
        if o.reference_delay_ms != "auto":
            self.delay_ms = float(o.reference_delay_ms)
            delay = max(0, rate * o.reference_delay_ms // 1000 - self._guard)
        elif delay_hint_ms is not None and 0.0 <= delay_hint_ms <= o.max_delay_ms:
            self.delay_ms = float(delay_hint_ms)
            delay = max(0, round(rate * delay_hint_ms / 1000) - self._guard)
            hinted = True
            # The hint may be too long for new hardware: the echo would then come *before*
            # the reference, as far back as the hint went.
            reach_back_ms = max(reach_back_ms, math.ceil(delay_hint_ms))
        self._fifo = ReferenceFifo.for_blocks(
            rate, frame_ms, delay=delay, max_delay_ms=o.max_delay_ms
        )
        self._estimator = (
            DelayEstimator(rate, max_delay_ms=o.max_delay_ms, min_lag_ms=reach_back_ms)
            if o.reference_delay_ms == "auto"
            else None
        )
        self._tail = rate * o.tail // 1000
        if talk_over:
            self.gate = EchoGate(self._echo_blocks(), rate=rate)
        self._echo = EchoCanceller(self.frame, self._tail, rate)
        if hinted and echo_path is not None and len(echo_path):
            prime(self._echo, echo_path)
            self.primed = True
        self._proof = FilterProof(self.frame, frame_ms)
        self._pre = Preprocessor(
            self.frame,
            rate,
            echo=self._echo,
            denoise=o.denoise,
            noise_suppress_db=o.noise_suppress_db,
            echo_suppress_db=o.echo_suppress_db,
            echo_suppress_active_db=o.echo_suppress_active_db,
            agc=o.agc == "speex",
            agc_level=min(32768.0, 32768.0 * 10.0 ** (o.agc_level_dbfs / 20.0)),
        )
        self._gain = (
            PostGain(
                rate,
                self.frame,
                target_dbfs=o.agc_level_dbfs,
                max_gain_db=o.agc_max_gain_db,
                hold_ms=o.tail + 200,
            )
            if o.agc == "post"
            else None
        )

    # --- the playback thread ---------------------------------------------------------------

    def far_end(self, block: bytes) -> None:
        """What the speaker just played (mono PCM16 at ``out_rate``, after the limiter): the
        echo canceller's reference. A no-op when the DSP is off."""
        if not self._dsp:
            return
        if self._ref_resampler is not None:
            block = self._ref_resampler.process(block)
        self._fifo.write(block)

    # --- the capture thread ----------------------------------------------------------------

    def pick(self, block: bytes) -> bytes:
        """The channel pick or mix alone (what the echo canceller gets as its mic)."""
        return block if self._pick is None else self._pick(block)

    def process(self, block: bytes) -> bytes:
        """One captured block in, the model's audio for it out (may be a few samples shorter
        or longer than the exact ratio: the resampler carries the rest)."""
        mono = block if self._pick is None else self._pick(block)
        if self._dsp:
            mono = self._run(mono) if len(mono) == self._nbytes else self._reblock(mono)
        self.last_clean = mono
        return self._resampler.process(mono)

    def level(self, raw: bytes) -> BlockLevel:
        """Measure the block just given to :meth:`process` (same thread, right after it):
        see :func:`~kioskvoice.dsp.level.measure`."""
        probability = self._pre.speech_probability if self._dsp else None
        return measure(raw, self.pick(raw), self.last_clean, probability, self.verdict)

    def _echo_blocks(self) -> int:
        """How many blocks the echo of one aligned reference block lasts: the guard, the
        filter's tail and 300 ms (reverberation beyond the filter, which the end of a reply
        leaves ringing); while ``auto`` has not found the delay, the largest delay too (the
        reference is not aligned yet)."""
        ms = GUARD_MS + self.options.tail + 300
        if self.delay_ms is None:
            ms += self.options.max_delay_ms
        return -(-ms // self.frame_ms)

    def relearn_gate(self) -> None:
        """What the gate learnt of the echo no longer stands for what comes (it was learnt on
        a calibration sound, not a voice): it learns afresh from the next far end, as after a
        reset of the filter, which keeps what it learnt. Any thread; takes effect at the next
        block."""
        self._relearn = True

    def _run(self, mono: bytes) -> bytes:
        fifo = self._fifo
        if self._relearn:
            self._relearn = False
            if self.gate is not None:
                self.gate.reset()
        ref = fifo.read(self.frame)
        if fifo.jump:
            self._echo.reset()  # the reference moved under the filter: start afresh
            self._proof.reset()
            if self.gate is not None:
                self.gate.reset()
            if self._estimator is not None:
                self._estimator.clear()
        if self._estimator is not None:
            estimate = self._estimator.push(mono, ref)
            if estimate is not None:
                self._realign(estimate)
        cancelled = self._echo.cancel_into(mono, ref)  # the preprocessor leaves it as it is
        if self.on_echo_path is not None and self._proof.proved(mono, ref, cancelled):
            self._offer_filter()
        out = self._pre.run(cancelled)
        self.echo.add(mono, ref, out, self._pre.speech_probability)
        if self.gate is not None:
            self.verdict = self.gate.judge(ref, cancelled, out)
        if self._gain is not None:
            out = self._gain.process(out, ref)
        return out

    def _reblock(self, mono: bytes) -> bytes:
        pending = self._pending
        pending += mono
        out = []
        while len(pending) >= self._nbytes:
            out.append(self._run(bytes(pending[: self._nbytes])))
            del pending[: self._nbytes]
        return b"".join(out)

    def _realign(self, estimate: DelayEstimate) -> None:
        fifo = self._fifo
        total = fifo.delay + estimate.lag
        found = self.delay_ms is None
        self.delay_ms = total * 1000 / self.rate
        if found and self.gate is not None:
            self.gate.resize(self._echo_blocks())  # the reference is aligned from now on
        wanted = max(0, total - self._guard)
        # Moving the reference costs the adapted filter (it is reset), so the reference only
        # moves when the echo's direct path is about to fall out of the filter's first
        # quarter: too late (lag below half the guard) or eating into the room's tail.
        early, late = self._guard // 2, max(self._guard * 2, self._tail // 4)
        if wanted != fifo.delay and not early <= estimate.lag <= late:
            fifo.set_delay(wanted)
            self._echo.reset()
            self._proof.reset()
            if self.gate is not None:
                self.gate.reset()  # the filter starts afresh: so does what the gate expects of it
            assert self._estimator is not None
            self._estimator.clear()
            self.realigns += 1
            if self.on_delay is not None:
                self.on_delay(self.delay_ms, estimate.confidence)

    def _offer_filter(self) -> None:
        path = self._echo.echo_path()
        if not np.all(np.isfinite(path)) or not np.any(path):
            return
        self._proof.offered()
        assert self.on_echo_path is not None
        aligned_ms = (self._fifo.delay + self._guard) * 1000 / self.rate
        self.on_echo_path(aligned_ms, path)

    # --- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Free the Speex states (idempotent); the chain must not be used afterwards."""
        if self._dsp:
            self._echo.close()
            self._pre.close()

    def __repr__(self) -> str:
        return (
            f"CaptureChain(rate={self.rate}, channels={self.channels}, channel={self.channel}, "
            f"frame_ms={self.frame_ms}, options={self.options})"
        )
