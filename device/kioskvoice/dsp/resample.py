"""Streaming sample-rate conversion for PCM16 mono, on soxr.

Each :class:`Resampler` keeps filter state between blocks, so a stream split into blocks
resamples exactly like the whole signal. Equal rates pass bytes through untouched.
"""

from __future__ import annotations

import numpy as np
import soxr


class Resampler:
    """PCM16 mono ``in_rate`` → ``out_rate``, block by block. One thread at a time.

    The stream holds back its filter delay until ``last=True``: about 21 ms at 16→24 kHz in
    ``HQ``, 6 ms in ``LQ`` (16-bit precision, ample for speech).
    """

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        # float32, not int16: soxr's streaming int16 output is dithered with a seed that
        # differs per stream (soxr 1.1), so the same audio came out differently every run,
        # and a recording could not be reproduced offline. The conversion is ours.
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
        )

    def process(self, pcm: bytes, *, last: bool = False) -> bytes:
        """Resample one block; ``last=True`` flushes the filter's tail. Deterministic: the
        same input always gives the same output."""
        if self._stream is None:
            return bytes(pcm)
        samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) * (1.0 / 32768.0)
        out = self._stream.resample_chunk(samples, last=last) * 32768.0
        return np.clip(np.rint(out), -32768, 32767).astype(np.int16).tobytes()


def resample_all(pcm: bytes, in_rate: int, out_rate: int, channels: int = 1) -> bytes:
    """Resample a whole interleaved PCM16 buffer at once."""
    if in_rate == out_rate:
        return pcm
    samples = np.frombuffer(pcm, dtype=np.int16).reshape(-1, channels)
    return soxr.resample(samples, in_rate, out_rate, quality="HQ").astype(np.int16).tobytes()
