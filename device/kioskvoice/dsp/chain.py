"""The capture chain: what happens to each captured block before it reaches the model.

Runs in the capture thread, one block at a time: channel pick → (echo cancellation and
preprocessing: the DSP issue plugs in here, fed by the player's far-end reference) →
resample to the model's 24 kHz.
"""

from __future__ import annotations

import numpy as np

from .resample import Resampler

MODEL_RATE = 24000


class CaptureChain:
    """Turns interleaved PCM16 blocks of ``channels`` channels at ``rate`` into 24 kHz mono.

    Not thread-safe: the capture thread owns it.
    """

    def __init__(self, *, rate: int, channels: int, channel: int) -> None:
        if not 0 <= channel < channels:
            raise ValueError(f"channel {channel} out of range for {channels} channels")
        self.rate = rate
        self.channels = channels
        self.channel = channel
        # LQ: its 6 ms filter delay is what a release cuts off the end of a turn (HQ: 21 ms).
        self._resampler = Resampler(rate, MODEL_RATE, quality="LQ")

    def process(self, block: bytes) -> bytes:
        """One captured block in, the model's audio for it out (may be a few samples
        shorter or longer than the exact ratio: the resampler carries the rest)."""
        if self.channels > 1:
            samples = np.frombuffer(block, dtype=np.int16).reshape(-1, self.channels)
            block = np.ascontiguousarray(samples[:, self.channel]).tobytes()
        return self._resampler.process(block)

    def far_end(self, block: bytes) -> None:
        """The speaker's output at the chain's rate: the echo canceller's reference (a no-op
        until echo cancellation is enabled)."""
