"""The echo delay and filter kept across restarts (kioskvoice.echo_memory): the file, and the
chain starting aligned and primed with them. The daemon keeping them in its state directory,
and what that does for a visitor, is in test_voice_bargein."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from kioskvoice.audio.room import RoomDevice
from kioskvoice.calibration import calibration_sound
from kioskvoice.dsp import speex
from kioskvoice.dsp.chain import CaptureChain, DspOptions
from kioskvoice.dsp.echo_path import PATH_BETTER_DB, FilterProof
from kioskvoice.dsp.gate import VISITOR
from kioskvoice.echo_memory import FILE, MAX_BYTES, EchoMemory, Remembered
from kioskvoice.sim.voice import synthesize

SETUP = {"input_device": "hw:1", "output_device": "hw:1", "sample_rate": 16000}
ROOM = "room:echo_db=-20,distortion=0.3,delay_ms=60"  # acceptance 1 and 2 of issue 16


def test_the_delay_is_kept_for_its_setup_only(tmp_path: Path) -> None:
    EchoMemory(tmp_path, SETUP).save(84.96)
    assert EchoMemory(tmp_path, SETUP).load(500) == Remembered(84.96, None)
    assert EchoMemory(tmp_path, {**SETUP, "input_device": "hw:2"}).load(500) is None
    assert EchoMemory(tmp_path, SETUP).load(50) is None  # beyond what auto searches
    assert [p.name for p in tmp_path.iterdir()] == [FILE]  # no temporary file left behind


def test_the_filter_is_kept_with_its_delay(tmp_path: Path) -> None:
    path = np.random.default_rng(1).standard_normal(2560) * 0.01
    memory = EchoMemory(tmp_path, SETUP)
    memory.save(85.0, path)
    kept = EchoMemory(tmp_path, SETUP).load(500)
    assert kept is not None and kept.delay_ms == 85.0 and kept.echo_path is not None
    assert np.allclose(kept.echo_path, path, rtol=1e-6, atol=1e-9)  # float32 in the file
    assert isinstance(json.loads((tmp_path / FILE).read_text())["echo_path"], str)  # base64
    memory.save(120.0)  # the reference moved: the old filter belongs to the old alignment
    assert EchoMemory(tmp_path, SETUP).load(500) == Remembered(120.0, None)


@pytest.mark.parametrize("rate", [16000, 48000])
def test_the_kept_delay_comes_back_to_the_sample(tmp_path: Path, rate: int) -> None:
    """The filter is tied to the reference's alignment to the sample."""
    for samples in range(1200, 1300):
        EchoMemory(tmp_path, SETUP).save(samples * 1000 / rate)
        kept = EchoMemory(tmp_path, SETUP).load(500)
        assert kept is not None and round(rate * kept.delay_ms / 1000) == samples


@pytest.mark.parametrize(
    "path",
    [
        "1234",  # base64 of 3 bytes: no whole float32
        "not base64!",
        "AAAAAA==",  # one float32 0.0: silent
        "AADAfw==",  # NaN
        "AADIQg==",  # 100.0: fine; the next is not
        "AAB6RA==",  # 1000.0: no echo path has such a gain
        42,
    ],
)
def test_a_damaged_filter_is_dropped_and_the_delay_kept(
    tmp_path: Path, path: object, caplog: pytest.LogCaptureFixture
) -> None:
    record = {"setup": SETUP, "delay_ms": 85.0, "echo_path": path}
    (tmp_path / FILE).write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING):
        kept = EchoMemory(tmp_path, SETUP).load(500)
    assert kept is not None and kept.delay_ms == 85.0
    if path == "AADIQg==":
        assert kept.echo_path is not None and not caplog.records
        return
    assert kept.echo_path is None
    assert len(caplog.records) == 1 and "echo_path not used" in caplog.text
    assert "\n" not in caplog.records[0].getMessage()


def test_nothing_is_kept_without_a_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    memory = EchoMemory.from_environment(SETUP)
    memory.save(85.0)
    assert memory.path is None and memory.load(500) is None
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}:/elsewhere")  # systemd: the first
    EchoMemory.from_environment(SETUP).save(85.0)
    assert (tmp_path / FILE).exists()


@pytest.mark.parametrize(
    ("content", "unreadable"),
    [
        (b"\xff\xfe not utf-8", True),
        (b"{not json", True),
        (b"[" * 100000, True),  # nesting deeper than the parser's recursion
        (b" " * MAX_BYTES + b"{}", True),  # larger than any file the kiosk writes
        (b"[1, 2]", False),
        (b'{"setup": 1}', False),
        (b"{}", False),
    ],
)
def test_a_damaged_file_means_finding_the_delay_afresh(
    tmp_path: Path, content: bytes, unreadable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE).write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert EchoMemory(tmp_path, SETUP).load(500) is None
    assert ("not read" in caplog.text) == unreadable
    assert all("\n" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("delay", ["true", "NaN", "1e999", "-5", '"85"'])
def test_a_kept_value_that_is_no_delay_is_ignored(tmp_path: Path, delay: str) -> None:
    (tmp_path / FILE).write_text(f'{{"setup": {json.dumps(SETUP)}, "delay_ms": {delay}}}')
    assert EchoMemory(tmp_path, SETUP).load(500) is None


def test_a_fifo_in_its_place_does_not_block_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.mkfifo(tmp_path / FILE)  # opening it to read would wait for a writer forever
    with caplog.at_level(logging.WARNING):
        assert EchoMemory(tmp_path, SETUP).load(500) is None
    assert "not a regular file" in caplog.text


@pytest.mark.parametrize("where", ["gone", "a-file"])
def test_a_directory_that_cannot_be_written_is_a_warning(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("")  # not a directory: unwritable even for root
    with caplog.at_level(logging.WARNING):
        EchoMemory(tmp_path / where, SETUP).save(85.0)
    assert "not written" in caplog.text and len(caplog.records) == 1


SHORT = "The museum opens at ten every day but Monday."
LONGER = (
    "The museum opens at ten every day but Monday. The cafe on the ground floor opens half an "
    "hour earlier, and tickets are sold at the desk by the entrance."
)


class Reply(NamedTuple):
    realigns: int
    delay_ms: float | None
    offers: list[tuple[float, np.ndarray]]
    start_erle_db: float
    """The chain's echo reduction over the reply's first 1.5 s."""


def chain_of(
    hint: float | None = None, path: np.ndarray | None = None, *, talk_over: bool = False
) -> CaptureChain:
    """The kiosk's chain at 16 kHz, 20 ms blocks, started with a remembered delay and filter."""
    try:
        speex._library()
    except speex.SpeexUnavailable as exc:
        pytest.skip(str(exc))
    return CaptureChain(
        rate=16000,
        channels=1,
        channel=0,
        options=DspOptions(),
        out_rate=16000,
        talk_over=talk_over,
        delay_hint_ms=hint,
        echo_path=path,
    )


def reply_in_room(text: str, hint: float | None = None, path: np.ndarray | None = None) -> Reply:
    """A reply in the acceptance room (the delay unknown to the chain), offline."""
    rate, block = 16000, 320
    device = RoomDevice(ROOM, rate=rate, channels=1, frame_ms=20)
    chain = chain_of(hint, path)
    offers: list[tuple[float, np.ndarray]] = []
    chain.on_echo_path = lambda delay_ms, learnt: offers.append((delay_ms, learnt))
    reply = np.frombuffer(synthesize(text, rate), "<i2")
    reply = np.concatenate([reply, np.zeros(rate, np.int16)])  # and a pause after it
    heard = left = 0.0
    try:
        for i in range(len(reply) // block):
            played = reply[i * block : (i + 1) * block]
            chain.far_end(played.tobytes())
            mic = device._hear(played / 1.0)
            chain.process(mic)
            if i < 75:
                heard += float(np.sum(np.frombuffer(mic, np.int16) ** 2.0))
                left += float(np.sum(np.frombuffer(chain.last_clean, np.int16) ** 2.0))
        erle = 10 * np.log10(heard / max(left, 1.0))
        return Reply(chain.realigns, chain.delay_ms, offers, erle)
    finally:
        chain.close()


def test_the_chain_starts_aligned_at_a_remembered_delay() -> None:
    cold = reply_in_room(SHORT)
    moves, found = cold.realigns, cold.delay_ms
    assert moves == 1 and found is not None  # from nothing: found, and the filter reset
    kept = reply_in_room(SHORT, found)
    assert (kept.realigns, kept.delay_ms) == (0, pytest.approx(found, abs=2))  # never reset
    for wrong in (found + 200, found - 60):  # the hardware changed: found afresh
        again = reply_in_room(SHORT, wrong)
        assert again.realigns == 1 and again.delay_ms == pytest.approx(found, abs=2), wrong


def test_a_proven_filter_is_offered_and_primes_the_next_start() -> None:
    assert reply_in_room(SHORT).offers == []  # 2.5 s of voice: not proven yet
    cold = reply_in_room(LONGER)
    assert len(cold.offers) == 1  # once, in the pause after the reply
    delay_ms, path = cold.offers[0]
    assert delay_ms == pytest.approx(cold.delay_ms, abs=1)
    primed = reply_in_room(LONGER, delay_ms, path)
    aligned = reply_in_room(LONGER, delay_ms)
    # Measured over the first 1.5 s: cold 1 dB, aligned 8 dB, primed 14 dB.
    assert primed.start_erle_db > aligned.start_erle_db + 3, (primed, aligned, cold)
    assert primed.realigns == 0 and len(primed.offers) == 1


def test_a_mic_that_hears_nothing_proves_no_filter() -> None:
    """A muted capture (zeros) while the kiosk speaks: nothing to offer (an all-zero filter
    would otherwise replace a good one)."""
    chain = chain_of()
    offers: list[object] = []
    chain.on_echo_path = lambda delay_ms, path: offers.append(path)
    reply = np.frombuffer(synthesize(LONGER, 16000), "<i2")
    reply = np.concatenate([reply, np.zeros(16000, np.int16)])
    try:
        for i in range(len(reply) // 320):
            chain.far_end(reply[i * 320 : (i + 1) * 320].tobytes())
            chain.process(bytes(640))
    finally:
        chain.close()
    assert offers == []


def test_a_primed_chain_starts_as_quiet_as_a_fresh_one() -> None:
    """The priming leaves nothing behind: the first blocks of a quiet room come out as quiet
    as from a fresh filter (measured before the fix: a burst at -26 dBFS, which the server's
    VAD took for a visitor)."""
    delay_ms, path = reply_in_room(LONGER).offers[0]

    def loudest(path: np.ndarray | None) -> float:
        """The loudest block of the first half second in a quiet room, dBFS."""
        chain = chain_of(delay_ms, path)
        assert chain.primed == (path is not None)
        room = RoomDevice("room:echo_db=-20", rate=16000, channels=1, frame_ms=20)
        silence = np.zeros(320)
        levels = []
        try:
            for _ in range(25):
                chain.far_end(silence.astype(np.int16).tobytes())
                chain.process(room._hear(silence))
                out = np.frombuffer(chain.last_clean, np.int16) / 32768.0
                levels.append(10 * np.log10(np.mean(out**2) + 1e-12))
        finally:
            chain.close()
        return max(levels)

    primed, fresh = loudest(path), loudest(None)
    assert primed <= fresh + 1.0, (primed, fresh)


FIRST_REPLY = (
    "The museum opens at ten in the morning and closes at six in the evening, every day "
    "except Monday. The cafe on the ground floor opens half an hour earlier."
)
SECOND_REPLY = (
    "Tickets are sold at the desk by the entrance, and children under twelve enter for free. "
    "The garden behind the museum is open in summer, and guided tours leave every hour."
)
TALK_OVER = "Sorry, excuse me, where are the toilets, please? And is there a cloakroom here?"


def talk_over_latencies(
    moments: range,
    hint: float | None,
    path: np.ndarray | None = None,
    *,
    in_service: bool = False,
    calibrated: bool = False,
    room: str = ROOM,
    kiosk_voice: str | None = None,
) -> list[float]:
    """A visitor at -30 dBFS (10 dB under the echo) talks over a reply ``moments`` blocks into
    it, in ``room`` (the acceptance's): the first reply after a start (with ``hint`` and
    ``path``), or (``in_service``) the reply after the first one, in the same run; the kiosk
    speaks in espeak-ng's ``kiosk_voice``. Returns ms from their onset to the gate's first VISITOR
    (inf: never; -inf: a VISITOR before they spoke)."""
    rate, block = 16000, 320
    reply = np.frombuffer(synthesize(SECOND_REPLY, rate, kiosk_voice), "<i2")
    before = np.zeros(0, np.int16)
    if in_service:  # the first reply, then a second of quiet
        before = np.frombuffer(synthesize(FIRST_REPLY, rate, kiosk_voice), "<i2")
        before = np.concatenate([before, np.zeros(rate + -len(before) % block, np.int16)])
    if calibrated:
        sound = np.frombuffer(calibration_sound(rate=rate), np.int16)
        before = np.concatenate([sound, np.zeros(rate + -len(sound) % block, np.int16)])
    reply = np.concatenate([before, reply])
    skip = len(before) // block
    voice = np.frombuffer(synthesize(TALK_OVER, rate), "<i2")
    onset = int(np.nonzero(np.abs(voice) > 300)[0][0])
    latencies = []
    for at in moments:
        device = RoomDevice(f"{room},visitor_db=-30", rate=rate, channels=1, frame_ms=20)
        chain = chain_of(hint, path, talk_over=True)
        verdicts = []
        at += skip
        try:
            for i in range(at + 60):
                if i == at:
                    device.say(voice.tobytes(), rate)
                if calibrated and i == skip:
                    chain.relearn_gate()
                played = reply[i * block : (i + 1) * block]
                chain.far_end(played.tobytes())
                chain.process(device._hear(played / 1.0))
                verdicts.append(chain.verdict)
        finally:
            chain.close()
        start = at * block + onset
        found = [i for i, v in enumerate(verdicts) if v == VISITOR and i >= skip]
        if found and (found[0] + 1) * block <= start:
            latencies.append(-math.inf)
        else:
            latencies.append((found[0] + 1 - start / block) * 20 if found else math.inf)
    return latencies


def test_the_first_reply_after_a_restart_hears_a_quiet_visitor_as_in_service() -> None:
    """Acceptance 2 in the first reply after a restart: primed with the last run's filter, the
    chain finds a visitor 10 dB under the echo as a kiosk in service does, wherever in the
    reply they start (offline: the real room device and chain, deterministic)."""
    first = reply_in_room(FIRST_REPLY)
    delay_ms, path = first.offers[0]
    moments = range(150, 230, 10)  # 3 to 4.6 s into the reply
    primed = talk_over_latencies(moments, delay_ms, path)
    in_service = talk_over_latencies(moments, None, in_service=True)
    aligned = talk_over_latencies(moments, delay_ms)
    print(f"primed: {primed}\nin service: {in_service}\naligned only: {aligned}")
    assert -math.inf not in primed + in_service + aligned  # never a visitor before they spoke

    # Measured (ms): primed, 7 of 8 within 500 (median 268, one 1088); in service, 8 of 8
    # (median 108); aligned but not primed, 1 of 8 (three never found). Primed is a little
    # behind a kiosk that has heard a whole reply in this room (a noise-trained filter is not
    # all of a canceller that adapted on speech), far ahead of one learning from nothing.
    def in_time(latencies: list[float]) -> int:
        return sum(t <= 500 for t in latencies)

    assert in_time(primed) >= in_time(in_service) - 1, (primed, in_service)
    assert in_time(aligned) <= in_time(primed) - 3, aligned  # what the priming is for


def test_a_fresh_install_that_calibrated_hears_a_quiet_visitor_as_in_service() -> None:
    """A fresh install's first reply (nothing kept): after the calibration sound, a visitor
    10 dB under the echo is found as in service from 1.5 s into the reply on (before that the
    gate is still learning the reply's echo: UNSURE, held); without it, late or never."""
    moments = range(75, 235, 20)  # 1.5 to 4.3 s into the reply
    calibrated = talk_over_latencies(moments, None, calibrated=True)
    fresh = talk_over_latencies(moments, None)
    in_service = talk_over_latencies(moments, None, in_service=True)
    print(f"calibrated: {calibrated}\nfresh: {fresh}\nin service: {in_service}")
    assert -math.inf not in calibrated + fresh

    def in_time(latencies: list[float]) -> int:
        return sum(t <= 500 for t in latencies)

    assert in_time(calibrated) >= in_time(in_service) - 1, (calibrated, in_service)
    assert in_time(fresh) <= in_time(calibrated) - 3, fresh  # what the sound is for


def test_a_filter_that_learnt_better_is_offered_again_soon() -> None:
    """A filter first proved on little audio is replaced once the canceller does
    PATH_BETTER_DB better, long before PATH_EVERY_S; one a little better is not offered (the
    SD card is not written after every reply)."""
    frame, frame_ms = 320, 20
    proof = FilterProof(frame, frame_ms)
    rng = np.random.default_rng(5)
    silence = bytes(2 * frame)

    def stretch(erle_db: float, seconds: float = 4.0) -> int:
        """The kiosk speaks for ``seconds`` with the canceller taking ``erle_db`` off, then a
        second's pause; how many offers."""
        offers = 0
        for _ in range(int(seconds * 1000 / frame_ms)):
            far = rng.standard_normal(frame) * 3000
            ref = far.astype(np.int16).tobytes()
            left = (far * 10 ** (-erle_db / 20)).astype(np.int16).tobytes()
            assert not proof.proved(ref, ref, left)
        for _ in range(50):
            if proof.proved(silence, silence, silence):
                proof.offered()
                offers += 1
        return offers

    assert stretch(4.0) == 0  # not worth keeping
    assert stretch(7.0) == 1  # the first proof after a start
    assert stretch(8.5) == 0  # better, but not by PATH_BETTER_DB
    assert stretch(7.0 + PATH_BETTER_DB + 0.5) == 1
    assert stretch(7.0 + PATH_BETTER_DB + 0.5) == 0
    proof.reset()  # the filter started afresh: its first proof is free again
    assert stretch(7.0) == 1
