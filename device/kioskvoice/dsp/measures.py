"""How well the chain did: echo return loss enhancement, speech distortion, and which blocks of
a reference are actually playing. numpy only; used by the ``dsp`` tool, the self-test, the
benchmarks and the tests."""

from __future__ import annotations

import numpy as np


def erle_db(mic: np.ndarray, out: np.ndarray, start: int = 0) -> float:
    """Echo return loss enhancement: 10*log10(mic energy / output energy) from ``start`` on."""
    stop = min(len(mic), len(out))
    mic_energy = float(np.sum(mic[start:stop].astype(np.float64) ** 2))
    out_energy = float(np.sum(out[start:stop].astype(np.float64) ** 2))
    return 10.0 * np.log10(mic_energy / max(out_energy, 1e-9))


def erle_over(mic: np.ndarray, out: np.ndarray, mask: np.ndarray) -> float:
    """ERLE over the samples where ``mask`` is true (e.g. the far-only stretches)."""
    stop = min(len(mic), len(out), len(mask))
    keep = mask[:stop]
    mic_energy = float(np.sum(mic[:stop][keep].astype(np.float64) ** 2))
    out_energy = float(np.sum(out[:stop][keep].astype(np.float64) ** 2))
    return 10.0 * np.log10(max(mic_energy, 1e-9) / max(out_energy, 1e-9))


def si_sdr_db(
    clean: np.ndarray, out: np.ndarray, mask: np.ndarray | None = None, *, max_lag: int = 400
) -> float:
    """Scale-invariant signal-to-distortion ratio of ``out`` against ``clean`` (dB).

    ``out`` may lag ``clean`` by up to ``max_lag`` samples (the preprocessor delays its output
    by one frame); the best lag is used. Residual echo, noise and speech distortion all count
    as distortion. ``mask`` restricts the measure to some samples (the double-talk stretches).
    """
    n = min(len(clean), len(out))
    reference = clean[:n].astype(np.float64)
    estimate = out.astype(np.float64)
    keep = np.ones(n, dtype=bool) if mask is None else mask[:n]
    index = np.flatnonzero(keep)
    index = index[index + max_lag < len(estimate)]
    target = reference[index]
    best = -np.inf
    energy = float(np.dot(target, target))
    if energy <= 0.0:
        return best
    # Coarse-to-fine would be faster; the lag range is small and this runs only in tests.
    lags = range(0, max_lag + 1)
    scores = [float(np.dot(estimate[index + lag], target)) for lag in lags]
    lag = int(np.argmax(scores))
    estimated = estimate[index + lag]
    alpha = scores[lag] / energy
    distortion = estimated - alpha * target
    best = 10.0 * np.log10(alpha**2 * energy / max(float(np.dot(distortion, distortion)), 1e-9))
    return best


def active_blocks(signal: np.ndarray, block: int, *, floor_dbfs: float = -50.0) -> np.ndarray:
    """Per block of ``block`` samples, whether its RMS level is above ``floor_dbfs`` and within
    40 dB of the loudest block (a reference that is playing, not silence)."""
    count = len(signal) // block
    if count == 0:
        return np.zeros(0, dtype=bool)
    frames = signal[: count * block].astype(np.float64).reshape(count, block)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    level = 20.0 * np.log10(np.maximum(rms, 1e-3) / 32768.0)
    return (level > floor_dbfs) & (level > level.max() - 40.0)
