"""Per-device rate limit: a token bucket per device name, in memory.

Each broker process keeps its own buckets. Behind a load balancer with N replicas a device can
therefore get up to N times the configured rate (its requests spread over the replicas; with
sticky routing it gets the configured rate), and a restart forgets the buckets. That is
deliberate: the limit is a safety net against one stolen or runaway device token running up
the organisation's bill, not an exact quota, and sharing it would need shared state (a
database or Redis) that the stateless design avoids. A device's worst case is therefore
``N * secrets_per_minute``; a kiosk needs one secret per connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection


class RateLimiter:
    """``burst`` requests at once, then ``per_minute`` per minute, per key.

    ``clock`` is monotonic seconds (tests pass a fake one). Memory is one entry per key that
    made a request; the server passes only registered device names, and :meth:`retain` drops
    revoked ones.
    """

    def __init__(
        self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be > 0 and burst >= 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """Spend one request of ``key``'s allowance: 0.0 if allowed, else the seconds until
        the next request would be (nothing is spent then)."""
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def retain(self, keys: Collection[str]) -> None:
        """Forget every key not in ``keys`` (revoked devices)."""
        for key in list(self._buckets):
            if key not in keys:
                del self._buckets[key]
