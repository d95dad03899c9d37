"""The capture chain: options, channel pick and mix, the synthetic-room acceptance figures
(issue 4: full chain vs the bare speexdsp-python filter; ``auto`` vs a hand-aligned delay), and
the offline ``kioskvoice dsp`` tool running the same chain."""

from __future__ import annotations

import argparse
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from kioskvoice.dsp import speex
from kioskvoice.dsp.chain import CaptureChain, DspOptions, PostGain
from kioskvoice.dsp.measures import erle_over, si_sdr_db
from kioskvoice.dsp.tool import add_parser, run_offline
from kioskvoice.wavio import write_wav
from scenes import RoomScene, make_room_scene

try:
    speex._library()
except speex.SpeexUnavailable as exc:
    pytest.skip(str(exc), allow_module_level=True)

RATE = 16000
DOUBLE_TALK = ((6.0, 7.5), (14.0, 15.5), (20.0, 21.5))
SETTLE_S = 10.0  # the echo filter converges for several seconds on speech


def offline(scene: RoomScene, options: DspOptions, frame_ms: int = 20) -> tuple:
    chain = CaptureChain(rate=RATE, channels=1, channel=0, frame_ms=frame_ms, options=options)
    result = run_offline(chain, scene.mic.tobytes(), scene.far.tobytes())
    chain.close()
    return result.clean, chain


# --- options ------------------------------------------------------------------------------------


def test_default_options() -> None:
    options = DspOptions()
    assert options.enabled and options.reference_delay_ms == "auto" and options.agc == "off"
    assert options.tail == 160  # 10 ms guard + 150 ms of room


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reference_delay_ms": -1},
        {"reference_delay_ms": "soon"},
        {"tail_ms": 5},
        {"noise_suppress_db": 3},
        {"echo_suppress_db": -100},
        {"agc": "on"},
        {"agc_level_dbfs": 0},
        {"agc_max_gain_db": 50},
        {"max_delay_ms": 10},
        {"reference_delay_ms": True},
    ],
)
def test_options_reject_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DspOptions(**kwargs)  # type: ignore[arg-type]


# --- channel pick and mix, block sizes ----------------------------------------------------------


def four_channels(frames: int) -> np.ndarray:
    block = np.zeros((frames, 4), dtype=np.int16)
    block[:, 0] = 1000
    block[:, 1] = 2000
    block[:, 2] = -3000
    block[:, 3] = 4001
    return block


@pytest.mark.parametrize(
    ("channel", "expected"), [(1, 2000), (3, 4001), ([1, 3], 3001), ([0, 1, 2], 0)]
)
def test_pick_and_mix(channel: int | list[int], expected: int) -> None:
    chain = CaptureChain(rate=RATE, channels=4, channel=channel)
    picked = np.frombuffer(chain.pick(four_channels(320).tobytes()), dtype=np.int16)
    assert len(picked) == 320
    assert np.all(picked == expected)


@pytest.mark.parametrize("channel", [4, [0, 0], [], [1, 9]])
def test_bad_channels_are_rejected(channel: int | list[int]) -> None:
    with pytest.raises(ValueError):
        CaptureChain(rate=RATE, channels=4, channel=channel)


def test_resampling_is_the_same_every_time() -> None:
    # soxr 1.1 dithers streaming int16 output with a per-stream seed: a recording could not
    # be reproduced offline (kioskvoice dsp) and tests comparing runs flickered.
    from kioskvoice.dsp.resample import Resampler

    rng = np.random.default_rng(3)
    pcm = rng.normal(0, 3000, 16000).astype(np.int16).tobytes()

    def once(quality: str) -> bytes:
        stream = Resampler(16000, 24000, quality=quality)
        blocks = [stream.process(pcm[i : i + 640]) for i in range(0, len(pcm), 640)]
        return b"".join(blocks) + stream.process(b"", last=True)

    for quality in ("LQ", "HQ"):
        first = once(quality)
        assert once(quality) == first and abs(len(first) - 48000) <= 4


def test_blocks_of_another_length_are_reblocked() -> None:
    scene = make_room_scene(seconds=3.0, double_talk=())
    chain = CaptureChain(rate=RATE, channels=1, channel=0, frame_ms=20, options=DspOptions())
    out = []
    for i in range(0, len(scene.mic) - 160, 160):  # 10 ms blocks into a 20 ms chain
        chain.far_end(scene.far[i : i + 160].tobytes())
        out.append(chain.process(scene.mic[i : i + 160].tobytes()))
    model = np.frombuffer(b"".join(out), dtype=np.int16)
    assert abs(len(model) - len(scene.mic) * 3 // 2) < 1000  # 24 kHz, nothing lost


# --- acceptance 2: the full chain against the bare speexdsp-python filter -----------------------


@pytest.fixture(scope="module")
def room() -> RoomScene:
    """24 s: 25 ms direct path, RT60 0.3 s, three double-talk stretches, low noise."""
    return make_room_scene(seconds=24.0, double_talk=DOUBLE_TALK)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # speexdsp 0.1.1 imports `imp`
@pytest.mark.parametrize("frame_ms", [10, 20])
def test_full_chain_beats_the_bare_filter(room: RoomScene, frame_ms: int) -> None:
    speexdsp = pytest.importorskip("speexdsp")
    options = DspOptions()  # defaults: auto delay, auto tail, denoise, residual echo, no AGC
    frame = RATE * frame_ms // 1000
    bare_filter = speexdsp.EchoCanceller.create(frame, RATE * options.tail // 1000, RATE)
    bare = np.frombuffer(
        b"".join(bare_filter.process(m, f) for m, f in zip(*room.blocks(frame), strict=True)),
        dtype=np.int16,
    )
    ours, _chain = offline(room, options, frame_ms)
    far_only = room.far_only(settle_s=SETTLE_S)
    double_talk = room.double_talk_mask(settle_s=SETTLE_S)
    bare_erle = erle_over(room.mic, bare, far_only)
    ours_erle = erle_over(room.mic, ours, far_only)
    # Measured (20 ms): bare 27.7 dB, chain 43.1 dB; 10 ms: 29.0 and 41.4 dB.
    assert ours_erle >= bare_erle + 6.0
    # The near end in double talk, against the clean talker: not degraded (measured within
    # +-0.5 dB of the bare filter after convergence; -0.9 dB over all stretches).
    bare_sdr = si_sdr_db(room.talker, bare, double_talk)
    ours_sdr = si_sdr_db(room.talker, ours, double_talk)
    assert ours_sdr >= bare_sdr - 1.0
    assert ours_sdr > 10.0


# --- acceptance 3: an unknown 120 ms more, found by auto ----------------------------------------


def test_auto_delay_is_as_good_as_the_hand_aligned_one() -> None:
    diffs = []
    for seed in (20240917, 1, 2, 3):
        scene = make_room_scene(
            seconds=20.0, extra_delay_ms=120.0, double_talk=((6.0, 7.5), (14.0, 15.5)), seed=seed
        )
        assert scene.delay_ms == 145.0
        mask = scene.far_only(settle_s=SETTLE_S)
        hand, _ = offline(scene, DspOptions(reference_delay_ms=145))
        auto, chain = offline(scene, DspOptions(reference_delay_ms="auto"))
        assert chain.delay_ms == pytest.approx(145.0, abs=1.0)
        assert chain.realigns == 1
        diffs.append(erle_over(scene.mic, auto, mask) - erle_over(scene.mic, hand, mask))
    # One run's ERLE after convergence swings by several dB with the filter's history (auto
    # starts adapting ~1 s later, when it has found the delay), so the seeds are averaged.
    # Measured: -2.6, -1.8, -7.6, +5.9 dB, mean -1.5 dB.
    assert np.mean(diffs) >= -3.0


def test_auto_realigns_when_the_delay_changes() -> None:
    first = make_room_scene(seconds=8.0, double_talk=(), extra_delay_ms=0.0, seed=5)
    second = make_room_scene(seconds=12.0, double_talk=(), extra_delay_ms=200.0, seed=6)
    mic = np.concatenate([first.mic, second.mic])
    far = np.concatenate([first.far, second.far])
    chain = CaptureChain(rate=RATE, channels=1, channel=0, options=DspOptions())
    seen: list[float] = []
    chain.on_delay = lambda delay_ms, confidence: seen.append(delay_ms)
    result = run_offline(chain, mic.tobytes(), far.tobytes())
    assert chain.delay_ms == pytest.approx(225.0, abs=1.0)
    assert seen and seen[-1] == pytest.approx(225.0, abs=1.0)
    # Within the filter's first quarter the reference is left alone (25 ms): one move only.
    assert chain.realigns == 1
    late = np.zeros(len(result.clean), dtype=bool)
    late[16 * RATE :] = True
    assert erle_over(result.mic, result.clean, late) > 10.0


def test_reference_at_the_speaker_rate_is_converted() -> None:
    scene = make_room_scene(seconds=12.0, double_talk=())
    far48 = soxr.resample(scene.far, RATE, 48000).astype(np.int16)
    chain = CaptureChain(rate=RATE, channels=1, channel=0, options=DspOptions(), out_rate=48000)
    result = run_offline(chain, scene.mic.tobytes(), far48.tobytes())
    # The converter holds back its first block, which the FIFO's alignment absorbs: the delay
    # left for the filter is one block shorter.
    assert chain.delay_ms == pytest.approx(5.0, abs=1.0)
    # Measured 14 dB: the round trip through 48 kHz loses the top of the band that the
    # synthetic echo still has (a real mic's anti-alias filter would have removed it too).
    assert erle_over(scene.mic, result.clean, scene.far_only(settle_s=6.0)) > 10.0


# --- gain control -------------------------------------------------------------------------------


def test_post_gain_only_adapts_while_the_far_end_is_silent() -> None:
    gain = PostGain(RATE, 320, target_dbfs=-20.0, max_gain_db=20.0, hold_ms=100)
    rng = np.random.default_rng(1)
    quiet = (rng.standard_normal(320) * 300).astype(np.int16).tobytes()  # about -40 dBFS
    playing = (rng.standard_normal(320) * 3000).astype(np.int16).tobytes()
    silent = bytes(640)
    for _ in range(100):
        out = gain.process(quiet, playing)  # residual echo while the kiosk speaks: frozen
    assert gain.gain_db == 0.0 and out == quiet
    for _ in range(10):
        gain.process(quiet, silent)  # the room's echo dies away (hold)
    for _ in range(250):
        out = gain.process(quiet, silent)  # the visitor alone: the gain rises to the target
    assert 15.0 <= gain.gain_db <= 20.0
    loud = (rng.standard_normal(320) * 12000).astype(np.int16).tobytes()
    out = gain.process(loud, silent)
    assert np.abs(np.frombuffer(out, dtype=np.int16).astype(np.int32)).max() <= 32767
    assert gain.gain_db < 15.0  # a loud block pulls the gain down at once


def test_dsp_off_leaves_the_mic_alone() -> None:
    scene = make_room_scene(seconds=2.0, double_talk=())
    chain = CaptureChain(rate=RATE, channels=1, channel=0, options=DspOptions(enabled=False))
    result = run_offline(chain, scene.mic.tobytes(), scene.far.tobytes())
    assert np.array_equal(result.clean, scene.mic[: len(result.clean)])


# --- the offline tool ---------------------------------------------------------------------------


def dsp_command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["dsp", *argv])
    return args.handler(args)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, RoomScene]:
    directory = tmp_path_factory.mktemp("recording")
    scene = make_room_scene(seconds=12.0, extra_delay_ms=120.0, double_talk=((8.0, 9.5),))
    stereo = np.stack([scene.mic, (scene.mic // 2).astype(np.int16)], axis=1)
    write_wav(directory / "mic.wav", stereo.tobytes(), RATE, channels=2)
    write_wav(directory / "ref.wav", scene.far.tobytes(), RATE)
    return directory / "mic.wav", directory / "ref.wav", scene


def test_dsp_tool_prints_delay_erle_and_cpu(
    recording: tuple[Path, Path, RoomScene], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mic, ref, _scene = recording
    out = tmp_path / "out.wav"
    assert dsp_command("--mic", str(mic), "--ref", str(ref), "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "delay: 145.0 ms (auto" in printed
    erle = float(printed.split("ERLE: ")[1].split(" dB")[0])
    assert erle > 15.0
    assert "ms per second of audio" in printed
    with wave.open(str(out)) as wav:
        assert wav.getframerate() == 24000 and wav.getnchannels() == 1
        assert abs(wav.getnframes() - 12 * 24000) < 2400
    # The tool is the chain: the same figures as running the chain directly.
    chain = CaptureChain(rate=RATE, channels=2, channel=0, options=DspOptions())
    direct = run_offline(chain, mic.read_bytes()[44:], ref.read_bytes()[44:])
    with wave.open(str(out)) as wav:
        assert wav.readframes(wav.getnframes()) == direct.model


def test_dsp_tool_options(
    recording: tuple[Path, Path, RoomScene], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mic, ref, _ = recording
    out = tmp_path / "out.wav"
    argv = ["--mic", str(mic), "--ref", str(ref), "--out", str(out), "--delay-ms", "145"]
    argv += ["--tail-ms", "200", "--frame-ms", "10", "--agc", "on", "--channel", "0,1"]
    assert dsp_command(*argv) == 0
    assert "delay: 145.0 ms (given; 0 re-alignment(s))" in capsys.readouterr().out


def test_dsp_tool_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "missing.wav")
    assert dsp_command("--mic", missing, "--ref", missing, "--out", str(tmp_path / "o.wav")) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dsp_command("--mic", "a", "--ref", "b", "--out", "c", "--delay-ms", "soon")
