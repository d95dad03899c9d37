"""Prometheus' text exposition format, the little of it kioskvoice needs: histograms and
number formatting, shared by the kiosk's metrics file and the broker's ``/metrics``."""

from __future__ import annotations

import math
from collections.abc import Sequence


class Histogram:
    """Cumulative buckets, a sum and a count (not thread-safe: the caller locks)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        pairs = zip(self.buckets, self.counts, strict=True)
        out = [f'{name}_bucket{{le="{number(b)}"}} {n}' for b, n in pairs]
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        return [*out, f"{name}_sum {number(self.sum)}", f"{name}_count {self.count}"]


def number(value: float) -> str:
    """A sample value as Prometheus writes it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def family(name: str, kind: str, help_: str, samples: list[str]) -> list[str]:
    """One metric family: HELP, TYPE and its samples."""
    return [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *samples]
