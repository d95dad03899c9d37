"""``kioskvoice dsp``: the live capture chain, run offline over a recording.

``kioskvoice dsp --mic MIC.wav --ref REF.wav --out OUT.wav [--delay-ms auto|N] [--tail-ms N]
[--frame-ms N] [--agc on|off] [--channel N|A,B,..]`` feeds the recording block by block through
the very :class:`~kioskvoice.dsp.chain.CaptureChain` the kiosk runs, each reference block
handed to :meth:`~kioskvoice.dsp.chain.CaptureChain.far_end` just before the mic block it goes
with (as in a full-duplex callback), and prints:

- the playback-to-capture delay in use (found by ``auto``, or the one given),
- ERLE in dB over the far-end-only stretches (where the reference's echo is expected, after
  the first 2 s of convergence, less probable near-end talk: see :func:`far_masks`), and over
  all far-end stretches,
- CPU milliseconds per second of audio.

OUT.wav is what the model would have received (24 kHz mono). ``kioskvoice record`` makes
matching MIC/REF files on the device.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KioskError
from ..wavio import read_wav, write_wav
from .chain import MODEL_RATE, CaptureChain, DspOptions
from .measures import active_blocks, erle_db

__all__ = ["OfflineResult", "add_parser", "parse_channel", "run_dsp", "run_offline"]

SETTLE_S = 2.0


@dataclass(frozen=True)
class OfflineResult:
    """What one offline run produced."""

    mic: np.ndarray
    """The picked (or mixed) mic channel at the DSP rate, int16."""
    clean: np.ndarray
    """The chain's output at the DSP rate (before resampling), int16."""
    model: bytes
    """The chain's output at 24 kHz: what the model would receive."""
    cpu_s: float
    """CPU seconds spent in the chain (both threads' calls)."""
    audio_s: float
    """Seconds of audio processed."""


def run_offline(chain: CaptureChain, mic: bytes, ref: bytes) -> OfflineResult:
    """Run whole recordings through ``chain``: ``mic`` interleaved PCM16 with the chain's
    channel count at its rate, ``ref`` mono PCM16 at its ``out_rate`` (cut or padded with
    silence to the mic's length)."""
    frame_ms = chain.frame_ms
    mic_bytes = 2 * chain.channels * chain.rate * frame_ms // 1000
    ref_bytes = 2 * chain.out_rate * frame_ms // 1000
    blocks = len(mic) // mic_bytes
    ref = ref[: blocks * ref_bytes].ljust(blocks * ref_bytes, b"\0")
    picked: list[bytes] = []
    clean: list[bytes] = []
    model: list[bytes] = []
    started = time.process_time()
    for i in range(blocks):
        block = mic[i * mic_bytes : (i + 1) * mic_bytes]
        chain.far_end(ref[i * ref_bytes : (i + 1) * ref_bytes])
        model.append(chain.process(block))
        clean.append(chain.last_clean)
    cpu_s = time.process_time() - started
    for i in range(blocks):
        picked.append(chain.pick(mic[i * mic_bytes : (i + 1) * mic_bytes]))
    return OfflineResult(
        mic=np.frombuffer(b"".join(picked), dtype=np.int16),
        clean=np.frombuffer(b"".join(clean), dtype=np.int16),
        model=b"".join(model),
        cpu_s=cpu_s,
        audio_s=blocks * frame_ms / 1000,
    )


def far_masks(
    mic: np.ndarray,
    out: np.ndarray,
    ref: np.ndarray,
    rate: int,
    delay_ms: float,
    tail_ms: int,
    block: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample masks ``(far, far_only)`` for the ERLE report.

    ``far``: where the echo of an active reference is expected (the reference was active
    within ``[delay, delay + tail]`` before), after the first :data:`SETTLE_S`.
    ``far_only``: ``far`` less probable near-end talk: runs of at least 3 blocks where the
    output stays within 6 dB of the mic (the canceller cannot remove a voice it has no
    reference for), with 300 ms around them. A canceller that fails also looks like that, so
    both figures are printed.
    """
    count = min(len(mic), len(out), len(ref)) // block
    if count == 0:
        empty = np.zeros(0, dtype=bool)
        return empty, empty

    def energies(signal: np.ndarray) -> np.ndarray:
        frames = signal[: count * block].astype(np.float64).reshape(count, block)
        return np.mean(frames * frames, axis=1)

    active = active_blocks(ref[: count * block], block)
    shift = round(delay_ms * rate / 1000 / block)
    hold = max(1, -(-tail_ms * rate // 1000 // block))
    far = np.zeros(count, dtype=bool)
    for k in range(shift, min(shift + hold + 1, count)):
        far[k:] |= active[: count - k]
    far[: round(SETTLE_S * rate / block)] = False
    loud = energies(out) > energies(mic) / 4.0
    runs = np.convolve(loud.astype(np.int32), np.ones(3, dtype=np.int32), "same") == 3
    pad = max(1, round(0.3 * rate / block))
    near = np.convolve(runs.astype(np.int32), np.ones(2 * pad + 3, dtype=np.int32), "same") > 0
    return np.repeat(far, block), np.repeat(far & ~near, block)


def parse_channel(text: str) -> int | list[int]:
    """``"0"`` -> 0, ``"1,2,3,4"`` -> [1, 2, 3, 4] (channels to average)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        channels = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a channel or list of channels: {text!r}") from None
    if not channels:
        raise argparse.ArgumentTypeError("no channel given")
    return channels[0] if len(channels) == 1 else channels


def _delay(text: str) -> int | str:
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--delay-ms must be auto or ms, got {text!r}") from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``dsp`` on an argparse subparsers object (handler: :func:`run_dsp`)."""
    p = subparsers.add_parser(
        "dsp",
        help="run the capture chain offline over a recording (delay, ERLE, CPU)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--mic", type=Path, required=True, help="mic WAV (any channel count)")
    p.add_argument("--ref", type=Path, required=True, help="far-end reference WAV, mono")
    p.add_argument("--out", type=Path, required=True, help="output WAV (24 kHz, mono)")
    p.add_argument("--delay-ms", type=_delay, default="auto", help="auto (default) or ms")
    p.add_argument("--tail-ms", type=int, default=None, help="echo filter length (default auto)")
    p.add_argument("--frame-ms", type=int, choices=(10, 20), default=20, help="DSP block")
    p.add_argument("--agc", choices=("on", "off"), default="off", help="post-chain gain")
    p.add_argument(
        "--channel",
        type=parse_channel,
        default=0,
        help="mic channel, or channels to average: 0 or 1,2,3,4 (default 0)",
    )
    p.set_defaults(handler=run_dsp)
    return p


def run_dsp(args: argparse.Namespace) -> int:
    """The ``dsp`` command; returns the exit status."""
    try:
        options = DspOptions(
            reference_delay_ms=args.delay_ms,
            tail_ms=args.tail_ms if args.tail_ms is not None else "auto",
            agc="post" if args.agc == "on" else "off",
        )
        mic, mic_rate, channels = read_wav(args.mic)
        ref, ref_rate, ref_channels = read_wav(args.ref)
        if ref_channels != 1:
            raise KioskError(f"{args.ref}: the reference must be mono, it has {ref_channels}")
        chain = CaptureChain(
            rate=mic_rate,
            channels=channels,
            channel=args.channel,
            frame_ms=args.frame_ms,
            options=options,
            out_rate=ref_rate,
        )
    except (KioskError, ValueError) as exc:
        print(f"kioskvoice dsp: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_offline(chain, mic, ref)
    finally:
        chain.close()
    write_wav(args.out, result.model, MODEL_RATE)
    if chain.delay_ms is None:
        print("delay: not found (the reference is silent or unrelated to the mic)")
        delay_ms = 0.0
    else:
        how = "auto" if options.reference_delay_ms == "auto" else "given"
        print(f"delay: {chain.delay_ms:.1f} ms ({how}; {chain.realigns} re-alignment(s))")
        delay_ms = chain.delay_ms
    reference = np.frombuffer(ref, dtype=np.int16)
    if ref_rate != mic_rate:
        from .resample import resample_all

        reference = np.frombuffer(resample_all(ref, ref_rate, mic_rate), dtype=np.int16)
    far, far_only = far_masks(
        result.mic, result.clean, reference, mic_rate, delay_ms, options.tail, chain.frame
    )
    figures = []
    for label, mask in (("far-end-only", far_only), ("all far-end", far)):
        keep = np.flatnonzero(mask)
        if len(keep) >= mic_rate // 2:
            erle = erle_db(result.mic[keep], result.clean[keep])
            figures.append(f"{erle:.1f} dB over {len(keep) / mic_rate:.1f} s of {label} audio")
    if figures:
        print("ERLE: " + "; ".join(figures))
    else:
        print("ERLE: not measured (less than 0.5 s of far-end audio after the first 2 s)")
    per_second = result.cpu_s / max(result.audio_s, 1e-9) * 1000
    print(
        f"CPU: {per_second:.2f} ms per second of audio "
        f"({result.audio_s:.1f} s of audio in {result.cpu_s:.3f} s)"
    )
    print(f"wrote {args.out} ({MODEL_RATE} Hz mono)")
    return 0
