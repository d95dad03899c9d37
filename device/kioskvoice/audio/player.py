"""The player: a jitter buffer between reply audio from the loop and the output device.

The event loop feeds 24 kHz reply audio (bursts arrive faster than real time); the output
device's thread pulls fixed blocks. The player counts, per conversation item, the milliseconds
actually handed to the device, which is what ``conversation.item.truncate`` needs on barge-in.

Every block pulled goes through a :class:`Limiter`, so the speaker never clips; the block
returned by :meth:`Player.pull` is exactly what is played, and so exactly what the echo
canceller must get as its far-end reference.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

import numpy as np

from ..dsp.resample import Resampler

SOURCE_RATE = 24000
_KEEP_ITEMS = 32
MAX_QUEUED_S = 180.0
"""Most audio the player holds: a reply streams in faster than real time, but a server (or
anything posing as one) that never stops must not fill a 512 MB Pi. Beyond it, audio is
dropped and counted."""


class Limiter:
    """Peak limiter for PCM16 mono blocks: no sample ever exceeds ``ceiling_dbfs``.

    No look-ahead: a block whose peak would exceed the ceiling is attenuated from its first
    sample (instant attack); the gain then recovers toward unity with ``release_ms``, ramped
    within each block and never above what keeps that block under the ceiling. Blocks that
    need no gain pass through untouched (no numpy conversion beyond the peak check).
    """

    def __init__(self, rate: int, *, ceiling_dbfs: float = -1.0, release_ms: float = 200.0) -> None:
        self.ceiling = float(int(32768.0 * 10.0 ** (ceiling_dbfs / 20.0)))
        self._release_s = release_ms / 1000
        self._rate = rate
        self._gain = 1.0
        self.limited_blocks = 0
        """Blocks that needed attenuation (for diagnostics)."""

    def process(self, block: bytes) -> bytes:
        samples = np.frombuffer(block, dtype=np.int16)
        peak = float(np.abs(samples.astype(np.int32)).max(initial=0))
        if self._gain >= 1.0 and peak <= self.ceiling:
            return block
        allowed = self.ceiling / peak if peak > 0 else 1.0
        # Recover toward 1 over the release time, never above what this block allows.
        recovery = 1.0 - np.exp(-len(samples) / self._rate / self._release_s)
        target = min(self._gain + (1.0 - self._gain) * recovery, 1.0, allowed)
        start = min(self._gain, allowed)
        gains = np.linspace(start, target, len(samples), dtype=np.float32)
        self._gain = target
        if peak > self.ceiling:
            self.limited_blocks += 1
        return np.round(samples * gains).astype(np.int16).tobytes()


class Player:
    """Thread-safe: :meth:`feed`/:meth:`flush` from the loop, :meth:`pull` from the device.

    After running dry, playback resumes once ``prebuffer_ms`` of audio is queued or the same
    time has passed, so a slow burst does not stutter and a short one is not held back.
    Blocks pulled are limited to ``ceiling_dbfs`` (see :class:`Limiter`).
    """

    def __init__(
        self,
        out_rate: int,
        block_samples: int,
        *,
        prebuffer_ms: int = 60,
        ceiling_dbfs: float = -1.0,
    ) -> None:
        self.out_rate = out_rate
        self.block_bytes = 2 * block_samples
        self._prebuffer_bytes = 2 * out_rate * prebuffer_ms // 1000
        self._prebuffer_blocks = max(1, -(-self._prebuffer_bytes // self.block_bytes))
        self._lock = threading.Lock()
        self._buf = bytearray()
        self._segments: deque[list] = deque()  # [item_id, bytes not yet played]
        self._played: OrderedDict[str, int] = OrderedDict()  # item_id -> samples played
        self._started: OrderedDict[str, float] = OrderedDict()  # item_id -> first block out
        self._feed_item: str | None = None
        self._carry = b""  # an odd byte of the current item, waiting for its pair
        self._max_bytes = int(2 * out_rate * MAX_QUEUED_S)
        self.dropped_bytes = 0
        """Audio refused because :data:`MAX_QUEUED_S` was queued already."""
        self._resampler = Resampler(SOURCE_RATE, out_rate)
        self._starting = True
        self._waited = 0
        self.blocks_played = 0
        self.output_latency_s = 0.0
        """How long a block handed to the device takes to be heard (set by the audio layer)."""
        self.limiter = Limiter(out_rate, ceiling_dbfs=ceiling_dbfs)

    def feed(self, item_id: str, pcm: bytes) -> bool:
        """Queue 24 kHz PCM16 mono for ``item_id``; False when some of it was dropped because
        the queue is full. Chunks of any length, odd ones included, join up sample-aligned."""
        if item_id != self._feed_item:
            self.finish()
            self._feed_item = item_id
            self._resampler = Resampler(SOURCE_RATE, self.out_rate)
        pcm = self._carry + pcm
        cut = len(pcm) - len(pcm) % 2
        pcm, self._carry = pcm[:cut], pcm[cut:]
        return self._queue(item_id, self._resampler.process(pcm))

    def finish(self) -> None:
        """The current item has no more audio: queue what the resampler still holds."""
        if self._feed_item is not None:
            self._queue(self._feed_item, self._resampler.process(b"", last=True))
            self._feed_item = None
        self._carry = b""

    def _queue(self, item_id: str, data: bytes) -> bool:
        data = data[: len(data) - len(data) % 2]
        if not data:
            return True
        with self._lock:
            room = max(0, self._max_bytes - len(self._buf))
            room -= room % 2
            complete = len(data) <= room
            if not complete:
                self.dropped_bytes += len(data) - room
                data = data[:room]
                if not data:
                    return False
            self._buf += data
            if self._segments and self._segments[-1][0] == item_id:
                self._segments[-1][1] += len(data)
            else:
                self._segments.append([item_id, len(data)])
            self._played.setdefault(item_id, 0)
            while len(self._played) > _KEEP_ITEMS:
                self._played.popitem(last=False)
        return complete

    def pull(self) -> bytes | None:
        """The next block for the device, or None when there is nothing to play (the device
        then plays silence). A short final block is padded with silence."""
        with self._lock:
            if not self._buf:
                self._starting = True
                self._waited = 0
                return None
            if self._starting:
                if len(self._buf) < self._prebuffer_bytes and self._waited < self._prebuffer_blocks:
                    self._waited += 1
                    return None
                self._starting = False
            block = bytes(self._buf[: self.block_bytes])
            del self._buf[: self.block_bytes]
            self._account(len(block))
            self.blocks_played += 1
        if len(block) < self.block_bytes:
            block += bytes(self.block_bytes - len(block))
        return self.limiter.process(block)

    def _account(self, nbytes: int) -> None:
        while nbytes and self._segments:
            segment = self._segments[0]
            take = min(nbytes, segment[1])
            if segment[0] in self._played:
                if not self._played[segment[0]] and take:
                    self._started[segment[0]] = time.monotonic()
                    while len(self._started) > _KEEP_ITEMS:
                        self._started.popitem(last=False)
                self._played[segment[0]] += take // 2
            segment[1] -= take
            nbytes -= take
            if segment[1] == 0:
                self._segments.popleft()

    def flush(self) -> None:
        """Drop everything queued at once (barge-in); the next block pulled is silence."""
        with self._lock:
            self._buf.clear()
            self._segments.clear()
            self._starting = True
            self._waited = 0
        self._feed_item = None
        self._carry = b""

    def started_at(self, item_id: str) -> float | None:
        """When the first block of ``item_id`` was handed to the device (monotonic), or None."""
        with self._lock:
            return self._started.get(item_id)

    def heard_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` that have left the speaker: handed to the device, less
        the output latency (what ``conversation.item.truncate`` must say on barge-in)."""
        return max(0, self.played_ms(item_id) - round(self.output_latency_s * 1000))

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` handed to the device so far."""
        with self._lock:
            return self._played.get(item_id, 0) * 1000 // self.out_rate

    @property
    def idle(self) -> bool:
        """Nothing queued."""
        with self._lock:
            return not self._buf
