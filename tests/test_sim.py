"""The embedded Realtime simulator, driven by raw GA clients and by the official openai SDK.

Every wait is bounded by ``STEP``; the tests assert what is sent and in which order, not how
long anything takes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import openai
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from kioskvoice.sim import Faults, Simulator, Truncation, voice
from realtime_schema import assert_client_event, assert_server_event

API_KEY = "test-key"
STEP = 10.0  # upper bound for any single wait; generous so slow machines do not flake
RATE = 24000
CHUNK = 960  # 20 ms of PCM16 mono at 24 kHz

# The exact push-to-talk config from realtime-protocol.md section 4.
PTT_SESSION: dict[str, Any] = {
    "type": "realtime",
    "instructions": "Be brief.",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": None,
            "transcription": {"model": "gpt-4o-mini-transcribe"},
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
    },
}

DELTA_TYPES = {"response.output_audio.delta", "response.output_audio_transcript.delta"}
TRANSCRIPTION_DONE = "conversation.item.input_audio_transcription.completed"


def speech(seconds: float) -> bytes:
    """A quiet 220 Hz tone as PCM16 LE mono at 24 kHz."""
    t = np.arange(int(seconds * RATE)) / RATE
    return np.round(0.2 * 32767 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Client:
    """A raw GA client that keeps every event it sends and receives."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any]) -> None:
        self.sent.append(event)
        await self.ws.send(json.dumps(event))

    async def send_raw(self, text: str) -> None:
        await self.ws.send(text)

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(STEP):
            event = json.loads(await self.ws.recv())
        self.received.append(event)
        return event

    async def recv_until(self, event_type: str) -> list[dict[str, Any]]:
        """Events up to and including the first of ``event_type``."""
        events = [await self.recv()]
        while events[-1]["type"] != event_type:
            events.append(await self.recv())
        return events

    async def append_audio(self, pcm: bytes) -> None:
        for offset in range(0, len(pcm), CHUNK):
            await self.send(
                {"type": "input_audio_buffer.append", "audio": b64(pcm[offset : offset + CHUNK])}
            )


@asynccontextmanager
async def ga_client(sim: Simulator, **headers: str) -> AsyncIterator[Client]:
    """Connect like the kiosk does and consume ``session.created``."""
    extra = headers or {"Authorization": f"Bearer {API_KEY}"}
    async with connect(
        f"{sim.url}?model=gpt-realtime",
        additional_headers=extra,
        max_size=None,
        compression=None,
        open_timeout=STEP,
        close_timeout=STEP,
    ) as ws:
        client = Client(ws)
        created = await client.recv()
        assert created["type"] == "session.created"
        yield client


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(api_key=API_KEY) as simulator:
        yield simulator


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def assert_all_valid(sim: Simulator, client: Client) -> None:
    for event in sim.sessions[-1].sent:
        assert_server_event(event)
    for event in client.sent:
        assert_client_event(event)


async def commit_speech(client: Client, seconds: float) -> str:
    """Append and commit ``seconds`` of audio; return the user item id."""
    await client.append_audio(speech(seconds))
    await client.send({"type": "input_audio_buffer.commit"})
    events = await client.recv_until("input_audio_buffer.committed")
    return events[-1]["item_id"]


async def test_full_ptt_turn(sim: Simulator) -> None:
    async with ga_client(sim) as client:
        created = client.received[0]
        assert created["session"]["model"] == "gpt-realtime"
        assert created["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        assert created["session"]["audio"]["output"]["voice"] == "marin"

        await client.send({"type": "session.update", "session": PTT_SESSION})
        updated = (await client.recv_until("session.updated"))[-1]["session"]
        assert updated["instructions"] == "Be brief."
        assert updated["audio"]["input"]["turn_detection"] is None
        assert updated["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
        assert updated["audio"]["output"]["voice"] == "marin"
        assert updated["id"] == created["session"]["id"]
        assert sim.sessions[0].config == updated

        await client.append_audio(speech(1.0))
        await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_commit"})
        committed = await client.recv_until("conversation.item.done")
        assert types_of(committed) == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        user_id = committed[0]["item_id"]
        assert committed[0]["previous_item_id"] is None
        user_item = committed[1]["item"]
        assert user_item["id"] == user_id
        assert user_item["role"] == "user"
        assert user_item["content"] == [{"type": "input_audio", "transcript": None}]

        await client.send({"type": "response.create"})
        events = await client.recv_until("response.done")
        if TRANSCRIPTION_DONE not in types_of(events):
            events += await client.recv_until(TRANSCRIPTION_DONE)

        transcriptions = [e for e in events if e["type"] == TRANSCRIPTION_DONE]
        assert len(transcriptions) == 1
        assert transcriptions[0]["item_id"] == user_id
        assert transcriptions[0]["transcript"] == "(1.0 seconds of speech)"

        flow = [e for e in events if e["type"] not in DELTA_TYPES | {TRANSCRIPTION_DONE}]
        assert types_of(flow) == [
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]
        kinds = types_of(events)
        first_delta = kinds.index("response.output_audio.delta")
        assert kinds.index("response.content_part.added") < first_delta
        last_delta = max(i for i, k in enumerate(kinds) if k in DELTA_TYPES)
        assert last_delta < kinds.index("response.output_audio.done")

        response_id = flow[0]["response"]["id"]
        assert flow[0]["response"]["status"] == "in_progress"
        item_id = flow[1]["item"]["id"]
        assert flow[2]["previous_item_id"] == user_id
        assert flow[3]["part"]["type"] == "audio"
        for event in events:
            if event["type"].startswith("response.output_audio") or event["type"].startswith(
                "response.content_part"
            ):
                assert (event["response_id"], event["item_id"]) == (response_id, item_id)

        audio_deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
        audio = b"".join(base64.b64decode(e["delta"]) for e in audio_deltas)
        expected_text = "You spoke for 1.0 seconds."
        assert audio == voice.synthesize(expected_text, RATE)
        assert len(audio) % 2 == 0
        assert 0.5 < len(audio) / (2 * RATE) < 10  # seconds of 24 kHz speech
        burst = 240 * 2 * RATE // 1000
        assert all(len(base64.b64decode(e["delta"])) == burst for e in audio_deltas[:-1])
        assert np.abs(np.frombuffer(audio, dtype="<i2")).max() > 1000  # audible, not silence

        words = [
            e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta"
        ]
        assert len(words) == len(expected_text.split())
        assert "".join(words) == expected_text
        assert flow[5]["transcript"] == expected_text

        done = flow[-1]["response"]
        assert done["id"] == response_id
        assert done["status"] == "completed"
        assert done["output"] == [
            {
                "id": item_id,
                "type": "message",
                "object": "realtime.item",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_audio", "transcript": expected_text}],
            }
        ]
        usage = done["usage"]
        assert usage["input_tokens"] > 0
        assert usage["output_tokens"] > 0
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]

        session = sim.sessions[0]
        await sim.wait_for(lambda s: len(s.sessions[0].received) == len(client.sent), STEP)
        assert session.received == client.sent
        assert session.sent == client.received
        assert len({e["event_id"] for e in session.sent}) == len(session.sent)
        assert [i["id"] for i in session.items] == [user_id, item_id]
        assert session.items[0]["content"][0]["transcript"] == "(1.0 seconds of speech)"
        assert session.headers["authorization"] == "<redacted>"
        assert all(API_KEY not in value for value in session.headers.values())
        assert session.auth_matched is True
        assert_all_valid(sim, client)


async def test_commit_under_100ms_is_rejected_and_buffer_dropped(sim: Simulator) -> None:
    async with ga_client(sim) as client:
        await client.append_audio(speech(0.05))
        await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_short"})
        error = (await client.recv_until("error"))[-1]["error"]
        assert error["code"] == "input_audio_buffer_commit_empty"
        assert error["type"] == "invalid_request_error"
        assert error["event_id"] == "evt_short"
        assert "Expected at least 100ms of audio" in error["message"]
        assert "only has 50.00ms" in error["message"]

        # The failed commit kept nothing: 60 ms more is still too short on its own.
        await client.append_audio(speech(0.06))
        await client.send({"type": "input_audio_buffer.commit"})
        error = (await client.recv_until("error"))[-1]["error"]
        assert "only has 60.00ms" in error["message"]
        assert sim.sessions[0].items == []
        assert_all_valid(sim, client)


async def test_cancel_mid_response_stops_audio() -> None:
    # Small bursts at a slow pace: the response is still streaming when the cancel lands.
    async with (
        Simulator(api_key=API_KEY, burst_ms=40, burst_interval_s=0.1) as sim,
        ga_client(sim) as client,
    ):
        await client.send({"type": "session.update", "session": PTT_SESSION})
        await client.recv_until("session.updated")
        await commit_speech(client, 1.0)

        await client.send({"type": "response.cancel", "event_id": "evt_idle_cancel"})
        idle = (await client.recv_until("error"))[-1]["error"]
        assert idle["code"] == "response_cancel_not_active"
        assert idle["event_id"] == "evt_idle_cancel"

        await client.send({"type": "response.create"})
        await client.send({"type": "response.create", "event_id": "evt_second"})
        before = await client.recv_until("response.output_audio.delta")
        busy = [e for e in before if e["type"] == "error"]
        assert len(busy) == 1
        assert busy[0]["error"]["code"] == "conversation_already_has_active_response"
        assert busy[0]["error"]["event_id"] == "evt_second"
        response_id = next(e for e in before if e["type"] == "response.created")["response"]["id"]
        item_id = before[-1]["item_id"]

        await client.send({"type": "response.cancel"})
        until_done = await client.recv_until("response.done")
        done = until_done[-1]["response"]
        assert done["id"] == response_id
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert done["output"][0]["status"] == "incomplete"
        assert "response.output_audio.done" not in types_of(until_done)

        # Nothing of the cancelled response may follow its response.done.
        await client.send({"type": "input_audio_buffer.clear"})
        after = await client.recv_until("input_audio_buffer.cleared")
        assert not [e for e in after if e.get("response_id") == response_id]
        sent = sim.sessions[0].sent
        done_index = next(i for i, e in enumerate(sent) if e["type"] == "response.done")
        assert not [e for e in sent[done_index:] if e.get("response_id") == response_id]

        # The barge-in sequence continues: truncate what was played, then a new turn works.
        played_ms = 40
        await client.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": played_ms,
            }
        )
        truncated = (await client.recv_until("conversation.item.truncated"))[-1]
        assert (truncated["item_id"], truncated["audio_end_ms"]) == (item_id, played_ms)
        assert sim.sessions[0].truncations == [Truncation(item_id, 0, played_ms)]

        # A new response streams at the same pace a surviving old one would: while it sends
        # five deltas, the cancelled response must send nothing (no wall-clock involved).
        await client.send({"type": "response.create"})
        second = await client.recv_until("response.created")
        second_id = second[-1]["response"]["id"]
        assert second_id != response_id
        deltas = 0
        while deltas < 5:
            event = await client.recv()
            deltas += event["type"] == "response.output_audio.delta"
        await client.send({"type": "response.cancel"})
        await client.recv_until("response.done")

        first_done = client.received.index(until_done[-1])
        stray = [e for e in client.received[first_done:] if e.get("response_id") == response_id]
        assert stray == []
        assert [e["response"]["id"] for e in sim.sessions[0].sent_of_type("response.done")] == [
            response_id,
            second_id,
        ]
        assert_all_valid(sim, client)


async def test_item_create_truncate_and_clear(sim: Simulator) -> None:
    sim.burst_interval_s = 0
    async with ga_client(sim) as client:
        user = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Hi"}],
        }
        assistant = {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello! How can I help?"}],
        }
        system = {
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": "Earlier: the user asked about hours."}],
        }
        tool_result = {"type": "function_call_output", "call_id": "call_1", "output": '{"ok":1}'}

        await client.send({"type": "conversation.item.create", "item": user})
        added, done = await client.recv_until("conversation.item.done")
        assert (added["type"], added["previous_item_id"]) == ("conversation.item.added", None)
        user_id = added["item"]["id"]
        assert done["item"] == added["item"]
        assert added["item"]["content"] == user["content"]

        await client.send({"type": "conversation.item.create", "item": assistant})
        added, _ = await client.recv_until("conversation.item.done")
        assert added["previous_item_id"] == user_id
        assistant_id = added["item"]["id"]

        await client.send(
            {"type": "conversation.item.create", "previous_item_id": "root", "item": system}
        )
        added, _ = await client.recv_until("conversation.item.done")
        assert added["previous_item_id"] is None
        system_id = added["item"]["id"]

        await client.send({"type": "conversation.item.create", "item": tool_result})
        added, _ = await client.recv_until("conversation.item.done")
        assert added["item"]["call_id"] == "call_1"

        items = sim.sessions[0].items
        assert [i["id"] for i in items][:3] == [system_id, user_id, assistant_id]
        assert [i.get("role") for i in items] == ["system", "user", "assistant", None]
        assert items[2]["content"] == [{"type": "output_text", "text": "Hello! How can I help?"}]

        # Beta's assistant "text" content is refused and changes nothing.
        beta_item = {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": "old shape"}],
        }
        await client.send_raw(
            json.dumps(
                {"type": "conversation.item.create", "event_id": "evt_beta", "item": beta_item}
            )
        )
        error = (await client.recv_until("error"))[-1]["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "item.content[0].type")
        assert error["event_id"] == "evt_beta"
        assert len(sim.sessions[0].items) == 4

        # Truncate: unknown item, a text item, then a real assistant audio item.
        await client.send(
            {"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0,
             "audio_end_ms": 10}
        )  # fmt: skip
        assert (await client.recv_until("error"))[-1]["error"]["param"] == "item_id"
        await client.send(
            {"type": "conversation.item.truncate", "item_id": assistant_id, "content_index": 0,
             "audio_end_ms": 10}
        )  # fmt: skip
        error = (await client.recv_until("error"))[-1]["error"]
        assert error["code"] == "unsupported_content_type"

        await commit_speech(client, 0.5)
        await client.send({"type": "response.create"})
        reply = await client.recv_until("response.done")
        reply_id = reply[-1]["response"]["output"][0]["id"]
        audio_bytes = sum(
            len(base64.b64decode(e["delta"]))
            for e in reply
            if e["type"] == "response.output_audio.delta"
        )
        audio_ms = audio_bytes / (2 * RATE / 1000)

        await client.send(
            {"type": "conversation.item.truncate", "item_id": reply_id, "content_index": 0,
             "audio_end_ms": math.ceil(audio_ms) + 500}
        )  # fmt: skip
        error = (await client.recv_until("error"))[-1]["error"]
        assert "is already shorter than" in error["message"]

        await client.send(
            {"type": "conversation.item.truncate", "item_id": reply_id, "content_index": 0,
             "audio_end_ms": 300}
        )  # fmt: skip
        truncated = (await client.recv_until("conversation.item.truncated"))[-1]
        assert (truncated["item_id"], truncated["content_index"]) == (reply_id, 0)
        session = sim.sessions[0]
        assert session.truncations == [Truncation(reply_id, 0, 300)]
        assert session.items[-1]["id"] == reply_id
        assert session.items[-1]["content"][0]["transcript"] is None

        # Clear drops buffered audio: a commit right after finds nothing.
        await client.append_audio(speech(0.3))
        await client.send({"type": "input_audio_buffer.clear"})
        assert (await client.recv())["type"] == "input_audio_buffer.cleared"
        await client.send({"type": "input_audio_buffer.commit"})
        error = (await client.recv_until("error"))[-1]["error"]
        assert error["code"] == "input_audio_buffer_commit_empty"
        assert "only has 0.00ms" in error["message"]

        for event in sim.sessions[0].sent:
            assert_server_event(event)
        for event in client.sent:
            if event.get("event_id") != "evt_beta":
                assert_client_event(event)


async def test_text_only_session_streams_text(sim: Simulator) -> None:
    async with ga_client(sim) as client:
        session = {**PTT_SESSION, "output_modalities": ["text"]}
        await client.send({"type": "session.update", "session": session})
        await client.recv_until("session.updated")
        await client.send(
            {"type": "response.create", "response": {"instructions": "Say something."}}
        )
        events = await client.recv_until("response.done")
        kinds = set(types_of(events))
        assert "response.output_audio.delta" not in kinds
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        assert text == "I did not hear anything."
        done = next(e for e in events if e["type"] == "response.output_text.done")
        assert done["text"] == text
        assert events[-1]["response"]["output"][0]["content"] == [
            {"type": "output_text", "text": text}
        ]
        assert_all_valid(sim, client)


async def test_bad_requests_get_errors_and_connection_stays_usable(sim: Simulator) -> None:
    async with ga_client(sim) as client:
        config_before = sim.sessions[0].config

        await client.send_raw("{not json")
        error = (await client.recv_until("error"))[-1]["error"]
        assert error["type"] == "invalid_request_error"
        assert error["event_id"] is None

        await client.send_raw("[1, 2]")
        assert (await client.recv_until("error"))[-1]["error"]["type"] == "invalid_request_error"

        await client.send_raw(json.dumps({"type": "response.audio.delta", "event_id": "evt_u"}))
        error = (await client.recv_until("error"))[-1]["error"]
        assert (error["param"], error["event_id"]) == ("type", "evt_u")

        beta = {"type": "realtime", "modalities": ["text"], "input_audio_format": "pcm16"}
        await client.send_raw(
            json.dumps({"type": "session.update", "event_id": "evt_b", "session": beta})
        )
        error = (await client.recv_until("error"))[-1]["error"]
        assert (error["code"], error["param"]) == ("unknown_parameter", "session.modalities")
        assert error["event_id"] == "evt_b"

        await client.send_raw(
            json.dumps({"type": "session.update", "session": {"instructions": "x"}})
        )
        error = (await client.recv_until("error"))[-1]["error"]
        assert (error["code"], error["param"]) == ("missing_required_parameter", "session.type")
        assert sim.sessions[0].config == config_before

        await client.send_raw(json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}))
        error = (await client.recv_until("error"))[-1]["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "audio")

        await client.send({"type": "input_audio_buffer.clear", "event_id": "evt_ok"})
        assert (await client.recv())["type"] == "input_audio_buffer.cleared"
        for event in sim.sessions[0].sent:
            assert_server_event(event)


async def test_faults_error_on_and_reply_delay(sim: Simulator) -> None:
    sim.faults.error_on["response.create"] = "rate_limit_exceeded"
    async with ga_client(sim) as client:
        await client.send({"type": "response.create", "event_id": "evt_rc"})
        error = (await client.recv_until("error"))[-1]["error"]
        assert (error["code"], error["event_id"]) == ("rate_limit_exceeded", "evt_rc")

        del sim.faults.error_on["response.create"]
        sim.faults.reply_delay_s = 60.0  # never elapses: the response is cancelled first
        await client.send({"type": "response.create"})
        await client.send({"type": "input_audio_buffer.clear"})
        assert (await client.recv())["type"] == "input_audio_buffer.cleared"

        await client.send({"type": "response.cancel"})
        created, done = await client.recv_until("response.done")
        assert created["type"] == "response.created"
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["output"] == []
        assert_all_valid(sim, client)


def test_faults_default_is_independent() -> None:
    assert Simulator().faults == Faults()
    assert Simulator().faults.error_on is not Simulator().faults.error_on


async def test_handshake_auth_path_and_beta(sim: Simulator) -> None:
    with pytest.raises(InvalidStatus) as missing:
        async with connect(sim.url, open_timeout=STEP):
            pass
    assert missing.value.response.status_code == 401
    assert API_KEY.encode() not in missing.value.response.body

    with pytest.raises(InvalidStatus) as wrong:
        async with connect(
            sim.url, additional_headers={"Authorization": "Bearer nope"}, open_timeout=STEP
        ):
            pass
    assert wrong.value.response.status_code == 401

    with pytest.raises(InvalidStatus) as not_found:
        async with connect(
            sim.url.replace("/v1/realtime", "/v1/other"),
            additional_headers={"Authorization": f"Bearer {API_KEY}"},
            open_timeout=STEP,
        ):
            pass
    assert not_found.value.response.status_code == 404
    assert sim.sessions == []

    async with ga_client(sim, **{"api-key": API_KEY}) as client:
        assert client.received[0]["session"]["model"] == "gpt-realtime"
    assert sim.sessions[0].headers["api-key"] == "<redacted>"
    assert sim.sessions[0].auth_matched is True

    headers = {"Authorization": f"Bearer {API_KEY}", "OpenAI-Beta": "realtime=v1"}
    async with connect(sim.url, additional_headers=headers, open_timeout=STEP) as ws:
        async with asyncio.timeout(STEP):
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert error["type"] == "error"
    assert error["error"]["code"] == "beta_api_shape_disabled"
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4000
    beta_session = await sim.wait_for(lambda s: s.sessions[-1].closed and s.sessions[-1], STEP)
    assert beta_session.close_code == 4000
    assert [e["type"] for e in beta_session.sent] == ["error"]
    assert_server_event(error)


async def test_close_ends_sessions_with_going_away() -> None:
    simulator = Simulator(api_key=API_KEY)
    await simulator.close()  # before start: nothing to do
    await simulator.start()
    async with ga_client(simulator) as client:
        await simulator.close()
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
    assert simulator.sessions[0].closed
    await simulator.close()  # idempotent
    with pytest.raises(TimeoutError):
        await simulator.wait_for(lambda s: len(s.sessions) > 1, 0.01)


async def test_official_sdk_holds_a_ptt_turn(sim: Simulator) -> None:
    # The SDK turns base_url http://host/v1 into ws://host/v1/realtime?model=...
    client = openai.AsyncOpenAI(api_key=API_KEY, base_url=f"http://127.0.0.1:{sim.port}/v1")
    kinds: list[str] = []
    transcript = ""
    audio = b""
    try:
        async with asyncio.timeout(3 * STEP), client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(session=PTT_SESSION)  # type: ignore[arg-type]
            pcm = speech(1.0)
            for offset in range(0, len(pcm), CHUNK):
                await conn.input_audio_buffer.append(audio=b64(pcm[offset : offset + CHUNK]))
            await conn.input_audio_buffer.commit()
            await conn.response.create()
            async for event in conn:
                kinds.append(event.type)
                if event.type == "response.output_audio.delta":
                    audio += base64.b64decode(event.delta)
                elif event.type == "response.output_audio_transcript.done":
                    transcript = event.transcript
                elif event.type == "response.done":
                    assert event.response.status == "completed"
                    break
    finally:
        await client.close()

    assert kinds[:2] == ["session.created", "session.updated"]
    assert "input_audio_buffer.committed" in kinds
    assert transcript == "You spoke for 1.0 seconds."
    assert audio == voice.synthesize(transcript, RATE)
    session = sim.sessions[0]
    assert (session.path, session.model, session.auth_matched) == (
        "/v1/realtime",
        "gpt-realtime",
        True,
    )
    assert "openai-beta" not in session.headers
    for event in session.received:
        assert_client_event(event)
    for event in session.sent:
        assert_server_event(event)


@pytest.fixture
def fresh_voice_cache() -> AsyncIterator[None]:
    voice.synthesize.cache_clear()
    yield
    voice.synthesize.cache_clear()


def count_beeps(pcm: bytes) -> int:
    """Loud stretches, judged on 5 ms blocks so a sine's zero crossings are not counted."""
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    block = RATE // 200
    envelope = samples[: len(samples) // block * block].reshape(-1, block).max(axis=1)
    loud = envelope > 1000
    return int(np.count_nonzero(loud[1:] & ~loud[:-1]) + loud[0])


@pytest.mark.usefixtures("fresh_voice_cache")
def test_synthesize_speech_is_pcm16() -> None:
    pcm = voice.synthesize("Hello there.", RATE)
    assert pcm
    assert len(pcm) % 2 == 0
    assert voice.synthesize("   ", RATE) == b""
    assert voice.synthesize("Hello there.", 16000) != pcm


@pytest.mark.usefixtures("fresh_voice_cache")
def test_synthesize_falls_back_to_tones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(voice, "ESPEAK_EXECUTABLE", "no-such-espeak-binary")
    short = voice.synthesize("You spoke.", RATE)
    longer = voice.synthesize("You spoke for 2.5 seconds today.", RATE)
    assert short and longer and len(short) % 2 == 0
    assert count_beeps(short) == 2
    assert count_beeps(longer) == 6
    assert len(longer) > len(short)

    # A broken espeak (exits non-zero, no WAV) falls back the same way.
    voice.synthesize.cache_clear()
    monkeypatch.setattr(voice, "ESPEAK_EXECUTABLE", "false")
    assert voice.synthesize("You spoke.", RATE) == short
