"""The simulator behaves like the real GA service on the paths where simulators usually lie:
refusals after the upgrade, the announced session cap, failed replies, late transcriptions,
rate limits after the reply, Azure's endpoint, and every client event the SDK can send.

Facts come from live captures of the service (gauravzqa/llmgw ``capabilities/captures-ws.md``,
2026-09-18) and the reports quoted in ``realtime-protocol.md``; each assertion names its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import typing
from typing import Any

import numpy as np
import openai
import pytest
from gpiozero.pins.mock import MockFactory
from openai.types.realtime import RealtimeClientEvent
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from conftest import TEST_KEY
from harness import BUTTON_PIN, Running, kiosk_settings
from kioskvoice.app import App
from kioskvoice.events import State
from kioskvoice.sim import Faults, Simulator
from realtime_schema import PTT_SESSION, assert_client_event, assert_server_event
from visitor import earcon, speech_input, start

pytestmark = pytest.mark.timeout(60)

KEY = "sk-sim-key-0123456789"
STEP = 10.0


def tone(seconds: float) -> bytes:
    t = np.arange(int(seconds * 24000)) / 24000
    return np.round(0.2 * 32767 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


async def first_error_and_close(url: str, headers: dict[str, str]) -> tuple[dict[str, Any], Any]:
    async with connect(url, additional_headers=headers, open_timeout=STEP) as ws:
        async with asyncio.timeout(STEP):
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert_server_event(error)
    return error, closed.value.rcvd


async def test_bad_or_missing_model_is_an_error_then_close_4000() -> None:
    # Probes 11 and 11b: error invalid_model / missing_model, close 4000 with type.code.
    bearer = {"Authorization": f"Bearer {KEY}"}
    async with Simulator(api_key=KEY) as sim:
        error, close = await first_error_and_close(f"{sim.url}?model=gpt-nope", bearer)
        assert error["error"]["code"] == "invalid_model"
        assert error["error"]["message"].startswith('Model "gpt-nope" is not supported')
        assert (close.code, close.reason) == (4000, "invalid_request_error.invalid_model")
        error, close = await first_error_and_close(sim.url, bearer)
        assert error["error"]["code"] == "missing_model"
        assert (close.code, close.reason) == (4000, "invalid_request_error.missing_model")
        # An ephemeral secret binds the model: no model parameter is needed with one.
        secret = sim.mint_secret(60)["value"]
        async with connect(
            sim.url, additional_headers={"Authorization": f"Bearer {secret}"}, open_timeout=STEP
        ) as ws:
            async with asyncio.timeout(STEP):
                assert json.loads(await ws.recv())["type"] == "session.created"
        assert sim.refused == 2


async def test_session_announces_its_cap_and_ends_at_it() -> None:
    async with Simulator(api_key=KEY, faults=Faults(session_cap_s=1.5)) as sim:
        url = f"{sim.url}?model=gpt-realtime"
        async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            async with asyncio.timeout(STEP):
                created = json.loads(await ws.recv())
                opened = time.time()
                assert 0 <= created["session"]["expires_at"] - opened <= 1.5
                error = json.loads(await ws.recv())
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
        # pollen-robotics/reachy_mini_conversation_app #134: session_expired, then a clean
        # close 1001 whose reason repeats the message.
        message = "Your session hit the maximum duration of 1.5 seconds."
        assert (error["error"]["code"], error["error"]["message"]) == ("session_expired", message)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, message)
        assert sim.capped == 1

        # Announcements can be made to lie (the real cap is still enforced).
        for announced, check in [
            (-30, lambda v: v < time.time()),
            (10 * 365 * 86400, lambda v: v > time.time() + 9 * 365 * 86400),
            ("soon", lambda v: v == "soon"),
        ]:
            sim.faults.announced_expiry = announced
            async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
                async with asyncio.timeout(STEP):
                    assert check(json.loads(await ws.recv())["session"]["expires_at"])


async def test_a_failed_reply_is_created_then_failed_then_rate_limited() -> None:
    faults = Faults(fail_responses=True, fail_code="insufficient_quota")
    async with Simulator(api_key=KEY, faults=faults) as sim:
        url = f"{sim.url}?model=gpt-realtime"
        async with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            async with asyncio.timeout(STEP):
                await ws.recv()  # session.created
                await ws.send(json.dumps({"type": "response.create"}))
                events = [json.loads(await ws.recv()) for _ in range(3)]
        assert [e["type"] for e in events] == [
            "response.created",
            "response.done",
            "rate_limits.updated",
        ]
        done = events[1]["response"]
        assert done["status"] == "failed" and done["output"] == []
        # community.openai.com/t/incorrect-event-when-error-realtime-api/1005042
        assert done["status_details"]["error"]["type"] == "insufficient_quota"
        assert done["status_details"]["error"]["code"] == "insufficient_quota"
        assert done["usage"]["total_tokens"] == 0
        for event in events:
            assert_server_event(event)


async def test_azure_endpoint_takes_either_header_and_a_deployment() -> None:
    async with Simulator(api_key=KEY, models={"kiosk-voice"}) as sim:
        url = f"{sim.azure_url}?model=kiosk-voice"
        for headers in ({"api-key": KEY}, {"Authorization": f"Bearer {KEY}"}):
            async with connect(url, additional_headers=headers, open_timeout=STEP) as ws:
                async with asyncio.timeout(STEP):
                    created = json.loads(await ws.recv())
            assert created["session"]["model"] == "kiosk-voice"
            # Azure's cap is 30 minutes.
            assert 1790 < created["session"]["expires_at"] - time.time() <= 1800
        assert [s.path for s in sim.sessions] == ["/openai/v1/realtime"] * 2
        error, close = await first_error_and_close(f"{sim.azure_url}?model=other", {"api-key": KEY})
        assert (error["error"]["code"], close.code) == ("invalid_model", 4000)
        # The preview path (api-version, deployment) speaks the retired beta shapes: not served.
        preview = sim.azure_url.replace("/openai/v1/realtime", "/openai/realtime")
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                f"{preview}?api-version=2025-04-01-preview&deployment=kiosk-voice",
                additional_headers={"api-key": KEY},
                open_timeout=STEP,
            ):
                pass
        assert refused.value.response.status_code == 404


# --- every client event of the SDK, as the SDK sends it -----------------------------------


class Recorder:
    """The raw server events one SDK connection received, each checked against the SDK."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []

    async def until(self, *types: str) -> list[dict[str, Any]]:
        """Events up to and including the first of one of ``types``."""
        out: list[dict[str, Any]] = []
        async with asyncio.timeout(STEP):
            while not out or out[-1]["type"] not in types:
                event = json.loads(await self.conn.recv_bytes())
                assert_server_event(event)
                out.append(event)
        self.events += out
        return out

    async def error(self) -> dict[str, Any]:
        return (await self.until("error"))[-1]["error"]


async def test_every_sdk_client_event_gets_the_services_answer() -> None:
    sdk_types = {
        typing.get_args(m.model_fields["type"].annotation)[0]
        for m in typing.get_args(typing.get_args(RealtimeClientEvent)[0])
    }
    assert len(sdk_types) == 11
    async with Simulator(api_key=KEY, burst_ms=40, burst_interval_s=0.05) as sim:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=f"http://127.0.0.1:{sim.port}/v1")
        try:
            async with client.realtime.connect(model="gpt-realtime") as conn:
                await exercise(Recorder(conn), conn)
        finally:
            await client.close()
        session = sim.sessions[0]
    sent = {e["type"] for e in session.received}
    assert sent == sdk_types, sdk_types - sent
    for event in session.received:
        assert_client_event(event)


async def exercise(rec: Recorder, conn: Any) -> None:
    assert (await rec.until("session.created"))[-1]["session"]["audio"]["output"]["voice"] == (
        "alloy"
    )
    await conn.session.update(session=PTT_SESSION)
    assert (await rec.until("session.updated"))[-1]["session"]["audio"]["output"]["voice"] == (
        "marin"
    )

    # A commit under 100 ms: input_audio_buffer_commit_empty (betalgo/openai #674).
    await conn.input_audio_buffer.append(audio=base64.b64encode(tone(0.05)).decode())
    await conn.input_audio_buffer.commit()
    assert (await rec.error())["code"] == "input_audio_buffer_commit_empty"

    await conn.input_audio_buffer.append(audio=base64.b64encode(tone(0.5)).decode())
    await conn.input_audio_buffer.clear()
    await rec.until("input_audio_buffer.cleared")

    await conn.input_audio_buffer.append(audio=base64.b64encode(tone(1.0)).decode())
    await conn.input_audio_buffer.commit()
    user_id = (await rec.until("conversation.item.done"))[0]["item_id"]

    # Nothing is running: response_cancel_not_active, and the session goes on.
    await conn.response.cancel()
    assert (await rec.error())["code"] == "response_cancel_not_active"

    await conn.response.create()
    reply = await rec.until("response.done")
    assistant_id = reply[-1]["response"]["output"][0]["id"]
    audio_ms = (
        sum(
            len(base64.b64decode(e["delta"]))
            for e in reply
            if e["type"] == "response.output_audio.delta"
        )
        / 48
    )
    assert (await rec.until("rate_limits.updated"))[-1]["rate_limits"]

    # Over WebSocket the service refuses the WebRTC/SIP-only output buffer.
    await conn.output_audio_buffer.clear()
    error = await rec.error()
    assert (error["code"], error["param"]) == ("invalid_value", "type")
    assert "'output_audio_buffer.clear'" in error["message"]

    # Truncating past the end of the audio is refused with the service's text.
    await conn.conversation.item.truncate(
        item_id=assistant_id, content_index=0, audio_end_ms=int(audio_ms) + 1000
    )
    assert "is already shorter than" in (await rec.error())["message"]
    await conn.conversation.item.truncate(item_id=assistant_id, content_index=0, audio_end_ms=300)
    await rec.until("conversation.item.truncated")

    # Retrieve gives the item as the server holds it now, with its (truncated) audio.
    await conn.conversation.item.retrieve(item_id=assistant_id)
    item = (await rec.until("conversation.item.retrieved"))[-1]["item"]
    part = item["content"][0]
    assert (part["type"], part["transcript"]) == ("output_audio", None)
    assert len(base64.b64decode(part["audio"])) == 300 * 48
    await conn.conversation.item.retrieve(item_id=user_id)
    user = (await rec.until("conversation.item.retrieved"))[-1]["item"]
    assert len(base64.b64decode(user["content"][0]["audio"])) == len(tone(1.0))

    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
    )
    text_id = (await rec.until("conversation.item.done"))[-1]["item"]["id"]
    await conn.conversation.item.delete(item_id=text_id)
    assert (await rec.until("conversation.item.deleted"))[-1]["item_id"] == text_id
    await conn.conversation.item.retrieve(item_id=text_id)
    assert (await rec.error())["param"] == "item_id"

    # A running response is cancelled.
    await conn.response.create()
    await rec.until("response.output_audio.delta")
    await conn.response.cancel()
    done = (await rec.until("response.done"))[-1]["response"]
    assert (done["status"], done["status_details"]["reason"]) == ("cancelled", "client_cancelled")


# --- the kiosk against what the service does -------------------------------------------------


@pytest.fixture
def button():
    factory = MockFactory()
    yield factory, factory.pin(BUTTON_PIN)
    factory.reset()


def answered(session: Any) -> int:
    return sum(
        1 for e in session.sent_of_type("response.done") if e["response"]["status"] == "completed"
    )


@pytest.mark.timeout(90)
async def test_an_announced_12_s_session_is_rolled_over_in_time(
    speech_wav, tmp_path, button
) -> None:
    """The server announces expires_at 12 s on (and cuts the session then); session_max_s is
    the default, rollover_margin_s the default 120 s: no storm, turns before and after."""
    factory, pin = button
    async with Simulator(api_key=TEST_KEY, faults=Faults(session_cap_s=12)) as sim:
        app = App(
            kiosk_settings(sim.url, speech_wav, tmp_path, api_key=TEST_KEY), pin_factory=factory
        )
        async with Running(app) as k:
            started = time.monotonic()
            await k.turn(pin, hold_s=0.8)
            await k.until(lambda: app.status()["rollovers"] >= 1, timeout_s=15)
            await k.turn(pin, hold_s=0.8)
            await asyncio.sleep(max(0.0, 24 - (time.monotonic() - started)))
            status = app.status()
    assert sim.capped == 0, "a session reached the announced expiry"
    assert status["failed_rollovers"] == 0 and status["reconnects"] == 0, status
    assert 2 <= len(sim.sessions) <= 4, len(sim.sessions)  # about one per 8 s, not 5,291
    assert answered(sim.sessions[0]) == 1
    assert sum(answered(s) for s in sim.sessions[1:]) >= 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("announced", [-30, 1, 10 * 365 * 86400, "soon"])
async def test_absurd_announcements_cause_no_storm_and_no_crash(
    speech_wav, tmp_path, button, announced
) -> None:
    factory, pin = button
    async with Simulator(api_key=TEST_KEY, faults=Faults(announced_expiry=announced)) as sim:
        app = App(
            kiosk_settings(sim.url, speech_wav, tmp_path, api_key=TEST_KEY), pin_factory=factory
        )
        async with Running(app) as k:
            await k.turn(pin, hold_s=0.8)
            await asyncio.sleep(10)
            await k.turn(pin, hold_s=0.8)
            assert app.status()["link"] == "connected"
        assert k.task is not None and k.task.exception() is None
    # At most a rollover every ~7 s (an announced 1 s counts as 10 s); otherwise none.
    assert len(sim.sessions) <= 3, [s.config["expires_at"] for s in sim.sessions]
    assert sum(answered(s) for s in sim.sessions) == 2


@pytest.mark.timeout(90)
async def test_a_reply_failing_for_quota_is_an_apology_then_the_error_state(tmp_path) -> None:
    faults = Faults(fail_responses=True, fail_code="insufficient_quota")
    async with Simulator(faults=faults) as sim:
        speech = speech_input(tmp_path / "speech.wav", 6.0)
        kiosk = await start(sim, tmp_path, speech, realtime={"fatal_retry_s": 5})
        try:
            await kiosk.hold(1.5)
            status = await kiosk.until(state="error", link="down", timeout_s=5)
            assert status["last_error"] == "insufficient_quota"
            await kiosk.hears(earcon("apology"), 10)
            # Slow retries: the session comes back (and fails again at the next reply).
            await kiosk.until(state="idle", link="connected", timeout_s=10)
            assert len(sim.sessions) == 2
        finally:
            log = await kiosk.stop()
    # One clear record of the cause at error level, however many retries followed.
    named = [line for line in log.splitlines() if "insufficient_quota" in line]
    causes = [line for line in named if line.startswith("error ")]
    assert len(causes) == 1 and "[event=disconnect" in causes[0], named
    # The visitor's apology is its own record (a warning, like every failed reply's).
    assert [line.split()[0] for line in named] == ["warning", "error"], named


@pytest.mark.timeout(120)
async def test_after_a_barge_in_and_a_rollover_the_replay_is_what_was_heard(
    speech_wav, tmp_path, button
) -> None:
    """Three turns, the second cut by a barge-in; then the session rolls over. On the wire the
    new session is told the turns in conversation order (each question before its answer,
    though the questions' transcripts arrived after the answers'), and the cut answer holds
    only what the visitor heard."""
    factory, pin = button
    async with Simulator(api_key=TEST_KEY, faults=Faults(session_cap_s=30)) as sim:
        app = App(
            kiosk_settings(sim.url, speech_wav, tmp_path, api_key=TEST_KEY), pin_factory=factory
        )
        async with Running(app) as k:
            await k.turn(pin, hold_s=0.8)
            pin.drive_low()
            await asyncio.sleep(1.5)
            pin.drive_high()
            await k.wait(State.SPEAKING)
            await asyncio.sleep(1.2)  # part of the answer is heard, then the visitor presses
            await k.turn(pin, hold_s=0.8)
            first = sim.sessions[0]
            assert len(first.truncations) == 1
            await k.until(lambda: app.status()["rollovers"] == 1, timeout_s=30)
            await k.turn(pin, hold_s=0.8)  # answered in the new session
        second = sim.sessions[1]
    assert answered(second) == 1

    # What the first session said, in its own conversation order.
    questions = {
        e["item_id"]: e["transcript"]
        for e in first.sent_of_type("conversation.item.input_audio_transcription.completed")
    }
    answers = {
        e["item_id"]: e["transcript"]
        for e in first.sent_of_type("response.output_audio_transcript.done")
    }
    order = [i["id"] for i in first.items]
    cut = first.truncations[0]
    audio_ms = {
        item: sum(
            len(base64.b64decode(e["delta"])) / 48
            for e in first.sent_of_type("response.output_audio.delta")
            if e["item_id"] == item
        )
        for item in answers
    }
    replayed = [
        (e["item"]["role"], e["item"]["content"][0]["text"])
        for e in second.received
        if e["type"] == "conversation.item.create"
    ]
    assert [role for role, _ in replayed] == ["user", "assistant"] * 3
    expected = [
        (("user", questions[i]) if i in questions else ("assistant", answers[i])) for i in order
    ]
    for (role, text), (want_role, full) in zip(replayed, expected, strict=True):
        assert role == want_role
        if role == "assistant" and full == answers[cut.item_id]:
            continue
        assert text == full
    heard = replayed[3][1]
    full = answers[cut.item_id]
    assert full.startswith(heard) and len(heard) < len(full)
    assert heard == "" or full[len(heard)] == " "  # whole words only
    assert len(heard) <= len(full) * cut.audio_end_ms / audio_ms[cut.item_id]
    for event in second.received:
        assert_client_event(event)
