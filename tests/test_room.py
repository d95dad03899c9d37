"""The virtual acoustic room (``room:``): the kiosk hears its own playback through a room at
the level asked for, a visitor speaks into it on request, and the daemon takes ``ctl say``."""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from kioskvoice.audio.player import Player
from kioskvoice.audio.room import RoomDevice, RoomOptions, active_rms
from kioskvoice.errors import AudioDeviceError
from kioskvoice.sim import Simulator
from kioskvoice.sim.voice import synthesize
from kioskvoice.system.control_client import request
from kioskvoice.wavio import write_wav
from visitor import speech_input, start

pytestmark = pytest.mark.timeout(120)
RATE = 16000


def dbfs(samples: np.ndarray) -> float:
    return 20 * math.log10(max(active_rms(samples, RATE), 1e-9) / 32768)


def run_room(spec: str, play: bytes, seconds: float, say: bytes | None = None) -> np.ndarray:
    """Run a room for ``seconds`` with ``play`` queued on its player; what the mic heard."""
    room = RoomDevice(spec, rate=RATE, channels=1, frame_ms=20)
    player = Player(RATE, room.block, prebuffer_ms=0)
    if play:
        player.feed("reply", play)
        player.finish()
    heard: list[bytes] = []
    lock = threading.Lock()

    def on_block(block: bytes) -> None:
        with lock:
            heard.append(block)

    room.start(on_block, player, lambda block: None)
    if say is not None:
        room.say(say, RATE)
    time.sleep(seconds)
    room.stop()
    with lock:
        return np.frombuffer(b"".join(heard), dtype=np.int16)


def voice_at(level_dbfs: float, seconds: float = 2.0) -> bytes:
    """Speech at 24 kHz (the player's rate) scaled to an active level."""
    pcm = np.frombuffer(synthesize("The museum opens at nine and closes at six.", 24000), np.int16)
    pcm = np.resize(pcm, int(seconds * 24000)).astype(np.float64)
    pcm *= 32768 * 10 ** (level_dbfs / 20) / active_rms(pcm, 24000)
    return np.clip(pcm, -32768, 32767).astype(np.int16).tobytes()


def test_the_kiosk_hears_itself_at_echo_db_after_the_delay(tmp_path: Path) -> None:
    out = tmp_path / "played.wav"
    spec = f"room:echo_db=-20,delay_ms=200,noise_db=-70,out={out}"
    mic = run_room(spec, voice_at(-20.0), 1.6)
    assert dbfs(mic) == pytest.approx(-20.0, abs=3.0)
    # Nothing reaches the mic before the acoustic delay (the room's direct path is 25 ms).
    assert dbfs(mic[: int(0.2 * RATE)]) < -60
    with wave.open(str(out)) as wav:  # every block the speaker played, silence included
        assert wav.getframerate() == RATE and wav.getnframes() >= int(1.4 * RATE)


def test_the_visitor_speaks_into_the_room_at_visitor_db() -> None:
    speech = synthesize("Where is the cafe?", RATE)
    mic = run_room("room:visitor_db=-30,noise_db=-80", b"", 1.5, say=speech)
    assert dbfs(mic) == pytest.approx(-30.0, abs=2.0)


def test_distortion_adds_what_a_linear_canceller_cannot_remove() -> None:
    clean = run_room("room:noise_db=-90", voice_at(-10.0, 1.0), 1.2)
    clipped = run_room("room:noise_db=-90,distortion=1", voice_at(-10.0, 1.0), 1.2)
    assert not np.array_equal(clean, clipped)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("room:loudness=3", "unknown option 'loudness=3'"),
        ("room:echo_db=loud", "echo_db must be a number"),
        ("room:distortion=2", "distortion must be between 0 and 1"),
        ("room:delay_ms=-5", "delay_ms must be between 0 and 2000"),
        ("room:echo_db=nan", "echo_db must be finite"),
    ],
)
def test_bad_room_options_are_one_clear_line(spec: str, message: str) -> None:
    with pytest.raises(AudioDeviceError, match=message):
        RoomOptions.parse(spec)


async def test_a_visitor_in_the_room_is_heard_and_answered(tmp_path: Path) -> None:
    visitor = tmp_path / "visitor.wav"
    write_wav(visitor, synthesize("When does the museum open today?", RATE), RATE)
    room = f"room:noise_db=-70,out={tmp_path / 'speaker.wav'}"
    async with Simulator() as sim:
        kiosk = await start(
            sim, tmp_path, visitor, audio={"input_device": room, "output_device": room}
        )
        try:
            await kiosk.ctl("press")
            said = await asyncio.to_thread(request, kiosk.socket, "say", path=str(visitor))
            assert said["ok"], said
            await asyncio.sleep(2.5)
            await kiosk.ctl("release")
            await sim.wait_for(lambda s: s.sessions[0].sent_of_type("response.done"), 15)
            await kiosk.until(state="idle", timeout_s=20)
            done = sim.sessions[0].sent_of_type("response.output_audio_transcript.done")
            assert done and done[0]["transcript"].startswith("You spoke for")
        finally:
            await kiosk.stop()
    with wave.open(str(tmp_path / "speaker.wav")) as wav:
        assert wav.getnframes() > 0  # the reply (and the beep) left the room's speaker


async def test_ctl_say_without_a_room_is_one_clear_line(tmp_path: Path) -> None:
    async with Simulator() as sim:
        kiosk = await start(sim, tmp_path, speech_input(tmp_path / "s.wav", 3.0))
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "kioskvoice", "ctl", "--socket",
                str(kiosk.socket), "say", str(tmp_path / "s.wav"),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await proc.communicate()
        finally:
            await kiosk.stop()
    assert proc.returncode == 1
    assert err.decode().strip().splitlines() == [
        "kioskvoice: ctl say needs the virtual room: set audio.input_device and "
        'audio.output_device to the same "room:..." string'
    ]
