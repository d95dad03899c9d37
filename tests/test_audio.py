"""Audio parts: the WAV writer, the player's accounting, the capture chain, the frame seam,
and real PortAudio/ALSA through an ALSA `file` PCM opened by name (no sound card needed)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from kioskvoice.audio.devices import find_device, open_portaudio
from kioskvoice.audio.player import Player
from kioskvoice.audio.streams import FrameQueue, open_input, open_output
from kioskvoice.audio.wavdev import WavInput
from kioskvoice.dsp.chain import CaptureChain
from kioskvoice.errors import AudioDeviceError
from kioskvoice.wavio import WavWriter, read_wav, write_wav


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    return np.repeat(mono[:, None], channels, axis=1) if channels > 1 else mono


def test_wav_writer_is_valid_after_every_write(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    writer = WavWriter(path, 24000)
    for n in range(1, 4):
        writer.write(b"\1\0" * 480)
        # Read while the writer is still open, as after a SIGKILL.
        with wave.open(str(path)) as wav:
            assert wav.getnframes() == 480 * n
    writer.close()
    writer.close()


def test_read_wav_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(AudioDeviceError, match="no such file"):
        read_wav(tmp_path / "absent.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav")
    with pytest.raises(AudioDeviceError, match="not a PCM WAV"):
        read_wav(tmp_path / "junk.wav")


def test_player_counts_played_ms_per_item_and_flushes() -> None:
    player = Player(24000, 480, prebuffer_ms=0)  # 20 ms blocks at 24 kHz
    player.feed("a", b"\1\0" * 2400)  # 100 ms
    player.feed("b", b"\2\0" * 2400)
    for _ in range(7):
        assert player.pull() is not None
    assert player.played_ms("a") == 100
    assert player.played_ms("b") == 40
    player.flush()
    assert player.idle
    assert player.pull() is None
    assert player.played_ms("b") == 40


def test_player_pads_the_last_block_and_resamples() -> None:
    player = Player(48000, 960, prebuffer_ms=0)
    player.feed("a", b"\1\0" * 240)  # 10 ms at 24 kHz -> 10 ms at 48 kHz
    player.finish()  # the resampler's held-back tail comes out too
    block = player.pull()
    assert block is not None and len(block) == 1920
    assert player.played_ms("a") == 10
    assert player.pull() is None


def test_player_prebuffers_after_running_dry() -> None:
    player = Player(24000, 480, prebuffer_ms=60)
    player.feed("a", b"\1\0" * 480)  # 20 ms: less than the prebuffer
    assert player.pull() is None
    assert player.pull() is None
    assert player.pull() is None
    assert player.pull() is not None  # played after waiting the prebuffer time


def test_capture_chain_picks_a_channel_and_resamples() -> None:
    frames = tone(1.0, 16000, channels=4)
    frames[:, 2] = tone(1.0, 16000, freq=1000)
    chain = CaptureChain(rate=16000, channels=4, channel=2)
    out = b"".join(chain.process(frames[i : i + 320].tobytes()) for i in range(0, 16000, 320))
    samples = np.frombuffer(out, dtype=np.int16)
    assert abs(len(samples) - 24000) < 200
    spectrum = np.abs(np.fft.rfft(samples[2000:22000]))
    peak_hz = np.argmax(spectrum) * 24000 / 20000
    assert abs(peak_hz - 1000) < 5


async def test_frame_queue_drops_oldest_and_counts() -> None:
    queue = FrameQueue(asyncio.get_running_loop(), maxlen=3)
    thread = threading.Thread(target=lambda: [queue.push_threadsafe(bytes([i])) for i in range(5)])
    thread.start()
    thread.join()
    await asyncio.sleep(0.05)
    assert queue.dropped == 2
    assert [await queue.get() for _ in range(3)] == [b"\2", b"\3", b"\4"]


def test_wav_input_is_paced_in_real_time(tmp_path: Path) -> None:
    path = tmp_path / "in.wav"
    write_wav(path, tone(0.5, 16000).tobytes(), 16000)
    blocks: list[bytes] = []
    source = WavInput(path, rate=16000, channels=1, frame_ms=20)
    started = time.monotonic()
    source.start(blocks.append)
    time.sleep(0.5)
    source.stop()
    elapsed = time.monotonic() - started
    # Paced, not as fast as the file allows: about one block per 20 ms, looping past the end.
    assert 0.5 * elapsed / 0.02 <= len(blocks) <= elapsed / 0.02 + 3
    assert all(len(b) == 640 for b in blocks)


def test_wav_input_channel_mismatch_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "in.wav"
    write_wav(path, tone(0.5, 16000).tobytes(), 16000)
    with pytest.raises(AudioDeviceError, match=r"audio\.input_channels=4"):
        WavInput(path, rate=16000, channels=4, frame_ms=20)


@pytest.fixture
def alsa_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ALSA `file` PCM: capture reads in.raw, playback writes out.raw (see TESTING.md)."""
    (tmp_path / ".asoundrc").write_text(
        f'pcm.kioskmic {{ type file slave.pcm "null" file "{tmp_path}/out.raw" '
        f'infile "{tmp_path}/in.raw" format "raw" }}\n'
        'pcm.kiosk { type plug slave.pcm "kioskmic" }\n'
    )
    (tmp_path / "in.raw").write_bytes(bytes(64000))  # the PCM is not listed without it
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_devices_are_found_by_name(alsa_home: Path) -> None:
    pa = open_portaudio()
    try:
        assert find_device(pa, "kiosk", direction="input").name == "kiosk"  # exact beats substring
        assert find_device(pa, "MIC", direction="input").name == "kioskmic"
        with pytest.raises(AudioDeviceError, match="no input device matching 'respeaker'"):
            find_device(pa, "respeaker", direction="input")
    finally:
        pa.terminate()


def test_portaudio_capture_picks_a_channel(alsa_home: Path) -> None:
    frames = tone(1.0, 16000, channels=4)
    frames[:, 1] = 1234
    (alsa_home / "in.raw").write_bytes(frames.tobytes())
    pa = open_portaudio()
    got: list[bytes] = []
    done = threading.Event()
    chain = CaptureChain(rate=16000, channels=4, channel=1)

    def on_block(block: bytes) -> None:
        got.append(block)
        if len(got) >= 10:
            done.set()

    try:
        mic = open_input(pa, "kiosk", rate=16000, channels=4, frame_ms=20)
        mic.start(on_block)
        assert done.wait(5), "no audio from the ALSA file PCM"
        mic.stop()
    finally:
        pa.terminate()
    assert all(len(b) == 320 * 4 * 2 for b in got[:10])
    picked = np.frombuffer(b"".join(chain.process(b) for b in got[:10]), dtype=np.int16)
    assert np.all(np.abs(picked[200:-200] - 1234) <= 2)


def test_portaudio_playback_writes_what_the_player_plays(alsa_home: Path) -> None:
    pa = open_portaudio()
    try:
        speaker = open_output(pa, "kiosk", frame_ms=20)
        player = Player(speaker.rate, speaker.rate // 50, prebuffer_ms=0)
        player.feed("item", tone(0.3, 24000).tobytes())
        player.finish()
        speaker.start(player)
        deadline = time.monotonic() + 5
        while player.played_ms("item") < 290 and time.monotonic() < deadline:
            time.sleep(0.02)
        speaker.stop()
    finally:
        pa.terminate()
    assert player.played_ms("item") >= 290
    written = np.frombuffer((alsa_home / "out.raw").read_bytes(), dtype=np.int16)
    assert np.abs(written).max() > 4000  # the tone reached the device


def test_missing_device_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ALSA PCMs defined at all
    pa = open_portaudio()
    try:
        with pytest.raises(AudioDeviceError, match="no input device matching 'ReSpeaker'"):
            open_input(pa, "ReSpeaker", rate=16000, channels=6, frame_ms=20)
    finally:
        pa.terminate()
    assert "HOME" in os.environ


# --- the limiter --------------------------------------------------------------------------------


def test_limiter_keeps_the_speaker_out_of_clipping() -> None:
    player = Player(24000, 480, prebuffer_ms=0)
    loud = np.clip(tone(0.5, 24000).astype(np.int32) * 5, -32768, 32767).astype(np.int16)
    player.feed("a", loud.tobytes())
    player.finish()
    ceiling = player.limiter.ceiling
    blocks = []
    while (block := player.pull()) is not None:
        blocks.append(np.frombuffer(block, dtype=np.int16))
    played = np.concatenate(blocks).astype(np.int32)
    assert np.abs(played).max() <= ceiling
    assert np.abs(played).max() > 0.8 * ceiling  # limited, not muted
    assert player.limiter.limited_blocks > 0
    quiet = tone(0.1, 24000).tobytes()
    fresh = Player(24000, 480, prebuffer_ms=0)
    fresh.feed("b", quiet)
    assert fresh.pull() == quiet[:960]  # below the ceiling: untouched


# --- ResilientAudio on a real ALSA PCM ------------------------------------------------------------


class PacedMic:
    """The ALSA `file` PCM reads a FIFO that this thread fills in real time (20 ms blocks of
    ``channels`` interleaved), so capture is paced like a sound card, and goes silent without
    an error when paused (the PCM's read blocks, as PortAudio on an unplugged USB device)."""

    def __init__(self, path: Path, channels: int, values: list[int]) -> None:
        os.mkfifo(path)
        self._fd = os.open(path, os.O_RDWR)  # a writer from the start: opening never blocks
        block = np.zeros((320, channels), dtype=np.int16)
        block[:] = values
        self._block = block.tobytes()
        self.paused = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            if not self.paused.is_set():
                os.write(self._fd, self._block)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)


ASOUNDRC = (
    'pcm.kioskmic {{ type file slave.pcm "null" file "{d}/out.raw" infile "{d}/in.raw" '
    'format "raw" }}\npcm.kiosk {{ type plug slave.pcm "kioskmic" }}\n'
)


@pytest.fixture
def paced_mic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A 4-channel paced mic behind the ALSA PCMs `kioskmic`/`kiosk` (channel c = 1000 * (c+1))."""
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(d=tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    mic = PacedMic(tmp_path / "in.raw", 4, [1000, 2000, 3000, 4000])
    yield mic
    mic.close()


class Events:
    """on_lost/on_back recorder: (what, monotonic time, reason)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, float, str]] = []
        self.changed = threading.Event()

    def lost(self, reason: str) -> None:
        self.items.append(("lost", time.monotonic(), reason))
        self.changed.set()

    def back(self) -> None:
        self.items.append(("back", time.monotonic(), ""))
        self.changed.set()

    def wait_for(self, what: str, timeout_s: float) -> tuple[str, float, str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for item in self.items:
                if item[0] == what:
                    return item
            self.changed.wait(0.05)
            self.changed.clear()
        raise AssertionError(f"no {what} within {timeout_s} s: {self.items}")


def start_audio(spec_in: str, spec_out: str, events: Events, blocks: list[bytes]):
    from kioskvoice.audio.resilient import ResilientAudio

    audio = ResilientAudio(
        spec_in,
        spec_out,
        rate=16000,
        channels=4,
        frame_ms=20,
        on_lost=events.lost,
        on_back=events.back,
        retry_s=0.3,
    )
    audio.open()
    player = Player(audio.output_rate, audio.output_block_samples)
    played: list[bytes] = []
    audio.start(blocks.append, player, played.append)
    return audio, player, played


def wait_blocks(blocks: list[bytes], count: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(blocks) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(blocks) >= count, f"only {len(blocks)} blocks"


def test_full_duplex_capture_by_name_with_pick_and_mix(paced_mic: PacedMic) -> None:
    events, blocks = Events(), []
    audio, player, played = start_audio("kiosk", "kiosk", events, blocks)
    try:
        assert audio.duplex and audio.output_rate == 16000
        player.feed("reply", tone(0.2, 24000).tobytes())
        player.finish()
        wait_blocks(blocks, 25)
    finally:
        audio.stop()
    assert all(len(b) == 320 * 4 * 2 for b in blocks)
    picked = CaptureChain(rate=16000, channels=4, channel=2).pick(blocks[5])
    assert set(np.frombuffer(picked, dtype=np.int16).tolist()) == {3000}
    mixed = CaptureChain(rate=16000, channels=4, channel=[0, 3]).pick(blocks[5])
    assert set(np.frombuffer(mixed, dtype=np.int16).tolist()) == {2500}
    # One callback for both directions: every captured block came with a played block (mono,
    # at the capture rate), the reply among them.
    assert len(played) >= len(blocks) - 1
    assert all(len(b) == 640 for b in played)
    assert any(np.abs(np.frombuffer(b, dtype=np.int16)).max() > 6000 for b in played)
    assert not events.items


def paced_mic_dir(mic: PacedMic) -> Path:
    return Path(os.environ["HOME"])  # the fixture's tmp_path


def test_separate_input_and_output(paced_mic: PacedMic, tmp_path: Path) -> None:
    events, blocks = Events(), []
    audio, _player, played = start_audio("kioskmic", f"wav:{tmp_path / 'spk.wav'}", events, blocks)
    try:
        assert not audio.duplex and audio.output_rate == 24000
        wait_blocks(blocks, 10)
    finally:
        audio.stop()
    assert played and all(len(b) == 960 for b in played)


def test_unplug_that_raises_is_detected_and_recovered(paced_mic: PacedMic) -> None:
    home = paced_mic_dir(paced_mic)
    events, blocks = Events(), []
    audio, _player, _played = start_audio("kiosk", "kiosk", events, blocks)
    try:
        wait_blocks(blocks, 10)
        # Unplugged: the device disappears from ALSA and its open stream raises.
        (home / ".asoundrc").write_text("")
        session = audio._session
        assert session is not None and session.duplex is not None
        unplugged = time.monotonic()
        session.duplex._stream.close()
        lost = events.wait_for("lost", 5.0)
        assert "kiosk" in lost[2]
        print(f"raising unplug detected after {lost[1] - unplugged:.2f} s")
        # Recovery attempts run (and fail: no such device) while it is away; they count as
        # progress for the watchdog.
        time.sleep(1.0)
        assert time.monotonic() - audio.last_progress_at < 1.0
        assert not [e for e in events.items if e[0] == "back"]
        count = len(blocks)
        (home / ".asoundrc").write_text(ASOUNDRC.format(d=home))  # plugged back in
        events.wait_for("back", 5.0)
        wait_blocks(blocks, count + 10)
        assert audio.lost is None and audio.losses == 1
    finally:
        audio.stop()


def test_unplug_that_goes_silent_is_detected_and_recovered(paced_mic: PacedMic) -> None:
    events, blocks = Events(), []
    audio, _player, _played = start_audio("kiosk", "kiosk", events, blocks)
    try:
        wait_blocks(blocks, 10)
        paced_mic.paused.set()  # no error, no data: the PCM's read just blocks
        silent_since = time.monotonic()
        lost = events.wait_for("lost", 5.0)
        assert "no audio" in lost[2]
        print(f"silent unplug detected after {lost[1] - silent_since:.2f} s")
        # Closing a stream whose driver thread is stuck in a read wedges: progress stops, so
        # systemd's watchdog would restart the kiosk if the device never came back.
        time.sleep(1.0)
        assert time.monotonic() - audio.last_progress_at > 0.8
        count = len(blocks)
        paced_mic.paused.clear()  # the device answers again
        events.wait_for("back", 5.0)
        wait_blocks(blocks, count + 10)
        assert time.monotonic() - audio.last_progress_at < 1.0
        assert audio.losses == 1
    finally:
        audio.stop()


def test_record_command_writes_channels_and_reference(
    paced_mic: PacedMic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from kioskvoice.audio.record import add_parsers

    monkeypatch.setenv("KIOSKVOICE_AUDIO__INPUT_DEVICE", "kiosk")
    monkeypatch.setenv("KIOSKVOICE_AUDIO__OUTPUT_DEVICE", "kiosk")
    monkeypatch.setenv("KIOSKVOICE_AUDIO__INPUT_CHANNELS", "4")
    write_wav(tmp_path / "play.wav", tone(0.5, 48000, channels=2).tobytes(), 48000, channels=2)
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    argv = ["record", "--seconds", "1", "--out", str(tmp_path / "rec"), "--config", "/dev/null"]
    args = parser.parse_args([*argv, "--play", str(tmp_path / "play.wav")])
    assert args.handler(args) == 0
    for channel, value in enumerate([1000, 2000, 3000, 4000]):
        frames, rate, channels = read_wav(tmp_path / "rec" / f"mic{channel}.wav")
        samples = np.frombuffer(frames, dtype=np.int16)
        assert (rate, channels, len(samples)) == (16000, 1, 16000)
        assert set(samples.tolist()) == {value}
    frames, rate, _ = read_wav(tmp_path / "rec" / "ref.wav")
    reference = np.frombuffer(frames, dtype=np.int16)
    assert len(reference) == 16000
    assert np.abs(reference).max() > 6000  # the played tone, as the chain's reference
    parsed = parser.parse_args(["dsp", "--mic", "m", "--ref", "r", "--out", "o"])
    assert callable(parsed.handler)


@pytest.mark.parametrize("out_rate", [24000, 16000, 48000])
def test_reply_audio_in_odd_chunks_plays_sample_aligned(out_rate: int) -> None:
    # A delta of odd length used to raise inside the link's reader (np.frombuffer) and drop
    # the session; at 24 kHz it shifted every later sample by a byte.
    pcm = tone(0.5, 24000).tobytes()
    whole = Player(out_rate, out_rate // 50, prebuffer_ms=0)
    whole.feed("a", pcm)
    whole.finish()
    odd = Player(out_rate, out_rate // 50, prebuffer_ms=0)
    for start in range(0, len(pcm), 777):
        assert odd.feed("a", pcm[start : start + 777])
    odd.finish()

    def drain(player: Player) -> bytes:
        out = b""
        while (block := player.pull()) is not None:
            out += block
        return out

    assert drain(odd) == drain(whole)


def test_the_player_holds_at_most_max_queued_s(monkeypatch) -> None:
    from kioskvoice.audio import player as player_module

    monkeypatch.setattr(player_module, "MAX_QUEUED_S", 1.0)
    player = Player(24000, 480, prebuffer_ms=0)
    second = tone(1.0, 24000).tobytes()
    assert player.feed("a", second[:24000])
    assert not player.feed("a", second)  # only the half that fits is kept
    assert player.dropped_bytes == 24000
    assert not player.feed("a", second)
    player.flush()
    assert player.feed("b", second[:2000])


def test_heard_is_what_left_the_speaker_not_what_was_handed_over() -> None:
    player = Player(24000, 480, prebuffer_ms=0)
    player.output_latency_s = 0.05  # the device holds 50 ms before the speaker
    player.feed("a", tone(0.5, 24000).tobytes())
    for _ in range(15):  # 300 ms handed to the device
        player.pull()
    assert player.played_ms("a") == 300 and player.heard_ms("a") == 250
    fresh = Player(24000, 480, prebuffer_ms=0)
    fresh.output_latency_s = 0.05
    fresh.feed("b", tone(0.1, 24000).tobytes())
    fresh.pull()
    assert fresh.heard_ms("b") == 0  # never negative


def test_the_audio_layer_tells_the_player_its_output_latency(alsa_home: Path) -> None:
    from kioskvoice.audio.resilient import ResilientAudio

    (alsa_home / "in.raw").write_bytes(bytes(64000))
    for spec, positive in (("kiosk", True), (f"wav:{alsa_home / 'out.wav'}", False)):
        audio = ResilientAudio("kiosk", spec, rate=16000, channels=1, frame_ms=20, duplex=False)
        audio.open()
        player = Player(audio.output_rate, audio.output_block_samples)
        try:
            audio.start(lambda block: None, player)
            assert (player.output_latency_s > 0) is positive, (spec, player.output_latency_s)
            assert player.output_latency_s < 1.0  # a real estimate, not garbage
        finally:
            audio.stop()
