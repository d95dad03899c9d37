"""The embedded Realtime simulator, driven by raw GA clients and by the official openai SDK.

Every wait is bounded by ``STEP``; the tests assert what is sent and in which order, not how
long anything takes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import openai
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from kioskvoice.sim import Faults, Simulator, Truncation, voice
from kioskvoice.sim.vad import EnergyVad, VadEdge, VadParams, threshold_dbfs
from realtime_schema import PTT_SESSION, assert_client_event, assert_server_event

API_KEY = "test-key"
STEP = 10.0  # upper bound for any single wait; generous so slow machines do not flake
RATE = 24000
CHUNK = 960  # 20 ms of PCM16 mono at 24 kHz

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

    async def recv_until_any(self, event_types: set[str]) -> list[dict[str, Any]]:
        """Events up to and including the first whose type is in ``event_types``."""
        events = [await self.recv()]
        while events[-1]["type"] not in event_types:
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
        assert created["session"]["audio"]["output"]["voice"] == "alloy"  # the service default
        lifetime = created["session"]["expires_at"] - time.time()
        assert isinstance(created["session"]["expires_at"], int) and 3590 < lifetime <= 3600

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

        committed_at = time.monotonic()
        await client.send({"type": "response.create"})
        events = await client.recv_until("response.done")
        done_at = time.monotonic()
        # As on the real service: rate limits ~40 ms after response.done, and the visitor's
        # transcript ~1.3 s after the commit, after the whole reply.
        after = [await client.recv()]
        rate_limits_after_s = time.monotonic() - done_at
        after += await client.recv_until(TRANSCRIPTION_DONE)
        transcribed_after_s = time.monotonic() - committed_at
        assert types_of(after) == ["rate_limits.updated", TRANSCRIPTION_DONE]
        assert 0.02 <= rate_limits_after_s < 1.0
        assert 1.2 <= transcribed_after_s < 3.0
        [limits] = after[0]["rate_limits"]
        assert limits["name"] == "tokens" and limits["remaining"] < limits["limit"]

        transcriptions = after[1:]
        assert transcriptions[0]["item_id"] == user_id
        assert transcriptions[0]["transcript"] == "(1.0 seconds of speech)"

        flow = [e for e in events if e["type"] not in DELTA_TYPES]
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
        assert all(
            isinstance(e["obfuscation"], str) and e["obfuscation"]
            for e in events
            if e["type"] in DELTA_TYPES
        )
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

        # Clear drops buffered audio: a commit right after finds nothing. This session kept the
        # default server VAD, so the tone is heard first; the clear ends that speech silently.
        await client.append_audio(speech(0.3))
        await client.send({"type": "input_audio_buffer.clear"})
        assert types_of(await client.recv_until("input_audio_buffer.cleared")) == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.cleared",
        ]
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


async def refused_after_upgrade(url: str, headers: dict[str, str]) -> tuple[dict, Any]:
    """Connect (the upgrade succeeds), then read the one ``error`` and the close that follows."""
    async with connect(url, additional_headers=headers, open_timeout=STEP) as ws:
        async with asyncio.timeout(STEP):
            error = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert closed.value.rcvd is not None
    return error, closed.value.rcvd


async def test_handshake_auth_path_and_beta(sim: Simulator) -> None:
    # Credentials and the beta shape are judged after the upgrade, as on the real service
    # (gauravzqa/llmgw capabilities/captures-ws.md, probes 8b, 10, 10b).
    url = f"{sim.url}?model=gpt-realtime"
    error, close = await refused_after_upgrade(url, {})
    assert error["error"]["code"] is None
    assert error["error"]["message"] == "Missing bearer or basic authentication in header"
    assert (close.code, close.reason) == (3000, "invalid_request_error")

    wrong = "sk-wrong-0123456789-NOPE"
    error, close = await refused_after_upgrade(url, {"Authorization": f"Bearer {wrong}"})
    assert (error["error"]["type"], error["error"]["code"]) == (
        "invalid_request_error",
        "invalid_api_key",
    )
    assert error["error"]["message"].startswith("Incorrect API key provided: sk-wrong")
    assert wrong not in error["error"]["message"] and API_KEY not in json.dumps(error)
    assert (close.code, close.reason) == (3000, "invalid_request_error.invalid_api_key")
    await sim.wait_for(lambda s: all(x.closed for x in s.sessions), STEP)
    assert [s.close_code for s in sim.sessions] == [3000, 3000]
    assert [s.refused for s in sim.sessions] == [
        "invalid_request_error",
        "invalid_request_error.invalid_api_key",
    ]
    assert sim.refused == 2 and all(len(s.sent) == 1 for s in sim.sessions)

    with pytest.raises(InvalidStatus) as not_found:
        async with connect(
            sim.url.replace("/v1/realtime", "/v1/other"),
            additional_headers={"Authorization": f"Bearer {API_KEY}"},
            open_timeout=STEP,
        ):
            pass
    assert not_found.value.response.status_code == 404
    assert len(sim.sessions) == 2

    async with ga_client(sim, **{"api-key": API_KEY}) as client:
        assert client.received[0]["session"]["model"] == "gpt-realtime"
    assert sim.sessions[-1].headers["api-key"] == "<redacted>"
    assert sim.sessions[-1].auth_matched is True

    headers = {"Authorization": f"Bearer {API_KEY}", "OpenAI-Beta": "realtime=v1"}
    error, close = await refused_after_upgrade(url, headers)
    assert error["type"] == "error"
    assert error["error"]["code"] == "beta_api_shape_disabled"
    assert (close.code, close.reason) == (4000, "invalid_request_error.beta_api_shape_disabled")
    beta_session = await sim.wait_for(lambda s: s.sessions[-1].closed and s.sessions[-1], STEP)
    assert beta_session.close_code == 4000
    assert [e["type"] for e in beta_session.sent] == ["error"]
    for session in sim.sessions:
        for event in session.sent:
            assert_server_event(event)


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
    if shutil.which(voice.ESPEAK_EXECUTABLE):  # espeak-ng's voices (the tones have none)
        other = voice.synthesize("Hello there.", RATE, "en-us+m7")
        assert other and other != pcm and other != voice._tones("Hello there.", RATE)


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


# --- server VAD ----------------------------------------------------------------------------

PHRASE = "Please open the door."  # about a second of espeak-ng speech
SPEECH_DBFS = -45.0  # the level threshold 0.5 maps to
SERVER_VAD = {"type": "server_vad", "silence_duration_ms": 500}
SERVER_VAD_DEFAULTS = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
SPEECH_EVENTS = {"input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"}


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * RATE) * 2)


def utterance() -> bytes:
    """The phrase padded with digital silence to whole 20 ms windows (keeps offsets exact)."""
    pcm = voice.synthesize(PHRASE, RATE)
    return pcm + bytes(-len(pcm) % CHUNK)


def loud_span_ms(pcm: bytes) -> tuple[int, int]:
    """Start of the first and end of the last 20 ms window above SPEECH_DBFS, in ms."""
    windows = np.frombuffer(pcm[: len(pcm) // CHUNK * CHUNK], dtype="<i2").astype(np.float64)
    power = np.mean(windows.reshape(-1, CHUNK // 2) ** 2, axis=1)
    loud = np.flatnonzero(10 * np.log10(power / 32768**2 + 1e-20) > SPEECH_DBFS)
    return int(loud[0]) * 20, (int(loud[-1]) + 1) * 20


def noise(seconds: float, dbfs: float, seed: int = 7) -> bytes:
    rms = 32768 * 10 ** (dbfs / 20)
    samples = np.random.default_rng(seed).normal(0, rms, int(seconds * RATE))
    return np.round(samples).astype("<i2").tobytes()


def audio_ms(pcm: bytes) -> int:
    return len(pcm) // (2 * RATE // 1000)


def vad_session(turn_detection: dict[str, Any] | None, **audio_input: Any) -> dict[str, Any]:
    return {
        "type": "realtime",
        "audio": {"input": {"turn_detection": turn_detection, **audio_input}},
    }


def without_streaming(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of a turn but the deltas and the two that come late (asserted in
    test_full_ptt_turn): the visitor's transcript and the rate limits after response.done."""
    late = {TRANSCRIPTION_DONE, "rate_limits.updated"}
    return [e for e in events if e["type"] not in DELTA_TYPES | late]


def test_threshold_mapping() -> None:
    assert threshold_dbfs(0.0) == -70.0
    assert threshold_dbfs(0.5) == -45.0
    assert threshold_dbfs(1.0) == -20.0
    assert threshold_dbfs(7) == -20.0  # clamped
    params = VadParams.from_turn_detection(SERVER_VAD_DEFAULTS)
    assert params == VadParams(-45.0, 300, 500, True, True)
    # Null fields mean the defaults; semantic VAD has a fixed silence and default level.
    assert VadParams.from_turn_detection({"type": "server_vad", "threshold": None}) == params
    semantic = VadParams.from_turn_detection(
        {"type": "semantic_vad", "eagerness": "high", "create_response": False}
    )
    assert semantic == VadParams(-45.0, 300, 500, False, True)
    assert VadParams.from_turn_detection(None) is None


def test_energy_vad_edges_depend_only_on_audio() -> None:
    params = VadParams.from_turn_detection(SERVER_VAD_DEFAULTS)
    speech_pcm = utterance()
    first, last = loud_span_ms(speech_pcm)
    lead = noise(1.0, -60.0) + silence(0.5)
    stream = lead + speech_pcm + silence(1.0)
    offset = audio_ms(lead)
    expected = [
        VadEdge(started=True, at_ms=offset + first),
        VadEdge(started=False, at_ms=offset + last + 500, speech_ms=last - first),
    ]

    whole = EnergyVad()
    assert whole.feed(stream, params) == expected
    assert not whole.in_speech
    # Odd chunk sizes (even split samples) give the same edges: partial windows wait.
    chunked = EnergyVad()
    edges: list[VadEdge] = []
    for start in range(0, len(stream), 777):
        edges += chunked.feed(stream[start : start + 777], params)
    assert edges == expected

    # Low noise and digital silence are not speech at 0.5; a low threshold hears the noise.
    assert EnergyVad().feed(noise(1.0, -60.0) + silence(1.0), params) == []
    sensitive = VadParams.from_turn_detection({"type": "server_vad", "threshold": 0.1})
    assert EnergyVad().feed(noise(1.0, -60.0), sensitive)[0] == VadEdge(True, 0)

    # With VAD off the detector only keeps time; turning it on mid-session keeps audio time.
    late = EnergyVad()
    assert late.feed(speech(1.0), None) == []
    assert late.feed(speech_pcm, params) == [VadEdge(True, 1000 + first)]
    assert late.in_speech
    late.reset()  # a manual commit or clear: the turn is forgotten, no end edge follows
    assert late.feed(silence(1.0), params) == []


async def test_server_vad_turns_commit_and_reply_automatically(sim: Simulator) -> None:
    speech_pcm = utterance()
    first, last = loud_span_ms(speech_pcm)
    spoken = f"{(last - first) / 1000:.1f}"
    turn_audio = speech_pcm + silence(1.0)
    async with ga_client(sim) as client:
        transcription = {"model": "gpt-4o-mini-transcribe"}
        await client.send(
            {
                "type": "session.update",
                "session": vad_session(SERVER_VAD, transcription=transcription),
            }
        )
        updated = (await client.recv_until("session.updated"))[-1]["session"]
        # Merged into the default server VAD (which has a 200 ms silence) from session.created.
        assert updated["audio"]["input"]["turn_detection"] == SERVER_VAD_DEFAULTS

        position = 0  # ms of audio appended so far in this session
        buffer_start = 0  # where the input buffer began (the previous turn's audio_end_ms)
        previous_item: str | None = None
        for _turn in range(2):
            await client.append_audio(turn_audio)
            events = await client.recv_until("response.done")
            if TRANSCRIPTION_DONE not in types_of(events):
                events += await client.recv_until(TRANSCRIPTION_DONE)
            flow = without_streaming(events)
            assert types_of(flow) == [
                "input_audio_buffer.speech_started",
                "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed",
                "conversation.item.added",
                "conversation.item.done",
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
            started, stopped, committed, added = flow[:4]
            # Audio time: ms of appended audio, padded by prefix_padding_ms within the buffer.
            assert started["audio_start_ms"] == max(buffer_start, position + first - 300)
            assert stopped["audio_end_ms"] == position + last + 500
            user_id = started["item_id"]
            assert stopped["item_id"] == committed["item_id"] == added["item"]["id"] == user_id
            assert committed["previous_item_id"] == previous_item
            transcript = next(e for e in events if e["type"] == TRANSCRIPTION_DONE)
            assert (transcript["item_id"], transcript["transcript"]) == (
                user_id,
                f"({spoken} seconds of speech)",
            )
            done = flow[-1]["response"]
            assert done["status"] == "completed"
            assert done["output"][0]["content"] == [
                {"type": "output_audio", "transcript": f"You spoke for {spoken} seconds."}
            ]
            previous_item = done["output"][0]["id"]
            buffer_start = stopped["audio_end_ms"]
            position += audio_ms(turn_audio)

        items = sim.sessions[0].items
        assert [i["role"] for i in items] == ["user", "assistant", "user", "assistant"]
        assert len(sim.sessions[0].sent_of_type("response.done")) == 2
        assert_all_valid(sim, client)


async def test_speech_interrupts_running_response() -> None:
    speech_pcm = utterance()
    first, last = loud_span_ms(speech_pcm)
    async with (
        Simulator(api_key=API_KEY, burst_ms=40, burst_interval_s=0.1) as sim,
        ga_client(sim) as client,
    ):
        await client.send({"type": "session.update", "session": vad_session(SERVER_VAD)})
        await client.recv_until("session.updated")
        await client.append_audio(speech_pcm + silence(1.0))
        before = await client.recv_until("response.output_audio.delta")
        first_id = next(e for e in before if e["type"] == "response.created")["response"]["id"]

        # The user talks over the reply: speech_started, then the reply ends as turn_detected.
        await client.append_audio(speech_pcm)
        interrupted = await client.recv_until("response.done")
        kinds = types_of(interrupted)
        assert kinds.index("input_audio_buffer.speech_started") < kinds.index("response.done")
        assert "response.output_audio.done" not in kinds
        barge_in = next(e for e in interrupted if e["type"] == "input_audio_buffer.speech_started")
        done = interrupted[-1]["response"]
        assert done["id"] == first_id
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
        assert done["output"][0]["status"] == "incomplete"

        # The new turn ends with silence and gets its own reply; the old one stays silent.
        sim.burst_interval_s = 0
        await client.append_audio(silence(1.0))
        rest = await client.recv_until("response.done")
        flow = without_streaming(rest)
        assert types_of(flow)[:6] == [
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
            "response.created",
            "response.output_item.added",
        ]
        assert flow[0]["item_id"] == flow[1]["item_id"] == barge_in["item_id"]
        second = flow[-1]["response"]
        assert second["id"] != first_id
        assert second["status"] == "completed"
        spoken = f"{(last - first) / 1000:.1f}"
        assert second["output"][0]["content"][0]["transcript"] == f"You spoke for {spoken} seconds."

        after_cancel = client.received[client.received.index(interrupted[-1]) + 1 :]
        assert [e for e in after_cancel if e.get("response_id") == first_id] == []
        sent = sim.sessions[0].sent
        assert [e["response"]["id"] for e in sim.sessions[0].sent_of_type("response.done")] == [
            first_id,
            second["id"],
        ]
        cancel_at = next(i for i, e in enumerate(sent) if e["type"] == "response.done")
        assert [e for e in sent[cancel_at:] if e.get("response_id") == first_id] == []
        assert_all_valid(sim, client)


async def test_push_to_talk_emits_no_vad_events(sim: Simulator) -> None:
    loud = np.round(0.9 * 32767 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE))
    async with ga_client(sim) as client:
        await client.send({"type": "session.update", "session": PTT_SESSION})
        await client.recv_until("session.updated")
        await client.append_audio(loud.astype("<i2").tobytes() + utterance() + silence(1.0))
        await client.send({"type": "input_audio_buffer.clear"})
        assert types_of(await client.recv_until("input_audio_buffer.cleared")) == [
            "input_audio_buffer.cleared"
        ]
        # Turning VAD off mid-speech forgets that speech: no speech_stopped, no commit.
        await client.send({"type": "session.update", "session": vad_session(SERVER_VAD)})
        await client.recv_until("session.updated")
        await client.append_audio(utterance())
        assert (await client.recv())["type"] == "input_audio_buffer.speech_started"
        await client.send({"type": "session.update", "session": PTT_SESSION})
        await client.recv_until("session.updated")
        await client.append_audio(silence(1.0))
        await client.send({"type": "input_audio_buffer.clear"})
        assert types_of(await client.recv_until("input_audio_buffer.cleared")) == [
            "input_audio_buffer.cleared"
        ]
        sent = types_of(sim.sessions[0].sent)
        assert sent.count("input_audio_buffer.speech_started") == 1
        assert not {"input_audio_buffer.speech_stopped", "input_audio_buffer.committed"} & set(sent)
        assert "response.created" not in sent
        assert_all_valid(sim, client)


async def test_vad_without_auto_response_and_manual_commit(sim: Simulator) -> None:
    speech_pcm = utterance()
    first, last = loud_span_ms(speech_pcm)
    semantic = {"type": "semantic_vad", "eagerness": "medium", "create_response": False}
    async with ga_client(sim) as client:
        await client.send({"type": "session.update", "session": vad_session(semantic)})
        await client.recv_until("session.updated")

        # VAD events and the commit still happen; the response waits for the client.
        await client.append_audio(speech_pcm + silence(1.0))
        flow = await client.recv_until("conversation.item.done")
        assert types_of(flow) == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        assert flow[1]["audio_end_ms"] == last + 500  # semantic VAD: ~500 ms of silence
        await client.send({"type": "response.create"})  # would fail if one were running
        reply = await client.recv_until("response.done")
        assert "error" not in types_of(reply)
        spoken = f"{(last - first) / 1000:.1f}"
        assert reply[-1]["response"]["output"][0]["content"][0]["transcript"] == (
            f"You spoke for {spoken} seconds."
        )

        # A client commit during speech commits the item speech_started announced, and the
        # silence after it ends nothing.
        await client.append_audio(speech_pcm)
        started = await client.recv()
        assert started["type"] == "input_audio_buffer.speech_started"
        await client.send({"type": "input_audio_buffer.commit"})
        committed = (await client.recv_until("input_audio_buffer.committed"))[-1]
        assert committed["item_id"] == started["item_id"]
        await client.append_audio(silence(1.0))
        await client.send({"type": "input_audio_buffer.clear"})
        between = await client.recv_until("input_audio_buffer.cleared")
        assert not SPEECH_EVENTS & set(types_of(between))
        assert len(sim.sessions[0].sent_of_type("response.created")) == 1
        assert_all_valid(sim, client)


async def test_turn_detection_config_is_validated_and_completed(sim: Simulator) -> None:
    async def update(turn_detection: Any) -> dict[str, Any]:
        await client.send({"type": "session.update", "session": vad_session(turn_detection)})
        event = (await client.recv_until_any({"session.updated", "error"}))[-1]
        return event

    async with ga_client(sim) as client:
        # From null, the server fills in its defaults.
        assert (await update(None))["session"]["audio"]["input"]["turn_detection"] is None
        event = await update({"type": "server_vad"})
        assert event["session"]["audio"]["input"]["turn_detection"] == SERVER_VAD_DEFAULTS
        # Same type merges; another type replaces (no server_vad fields on semantic VAD).
        event = await update({"type": "server_vad", "threshold": 0.8})
        assert event["session"]["audio"]["input"]["turn_detection"]["threshold"] == 0.8
        assert event["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
        event = await update({"type": "semantic_vad", "eagerness": "high"})
        assert event["session"]["audio"]["input"]["turn_detection"] == {
            "type": "semantic_vad",
            "eagerness": "high",
            "create_response": True,
            "interrupt_response": True,
        }
        config = sim.sessions[0].config
        for bad, code, param in [
            ({"type": "semantic_vad", "threshold": 0.3}, "unknown_parameter", "threshold"),
            ({"type": "server_vad", "threshold": 1.5}, "invalid_value", "threshold"),
            ({"type": "server_vad", "silence_duration_ms": -1}, "invalid_value",
             "silence_duration_ms"),
            ({"type": "server_vad", "create_response": "yes"}, "invalid_value",
             "create_response"),
            ({"type": "semantic_vad", "eagerness": "eager"}, "invalid_value", "eagerness"),
            ({"type": "client_vad"}, "invalid_value", "type"),
            ("server_vad", "invalid_type", None),
        ]:  # fmt: skip
            error = (await update(bad))["error"]
            expected = "session.audio.input.turn_detection" + (f".{param}" if param else "")
            assert (error["code"], error["param"]) == (code, expected), bad
        assert sim.sessions[0].config == config
        for event in sim.sessions[0].sent:
            assert_server_event(event)
