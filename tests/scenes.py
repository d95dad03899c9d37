"""Synthetic echo scenes for the tests and benchmarks (not shipped in the firmware).

Two scenes:

- :func:`make_echo_scene`: a speech-like far end through a short synthetic room (50 ms of
  reflections), far end only unless a talker is added; the Speex binding's tests use it.
- :func:`make_room_scene`: the acceptance room of the DSP issue: a 25 ms direct path, RT60
  about 0.3 s, near-end speech in double-talk stretches, low noise, an optional extra delay
  that the chain does not know. It keeps the clean near end, so the near end's quality in
  double talk can be measured (:func:`kioskvoice.dsp.measures.si_sdr_db`).

Everything is deterministic for a given seed. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kioskvoice.dsp.room import room_impulse_response


@dataclass(frozen=True)
class EchoScene:
    """What the speaker played and what the mic heard."""

    far: np.ndarray
    """Reference played by the speaker, int16."""
    near: np.ndarray
    """Mic signal, int16: the far end through the room impulse response, noise, any talker."""
    sample_rate: int

    def frames(self, frame_size: int) -> tuple[list[bytes], list[bytes]]:
        """Split into whole frames of ``frame_size`` samples: ``(near_frames, far_frames)``."""
        count = len(self.near) // frame_size
        near = [self.near[i * frame_size : (i + 1) * frame_size].tobytes() for i in range(count)]
        far = [self.far[i * frame_size : (i + 1) * frame_size].tobytes() for i in range(count)]
        return near, far


def speech_like(samples: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Syllable-like bursts (gliding harmonic chirps and hiss) separated by short pauses.

    Non-stationary on purpose: a stationary far end would be learnt as noise by the denoiser,
    hiding what the residual echo suppression adds.
    """
    out = np.zeros(samples)
    pos = int(0.05 * rate)
    while pos < samples:
        length = min(int(rng.uniform(0.08, 0.30) * rate), samples - pos)
        t = np.arange(length) / rate
        if rng.random() < 0.7:
            f0 = rng.uniform(100.0, 220.0) * (1.0 + rng.uniform(-0.3, 0.3) * t / max(t[-1], 1e-3))
            phase = 2.0 * np.pi * np.cumsum(f0) / rate
            formant = rng.uniform(400.0, 2500.0)
            burst = np.zeros(length)
            for k in range(1, int(4000.0 / f0.max()) + 1):
                gain = 1.0 / k + 2.0 / (1.0 + ((k * f0.mean() - formant) / 300.0) ** 2)
                burst += gain * np.sin(k * phase + rng.uniform(0.0, 2.0 * np.pi))
        else:
            burst = np.diff(rng.standard_normal(length + 1)) * 2.0
        out[pos : pos + length] = burst * np.hanning(length) * rng.uniform(0.4, 1.0)
        pos += length + int(rng.uniform(0.03, 0.20) * rate)
    return out


def _short_room(rate: int, delay_ms: float, rng: np.random.Generator) -> np.ndarray:
    """Pure delay, a direct path at -6 dB, then 50 ms of exponentially decaying reflections."""
    delay = round(delay_ms * rate / 1000)
    tail = int(0.05 * rate)
    response = np.zeros(delay + tail)
    response[delay] = 0.5
    decay = np.exp(-np.arange(1, tail) / (0.008 * rate))
    response[delay + 1 :] = rng.standard_normal(tail - 1) * 0.15 * decay
    return response


def _to_int16(signal: np.ndarray) -> np.ndarray:
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)


def make_echo_scene(
    *,
    sample_rate: int = 16000,
    seconds: float = 8.0,
    delay_ms: float = 25.0,
    far_rms: float = 3000.0,
    noise_rms: float = 10.0,
    double_talk: tuple[float, float] | None = None,
    seed: int = 20240601,
) -> EchoScene:
    """Deterministic scene: speech-like far end, short synthetic room, low white noise.

    Far-end only unless ``double_talk=(start_s, stop_s)`` adds a near-end talker (as loud as
    the echo) over that interval.
    """
    rng = np.random.default_rng(seed)
    samples = int(sample_rate * seconds)
    far = speech_like(samples, sample_rate, rng)
    far *= far_rms / np.sqrt(np.mean(far**2))
    far = np.clip(np.round(far), -32768, 32767)
    echo = np.convolve(far, _short_room(sample_rate, delay_ms, rng))[:samples]
    near = echo + rng.standard_normal(samples) * noise_rms
    if double_talk is not None:
        start, stop = (round(s * sample_rate) for s in double_talk)
        talker = speech_like(stop - start, sample_rate, rng)
        talker *= np.sqrt(np.mean(echo**2) / np.mean(talker**2))
        near[start:stop] += talker
    return EchoScene(far=far.astype(np.int16), near=_to_int16(near), sample_rate=sample_rate)


@dataclass(frozen=True)
class RoomScene:
    """A scene with a known clean near end and known double-talk stretches."""

    far: np.ndarray
    """Reference played by the speaker, int16."""
    mic: np.ndarray
    """What the mic heard, int16: echo + near-end talker + noise."""
    talker: np.ndarray
    """The clean near-end talker alone (float, zero outside the double-talk stretches)."""
    sample_rate: int
    double_talk: tuple[tuple[float, float], ...]
    """(start_s, stop_s) of each stretch where both talk."""
    near_only: tuple[tuple[float, float], ...]
    """(start_s, stop_s) of each stretch where only the near end talks."""
    delay_ms: float
    """Delay of the echo's direct path behind the reference (room plus any extra delay)."""

    def blocks(self, frame_size: int) -> tuple[list[bytes], list[bytes]]:
        """Whole blocks: ``(mic_blocks, far_blocks)``."""
        count = len(self.mic) // frame_size
        mic = [self.mic[i * frame_size : (i + 1) * frame_size].tobytes() for i in range(count)]
        far = [self.far[i * frame_size : (i + 1) * frame_size].tobytes() for i in range(count)]
        return mic, far

    def far_only(self, *, settle_s: float, margin_s: float = 0.3) -> np.ndarray:
        """Boolean mask of samples after ``settle_s`` with no near-end talker (the echo of a
        double-talk stretch's end is given ``margin_s``)."""
        mask = np.zeros(len(self.mic), dtype=bool)
        mask[round(settle_s * self.sample_rate) :] = True
        for start, stop in (*self.double_talk, *self.near_only):
            a = round((start - margin_s) * self.sample_rate)
            b = round((stop + margin_s) * self.sample_rate)
            mask[max(a, 0) : b] = False
        return mask

    def double_talk_mask(self, *, settle_s: float = 0.0) -> np.ndarray:
        """Boolean mask of the double-talk samples after ``settle_s``."""
        return self._mask(self.double_talk, settle_s)

    def near_only_mask(self, *, settle_s: float = 0.0) -> np.ndarray:
        """Boolean mask of the near-end-only samples after ``settle_s``."""
        return self._mask(self.near_only, settle_s)

    def _mask(self, stretches: tuple[tuple[float, float], ...], settle_s: float) -> np.ndarray:
        mask = np.zeros(len(self.mic), dtype=bool)
        for start, stop in stretches:
            mask[round(start * self.sample_rate) : round(stop * self.sample_rate)] = True
        mask[: round(settle_s * self.sample_rate)] = False
        return mask


def make_room_scene(
    *,
    sample_rate: int = 16000,
    seconds: float = 12.0,
    room_delay_ms: float = 25.0,
    extra_delay_ms: float = 0.0,
    rt60_s: float = 0.3,
    far_rms: float = 3000.0,
    noise_rms: float = 20.0,
    double_talk: Sequence[tuple[float, float]] = ((5.0, 6.5), (9.0, 10.5)),
    near_only: Sequence[tuple[float, float]] = (),
    near_to_echo_db: float = 0.0,
    seed: int = 20240917,
) -> RoomScene:
    """The acceptance room: speech-like far end through :func:`room_impulse_response`, a
    speech-like near-end talker in ``double_talk`` stretches (``near_to_echo_db`` relative to
    the echo's level), white noise, and ``extra_delay_ms`` between the reference and the echo
    that a chain is not told about. In ``near_only`` stretches the far end is silent and the
    talker speaks alone (a conversation's turns); they count as talker stretches too."""
    rng = np.random.default_rng(seed)
    samples = int(sample_rate * seconds)
    far = speech_like(samples, sample_rate, rng)
    far = np.round(far * (far_rms / np.sqrt(np.mean(far**2))))
    far = np.clip(far, -32768, 32767)
    for start_s, stop_s in near_only:
        far[round(start_s * sample_rate) : round(stop_s * sample_rate)] = 0.0
    delay_ms = room_delay_ms + extra_delay_ms
    response = room_impulse_response(sample_rate, delay_ms=delay_ms, rt60_s=rt60_s, rng=rng)
    size = 1 << int(np.ceil(np.log2(samples + len(response))))
    echo = np.fft.irfft(np.fft.rfft(far, size) * np.fft.rfft(response, size), size)[:samples]
    talker = np.zeros(samples)
    echo_power = np.mean(echo[round(delay_ms * sample_rate / 1000) :] ** 2)
    for start_s, stop_s in (*double_talk, *near_only):
        start, stop = round(start_s * sample_rate), round(stop_s * sample_rate)
        voice = speech_like(stop - start, sample_rate, rng)
        voice *= np.sqrt(echo_power / np.mean(voice**2)) * 10.0 ** (near_to_echo_db / 20.0)
        talker[start:stop] = voice
    mic = echo + talker + rng.standard_normal(samples) * noise_rms
    return RoomScene(
        far=far.astype(np.int16),
        mic=_to_int16(mic),
        talker=talker,
        sample_rate=sample_rate,
        double_talk=tuple((float(a), float(b)) for a, b in double_talk),
        near_only=tuple((float(a), float(b)) for a, b in near_only),
        delay_ms=delay_ms,
    )


ISSUE_16_ROOM = "room:echo_db=-20,distortion=0.3,delay_ms=60"
"""Issue 16's virtual room: the kiosk's voice at -20 dBFS at its mic, a speaker that distorts
(soft clipping 0.3), 60 ms of delay the kiosk is not told."""

ROOM_RESPONSES = {"small": (3, 0.2), "reverberant": (5, 0.5)}
"""Two more rooms for the ``room:`` device's ``rir=``: (seed, RT60 s)."""


def issue_16_rooms(directory: Path, rate: int = 16000) -> dict[str, str]:
    """The three rooms of issue 16's acceptance as ``room:`` specs: the device's synthetic
    room, and a small dry and a reverberant one whose impulse responses are written as WAVs
    in ``directory``."""
    from kioskvoice.wavio import write_wav

    rooms = {"synthetic": ISSUE_16_ROOM}
    for name, (seed, rt60) in ROOM_RESPONSES.items():
        response = room_impulse_response(rate, rt60_s=rt60, rng=np.random.default_rng(seed))
        path = directory / f"{name}.wav"
        pcm = (response / np.abs(response).max() * 29000).astype(np.int16)
        write_wav(path, pcm.tobytes(), rate)
        rooms[name] = f"{ISSUE_16_ROOM},rir={path}"
    return rooms
