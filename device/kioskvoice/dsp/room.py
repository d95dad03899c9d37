"""Rooms in numbers: the loudspeaker-to-microphone response of a kiosk's room, synthesised
(the self-test's echo check uses one when no real room is at hand)."""

from __future__ import annotations

import numpy as np


def room_impulse_response(
    rate: int,
    *,
    delay_ms: float = 25.0,
    rt60_s: float = 0.3,
    drr_db: float = 6.0,
    rng: np.random.Generator,
) -> np.ndarray:
    """A loudspeaker-to-mic response: pure delay, a direct path at -6 dB, a few early
    reflections, then a diffuse exponential tail with the given RT60 (energy -60 dB after
    ``rt60_s``) and direct-to-reverberant ratio, cut at -60 dB."""
    delay = round(delay_ms * rate / 1000)
    length = int(rt60_s * rate)
    response = np.zeros(delay + length)
    direct = 0.5
    response[delay] = direct
    for _ in range(6):  # early reflections 2-25 ms after the direct sound
        at = delay + int(rng.uniform(0.002, 0.025) * rate)
        response[at] += direct * rng.uniform(0.15, 0.45) * rng.choice((-1.0, 1.0))
    t = np.arange(1, length) / rate
    decay = np.exp(-3.0 * np.log(10.0) * t / rt60_s)  # amplitude: -60 dB at rt60_s
    tail = rng.standard_normal(length - 1) * decay
    # Scale the diffuse tail so that direct / reverberant energy = drr_db.
    tail *= np.sqrt(direct**2 / 10.0 ** (drr_db / 10.0) / np.sum(tail**2))
    response[delay + 1 :] += tail
    return response
