"""The audio helpers the audio checks share: one take from the configured devices as the
daemon opens them, the test beep and the speech sample they play, and the measurements
(levels, the beep's share of what the mic heard)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import AudioDeviceError
from .rig import Rig

TONE_HZ = 1000.0


@dataclass(frozen=True)
class _Take:
    """One capture: every mic channel (frames x channels) and the aligned reference."""

    mic: np.ndarray
    ref: np.ndarray
    blocks_played: int
    duplex: bool


def _capture(rig: Rig, seconds: float, play: bytes | None = None) -> _Take:
    """Capture ``seconds`` from the configured devices as the daemon opens them, playing
    ``play`` (24 kHz mono PCM16) meanwhile; raises :class:`AudioDeviceError`."""
    from ..audio.player import Player
    from ..audio.record import Recorder
    from ..audio.resilient import ResilientAudio
    from ..wavio import read_wav

    a = rig.settings.audio
    audio = ResilientAudio(
        a.input_device,
        a.output_device,
        rate=a.sample_rate,
        channels=a.input_channels,
        frame_ms=a.frame_ms,
    )
    audio.open()
    assert audio.output_rate is not None
    player = Player(audio.output_rate, audio.output_block_samples)
    with tempfile.TemporaryDirectory(prefix="kioskvoice-selftest-") as tmp:
        recorder = Recorder(
            Path(tmp),
            rate=a.sample_rate,
            channels=a.input_channels,
            frame_ms=a.frame_ms,
            out_rate=audio.output_rate,
        )
        recorder.record(seconds)
        if play:
            player.feed("selftest", play)
            player.finish()
        try:
            audio.start(recorder.on_block, player, recorder.on_played)
            # Devices deliver in real time; allow for a slow start, then give up.
            finished = recorder.done.wait(seconds + 5.0)
        finally:
            audio.stop()
            recorder.close()
        if not finished:
            raise AudioDeviceError(
                f"the microphone delivered {recorder.frames / a.sample_rate:.1f} s of audio "
                f"in {seconds + 5.0:.0f} s"
            )
        channels = [np.frombuffer(read_wav(p)[0], dtype=np.int16) for p in recorder.mic_paths]
        ref = np.frombuffer(read_wav(recorder.ref_path)[0], dtype=np.int16)
    return _Take(np.stack(channels, axis=1), ref, player.blocks_played, audio.duplex)


def _voice(rig: Rig, mic: np.ndarray) -> np.ndarray:
    """The configured voice channel (or the average of the configured channels)."""
    channel = rig.settings.audio.channel
    if isinstance(channel, list):
        return np.round(mic[:, channel].astype(np.float64).mean(axis=1)).astype(np.int16)
    return mic[:, channel]


def _block_levels(signal: np.ndarray, block: int) -> np.ndarray:
    """RMS level in dBFS of each ``block`` samples (digital silence: -120)."""
    count = len(signal) // block
    if count == 0:
        return np.full(1, -120.0)
    frames = signal[: count * block].astype(np.float64).reshape(count, block)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-6 * 32768.0) / 32768.0)


def _tone(seconds: float, rate: int = 24000, level: float = 0.3) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # no clicks
    tone = np.sin(2 * np.pi * TONE_HZ * t) * ramp * level * 32767
    return np.round(tone).astype(np.int16).tobytes()


def _tone_share(signal: np.ndarray, rate: int) -> float:
    """Share (0..1) of ``signal``'s energy above 100 Hz that lies within 30 Hz of
    :data:`TONE_HZ`: near 1 when the mic mostly heard the beep, small for speech or noise."""
    if len(signal) < rate // 10:
        return 0.0
    spectrum = np.abs(np.fft.rfft(signal.astype(np.float64) * np.hanning(len(signal)))) ** 2
    freqs = np.fft.rfftfreq(len(signal), 1 / rate)
    audible = freqs > 100
    band = np.abs(freqs - TONE_HZ) < 30
    return float(spectrum[band].sum() / max(spectrum[audible].sum(), 1e-9))


def speech_sample() -> bytes:
    """About 8 s of the kiosk's own spoken messages at 24 kHz mono PCM16: the echo test's
    far end (long enough for the delay search and 2 s of convergence)."""
    from ..audio.player import SOURCE_RATE
    from ..dsp.resample import resample_all
    from ..wavio import read_wav

    pcm = b""
    for name in ("error.wav", "offline.wav"):
        with resources.as_file(resources.files("kioskvoice") / "data" / name) as path:
            frames, rate, _ = read_wav(path)
        pcm += resample_all(frames, rate, SOURCE_RATE)
    return pcm


def _device_hint(rig: Rig) -> str:
    return rig.settings.audio.input_device
