"""The broker's own metrics on ``GET /metrics`` (Prometheus text format).

Counted from the access log's view of each request, so the numbers and the log agree: secrets
minted, refusals by reason, upstream failures by code, and the latency of minting requests.
No label names a device, a token or a client: every label value comes from a fixed set.
"""

from __future__ import annotations

import threading

from ..promtext import Histogram, family

REFUSALS = {
    401: "unauthorized",
    429: "rate_limited",
    413: "body_too_large",
    408: "body_timeout",
    400: "bad_request",
}
UPSTREAM_CODES = (
    "upstream_timeout", "upstream_unreachable", "upstream_malformed", "upstream_unauthorized",
    "upstream_quota", "upstream_rate_limited", "upstream_rejected", "upstream_error",
)  # fmt: skip
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


class BrokerMetrics:
    """Thread-safe counters; :meth:`render` gives the exposition text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.minted = 0
        self.refusals = dict.fromkeys(REFUSALS.values(), 0)
        self.upstream_failures = dict.fromkeys((*UPSTREAM_CODES, "other"), 0)
        self.latency = Histogram(LATENCY_BUCKETS)

    def minting_request(self, status: int, code: str | None, latency_s: float) -> None:
        """One ``POST`` for a secret, as it ended."""
        with self._lock:
            self.latency.observe(latency_s)
            if status == 200:
                self.minted += 1
            elif status in REFUSALS:
                self.refusals[REFUSALS[status]] += 1
            elif code is not None and code.startswith("upstream_"):
                self.upstream_failures[code if code in UPSTREAM_CODES else "other"] += 1

    def render(self) -> str:
        with self._lock:
            lines = [
                *family(
                    "kioskvoice_broker_secrets_minted_total",
                    "counter",
                    "Short-lived secrets handed to kiosks.",
                    [f"kioskvoice_broker_secrets_minted_total {self.minted}"],
                ),
                *family(
                    "kioskvoice_broker_refusals_total",
                    "counter",
                    "Requests refused by the broker itself, by reason.",
                    [
                        f'kioskvoice_broker_refusals_total{{reason="{r}"}} {n}'
                        for r, n in self.refusals.items()
                    ],
                ),
                *family(
                    "kioskvoice_broker_upstream_failures_total",
                    "counter",
                    "Requests the upstream could not serve, by the broker's code for why.",
                    [
                        f'kioskvoice_broker_upstream_failures_total{{code="{c}"}} {n}'
                        for c, n in self.upstream_failures.items()
                    ],
                ),
                *family(
                    "kioskvoice_broker_request_duration_seconds",
                    "histogram",
                    "Time to answer a request for a secret, refusals included.",
                    self.latency.lines("kioskvoice_broker_request_duration_seconds"),
                ),
            ]
        return "\n".join(lines) + "\n"
