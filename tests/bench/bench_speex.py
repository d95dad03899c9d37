"""DSP benchmark: ``python tests/bench/bench_speex.py`` (``make bench``).

1. Per chain, for 10 and 20 ms blocks and 100/200/300 ms echo tails, over one room scene
   (25 ms direct path, RT60 0.3 s, double talk, low noise): CPU milliseconds per second of
   audio, ERLE over the far-only stretches, and SI-SDR of the near end in double talk, of

   - ``speexdsp-py aec``: the PyPI ``speexdsp`` package's echo filter (the oracle),
   - ``ours aec``: :class:`~kioskvoice.dsp.speex.EchoCanceller`,
   - ``ours aec+pp``: the canceller plus a linked :class:`~kioskvoice.dsp.speex.Preprocessor`,
   - ``chain`` / ``chain auto``: the whole :class:`~kioskvoice.dsp.chain.CaptureChain` as the
     audio threads call it (reference FIFO, canceller, preprocessor, soxr to 24 kHz; gain
     off), with a fixed delay or ``auto`` (the delay estimator running),
   - ``C aec`` / ``C aec+pp`` / ``C aec+pp+soxr``: the physical floor, the same library calls
     made from a C loop compiled at bench time (needs ``cc``, ``libspeexdsp-dev``; the soxr
     stage ``libsoxr-dev``),

   each of ours as a ratio to its C loop (target for the chain: <= 1.3x) and our Python
   overhead per block in microseconds. All in one run, interleaved, so the ratios hold on a
   noisy machine.
2. ``auto`` against the hand-aligned delay with the echo 120 ms later than the room's.
3. Gain control: off, Speex's AGC, the post-chain gain, on a conversation.

Timings are the minimum of several runs of ``time.process_time()``; they are figures to read,
never to assert in tests. The scene helpers are re-exported for the Speex tests.
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
from pathlib import Path

import numpy as np

from kioskvoice.dsp.chain import MODEL_RATE, CaptureChain, DspOptions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: the scenes

from kioskvoice.dsp.measures import erle_over, si_sdr_db
from kioskvoice.dsp.speex import EchoCanceller, Preprocessor, PreprocessorSettings
from scenes import RoomScene, make_room_scene

__all__ = ["C_FLOOR_SOURCE", "main"]


# The physical floor: the very calls our chain makes, from a C loop over raw int16 files.
# argv: near far out frame_size filter_length rate preprocess denoise noise_db echo_db
#       echo_active_db agc agc_level repeats; prints the best CPU seconds of the loop alone.
C_FLOOR_SOURCE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <speex/speex_echo.h>
#include <speex/speex_preprocess.h>
#ifdef HAVE_SOXR
#include <soxr.h>
#endif

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
    if (argc != 16) { fprintf(stderr, "bad arguments\n"); return 2; }
    long n_near, n_far;
    spx_int16_t *near = slurp(argv[1], &n_near), *far = slurp(argv[2], &n_far);
    int frame = atoi(argv[4]), tail = atoi(argv[5]), rate = atoi(argv[6]);
    int preprocess = atoi(argv[7]);
    spx_int32_t denoise = atoi(argv[8]), noise_db = atoi(argv[9]), echo_db = atoi(argv[10]);
    spx_int32_t echo_active_db = atoi(argv[11]), agc = atoi(argv[12]);
    float agc_level = (float)atof(argv[13]);
    int repeats = atoi(argv[14]);
    int out_rate = atoi(argv[15]);
#ifndef HAVE_SOXR
    if (out_rate) { fprintf(stderr, "built without soxr\n"); return 2; }
#endif
    long blocks = (n_near < n_far ? n_near : n_far) / frame;
    spx_int16_t *out = malloc(blocks * frame * sizeof(spx_int16_t));
    spx_int16_t *resampled = malloc(4 * frame * sizeof(spx_int16_t));
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
#ifdef HAVE_SOXR
        soxr_t soxr = NULL;
        if (out_rate) {
            soxr_error_t error = NULL;
            soxr_io_spec_t io = soxr_io_spec(SOXR_INT16_I, SOXR_INT16_I);
            soxr_quality_spec_t quality = soxr_quality_spec(SOXR_LQ, 0);
            soxr = soxr_create(rate, out_rate, 1, &error, &io, &quality, NULL);
            if (error) { fprintf(stderr, "soxr: %s\n", error); return 1; }
        }
#endif
        struct timespec t0, t1;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
        for (long b = 0; b < blocks; b++) {
            spx_int16_t *o = out + b * frame;
            speex_echo_cancellation(echo, near + b * frame, far + b * frame, o);
            if (pp) speex_preprocess_run(pp, o);
#ifdef HAVE_SOXR
            if (soxr) {
                size_t idone = 0, odone = 0;
                soxr_process(soxr, o, frame, &idone, resampled, 4 * frame, &odone);
            }
#endif
        }
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
        double spent = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
        if (spent < best) best = spent;
#ifdef HAVE_SOXR
        if (soxr) soxr_delete(soxr);
#endif
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


def _build_c_floor(workdir: Path) -> tuple[Path | None, bool, str]:
    """Compile the C loop: ``(executable, with_soxr, "")`` or ``(None, False, reason)``.

    The soxr stage is compiled in when libsoxr's header is installed (``libsoxr-dev``)."""
    cc = shutil.which("cc")
    if cc is None:
        return None, False, "no C compiler (cc)"

    def pkg(name: str, fallback: list[str]) -> list[str]:
        if shutil.which("pkg-config"):
            found = subprocess.run(
                ["pkg-config", "--cflags", "--libs", name], capture_output=True, text=True
            )
            if found.returncode == 0:
                return shlex.split(found.stdout)
        return fallback

    source = workdir / "speex_floor.c"
    source.write_text(C_FLOOR_SOURCE)
    exe = workdir / "speex_floor"
    speex_flags = pkg("speexdsp", ["-lspeexdsp"])
    attempts = [(["-DHAVE_SOXR", *pkg("soxr", ["-lsoxr"])], True), ([], False)]
    reason = ""
    for extra, with_soxr in attempts:
        built = subprocess.run(
            [cc, "-O2", "-o", str(exe), str(source), *speex_flags, *extra],
            capture_output=True,
            text=True,
        )
        if built.returncode == 0:
            return exe, with_soxr, ""
        reason = f"cc failed: {built.stderr.strip().splitlines()[-1:]}"
    return None, False, reason


def _run_c_floor(
    exe: Path,
    workdir: Path,
    frame_size: int,
    filter_length: int,
    rate: int,
    settings: PreprocessorSettings | None,
    repeats: int,
    out_rate: int = 0,
) -> tuple[float, np.ndarray]:
    """Run the C loop, with a linked preprocessor when ``settings`` are given and a soxr
    stream to ``out_rate`` when it is not 0. Returns (best CPU seconds, Speex output)."""
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
        str(out_rate),
    ]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return float(done.stdout.strip()), np.fromfile(out_path, dtype=np.int16)


Step = Callable[[bytes, bytes], bytes]


def _python_once(
    make: Callable[[], Step], near: Sequence[bytes], far: Sequence[bytes]
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


def _ours_aec(frame_size: int, filter_length: int, rate: int) -> Step:
    return EchoCanceller(frame_size, filter_length, rate).cancel


def _ours_pp(frame_size: int, filter_length: int, rate: int) -> Step:
    echo = EchoCanceller(frame_size, filter_length, rate)
    pre = Preprocessor(frame_size, rate, echo=echo, agc=False)
    cancel, run = echo.cancel, pre.run
    return lambda near, far: run(cancel(near, far))


def _ours_chain(frame_size: int, filter_length: int, rate: int, *, delay: int | str = 0) -> Step:
    """The whole CaptureChain (FIFO, canceller, preprocessor, soxr to 24 kHz; gain off), as
    the capture and playback threads call it; returns the DSP-rate output."""
    options = DspOptions(reference_delay_ms=delay, tail_ms=filter_length * 1000 // rate, agc="off")
    chain = CaptureChain(
        rate=rate, channels=1, channel=0, frame_ms=frame_size * 1000 // rate, options=options
    )
    far_end, process = chain.far_end, chain.process

    def step(near: bytes, far: bytes) -> bytes:
        far_end(far)
        process(near)
        return chain.last_clean

    return step


def _oracle_aec(frame_size: int, filter_length: int, rate: int) -> Step:
    import speexdsp  # the PyPI package; an optional oracle, never used by the kiosk

    return speexdsp.EchoCanceller.create(frame_size, filter_length, rate).process


_Run = Callable[[], tuple[float, np.ndarray]]


def _runs(
    shape: tuple[int, int, int],
    near: Sequence[bytes],
    far: Sequence[bytes],
    *,
    oracle: bool,
    floor: tuple[Path, Path, bool] | None,
    settings: PreprocessorSettings,
) -> dict[str, tuple[_Run, str | None]]:
    """Label -> (one timed run, label of the C loop it is compared with) for one configuration."""

    def python(factory: Callable[..., Step], **kwargs: object) -> _Run:
        make = functools.partial(factory, *shape, **kwargs)
        return functools.partial(_python_once, make, near, far)

    with_soxr = floor is not None and floor[2]
    chain_floor = "C aec+pp+soxr" if with_soxr else "C aec+pp"
    runs: dict[str, tuple[_Run, str | None]] = {}
    if oracle:
        runs["speexdsp-py aec"] = (python(_oracle_aec), "C aec")
    runs["ours aec"] = (python(_ours_aec), "C aec")
    runs["ours aec+pp"] = (python(_ours_pp), "C aec+pp")
    runs["chain"] = (python(_ours_chain), chain_floor)
    runs["chain auto"] = (python(_ours_chain, delay="auto"), chain_floor)
    if floor is not None:
        exe, workdir, _soxr = floor
        c_runs: list[tuple[str, PreprocessorSettings | None, int]] = [
            ("C aec", None, 0),
            ("C aec+pp", settings, 0),
        ]
        if with_soxr:
            c_runs.append(("C aec+pp+soxr", settings, MODEL_RATE))
        for label, pre, out_rate in c_runs:
            run = functools.partial(_run_c_floor, exe, workdir, *shape, pre, 1, out_rate)
            runs[label] = (run, None)
    return runs


def _bench_scene(seconds: float, rate: int, **kwargs: object) -> RoomScene:
    """The bench's room: 25 ms direct path, RT60 0.3 s, double talk at 30 % and 70 %."""
    stretches = tuple((round(f * seconds, 2), round(f * seconds + 1.5, 2)) for f in (0.3, 0.7))
    return make_room_scene(sample_rate=rate, seconds=seconds, double_talk=stretches, **kwargs)


def _chains_table(args: argparse.Namespace, rate: int) -> None:
    scene = _bench_scene(args.seconds, rate)
    far_only = scene.far_only(settle_s=args.seconds / 2)
    double_talk = scene.double_talk_mask()
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
        f"1. chains: {args.seconds:g} s room scene at {rate} Hz (25 ms direct path, RT60 0.3 s, "
        f"double talk {scene.double_talk}), best of {args.repeats} interleaved runs"
    )
    print(f"   preprocessor (read back from the C state; linked in aec+pp): {settings}")
    print(
        "   ERLE over far-only stretches of the second half; SDR: SI-SDR of the near end in "
        "double talk (mic: "
        f"{si_sdr_db(scene.talker, scene.mic, double_talk):.1f} dB); chain = CaptureChain "
        "with delay 0 (auto: estimated), soxr to 24 kHz, gain off"
    )
    with tempfile.TemporaryDirectory(prefix="kioskvoice-bench-") as tmp:
        workdir = Path(tmp)
        scene.mic.tofile(workdir / "near.raw")
        scene.far.tofile(workdir / "far.raw")
        exe, with_soxr, why = _build_c_floor(workdir)
        if exe is None:
            print(f"   C floor unavailable: {why}")
        elif not with_soxr:
            print("   C floor without soxr (install libsoxr-dev): chain compared with C aec+pp")
        header = (
            f"{'block':>5} {'tail':>5}  {'implementation':<16} {'cpu ms/s':>8} {'ERLE dB':>8}"
            f" {'SDR dB':>7}  {'x C':>6} {'py us/block':>11}  {'==C':>4}"
        )
        print(header)
        print("-" * len(header))
        for block_ms, tail_ms in itertools.product((10, 20), (100, 200, 300)):
            frame_size = rate * block_ms // 1000
            near, far = scene.blocks(frame_size)
            runs = _runs(
                (frame_size, rate * tail_ms // 1000, rate),
                near,
                far,
                oracle=oracle,
                floor=None if exe is None else (exe, workdir, with_soxr),
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
                    if not label.startswith("chain"):
                        same = "yes" if np.array_equal(outputs[label], outputs[floor]) else "NO"
                erle = erle_over(scene.mic, outputs[label], far_only)
                sdr = si_sdr_db(scene.talker, outputs[label], double_talk)
                print(
                    f"{block_ms:>3}ms {tail_ms:>3}ms  {label:<16} {cpu / audio_s * 1e3:>8.2f}"
                    f" {erle:>8.1f} {sdr:>7.1f}  {ratio:>6} {overhead:>11}  {same:>4}".rstrip()
                )


def _offline(scene: RoomScene, options: DspOptions, frame_ms: int = 20) -> np.ndarray:
    chain = CaptureChain(
        rate=scene.sample_rate, channels=1, channel=0, frame_ms=frame_ms, options=options
    )
    frame = scene.sample_rate * frame_ms // 1000
    out = []
    for mic, far in zip(*scene.blocks(frame), strict=True):
        chain.far_end(far)
        chain.process(mic)
        out.append(chain.last_clean)
    chain.close()
    return np.frombuffer(b"".join(out), dtype=np.int16)


def _alignment_table(args: argparse.Namespace, rate: int) -> None:
    seconds = max(args.seconds, 20.0)
    print(
        f"\n2. reference_delay_ms=auto vs hand-aligned (145 ms), echo 120 ms later than the "
        f"scene's 25 ms: {seconds:g} s, ERLE over far-only stretches after {seconds / 2:g} s"
    )
    print(f"{'seed':>9} {'block':>5}  {'found ms':>8} {'hand dB':>8} {'auto dB':>8} {'diff':>6}")
    for seed in (20240917, 1, 2):
        scene = _bench_scene(seconds, rate, extra_delay_ms=120.0, seed=seed)
        mask = scene.far_only(settle_s=seconds / 2)
        for block_ms in (10, 20):
            hand = _offline(scene, DspOptions(reference_delay_ms=145), block_ms)
            chain_options = DspOptions()
            chain = CaptureChain(
                rate=rate, channels=1, channel=0, frame_ms=block_ms, options=chain_options
            )
            frame = rate * block_ms // 1000
            out = []
            for mic, far in zip(*scene.blocks(frame), strict=True):
                chain.far_end(far)
                chain.process(mic)
                out.append(chain.last_clean)
            auto = np.frombuffer(b"".join(out), dtype=np.int16)
            found = chain.delay_ms or float("nan")
            a, b = erle_over(scene.mic, hand, mask), erle_over(scene.mic, auto, mask)
            print(f"{seed:>9} {block_ms:>3}ms  {found:>8.1f} {a:>8.1f} {b:>8.1f} {b - a:>+6.1f}")


def _gain_table(args: argparse.Namespace, rate: int) -> None:
    seconds = max(args.seconds, 20.0)
    print(
        f"\n3. gain control ({seconds:g} s conversation: the visitor alone at 25-33-45 %, double "
        "talk at 38 % and 80 %; near end 0/-10/-20 dB relative to the echo). echo/near: the "
        "output's level in far-only stretches relative to near-only ones (lower is better)"
    )
    print(
        f"{'near dB':>7} {'agc':>6}  {'ERLE dB':>8} {'echo/near':>9} {'near dBFS':>9} {'DT SDR':>7}"
    )

    def at(f: float, length: float) -> tuple[float, float]:
        return (round(f * seconds, 2), round(f * seconds + length, 2))

    for near_db in (0.0, -10.0, -20.0):
        scene = make_room_scene(
            sample_rate=rate,
            seconds=seconds,
            double_talk=(at(0.38, 1.5), at(0.8, 1.5)),
            near_only=(at(0.25, 2.0), at(0.6, 2.5), at(0.92, 1.5)),
            near_to_echo_db=near_db,
        )
        settle = 0.4 * seconds
        far_only = scene.far_only(settle_s=settle)
        near_only = scene.near_only_mask(settle_s=settle)
        double_talk = scene.double_talk_mask(settle_s=settle)
        for agc in ("off", "speex", "post"):
            out = _offline(scene, DspOptions(agc=agc))  # type: ignore[arg-type]
            samples = out.astype(np.float64)
            stop = len(samples)
            e_far = float(np.mean(samples[far_only[:stop]] ** 2))
            e_near = float(np.mean(samples[near_only[:stop]] ** 2))
            near_dbfs = 10 * np.log10(max(e_near, 1e-9) / 32768.0**2)
            print(
                f"{near_db:>7.0f} {agc:>6}  {erle_over(scene.mic, out, far_only):>8.1f} "
                f"{10 * np.log10(max(e_far, 1e-9) / max(e_near, 1e-9)):>9.1f} "
                f"{near_dbfs:>9.1f} {si_sdr_db(scene.talker, out, double_talk):>7.1f}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its tables; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python tests/bench/bench_speex.py")
    parser.add_argument("--seconds", type=float, default=16.0, help="audio per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (best kept)")
    parser.add_argument(
        "--only", choices=("chains", "align", "gain"), default=None, help="one table only"
    )
    args = parser.parse_args(argv)
    rate = 16000
    print(
        "kioskvoice DSP bench: CPU ms per second of audio (process_time, best of interleaved "
        "runs), ERLE and near-end SDR; figures to read, never to assert"
    )
    if args.only in (None, "chains"):
        _chains_table(args, rate)
    if args.only in (None, "align"):
        _alignment_table(args, rate)
    if args.only in (None, "gain"):
        _gain_table(args, rate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
