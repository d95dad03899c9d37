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
from kioskvoice.audio.streams import AudioSystem, FrameQueue, WavInput
from kioskvoice.audio.wavio import WavWriter, read_wav, write_wav
from kioskvoice.dsp.chain import CaptureChain
from kioskvoice.errors import AudioDeviceError


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
    system = AudioSystem()
    got: list[bytes] = []
    done = threading.Event()
    chain = CaptureChain(rate=16000, channels=4, channel=1)

    def on_block(block: bytes) -> None:
        got.append(block)
        if len(got) >= 10:
            done.set()

    try:
        mic = system.open_input("kiosk", rate=16000, channels=4, frame_ms=20)
        mic.start(on_block)
        assert done.wait(5), "no audio from the ALSA file PCM"
        mic.stop()
    finally:
        system.close()
    assert all(len(b) == 320 * 4 * 2 for b in got[:10])
    picked = np.frombuffer(b"".join(chain.process(b) for b in got[:10]), dtype=np.int16)
    assert np.all(np.abs(picked[200:-200] - 1234) <= 2)


def test_portaudio_playback_writes_what_the_player_plays(alsa_home: Path) -> None:
    system = AudioSystem()
    try:
        speaker = system.open_output("kiosk", frame_ms=20)
        player = Player(speaker.rate, speaker.rate // 50, prebuffer_ms=0)
        player.feed("item", tone(0.3, 24000).tobytes())
        player.finish()
        speaker.start(player)
        deadline = time.monotonic() + 5
        while player.played_ms("item") < 290 and time.monotonic() < deadline:
            time.sleep(0.02)
        speaker.stop()
    finally:
        system.close()
    assert player.played_ms("item") >= 290
    written = np.frombuffer((alsa_home / "out.raw").read_bytes(), dtype=np.int16)
    assert np.abs(written).max() > 4000  # the tone reached the device


def test_missing_device_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ALSA PCMs defined at all
    system = AudioSystem()
    try:
        with pytest.raises(AudioDeviceError, match="no input device matching 'ReSpeaker'"):
            system.open_input("ReSpeaker", rate=16000, channels=6, frame_ms=20)
    finally:
        system.close()
    assert "HOME" in os.environ
