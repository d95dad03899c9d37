"""``kioskvoice record``: raw mic channels and the far-end reference to WAV files, on the device.

``kioskvoice record --seconds N --out DIR [--play FILE] [--config PATH]`` opens the configured
devices exactly as the daemon does (:class:`~kioskvoice.audio.streams.ResilientAudio`, full
duplex when input and output are one device), optionally plays FILE through the player (and
its limiter), and writes, at the capture rate:

- ``DIR/mic0.wav`` … ``DIR/mic{N-1}.wav``: every captured channel, untouched;
- ``DIR/ref.wav``: the far-end reference as the capture chain receives it (what the speaker
  played, converted to the capture rate, through the same reference FIFO with no delay), so
  that ``kioskvoice dsp --mic DIR/mic0.wav --ref DIR/ref.wav`` reports the delay to configure.

Stop the daemon first: the devices cannot be opened twice.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..dsp.align import ReferenceFifo
from ..dsp.resample import Resampler, resample_all
from ..errors import AudioDeviceError, ConfigError
from ..wavio import WavWriter, read_wav
from .player import SOURCE_RATE, Player

__all__ = ["Recorder", "add_parser", "add_parsers", "run_record"]

EX_UNAVAILABLE = 69
EX_CONFIG = 78


class Recorder:
    """Writes each captured channel and the aligned reference to WAV files in ``out_dir``.

    :meth:`on_played` from the playback thread (mono blocks at ``out_rate``), :meth:`on_block`
    from the capture thread (interleaved blocks of ``channels`` at ``rate``).
    """

    def __init__(
        self, out_dir: Path, *, rate: int, channels: int, frame_ms: int, out_rate: int
    ) -> None:
        self.rate = rate
        self.channels = channels
        self.mic_paths = [out_dir / f"mic{c}.wav" for c in range(channels)]
        self.ref_path = out_dir / "ref.wav"
        self._mics = [WavWriter(path, rate) for path in self.mic_paths]
        self._ref = WavWriter(self.ref_path, rate)
        self._fifo = ReferenceFifo.for_blocks(rate, frame_ms)
        self._resampler = None if out_rate == rate else Resampler(out_rate, rate, quality="LQ")
        self.frames = 0
        self.done = threading.Event()
        self._limit: int | None = None

    def record(self, seconds: float) -> None:
        """Set ``done`` once ``seconds`` of audio are written."""
        self._limit = round(seconds * self.rate)

    def on_played(self, block: bytes) -> None:
        if self._resampler is not None:
            block = self._resampler.process(block)
        self._fifo.write(block)

    def on_block(self, block: bytes) -> None:
        if self.done.is_set():
            return
        samples = np.frombuffer(block, dtype=np.int16).reshape(-1, self.channels)
        frames = len(samples)
        if self._limit is not None:
            frames = min(frames, self._limit - self.frames)
        reference = self._fifo.read(len(samples))
        for channel, writer in enumerate(self._mics):
            writer.write(np.ascontiguousarray(samples[:frames, channel]).tobytes())
        self._ref.write(reference[: 2 * frames])
        self.frames += frames
        if self._limit is not None and self.frames >= self._limit:
            self.done.set()

    def close(self) -> None:
        for writer in (*self._mics, self._ref):
            writer.close()


def _load_play(path: Path) -> bytes:
    """A WAV file as 24 kHz mono PCM16 for the player."""
    frames, rate, channels = read_wav(path)
    if channels > 1:
        mixed = np.frombuffer(frames, dtype=np.int16).reshape(-1, channels).mean(axis=1)
        frames = np.round(mixed).astype(np.int16).tobytes()
    return resample_all(frames, rate, SOURCE_RATE)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``record`` on an argparse subparsers object (handler: :func:`run_record`)."""
    p = subparsers.add_parser(
        "record", help="record every raw mic channel and the far-end reference to WAV files"
    )
    p.add_argument("--seconds", type=float, required=True, help="how long to record")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--play", type=Path, default=None, metavar="FILE", help="WAV to play")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="TOML config file (default /etc/kioskvoice/kioskvoice.toml, optional)",
    )
    p.set_defaults(handler=run_record)
    return p


def add_parsers(subparsers: Any) -> None:
    """Register ``record`` and ``dsp`` (each with ``set_defaults(handler=...)``)."""
    from ..dsp.tool import add_parser as add_dsp_parser

    add_parser(subparsers)
    add_dsp_parser(subparsers)


def run_record(args: argparse.Namespace) -> int:
    """The ``record`` command; returns the exit status."""
    from ..config import load_config
    from .resilient import ResilientAudio

    if args.seconds <= 0:
        print("kioskvoice record: --seconds must be positive", file=sys.stderr)
        return 2
    try:
        audio_settings = load_config(args.config).audio
        play = _load_play(args.play) if args.play is not None else None
    except ConfigError as exc:
        print(f"kioskvoice record: {exc}", file=sys.stderr)
        return EX_CONFIG
    except AudioDeviceError as exc:
        print(f"kioskvoice record: {exc}", file=sys.stderr)
        return 2
    a = audio_settings
    audio = ResilientAudio(
        a.input_device,
        a.output_device,
        rate=a.sample_rate,
        channels=a.input_channels,
        frame_ms=a.frame_ms,
        on_lost=lambda reason: print(f"device lost: {reason}", file=sys.stderr),
        on_back=lambda: print("device back", file=sys.stderr),
    )
    try:
        audio.open()
    except AudioDeviceError as exc:
        print(f"kioskvoice record: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    assert audio.output_rate is not None
    player = Player(audio.output_rate, audio.output_block_samples)
    recorder = Recorder(
        args.out,
        rate=a.sample_rate,
        channels=a.input_channels,
        frame_ms=a.frame_ms,
        out_rate=audio.output_rate,
    )
    recorder.record(args.seconds)
    if play is not None:
        player.feed("record", play)
        player.finish()
    try:
        audio.start(recorder.on_block, player, recorder.on_played)
        # Real devices deliver in real time; allow for a late start, then give up.
        finished = recorder.done.wait(args.seconds + 10.0)
    except KeyboardInterrupt:
        finished = False
    finally:
        audio.stop()
        recorder.close()
    seconds = recorder.frames / a.sample_rate
    for path in (*recorder.mic_paths, recorder.ref_path):
        print(f"wrote {path}")
    mode = "full duplex" if audio.duplex else "separate streams"
    print(f"{seconds:.1f} s at {a.sample_rate} Hz, {a.input_channels} channel(s), {mode}")
    if not finished:
        print("kioskvoice record: stopped before the requested length", file=sys.stderr)
        return 1
    return 0
