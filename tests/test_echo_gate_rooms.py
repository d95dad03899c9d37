"""The double-talk gate in three virtual rooms, offline (issue 16, acceptance 1 and 2's gate).

The real room device (``room:``, echo -20 dBFS, distortion 0.3, delay 60 ms) and the real
capture chain (Speex echo canceller, preprocessor, delay estimation, gate) run block by block
as the room's own thread drives them (what the speaker plays goes to the reference, then the
microphone's block through the chain), but faster than real time and deterministically: a
minute of reply in each room costs seconds, so the whole matrix runs in ``make test``. The
daemon-level tests (``tests/test_voice_bargein.py``) run the same room in real time.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from kioskvoice.audio.room import RoomDevice
from kioskvoice.dsp import speex
from kioskvoice.dsp.chain import CaptureChain, DspOptions
from kioskvoice.dsp.gate import VISITOR
from kioskvoice.sim.voice import synthesize
from scenes import issue_16_rooms
from test_echo_memory import talk_over_latencies

try:
    speex._library()
except speex.SpeexUnavailable as exc:
    pytest.skip(str(exc), allow_module_level=True)

RATE = 16000
BLOCK = RATE // 50
REPLY = (
    "The museum opens at ten in the morning and closes at six in the evening, every day "
    "except Monday. The cafe on the ground floor opens half an hour earlier. Tickets are sold "
    "at the desk by the entrance, and children under twelve enter for free. The garden behind "
    "the museum is open in summer, and guided tours leave from the hall every hour."
)
TALK_OVER = "Sorry, excuse me, where are the toilets, please? And is there a cloakroom here?"
LEAD = 25  # blocks of silence before the reply, as after the listening beep


@pytest.fixture(scope="module", params=["synthetic", "small", "reverberant"])
def room(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Three rooms: the device's own synthetic one, a dry small room and a reverberant one
    (impulse responses the kiosk is not told, through ``rir=``)."""
    return issue_16_rooms(tmp_path_factory.mktemp("rir"))[request.param]


def verdicts(room: str, reply: np.ndarray, visitor_at: int | None = None) -> tuple[list[int], int]:
    """The gate's verdict per block while the kiosk plays ``reply``; with ``visitor_at`` (a
    block), the visitor at -30 dBFS starts talking over it there. Returns the verdicts and the
    block where the visitor's speech starts (or -1)."""
    device = RoomDevice(room, rate=RATE, channels=1, frame_ms=20)
    chain = CaptureChain(
        rate=RATE,
        channels=1,
        channel=0,
        frame_ms=20,
        options=DspOptions(),
        out_rate=RATE,
        talk_over=True,
    )
    voice = np.frombuffer(synthesize(TALK_OVER, RATE), np.int16)
    onset = -1
    played = np.concatenate(
        [np.zeros(LEAD * BLOCK, np.int16), reply, np.zeros(60 * BLOCK, np.int16)]
    )
    out = []
    try:
        for i in range(len(played) // BLOCK):
            if i == visitor_at:
                device.say(voice.tobytes(), RATE)
                onset = i + int(np.nonzero(np.abs(voice) > 300)[0][0]) // BLOCK
            block = played[i * BLOCK : (i + 1) * BLOCK]
            chain.far_end(block.tobytes())
            chain.process(device._hear(block / 1.0))
            out.append(chain.verdict)
    finally:
        chain.close()
    return out, onset


def episodes(found: list[int]) -> list[int]:
    """The blocks where a VISITOR verdict begins."""
    return [i for i, v in enumerate(found) if v == VISITOR and (i == 0 or found[i - 1] != VISITOR)]


def test_over_a_minute_of_distorted_reply_never_looks_like_a_visitor(room: str) -> None:
    reply = np.frombuffer(synthesize(" ".join([REPLY] * 4), RATE), np.int16)
    assert len(reply) / RATE > 60
    found, _ = verdicts(room, reply)
    assert episodes(found) == []


@pytest.mark.parametrize("seconds_in", [8.5, 18.5])
def test_a_visitor_ten_db_under_the_echo_is_found(room: str, seconds_in: float) -> None:
    reply = np.frombuffer(synthesize(" ".join([REPLY] * 2), RATE), np.int16)
    at = LEAD + int(seconds_in * 50)
    found, onset = verdicts(room, reply[: (at + 300) * BLOCK], visitor_at=at)
    assert [e for e in episodes(found) if e < onset] == []  # nothing before they speak
    after = episodes(found)
    assert after, "the visitor was never found"
    latency_ms = (after[0] + 1 - onset) * 20
    print(f"visitor at -30 dBFS found {latency_ms} ms after their onset")
    # Measured 80-160 ms. Issue 16 asks for the speaker's silence within 500 ms; the flush
    # after the verdict takes a block or two more.
    assert latency_ms <= 400


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng's voices")
def test_a_quiet_visitor_is_found_in_time_whoever_the_kiosk_speaks_with(
    tmp_path: Path,
) -> None:
    """Acceptance 2 over many moments and voices (a kiosk in service): how soon a visitor 10
    dB under the echo stands out depends on what the kiosk says and how it sounds. Four of
    espeak-ng's voices, two rooms, ten moments 3 to 7.5 s into the reply."""
    voices = ("en-us+m7", "en+f3", "en+m3", "en-gb")
    heard = {synthesize(REPLY, RATE, voice) for voice in voices}
    if len(heard) < len(voices):  # the tones, or an espeak-ng without these voices
        pytest.skip(f"espeak-ng does not speak in all of {voices}")
    rooms = issue_16_rooms(tmp_path)
    moments = range(150, 400, 25)
    latencies = [
        latency
        for name in ("synthetic", "small")
        for voice in voices
        for latency in talk_over_latencies(
            moments, None, in_service=True, room=rooms[name], kiosk_voice=voice
        )
    ]
    late = sum(t > 500 for t in latencies)
    print(f"{late} of {len(latencies)} later than 500 ms: {sorted(latencies)}")
    assert -math.inf not in latencies  # never a visitor before they spoke
    # Measured: 3 of 80 late (median 148 ms, the slowest 828 ms). Each band predicted from
    # the whole reference only, with both signals standing out in the same block: 10 of 80.
    assert late <= 6
