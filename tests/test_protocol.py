"""The pure protocol core: every client event validates against the official SDK's models;
server JSON becomes typed events; malformed input never raises."""

from __future__ import annotations

import base64
import json

import pytest

from conftest import TEST_KEY
from kioskvoice.events import ReplyAudio, ResponseDone, ResponseStarted, ServerError
from kioskvoice.realtime.link import auth_headers, session_url
from kioskvoice.realtime.protocol import (
    FatalError,
    Ignored,
    ItemAdded,
    Malformed,
    Protocol,
    SessionConfigured,
    SessionCreated,
    SessionOptions,
    Transcript,
)
from realtime_schema import assert_client_event


@pytest.fixture
def proto() -> Protocol:
    return Protocol(SessionOptions(instructions="Be brief.", voice="marin"))


def test_every_client_event_validates(proto: Protocol) -> None:
    events = [
        proto.session_update(),
        proto.append(b"\1\0" * 480),
        proto.commit(),
        proto.clear(),
        proto.response_create(),
        proto.cancel(),
        proto.cancel("resp_1"),
        proto.truncate("item_1", 1234),
    ]
    for event in events:
        assert_client_event(event)
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids)


def test_session_update_is_push_to_talk(proto: Protocol) -> None:
    session = proto.session_update()["session"]
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["turn_detection"] is None
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"]["voice"] == "marin"
    assert "transcription" in session["audio"]["input"]
    quiet = Protocol(SessionOptions("x", "cedar", transcribe_input=False)).session_update()
    assert "transcription" not in quiet["session"]["audio"]["input"]
    assert_client_event(quiet)


def test_append_encodes_pcm(proto: Protocol) -> None:
    assert base64.b64decode(proto.append(b"abcd")["audio"]) == b"abcd"


def test_truncate_never_negative(proto: Protocol) -> None:
    assert proto.truncate("item_1", -5)["audio_end_ms"] == 0


def msg(**event) -> str:
    return json.dumps(event)


def test_parses_the_events_the_kiosk_needs(proto: Protocol) -> None:
    assert proto.receive(msg(type="session.created", session={"id": "sess_1"})) == [
        SessionCreated("sess_1")
    ]
    assert proto.receive(msg(type="session.updated", session={"id": "sess_1"})) == [
        SessionConfigured("sess_1")
    ]
    assert proto.receive(msg(type="response.created", response={"id": "r1"})) == [
        ResponseStarted("r1")
    ]
    delta = base64.b64encode(b"\1\2\3\4").decode()
    assert proto.receive(
        msg(type="response.output_audio.delta", response_id="r1", item_id="i1", delta=delta)
    ) == [ReplyAudio("r1", "i1", b"\1\2\3\4")]
    assert proto.receive(
        msg(type="response.done", response={"id": "r1", "status": "cancelled"})
    ) == [ResponseDone("r1", "cancelled")]
    assert proto.receive(
        msg(type="response.output_audio_transcript.done", item_id="i1", transcript="Hi.")
    ) == [Transcript("assistant", "i1", "Hi.")]
    assert proto.receive(
        msg(
            type="conversation.item.input_audio_transcription.completed",
            item_id="i0",
            transcript="hello",
        )
    ) == [Transcript("user", "i0", "hello")]


@pytest.mark.parametrize(
    ("expires_at", "parsed"),
    [
        (1789728574, 1789728574.0),
        (-5, -5.0),  # already expired: the supervisor decides what to make of it
        ("soon", None),
        (True, None),
        (None, None),
        (float("inf"), None),
        (float("nan"), None),
    ],
)
def test_announced_expiry_is_a_number_or_nothing(proto: Protocol, expires_at, parsed) -> None:
    message = json.dumps(
        {"type": "session.created", "session": {"id": "sess_1", "expires_at": expires_at}}
    )
    assert proto.receive(message) == [SessionCreated("sess_1", parsed)]


def test_spoken_items_are_placed_for_the_history(proto: Protocol) -> None:
    def added(item: dict, previous: str | None = None) -> str:
        return msg(type="conversation.item.added", previous_item_id=previous, item=item)

    user = {"id": "i1", "type": "message", "role": "user", "content": [{"type": "input_audio"}]}
    assistant = {"id": "i2", "type": "message", "role": "assistant", "content": []}
    replayed = {
        "id": "i3",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Earlier answer."}],
    }
    tool = {"id": "i4", "type": "function_call_output", "call_id": "c", "output": "{}"}
    assert proto.receive(added(user)) == [ItemAdded("i1", None, "user")]
    assert proto.receive(added(assistant, "i1")) == [ItemAdded("i2", "i1", "assistant")]
    assert proto.receive(added(replayed, "i2")) == [Ignored("conversation.item.added")]
    assert proto.receive(added(tool, "i3")) == [Ignored("conversation.item.added")]


def test_a_reply_failing_for_quota_is_fatal(proto: Protocol) -> None:
    def failed(code: str) -> str:
        details = {"type": "failed", "error": {"type": "x", "code": code}}
        return msg(
            type="response.done",
            response={"id": "r1", "status": "failed", "status_details": details},
        )

    assert proto.receive(failed("insufficient_quota")) == [
        ResponseDone("r1", "failed", "insufficient_quota", fatal=True)
    ]
    assert proto.receive(failed("server_error")) == [ResponseDone("r1", "failed", "server_error")]


def test_errors_are_classified(proto: Protocol) -> None:
    def error(code: str) -> str:
        return msg(
            type="error", error={"type": "invalid_request_error", "code": code, "message": "m"}
        )

    assert proto.receive(error("input_audio_buffer_commit_empty")) == [
        ServerError("input_audio_buffer_commit_empty", "m")
    ]
    assert proto.receive(error("beta_api_shape_disabled")) == [
        FatalError("beta_api_shape_disabled", "m")
    ]
    assert proto.receive(error("invalid_api_key")) == [FatalError("invalid_api_key", "m")]


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '{"no": "type"}',
        '{"type": 5}',
        '{"type": "response.output_audio.delta", "response_id": "r"}',
        '{"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", '
        '"delta": "%%%"}',
        '{"type": "response.created"}',
        '{"type": "error"}',
        b"\xff\xfe",
    ],
)
def test_malformed_is_reported_not_raised(proto: Protocol, raw) -> None:
    [event] = proto.receive(raw)
    assert isinstance(event, Malformed)


def test_unknown_types_are_ignored(proto: Protocol) -> None:
    assert proto.receive(msg(type="rate_limits.updated", rate_limits=[])) == [
        Ignored("rate_limits.updated")
    ]
    assert proto.receive(msg(type="some.future.event")) == [Ignored("some.future.event")]


def test_session_url_and_headers() -> None:
    assert session_url("wss://api.openai.com/v1/realtime", "gpt-realtime") == (
        "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    )
    azure = "wss://res.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=d"
    assert session_url(azure, "gpt-realtime") == azure
    assert auth_headers("bearer", "k") == {"Authorization": "Bearer k"}
    assert auth_headers("api-key", "k") == {"api-key": "k"}


def test_the_shapes_a_review_found_are_skipped_not_raised() -> None:
    # Each of these raised (AttributeError, RecursionError) and dropped the session; sent
    # during set-up on every connection, they kept the kiosk from ever coming up.
    from kioskvoice.realtime.protocol import Malformed, Protocol, SessionOptions

    protocol = Protocol(SessionOptions(instructions="x", voice="alloy"))
    for message in (
        '{"type":"error","error":"x"}',
        '{"type":"session.updated","session":null}',
        "[" * 100_000,
        '{"type":"response.done","response":[]}',
    ):
        [event] = protocol.receive(message)
        assert isinstance(event, Malformed), message[:40]


async def test_the_link_bounds_what_it_accepts(sim) -> None:
    from kioskvoice.realtime.link import MAX_FRAME_BYTES, Link
    from kioskvoice.realtime.protocol import SessionOptions

    link = Link(
        url=sim.url + "?model=gpt-realtime",
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        options=SessionOptions(instructions="x", voice="alloy"),
        on_event=lambda event: None,
        setup_timeout_s=10,
        ping_interval_s=10,
        ping_timeout_s=10,
    )
    await link.open([])
    try:
        assert link._ws.protocol.max_message_size == MAX_FRAME_BYTES == 16 * 2**20
    finally:
        await link.close()
