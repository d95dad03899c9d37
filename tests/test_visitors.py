"""Visitor scenarios: the oracle is what a person at the button hears and sees.

Each row runs the real daemon (``kioskvoice run``) against the simulator with ``wav:``
devices, drives it through the control socket as a visitor would, and asserts three things:
what reached the model (the wire), what the visitor heard (the output device, sample for
sample: the answer, an apology, a prompt, a cue, or nothing) and what they saw (the LED look).
The README's "What a visitor experiences" table follows these rows one for one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time

import pytest

from kioskvoice.sim import Faults, Simulator
from realtime_schema import assert_client_event
from visitor import Kiosk, earcon, silent_input, speech_input, start

pytestmark = pytest.mark.timeout(120)

APOLOGY, ERROR, NO_SPEECH = earcon("apology"), earcon("error"), earcon("no_speech")
MAX_TURN, TOO_SHORT, THINKING = earcon("max_turn"), earcon("too_short"), earcon("thinking")
OFFLINE = earcon("offline")


@pytest.fixture
async def sim():
    async with Simulator(faults=Faults()) as server:
        yield server


@pytest.fixture
def speech(tmp_path):
    return speech_input(tmp_path / "speech.wav", 12.0)


def wire(session) -> list[str]:
    """The client events of a session, appends collapsed to one ``append*``."""
    out: list[str] = []
    for event in session.received:
        assert_client_event(event)
        kind = "append*" if event["type"] == "input_audio_buffer.append" else event["type"]
        if kind != "session.update" and not (kind == "append*" and out[-1:] == ["append*"]):
            out.append(kind)
    return out


def appended_s(session) -> float:
    return sum(
        len(base64.b64decode(e["audio"])) / 48000
        for e in session.received
        if e["type"] == "input_audio_buffer.append"
    )


def answers(session) -> list[bytes]:
    """The audio of each completed response, as the visitor should hear it."""
    out, current = [], {}
    for event in session.sent:
        if event["type"] == "response.output_audio.delta":
            current.setdefault(event["response_id"], bytearray()).extend(
                base64.b64decode(event["delta"])
            )
        elif event["type"] == "response.done" and event["response"]["status"] == "completed":
            audio = current.pop(event["response"]["id"], None)
            if audio:
                out.append(bytes(audio))
    return out


def all_audio(session) -> list[bytes]:
    """The audio the server sent for each response, completed or not, in order."""
    out: dict[str, bytearray] = {}
    for event in session.sent:
        if event["type"] == "response.output_audio.delta":
            out.setdefault(event["response_id"], bytearray()).extend(
                base64.b64decode(event["delta"])
            )
    return [bytes(audio) for audio in out.values()]


def transcripts(session) -> list[str]:
    return [
        e["transcript"]
        for e in session.sent
        if e["type"] == "response.output_audio_transcript.done"
    ]


async def answered(kiosk: Kiosk, sim, n: int, timeout_s: float = 30, then: str = "idle") -> bytes:
    """Wait until the n-th answer (1-based) of the last session has been played in full and
    the kiosk is ``then``."""
    await sim.wait_for(lambda s: len(answers(s.sessions[-1])) >= n, timeout=timeout_s)
    reply = answers(sim.sessions[-1])[n - 1]
    await kiosk.hears(reply, timeout_s)
    await kiosk.until(state=then)
    return reply


@contextlib.asynccontextmanager
async def slow_tool(delay_s: float):
    """An HTTP tool endpoint on loopback that answers after ``delay_s``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()).strip():
            pass  # request line and headers; a GET has no body
        await asyncio.sleep(delay_s)
        payload = b'{"open": "9:00-17:00"}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hours"
    finally:
        server.close()


def in_order(kiosk: Kiosk, *looks: str) -> bool:
    """The visitor saw ``looks`` in this order (other looks may come between)."""
    seen = iter(look for _, _, look in kiosk.looks)
    return all(any(shown == look for shown in seen) for look in looks)


# --- the rows -------------------------------------------------------------------------------


async def test_a_2s_question_is_answered(sim, speech, tmp_path) -> None:
    kiosk = await start(sim, tmp_path, speech)
    try:
        assert (await kiosk.hold(2.0))["state"] == "thinking"
        await answered(kiosk, sim, 1)
        session = sim.sessions[0]
        assert wire(session) == ["append*", "input_audio_buffer.commit", "response.create"]
        assert 2.0 <= appended_s(session) <= 3.5
        # Thinking may last less than a sample of the watcher: the release reported it.
        await asyncio.sleep(0.3)  # the watcher's next sample
        assert in_order(kiosk, "listening", "speaking", "idle")
    finally:
        await kiosk.stop()


async def test_an_8s_question_is_one_turn_answered_whole(sim, speech, tmp_path) -> None:
    kiosk = await start(sim, tmp_path, speech)
    try:
        await kiosk.hold(8.0)
        await answered(kiosk, sim, 1)
        assert len(sim.sessions) == 1  # no "new visitor" on the way
        session = sim.sessions[0]
        assert wire(session) == ["append*", "input_audio_buffer.commit", "response.create"]
        assert appended_s(session) >= 7.5
        spoken = float(transcripts(session)[0].split()[3])  # "You spoke for N.N seconds."
        assert spoken >= 7.5
    finally:
        await kiosk.stop()


async def test_a_hold_past_max_turn_is_cut_with_a_cue_and_answered(sim, speech, tmp_path) -> None:
    kiosk = await start(
        sim, tmp_path, speech, audio={"max_turn_s": 4}, interaction={"idle_reset_s": 10}
    )
    try:
        await kiosk.ctl("press")
        pressed = time.monotonic()
        await kiosk.hears(MAX_TURN, 8)
        assert 4.0 <= time.monotonic() - pressed <= 5.5
        await asyncio.sleep(2.0 - (time.monotonic() - pressed - 4.0))  # still holding
        assert (await kiosk.ctl("release"))["state"] in ("thinking", "speaking", "idle")
        await answered(kiosk, sim, 1)
        session = sim.sessions[0]
        assert wire(session) == ["append*", "input_audio_buffer.commit", "response.create"]
        assert 4.0 <= appended_s(session) <= 4.6
    finally:
        log = await kiosk.stop()
    assert "max_turn" in log


async def test_a_tap_sends_nothing_and_beeps(sim, speech, tmp_path) -> None:
    kiosk = await start(sim, tmp_path, speech)
    try:
        tapped = time.monotonic()
        await kiosk.hold(0.05)
        await kiosk.hears(TOO_SHORT, 3)
        await asyncio.sleep(0.5)
        assert kiosk.saw("too_short", since=tapped)
        assert "input_audio_buffer.commit" not in wire(sim.sessions[0])
        assert "response.create" not in wire(sim.sessions[0])
    finally:
        await kiosk.stop()


async def test_a_tap_then_a_real_question_is_answered(sim, speech, tmp_path) -> None:
    kiosk = await start(sim, tmp_path, speech)
    try:
        await kiosk.hold(0.05)
        await kiosk.hears(TOO_SHORT, 3)
        await kiosk.hold(2.0)
        await answered(kiosk, sim, 1)
        assert wire(sim.sessions[0])[-2:] == ["input_audio_buffer.commit", "response.create"]
    finally:
        await kiosk.stop()


async def test_a_re_press_while_thinking_replaces_the_question(sim, speech, tmp_path) -> None:
    sim.faults.reply_delay_s = 1.5
    kiosk = await start(sim, tmp_path, speech)
    try:
        await kiosk.hold(1.5)
        await asyncio.sleep(0.3)  # thinking: the reply has not started
        sim.faults.reply_delay_s = 0.0
        await kiosk.hold(2.0)
        await answered(kiosk, sim, 1)
        events = wire(sim.sessions[0])
        assert events.count("input_audio_buffer.commit") == 2
        assert "response.cancel" in events and "input_audio_buffer.clear" in events
        assert len(answers(sim.sessions[0])) == 1  # the first question's reply never played
    finally:
        await kiosk.stop()


async def test_a_press_while_speaking_barges_in_then_is_answered(sim, speech, tmp_path) -> None:
    kiosk = await start(sim, tmp_path, speech)
    try:
        await kiosk.hold(1.5)
        await kiosk.until(state="speaking")
        await asyncio.sleep(0.5)
        # The first reply may still be streaming when the press lands (then it is cancelled,
        # not completed): only the replies completed after the barge-in are the answer.
        completed_before = len(answers(sim.sessions[0]))
        await kiosk.hold(2.0)
        await answered(kiosk, sim, completed_before + 1)
        events = wire(sim.sessions[0])
        assert "conversation.item.truncate" in events
        truncate = next(
            e for e in sim.sessions[0].received if e["type"] == "conversation.item.truncate"
        )
        assert 200 <= truncate["audio_end_ms"] <= 1500
        first = all_audio(sim.sessions[0])[0]
        assert not kiosk.heard(first)  # cut: the visitor did not hear the rest
    finally:
        await kiosk.stop()


async def test_walking_away_mid_answer_lets_it_play_then_forgets(sim, speech, tmp_path) -> None:
    kiosk = await start(
        sim,
        tmp_path,
        speech,
        audio={"max_turn_s": 3},
        interaction={"idle_reset_s": 4, "reply_timeout_s": 3},
    )
    try:
        await kiosk.hold(1.5)
        await answered(kiosk, sim, 1)  # played to its end with nobody there
        await sim.wait_for(lambda s: len(s.sessions) == 2, timeout=10)  # the idle reset
        await kiosk.until(link="connected", state="idle")
        assert not any(e["type"] == "conversation.item.create" for e in sim.sessions[1].received)
    finally:
        await kiosk.stop()


async def test_a_silent_hold_sends_nothing_and_asks_to_speak_closer(sim, tmp_path) -> None:
    kiosk = await start(sim, tmp_path, silent_input(tmp_path / "silence.wav"))
    try:
        held = time.monotonic()
        await kiosk.hold(2.0)
        await kiosk.hears(NO_SPEECH, 8)
        assert kiosk.saw("error", since=held)
        assert wire(sim.sessions[0]) == []  # not a byte of the turn reached the model
        assert (await kiosk.until(state="idle"))["silent_turns"] == 1
    finally:
        await kiosk.stop()


async def test_three_silent_holds_on_a_stuck_mic_raise_mic_suspect(sim, tmp_path) -> None:
    kiosk = await start(
        sim, tmp_path, silent_input(tmp_path / "stuck.wav", dc=1234), interaction={"earcons": False}
    )
    try:
        for _ in range(3):
            await kiosk.hold(0.6)
            await asyncio.sleep(0.3)
        status = await kiosk.until(state="idle", look="error")  # while idle: error look
        assert status["silent_turns"] == 3
        assert wire(sim.sessions[0]) == []
    finally:
        log = await kiosk.stop()
    assert log.count("[event=mic_suspect") == 1


async def test_a_clipping_hold_is_answered_and_logged(sim, tmp_path) -> None:
    loud = speech_input(tmp_path / "loud.wav", 6.0, gain=8.0)
    kiosk = await start(sim, tmp_path, loud)
    try:
        await kiosk.hold(2.0)
        await answered(kiosk, sim, 1)
    finally:
        log = await kiosk.stop()
    assert "mic_clipping" in log and "lower the capture gain" in log


async def test_a_press_while_offline_is_delivered_when_the_link_returns(
    sim, speech, tmp_path
) -> None:
    kiosk = await start(sim, tmp_path, speech)
    try:
        sim.faults.refuse_connections = True
        sim.drop_all()
        await kiosk.until(link="down", timeout_s=10)
        await kiosk.hold(2.0)
        await kiosk.hears(OFFLINE, 5)
        sim.faults.refuse_connections = False
        await sim.wait_for(lambda s: len(s.sessions) == 2, timeout=15)
        await answered(kiosk, sim, 1)
        assert wire(sim.sessions[1])[-2:] == ["input_audio_buffer.commit", "response.create"]
    finally:
        await kiosk.stop()


async def test_a_press_while_offline_too_long_says_sorry(sim, speech, tmp_path) -> None:
    kiosk = await start(sim, tmp_path, speech, realtime={"deliver_within_s": 2})
    try:
        sim.faults.refuse_connections = True
        sim.drop_all()
        await kiosk.until(link="down", timeout_s=10)
        await kiosk.hold(1.5)
        released = time.monotonic()
        await kiosk.hears(OFFLINE, 6)  # "One moment, I am reconnecting", at once
        heard_at = await kiosk.hears(ERROR, 10)
        # After deliver_within_s, "Sorry, I cannot answer right now" (behind the first).
        assert heard_at - released <= (len(OFFLINE) + len(ERROR)) / 48000 + 1
        assert kiosk.saw("error", since=released)
        sim.faults.refuse_connections = False
        await kiosk.until(state="idle", link="connected", timeout_s=20)
        assert all("input_audio_buffer.commit" not in wire(s) for s in sim.sessions)
    finally:
        await kiosk.stop()


async def test_a_failed_reply_is_an_apology_within_a_second(sim, speech, tmp_path) -> None:
    sim.faults.fail_responses = True
    kiosk = await start(sim, tmp_path, speech)
    try:
        await kiosk.hold(1.5)
        await sim.wait_for(lambda s: s.sessions[0].sent_of_type("response.done"), timeout=10)
        done_at = time.monotonic()
        heard_at = await kiosk.hears(APOLOGY, 10)
        # Heard in full within 1 s of its start: it starts within 1 s of response.done.
        assert heard_at - done_at <= 1.0 + len(APOLOGY) / 48000
        assert kiosk.saw("error", since=done_at)
        sim.faults.fail_responses = False
        await kiosk.until(state="idle")
        await kiosk.hold(1.5)
        await answered(kiosk, sim, 1)
    finally:
        log = await kiosk.stop()
    assert "reply_failed" in log


async def test_a_stalled_reply_is_an_apology_and_the_late_one_cancelled(
    sim, speech, tmp_path
) -> None:
    sim.faults.reply_delay_s = 5.0
    kiosk = await start(sim, tmp_path, speech, interaction={"reply_timeout_s": 2})
    try:
        await kiosk.hold(1.5)
        released = time.monotonic()
        heard_at = await kiosk.hears(APOLOGY, 10)
        assert heard_at - released <= 2 + 1 + len(APOLOGY) / 48000
        await sim.wait_for(
            lambda s: "response.cancel" in [e["type"] for e in s.sessions[0].received], 10
        )
        sim.faults.reply_delay_s = 0.0
        await kiosk.until(state="idle")
        await kiosk.hold(1.5)
        await answered(kiosk, sim, 1)
    finally:
        log = await kiosk.stop()
    assert "no_reply" in log


async def test_a_reply_cut_by_the_link_ends_in_an_apology(speech, tmp_path) -> None:
    # Reply audio slower than real time, so the link can fail in the middle of it.
    async with Simulator(burst_ms=240, burst_interval_s=0.6) as sim:
        kiosk = await start(sim, tmp_path, speech)
        try:
            await kiosk.hold(1.5)
            await kiosk.until(state="speaking")
            sim.faults.refuse_connections = True
            sim.drop_all()
            cut = time.monotonic()
            heard_at = await kiosk.hears(APOLOGY, 10)
            assert heard_at - cut <= 1.5 + len(APOLOGY) / 48000  # after what had arrived
            assert kiosk.saw("error", since=cut)
            sim.faults.refuse_connections = False
            await kiosk.until(state="idle", link="connected", timeout_s=20)
            await kiosk.hold(1.5)
            await answered(kiosk, sim, 1)
        finally:
            log = await kiosk.stop()
    assert "[event=reply_cut" in log


async def test_a_4s_tool_call_plays_the_thinking_cue_then_answers(sim, speech, tmp_path) -> None:
    async with slow_tool(delay_s=4.0) as url:
        sim.tool_calls.append(("opening_hours", {}))
        tool = {"name": "opening_hours", "description": "Opening hours.", "url": url}
        tool |= {"method": "GET"}
        kiosk = await start(sim, tmp_path, speech, tools=[tool])
        try:
            await kiosk.hold(1.5)
            await kiosk.hears(THINKING, 10)
            await answered(kiosk, sim, 1, timeout_s=20)
            assert "function_call_output" in str(sim.sessions[0].received)
        finally:
            await kiosk.stop()


async def test_hands_free_a_tap_then_8s_of_talk_is_answered(sim, tmp_path) -> None:
    talk = speech_input(tmp_path / "talk.wav", 8.5, then_silence_s=8.0)
    kiosk = await start(sim, tmp_path, talk, interaction={"mode": "hands_free"})
    try:
        # The input loops every 16.5 s from the daemon's start: tap during the silence.
        await asyncio.sleep(9.5)
        await kiosk.hold(0.1)
        await answered(kiosk, sim, 1, timeout_s=30, then="listening")
        session = sim.sessions[0]
        assert len(sim.sessions) == 1 and "input_audio_buffer.clear" not in wire(session)
        assert float(transcripts(session)[0].split()[3]) >= 7.5
        assert (await kiosk.ctl("status"))["state"] in ("listening", "thinking", "speaking")
    finally:
        await kiosk.stop()


async def test_hands_free_closes_after_idle_silence(sim, tmp_path) -> None:
    kiosk = await start(
        sim,
        tmp_path,
        silent_input(tmp_path / "quiet.wav"),
        audio={"max_turn_s": 2},
        interaction={"mode": "hands_free", "idle_reset_s": 3, "reply_timeout_s": 2},
    )
    try:
        await kiosk.hold(0.1)
        assert (await kiosk.ctl("status"))["state"] == "listening"
        await kiosk.until(state="idle", timeout_s=6)
        updates = [e for e in sim.sessions[0].received if e["type"] == "session.update"]
        assert updates[-1]["session"]["audio"]["input"]["turn_detection"] is None
    finally:
        await kiosk.stop()
