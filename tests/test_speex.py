"""The ctypes libspeexdsp binding: oracle equality, echo/noise reduction, contracts."""

from __future__ import annotations

import gc
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kioskvoice.dsp import speex
from kioskvoice.dsp.measures import erle_db
from kioskvoice.dsp.speex import (
    EchoCanceller,
    Preprocessor,
    PreprocessorSettings,
    SpeexError,
    SpeexUnavailable,
)
from kioskvoice.errors import KioskError
from scenes import EchoScene, make_echo_scene

try:
    speex._library()
except SpeexUnavailable as exc:
    pytest.skip(str(exc), allow_module_level=True)

RATE = 16000
CONFIGS = [(160, 100), (160, 300), (320, 100), (320, 300)]  # (frame size, tail ms)
CONFIG_IDS = [f"{frame // 16}ms-block-{tail}ms-tail" for frame, tail in CONFIGS]


@pytest.fixture(scope="module")
def scene() -> EchoScene:
    """8 s of far-end-only audio through a room with a 25 ms reference delay."""
    return make_echo_scene(sample_rate=RATE, seconds=8.0, delay_ms=25.0)


def settled(scene: EchoScene) -> int:
    """First sample of the stretch where ERLE is measured: after 4 s of convergence."""
    return 4 * scene.sample_rate


def run_chain(
    scene: EchoScene, frame_size: int, tail_ms: int, *, preprocess: str | None = None
) -> np.ndarray:
    """Cancel the whole scene; ``preprocess`` is None, "linked" or "unlinked"."""
    echo = EchoCanceller(frame_size, RATE * tail_ms // 1000, RATE)
    pre = None
    if preprocess is not None:
        pre = Preprocessor(frame_size, RATE, echo=echo if preprocess == "linked" else None)
    out = []
    for near, far in zip(*scene.frames(frame_size), strict=True):
        frame = echo.cancel(near, far)
        out.append(pre.run(frame) if pre is not None else frame)
    return np.frombuffer(b"".join(out), dtype=np.int16)


# --- the C headers ------------------------------------------------------------------------------


def header_dir() -> Path | None:
    candidates = [Path("/usr/include/speex")]
    if shutil.which("pkg-config"):
        found = subprocess.run(
            ["pkg-config", "--variable=includedir", "speexdsp"], capture_output=True, text=True
        )
        if found.returncode == 0 and found.stdout.strip():
            candidates.insert(0, Path(found.stdout.strip()) / "speex")
    return next((d for d in candidates if (d / "speex_preprocess.h").is_file()), None)


def test_request_constants_match_the_installed_headers() -> None:
    directory = header_dir()
    if directory is None:
        pytest.skip("libspeexdsp-dev headers are not installed")
    defined: dict[str, int] = {}
    for header in ("speex_echo.h", "speex_preprocess.h"):
        text = (directory / header).read_text()
        for name, value in re.findall(r"^#define\s+(SPEEX_\w+)\s+(\d+)\s*$", text, re.MULTILINE):
            defined[name] = int(value)
    ours = {name: getattr(speex, name) for name in dir(speex) if name.startswith("SPEEX_")}
    assert len(ours) >= 20
    assert {name: defined.get(name) for name in ours} == ours


# --- the oracle ---------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # speexdsp 0.1.1 imports `imp`
@pytest.mark.parametrize(("frame_size", "tail_ms"), CONFIGS, ids=CONFIG_IDS)
def test_cancel_is_bit_identical_to_speexdsp_python(frame_size: int, tail_ms: int) -> None:
    speexdsp = pytest.importorskip("speexdsp")
    # Double talk in the middle so the oracle also covers the adaptation-freeze paths.
    scene = make_echo_scene(sample_rate=RATE, seconds=6.0, double_talk=(3.0, 4.5))
    filter_length = RATE * tail_ms // 1000
    # speexdsp-python's create() is speex_echo_state_init_mc(frame, tail, 1, 1) followed by
    # SPEEX_ECHO_SET_SAMPLING_RATE, exactly what our constructor does.
    oracle = speexdsp.EchoCanceller.create(frame_size, filter_length, RATE)
    ours = EchoCanceller(frame_size, filter_length, RATE)
    ours_view = EchoCanceller(frame_size, filter_length, RATE)
    for index, (near, far) in enumerate(zip(*scene.frames(frame_size), strict=True)):
        expected = oracle.process(near, far)
        assert ours.cancel(near, far) == expected, f"frame {index} differs"
        assert bytes(ours_view.cancel_into(near, far)) == expected, f"frame {index} differs"


# --- what the filter and the preprocessor achieve -----------------------------------------------


@pytest.mark.parametrize(("frame_size", "tail_ms"), CONFIGS, ids=CONFIG_IDS)
def test_echo_canceller_removes_the_echo(scene: EchoScene, frame_size: int, tail_ms: int) -> None:
    out = run_chain(scene, frame_size, tail_ms)
    # Measured 18-21 dB on this scene; a passthrough gives 0 dB.
    assert erle_db(scene.near, out, settled(scene)) > 10.0


@pytest.mark.parametrize(("frame_size", "tail_ms"), CONFIGS, ids=CONFIG_IDS)
def test_linked_preprocessor_suppresses_residual_echo(
    scene: EchoScene, frame_size: int, tail_ms: int
) -> None:
    start = settled(scene)
    bare = erle_db(scene.near, run_chain(scene, frame_size, tail_ms), start)
    unlinked = erle_db(
        scene.near, run_chain(scene, frame_size, tail_ms, preprocess="unlinked"), start
    )
    linked = erle_db(scene.near, run_chain(scene, frame_size, tail_ms, preprocess="linked"), start)
    # Measured: linked is 11-23 dB above the bare filter; the same preprocessor without the
    # echo link adds < 0.5 dB (the far end is speech-like, not stationary noise).
    assert linked > bare + 6.0
    assert linked > unlinked + 6.0


@pytest.mark.parametrize("frame_size", [160, 320])
def test_denoise_reduces_stationary_noise(frame_size: int) -> None:
    noise = (np.random.default_rng(7).standard_normal(6 * RATE) * 300.0).astype(np.int16)
    frames = [noise[i : i + frame_size].tobytes() for i in range(0, len(noise), frame_size)]
    reduction = {}
    for denoise in (True, False):
        pre = Preprocessor(frame_size, RATE, denoise=denoise)
        out = np.frombuffer(b"".join(pre.run(frame) for frame in frames), dtype=np.int16)
        reduction[denoise] = erle_db(noise, out, 2 * RATE)
    # Measured 22.7 dB (10 ms) and 24.3 dB (20 ms) at noise_suppress_db=-30; off is ~0 dB.
    assert reduction[True] > 12.0
    assert abs(reduction[False]) < 1.0


def test_reset_forgets_the_adapted_filter(scene: EchoScene) -> None:
    near, far = scene.frames(160)
    echo = EchoCanceller(160, 1600, RATE)
    converged = [echo.cancel(n, f) for n, f in zip(near, far, strict=True)]
    replay = [echo.cancel(n, f) for n, f in zip(near[:100], far[:100], strict=True)]
    echo.reset()
    after_reset = [echo.cancel(n, f) for n, f in zip(near[:100], far[:100], strict=True)]
    first_second = scene.near[:RATE]
    assert converged
    replay_erle = erle_db(first_second, np.frombuffer(b"".join(replay), np.int16))
    reset_erle = erle_db(first_second, np.frombuffer(b"".join(after_reset), np.int16))
    assert replay_erle > reset_erle + 10.0


# --- settings -----------------------------------------------------------------------------------


def test_preprocessor_settings_reach_the_c_state(capfd: pytest.CaptureFixture[str]) -> None:
    echo = EchoCanceller(160, 1600, RATE)
    pre = Preprocessor(
        160,
        RATE,
        echo=echo,
        denoise=False,
        noise_suppress_db=-21,
        echo_suppress_db=-37,
        echo_suppress_active_db=-11,
        agc=True,
        agc_level=12000.0,
    )
    assert pre.settings() == PreprocessorSettings(
        denoise=False,
        noise_suppress_db=-21,
        echo_suppress_db=-37,
        echo_suppress_active_db=-11,
        agc=True,
        agc_level=12000.0,
        vad=False,
        echo_linked=True,
    )
    defaults = Preprocessor(160, RATE).settings()
    assert (defaults.denoise, defaults.agc, defaults.echo_linked) == (True, False, False)
    assert (defaults.noise_suppress_db, defaults.echo_suppress_db) == (-30, -40)
    # SET_VAD makes libspeexdsp print a warning to stderr, so it is only called to enable VAD.
    assert capfd.readouterr().err == ""
    vad = Preprocessor(160, RATE, vad=True)
    assert vad.settings().vad
    assert "VAD" in capfd.readouterr().err


def test_speech_probability_and_vad(scene: EchoScene) -> None:
    pre = Preprocessor(320, RATE, vad=True)
    silent = Preprocessor(320, RATE)
    for near, _ in zip(*scene.frames(320), strict=True):
        pre.run(near)
        silent.run(b"\0" * 640)
        assert 0.0 <= pre.speech_probability <= 1.0
    assert isinstance(pre.voice_active, bool)
    assert silent.voice_active  # without VAD the library always reports voice


def test_preprocessor_rejects_a_mismatched_echo_canceller() -> None:
    with pytest.raises(ValueError, match="must match"):
        Preprocessor(320, RATE, echo=EchoCanceller(160, 1600, RATE))
    with pytest.raises(ValueError, match="must match"):
        Preprocessor(160, 8000, echo=EchoCanceller(160, 1600, RATE))
    closed = EchoCanceller(160, 1600, RATE)
    closed.close()
    with pytest.raises(SpeexError, match="closed"):
        Preprocessor(160, RATE, echo=closed)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_suppress_db": 30},
        {"echo_suppress_db": 1},
        {"echo_suppress_active_db": 5},
        {"agc_level": 0.5},
        {"agc_level": 40000.0},
    ],
)
def test_preprocessor_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Preprocessor(160, RATE, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("args", [(0, 1600, RATE), (160, 0, RATE), (160, 1600, -1)])
def test_echo_canceller_rejects_bad_sizes(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="positive"):
        EchoCanceller(*args)


# --- buffer contracts ---------------------------------------------------------------------------


@pytest.mark.parametrize("frame_size", [160, 320])
def test_wrong_lengths_raise_value_error(frame_size: int) -> None:
    echo = EchoCanceller(frame_size, 1600, RATE)
    pre = Preprocessor(frame_size, RATE, echo=echo)
    good = b"\0" * (frame_size * 2)
    for bad in (b"", good[:-1], good[:-2], good + b"\0\0", good * 2):
        with pytest.raises(ValueError, match=f"{frame_size * 2} bytes"):
            echo.cancel(bad, good)
        with pytest.raises(ValueError, match=f"{frame_size * 2} bytes"):
            echo.cancel(good, bad)
        with pytest.raises(ValueError, match=f"{frame_size * 2} bytes"):
            echo.cancel_into(bad, good)
        with pytest.raises(ValueError, match=f"{frame_size * 2} bytes"):
            pre.run(bad)


def test_cancel_wants_bytes() -> None:
    echo = EchoCanceller(160, 1600, RATE)
    with pytest.raises(TypeError, match="bytes"):
        echo.cancel(bytearray(320), b"\0" * 320)


def test_run_accepts_any_bytes_like_frame(scene: EchoScene) -> None:
    near, far = scene.frames(160)
    results = []
    for convert in (bytes, bytearray, memoryview, "cancel_into"):
        echo = EchoCanceller(160, 1600, RATE)
        pre = Preprocessor(160, RATE, echo=echo)
        out = []
        for n, f in zip(near[:200], far[:200], strict=True):
            if convert == "cancel_into":
                frame = echo.cancel_into(n, f)
            else:
                frame = convert(echo.cancel(n, f))
            out.append(pre.run(frame))
        results.append(out)
    assert all(result == results[0] for result in results)


def test_cancel_into_reuses_one_buffer(scene: EchoScene) -> None:
    near, far = scene.frames(160)
    echo = EchoCanceller(160, 1600, RATE)
    first = echo.cancel_into(near[50], far[50])
    kept = bytes(first)
    second = echo.cancel_into(near[51], far[51])
    assert second.obj is first.obj  # the same internal buffer, overwritten
    assert bytes(first) != kept


# --- lifecycle ----------------------------------------------------------------------------------


def count_destroys(obj: EchoCanceller | Preprocessor) -> list[object]:
    calls: list[object] = []
    destroy = obj._destroy

    def counting(state: object) -> None:
        calls.append(state)
        destroy(state)

    obj._destroy = counting  # type: ignore[method-assign]
    return calls


def test_close_is_idempotent_and_destroys_once() -> None:
    echo = EchoCanceller(160, 1600, RATE)
    pre = Preprocessor(160, RATE)
    echo_calls, pre_calls = count_destroys(echo), count_destroys(pre)
    for obj in (echo, pre):
        assert not obj.closed
        obj.close()
        obj.close()
        assert obj.closed
    del echo, pre
    gc.collect()
    assert (len(echo_calls), len(pre_calls)) == (1, 1)


def test_garbage_collection_destroys_once() -> None:
    echo = EchoCanceller(160, 1600, RATE)
    pre = Preprocessor(160, RATE, echo=echo)
    echo_calls, pre_calls = count_destroys(echo), count_destroys(pre)
    del echo, pre
    gc.collect()
    assert (len(echo_calls), len(pre_calls)) == (1, 1)


def test_context_managers_close() -> None:
    with EchoCanceller(160, 1600, RATE) as echo, Preprocessor(160, RATE, echo=echo) as pre:
        pre.run(echo.cancel(b"\0" * 320, b"\0" * 320))
    assert echo.closed and pre.closed


def test_use_after_close_raises() -> None:
    echo = EchoCanceller(160, 1600, RATE)
    pre = Preprocessor(160, RATE, echo=echo)
    frame = b"\0" * 320
    pre.close()
    with pytest.raises(SpeexError, match="closed"):
        pre.run(frame)
    with pytest.raises(SpeexError, match="closed"):
        pre.settings()
    echo.cancel(frame, frame)  # closing the preprocessor leaves the canceller alone
    echo.close()
    for call in (lambda: echo.cancel(frame, frame), echo.reset):
        with pytest.raises(SpeexError, match="closed"):
            call()


def test_closing_the_echo_canceller_closes_linked_preprocessors() -> None:
    # The preprocessor holds a raw pointer to the echo state: running it after the state is
    # freed would be a use-after-free, so it must be closed first.
    echo = EchoCanceller(160, 1600, RATE)
    linked = Preprocessor(160, RATE, echo=echo)
    unlinked = Preprocessor(160, RATE)
    echo.close()
    assert linked.closed and not unlinked.closed
    with pytest.raises(SpeexError, match="closed"):
        linked.run(b"\0" * 320)


def test_missing_library_raises_speex_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(speex.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(speex.ctypes, "CDLL", missing)
    speex._library.cache_clear()
    try:
        with pytest.raises(SpeexUnavailable, match="libspeexdsp1") as raised:
            EchoCanceller(160, 1600, RATE)
    finally:
        speex._library.cache_clear()
    assert isinstance(raised.value, RuntimeError)
    assert isinstance(raised.value, KioskError)


@pytest.mark.parametrize(("frame_size", "tail_ms"), CONFIGS, ids=CONFIG_IDS)
def test_the_filter_reads_back_as_the_echo_path(frame_size: int, tail_ms: int) -> None:
    """What the chain remembers across restarts: the adapted filter, read back as an impulse
    response, is the room's echo path at its true scale (Speex's floating-point build)."""
    rng = np.random.default_rng(3)
    taps = RATE * tail_ms // 1000
    path = np.zeros(taps)
    path[40], path[75] = 0.5, -0.2
    path[41 : taps // 2] += (
        rng.standard_normal(taps // 2 - 41) * 0.02 * np.exp(-np.arange(taps // 2 - 41) / (taps / 8))
    )
    far = (rng.standard_normal(6 * RATE) * 3000.0).astype(np.int16)
    near = np.clip(np.rint(np.convolve(far, path)[: len(far)]), -32768, 32767).astype(np.int16)
    with EchoCanceller(frame_size, taps, RATE) as canceller:
        for i in range(0, len(far) - frame_size + 1, frame_size):
            canceller.cancel(near[i : i + frame_size].tobytes(), far[i : i + frame_size].tobytes())
        learnt = canceller.echo_path()
    assert len(learnt) >= taps
    learnt = learnt[:taps]
    error_db = 10 * np.log10(np.sum((learnt - path) ** 2) / np.sum(path**2))
    assert error_db < -12.0, error_db  # measured -16 to -20 dB; a wrong scale gives about 0
    assert np.argmax(np.abs(learnt)) == 40
