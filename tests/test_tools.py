"""Operator-defined tools through Realtime function calling, against a local HTTP endpoint
on loopback and the simulator's function calls."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from gpiozero.pins.mock import MockFactory

from conftest import TEST_KEY
from harness import BUTTON_PIN, Running, kiosk_settings
from kioskvoice.app import App
from kioskvoice.config import ToolSettings
from kioskvoice.errors import ConfigError
from kioskvoice.events import State
from kioskvoice.sim import Simulator
from kioskvoice.tools import ToolRunner
from realtime_schema import assert_client_event, assert_server_event

pytestmark = pytest.mark.timeout(60)
HOURS_SCHEMA = {
    "type": "object",
    "properties": {"day": {"type": "string", "enum": ["monday", "tuesday"]}},
    "required": ["day"],
    "additionalProperties": False,
}


class Endpoint:
    """A tiny HTTP endpoint on loopback that records what it got and answers per path."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict, dict]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Endpoint:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, path, _ = (await reader.readline()).decode().split()
        headers = {}
        while (line := (await reader.readline()).decode().strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        self.requests.append((path, headers, json.loads(body) if body else {}))
        if path == "/slow":
            await asyncio.sleep(3)
        status, payload = {
            "/fail": (500, b'{"oops": true}'),
            "/moved": (302, b""),
            "/big": (200, b"x" * 10_000),
        }.get(path, (200, b'{"open": "9:00-17:00"}'))
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n"
        writer.write(head.encode() + b"\r\n" + payload)
        await writer.drain()
        writer.close()


def tool(endpoint: Endpoint, path: str, **extra) -> ToolSettings:
    return ToolSettings(
        name="get_hours",
        description="Opening hours for a day",
        parameters=HOURS_SCHEMA,
        url=endpoint.url(path),
        **extra,
    )


async def test_a_tool_call_reaches_the_endpoint_and_the_reply_is_played(
    speech_wav, tmp_path
) -> None:
    factory = MockFactory()
    async with Endpoint() as endpoint, Simulator(api_key=TEST_KEY) as sim:
        settings = kiosk_settings(sim.url, speech_wav, tmp_path, api_key=TEST_KEY)
        settings = settings.model_copy(update={"tools": [tool(endpoint, "/hours")]})
        sim.tool_calls.append(("get_hours", {"day": "monday"}))
        app = App(settings, pin_factory=factory)
        async with Running(app) as k:
            await k.turn(factory.pin(BUTTON_PIN), hold_s=0.8)
        session = sim.sessions[0]
    assert endpoint.requests == [("/hours", endpoint.requests[0][1], {"day": "monday"})]
    kinds = [e["type"] for e in session.received]
    output_at = kinds.index("conversation.item.create")
    assert kinds[output_at + 1] == "response.create"
    output = session.received[output_at]["item"]
    assert output["type"] == "function_call_output"
    assert json.loads(output["output"]) == {"open": "9:00-17:00"}
    done = session.sent_of_type("response.done")
    assert [d["response"]["status"] for d in done] == ["completed", "completed"]
    assert session.sent_of_type("response.output_audio_transcript.done")[0][
        "transcript"
    ].startswith("The tool answered")
    declared = {t["name"] for t in session.config["tools"]}
    assert declared == {"get_hours", "end_conversation"}
    for event in session.received:
        assert_client_event(event)
    for event in session.sent:
        assert_server_event(event)


@pytest.mark.parametrize(
    ("path", "arguments", "outcome", "message"),
    [
        ("/hours", '{"day": "sunday"}', "invalid_arguments", "day: 'sunday' is not one of"),
        ("/hours", "not json", "invalid_arguments", "not valid JSON"),
        ("/fail", '{"day": "monday"}', "http_500", "HTTP 500"),
        ("/slow", '{"day": "monday"}', "timeout", "no answer within 0.5 s"),
        ("/big", '{"day": "monday"}', "too_large", "longer than 4096 bytes"),
        # A redirect is not followed (secret headers would go along) and is no success.
        ("/moved", '{"day": "monday"}', "http_302", "HTTP 302"),
    ],
)
async def test_failures_become_short_errors_for_the_model(
    path, arguments, outcome, message, caplog
) -> None:
    caplog.set_level(logging.INFO)
    async with Endpoint() as endpoint, httpx.AsyncClient() as client:
        runner = ToolRunner([tool(endpoint, path, timeout_s=0.5)])
        started = asyncio.get_running_loop().time()
        output = await runner.call("get_hours", arguments, client)
        assert asyncio.get_running_loop().time() - started < 2  # never hangs
    assert message in json.loads(output)["error"]
    [record] = [r for r in caplog.records if getattr(r, "KIOSKVOICE_EVENT", None) == "tool_call"]
    assert outcome == record.KIOSKVOICE_OUTCOME
    assert "sunday" not in record.getMessage()  # arguments only with transcripts on


async def test_the_model_cannot_override_a_get_tools_fixed_query() -> None:
    schema = {"type": "object", "properties": {"day": {"type": "string"}, "store": {}}}
    async with Endpoint() as endpoint, httpx.AsyncClient() as client:
        lobby = ToolSettings(
            name="get_hours",
            description="Opening hours of the lobby store",
            parameters=schema,
            url=endpoint.url("/hours?store=lobby"),
            method="GET",
        )
        output = await ToolRunner([lobby]).call(
            "get_hours", '{"day": "monday", "store": "other"}', client
        )
    assert json.loads(output) == {"open": "9:00-17:00"}
    [(path, _, _)] = endpoint.requests
    assert "store=lobby" in path and "store=other" not in path and "day=monday" in path


async def test_secret_headers_come_from_credentials(tmp_path) -> None:
    (tmp_path / "tools.hours_token").write_text("Bearer s3cret-tool-token\n")
    async with Endpoint() as endpoint, httpx.AsyncClient() as client:
        runner = ToolRunner(
            [tool(endpoint, "/hours", secret_headers={"Authorization": "tools.hours_token"})],
            credentials_dir=str(tmp_path),
        )
        await runner.call("get_hours", '{"day": "monday"}', client)
    assert endpoint.requests[0][1]["authorization"] == "Bearer s3cret-tool-token"
    assert runner.secrets() == ["Bearer s3cret-tool-token"]
    with pytest.raises(ConfigError, match=r"tools\.0\.secret_headers"):
        ToolRunner(
            [tool(endpoint, "/hours", secret_headers={"X-Key": "absent"})],
            credentials_dir=str(tmp_path),
        )


def test_tool_config_is_validated() -> None:
    with pytest.raises(ValueError, match="https://"):
        ToolSettings(name="t", description="d", url="http://example.com/x")
    with pytest.raises(ValueError, match="not a valid JSON Schema"):
        ToolSettings(name="t", description="d", url="https://x", parameters={"type": 5})
    with pytest.raises(ValueError, match="built-in"):
        ToolSettings(name="end_conversation", description="d", url="https://x")


async def test_a_cancelled_responses_call_is_never_executed(speech_wav, tmp_path) -> None:
    factory = MockFactory()
    pin = factory.pin(BUTTON_PIN)
    async with Endpoint() as endpoint, Simulator(api_key=TEST_KEY, burst_interval_s=0.3) as sim:
        settings = kiosk_settings(sim.url, speech_wav, tmp_path, api_key=TEST_KEY)
        settings = settings.model_copy(update={"tools": [tool(endpoint, "/hours")]})
        sim.tool_calls.append(("get_hours", {"day": "monday"}))
        app = App(settings, pin_factory=factory)
        async with Running(app) as k:
            pin.drive_low()
            await asyncio.sleep(0.6)
            pin.drive_high()
            session = sim.sessions[0]
            await sim.wait_for(
                lambda s: s.sessions[0].sent_of_type("response.function_call_arguments.delta"),
                timeout=5,
            )
            pin.drive_low()  # barge-in while the call's arguments stream
            await k.wait(State.LISTENING, 2)
            await asyncio.sleep(0.5)
            pin.drive_high()
            await k.wait(State.SPEAKING, 10)
            await k.wait(State.IDLE, 10)
    assert endpoint.requests == []
    assert session.sent_of_type("response.done")[0]["response"]["status"] == "cancelled"


async def test_end_conversation_resets_like_the_idle_timeout(speech_wav, tmp_path) -> None:
    factory = MockFactory()
    async with Simulator(api_key=TEST_KEY) as sim:
        sim.tool_calls.append(("end_conversation", {}))
        app = App(
            kiosk_settings(sim.url, speech_wav, tmp_path, api_key=TEST_KEY), pin_factory=factory
        )
        async with Running(app) as k:
            await k.turn(factory.pin(BUTTON_PIN), hold_s=0.8)  # "goodbye", then the reset
            await k.until(lambda: len(sim.sessions) == 2 and app.status()["link"] == "connected")
            await k.turn(factory.pin(BUTTON_PIN), hold_s=0.8)
    fresh = sim.sessions[1]
    assert not any(e["type"] == "conversation.item.create" for e in fresh.received)
    assert sim.sessions[0].closed
