"""Micro-benchmark of the Speex binding: ``python -m kioskvoice.dsp.bench_speex``.

For 10 and 20 ms blocks and 100/200/300 ms echo tails it prints, over one fixed synthetic echo
scene, the CPU milliseconds per second of audio and the ERLE of:

- ``speexdsp-py aec``: the PyPI ``speexdsp`` package's echo filter (the oracle),
- ``ours aec``: :class:`~kioskvoice.dsp.speex.EchoCanceller`,
- ``ours aec+pp``: the canceller plus a linked :class:`~kioskvoice.dsp.speex.Preprocessor`
  (denoise and residual echo suppression on, AGC off),
- ``C aec`` / ``C aec+pp``: the physical floor, the same libspeexdsp calls made from a C loop
  compiled at bench time (needs ``cc``, ``pkg-config`` and ``libspeexdsp-dev``),

then each of ours as a ratio to its C loop (target for aec+pp: <= 1.3x) and our Python
overhead per block in microseconds. Timings are the minimum of several runs of
``time.process_time()``; they are figures to read, never to assert in tests.

The scene helpers (:func:`make_echo_scene`, :func:`erle_db`) are also used by the tests.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kioskvoice.dsp.speex import EchoCanceller, Preprocessor, PreprocessorSettings

__all__ = ["C_FLOOR_SOURCE", "EchoScene", "erle_db", "main", "make_echo_scene"]


@dataclass(frozen=True)
class EchoScene:
    """What the speaker played and what the mic heard."""

    far: np.ndarray
    """Reference played by the speaker, int16."""
    near: np.ndarray
    """Mic signal, int16: the far end through the room impulse response, noise, any talker."""
    sample_rate: int

    def frames(self, frame_size: int) -> tuple[list[bytes], list[bytes]]:
        """Split into whole frames of ``frame_size`` samples: ``(near_frames, far_frames)``."""
        count = len(self.near) // frame_size
        near = [self.near[i * frame_size : (i + 1) * frame_size].tobytes() for i in range(count)]
        far = [self.far[i * frame_size : (i + 1) * frame_size].tobytes() for i in range(count)]
        return near, far


def _speech_like(samples: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Syllable-like bursts (gliding harmonic chirps and hiss) separated by short pauses.

    Non-stationary on purpose: a stationary far end would be learnt as noise by the denoiser,
    hiding what the residual echo suppression adds.
    """
    out = np.zeros(samples)
    pos = int(0.05 * rate)
    while pos < samples:
        length = min(int(rng.uniform(0.08, 0.30) * rate), samples - pos)
        t = np.arange(length) / rate
        if rng.random() < 0.7:
            f0 = rng.uniform(100.0, 220.0) * (1.0 + rng.uniform(-0.3, 0.3) * t / max(t[-1], 1e-3))
            phase = 2.0 * np.pi * np.cumsum(f0) / rate
            formant = rng.uniform(400.0, 2500.0)
            burst = np.zeros(length)
            for k in range(1, int(4000.0 / f0.max()) + 1):
                gain = 1.0 / k + 2.0 / (1.0 + ((k * f0.mean() - formant) / 300.0) ** 2)
                burst += gain * np.sin(k * phase + rng.uniform(0.0, 2.0 * np.pi))
        else:
            burst = np.diff(rng.standard_normal(length + 1)) * 2.0
        out[pos : pos + length] = burst * np.hanning(length) * rng.uniform(0.4, 1.0)
        pos += length + int(rng.uniform(0.03, 0.20) * rate)
    return out


def _room_impulse_response(rate: int, delay_ms: float, rng: np.random.Generator) -> np.ndarray:
    """Pure delay, a direct path at -6 dB, then 50 ms of exponentially decaying reflections."""
    delay = round(delay_ms * rate / 1000)
    tail = int(0.05 * rate)
    response = np.zeros(delay + tail)
    response[delay] = 0.5
    decay = np.exp(-np.arange(1, tail) / (0.008 * rate))
    response[delay + 1 :] = rng.standard_normal(tail - 1) * 0.15 * decay
    return response


def make_echo_scene(
    *,
    sample_rate: int = 16000,
    seconds: float = 8.0,
    delay_ms: float = 25.0,
    far_rms: float = 3000.0,
    noise_rms: float = 10.0,
    double_talk: tuple[float, float] | None = None,
    seed: int = 20240601,
) -> EchoScene:
    """Deterministic scene: speech-like far end, synthetic room, low white noise.

    Far-end only unless ``double_talk=(start_s, stop_s)`` adds a near-end talker (as loud as
    the echo) over that interval.
    """
    rng = np.random.default_rng(seed)
    samples = int(sample_rate * seconds)
    far = _speech_like(samples, sample_rate, rng)
    far *= far_rms / np.sqrt(np.mean(far**2))
    far = np.clip(np.round(far), -32768, 32767)
    echo = np.convolve(far, _room_impulse_response(sample_rate, delay_ms, rng))[:samples]
    near = echo + rng.standard_normal(samples) * noise_rms
    if double_talk is not None:
        start, stop = (round(s * sample_rate) for s in double_talk)
        talker = _speech_like(stop - start, sample_rate, rng)
        talker *= np.sqrt(np.mean(echo**2) / np.mean(talker**2))
        near[start:stop] += talker
    return EchoScene(
        far=far.astype(np.int16),
        near=np.clip(np.round(near), -32768, 32767).astype(np.int16),
        sample_rate=sample_rate,
    )


def erle_db(mic: np.ndarray, out: np.ndarray, start: int = 0) -> float:
    """Echo return loss enhancement: 10*log10(mic energy / output energy) from ``start`` on."""
    stop = min(len(mic), len(out))
    mic_energy = float(np.sum(mic[start:stop].astype(np.float64) ** 2))
    out_energy = float(np.sum(out[start:stop].astype(np.float64) ** 2))
    return 10.0 * np.log10(mic_energy / max(out_energy, 1e-9))


# The physical floor: the very calls our chain makes, from a C loop over raw int16 files.
# argv: near far out frame_size filter_length rate preprocess denoise noise_db echo_db
#       echo_active_db agc agc_level repeats; prints the best CPU seconds of the loop alone.
C_FLOOR_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <speex/speex_echo.h>
#include <speex/speex_preprocess.h>

static spx_int16_t *slurp(const char *path, long *samples) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    spx_int16_t *data = malloc(bytes);
    if (fread(data, 1, bytes, f) != (size_t)bytes) { perror(path); exit(1); }
    fclose(f);
    *samples = bytes / 2;
    return data;
}

int main(int argc, char **argv) {
    if (argc != 15) { fprintf(stderr, "bad arguments\n"); return 2; }
    long n_near, n_far;
    spx_int16_t *near = slurp(argv[1], &n_near), *far = slurp(argv[2], &n_far);
    int frame = atoi(argv[4]), tail = atoi(argv[5]), rate = atoi(argv[6]);
    int preprocess = atoi(argv[7]);
    spx_int32_t denoise = atoi(argv[8]), noise_db = atoi(argv[9]), echo_db = atoi(argv[10]);
    spx_int32_t echo_active_db = atoi(argv[11]), agc = atoi(argv[12]);
    float agc_level = (float)atof(argv[13]);
    int repeats = atoi(argv[14]);
    long blocks = (n_near < n_far ? n_near : n_far) / frame;
    spx_int16_t *out = malloc(blocks * frame * sizeof(spx_int16_t));
    double best = 1e30;
    for (int r = 0; r < repeats; r++) {
        SpeexEchoState *echo = speex_echo_state_init(frame, tail);
        speex_echo_ctl(echo, SPEEX_ECHO_SET_SAMPLING_RATE, &rate);
        SpeexPreprocessState *pp = NULL;
        if (preprocess) {
            pp = speex_preprocess_state_init(frame, rate);
            speex_preprocess_ctl(pp, SPEEX_PREPROCESS_SET_DENOISE, &denoise);
            speex_preprocess_ctl(pp, SPEEX_PREPROCESS_SET_NOISE_SUPPRESS, &noise_db);
            speex_preprocess_ctl(pp, SPEEX_PREPROCESS_SET_ECHO_SUPPRESS, &echo_db);
            speex_preprocess_ctl(pp, SPEEX_PREPROCESS_SET_ECHO_SUPPRESS_ACTIVE, &echo_active_db);
            speex_preprocess_ctl(pp, SPEEX_PREPROCESS_SET_AGC, &agc);
            speex_preprocess_ctl(pp, SPEEX_PREPROCESS_SET_AGC_LEVEL, &agc_level);
            speex_preprocess_ctl(pp, SPEEX_PREPROCESS_SET_ECHO_STATE, echo);
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
        for (long b = 0; b < blocks; b++) {
            spx_int16_t *o = out + b * frame;
            speex_echo_cancellation(echo, near + b * frame, far + b * frame, o);
            if (pp) speex_preprocess_run(pp, o);
        }
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
        double spent = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
        if (spent < best) best = spent;
        if (pp) speex_preprocess_state_destroy(pp);
        speex_echo_state_destroy(echo);
    }
    FILE *f = fopen(argv[3], "wb");
    if (!f || fwrite(out, sizeof(spx_int16_t), blocks * frame, f) != (size_t)(blocks * frame)) {
        perror(argv[3]);
        return 1;
    }
    fclose(f);
    printf("%.9f\n", best);
    return 0;
}
"""


def _build_c_floor(workdir: Path) -> tuple[Path | None, str]:
    """Compile the C loop; return ``(executable, "")`` or ``(None, reason)``."""
    cc = shutil.which("cc")
    if cc is None:
        return None, "no C compiler (cc)"
    flags = ["-lspeexdsp"]
    if shutil.which("pkg-config"):
        found = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "speexdsp"], capture_output=True, text=True
        )
        if found.returncode == 0:
            flags = shlex.split(found.stdout)
    source = workdir / "speex_floor.c"
    source.write_text(C_FLOOR_SOURCE)
    exe = workdir / "speex_floor"
    built = subprocess.run(
        [cc, "-O2", "-o", str(exe), str(source), *flags], capture_output=True, text=True
    )
    if built.returncode != 0:
        return None, f"cc failed: {built.stderr.strip().splitlines()[-1:]}"
    return exe, ""


def _run_c_floor(
    exe: Path,
    workdir: Path,
    frame_size: int,
    filter_length: int,
    rate: int,
    settings: PreprocessorSettings | None,
    repeats: int,
) -> tuple[float, np.ndarray]:
    """Run the C loop, with a linked preprocessor when ``settings`` are given.

    Returns (best CPU seconds, output samples).
    """
    preprocess = ["0"] * 7
    if settings is not None:
        preprocess = [
            "1",
            str(int(settings.denoise)),
            str(settings.noise_suppress_db),
            str(settings.echo_suppress_db),
            str(settings.echo_suppress_active_db),
            str(int(settings.agc)),
            repr(settings.agc_level),
        ]
    out_path = workdir / "out.raw"
    args = [
        str(exe),
        str(workdir / "near.raw"),
        str(workdir / "far.raw"),
        str(out_path),
        str(frame_size),
        str(filter_length),
        str(rate),
        *preprocess,
        str(repeats),
    ]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return float(done.stdout.strip()), np.fromfile(out_path, dtype=np.int16)


def _python_once(
    make: Callable[[], Callable[[bytes, bytes], bytes]],
    near: Sequence[bytes],
    far: Sequence[bytes],
) -> tuple[float, np.ndarray]:
    """CPU seconds of one per-block loop over a fresh state, and its output."""
    step = make()
    outputs: list[bytes] = []
    append = outputs.append
    start = time.process_time()
    for near_frame, far_frame in zip(near, far, strict=True):
        append(step(near_frame, far_frame))
    spent = time.process_time() - start
    return spent, np.frombuffer(b"".join(outputs), dtype=np.int16)


def _ours_aec(frame_size: int, filter_length: int, rate: int) -> Callable[[bytes, bytes], bytes]:
    return EchoCanceller(frame_size, filter_length, rate).cancel


def _ours_chain(frame_size: int, filter_length: int, rate: int) -> Callable[[bytes, bytes], bytes]:
    echo = EchoCanceller(frame_size, filter_length, rate)
    pre = Preprocessor(frame_size, rate, echo=echo, agc=False)
    cancel, run = echo.cancel, pre.run
    return lambda near, far: run(cancel(near, far))


def _oracle_aec(frame_size: int, filter_length: int, rate: int) -> Callable[[bytes, bytes], bytes]:
    import speexdsp  # the PyPI package; an optional oracle, never used by the kiosk

    return speexdsp.EchoCanceller.create(frame_size, filter_length, rate).process


_Run = Callable[[], tuple[float, np.ndarray]]


def _runs(
    shape: tuple[int, int, int],
    near: Sequence[bytes],
    far: Sequence[bytes],
    *,
    oracle: bool,
    floor: tuple[Path, Path] | None,
    settings: PreprocessorSettings,
) -> dict[str, tuple[_Run, str | None]]:
    """Label -> (one timed run, label of the C loop it is compared with) for one configuration."""

    def python(factory: Callable[..., Callable[[bytes, bytes], bytes]]) -> _Run:
        return functools.partial(_python_once, functools.partial(factory, *shape), near, far)

    runs: dict[str, tuple[_Run, str | None]] = {}
    if oracle:
        runs["speexdsp-py aec"] = (python(_oracle_aec), "C aec")
    runs["ours aec"] = (python(_ours_aec), "C aec")
    runs["ours aec+pp"] = (python(_ours_chain), "C aec+pp")
    if floor is not None:
        exe, workdir = floor
        for label, pre in (("C aec", None), ("C aec+pp", settings)):
            runs[label] = (functools.partial(_run_c_floor, exe, workdir, *shape, pre, 1), None)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print one table; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m kioskvoice.dsp.bench_speex")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per run")
    parser.add_argument("--repeats", type=int, default=7, help="runs per figure (best kept)")
    args = parser.parse_args(argv)

    rate = 16000
    scene = make_echo_scene(sample_rate=rate, seconds=args.seconds)
    settle = len(scene.near) // 2  # ERLE over the second half, after convergence
    try:
        import speexdsp  # noqa: F401
    except ImportError:
        oracle = False
    else:
        oracle = True
    # The C loop gets the settings our preprocessor reports from its C state: same calls.
    with Preprocessor(160, rate, agc=False) as probe:
        settings = probe.settings()

    print(
        f"kioskvoice Speex bench: {args.seconds:g} s of far-end-only audio at {rate} Hz, "
        f"best of {args.repeats} interleaved runs, CPU ms per second of audio (process_time)"
    )
    print(f"preprocessor (read back from the C state; linked in aec+pp): {settings}")
    with tempfile.TemporaryDirectory(prefix="kioskvoice-bench-") as tmp:
        workdir = Path(tmp)
        scene.near.tofile(workdir / "near.raw")
        scene.far.tofile(workdir / "far.raw")
        exe, why = _build_c_floor(workdir)
        if exe is None:
            print(f"C floor unavailable: {why}")
        header = (
            f"{'block':>5} {'tail':>5}  {'implementation':<16} {'cpu ms/s':>8} {'ERLE dB':>8}"
            f"  {'x C':>6} {'py us/block':>11}  {'==C':>4}"
        )
        print(header)
        print("-" * len(header))
        for block_ms, tail_ms in itertools.product((10, 20), (100, 200, 300)):
            frame_size = rate * block_ms // 1000
            near, far = scene.frames(frame_size)
            runs = _runs(
                (frame_size, rate * tail_ms // 1000, rate),
                near,
                far,
                oracle=oracle,
                floor=None if exe is None else (exe, workdir),
                settings=settings,
            )
            # Interleaved so that a noisy neighbour slows every implementation alike.
            best = dict.fromkeys(runs, float("inf"))
            outputs: dict[str, np.ndarray] = {}
            for _ in range(args.repeats):
                for label, (run, _floor) in runs.items():
                    spent, outputs[label] = run()
                    best[label] = min(best[label], spent)
            audio_s = len(near) * frame_size / rate
            for label, (_run, floor) in runs.items():
                cpu = best[label]
                ratio = overhead = same = ""
                if floor in best:
                    ratio = f"{cpu / best[floor]:.3f}"
                    overhead = f"{(cpu - best[floor]) / len(near) * 1e6:.2f}"
                    same = "yes" if np.array_equal(outputs[label], outputs[floor]) else "NO"
                erle = erle_db(scene.near, outputs[label], settle)
                print(
                    f"{block_ms:>3}ms {tail_ms:>3}ms  {label:<16} {cpu / audio_s * 1e3:>8.2f}"
                    f" {erle:>8.1f}  {ratio:>6} {overhead:>11}  {same:>4}".rstrip()
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
