"""Property-based fuzzing of the parsers that take outside input (Hypothesis).

The invariant everywhere: a clear one-line error or a logged skip, never an unhandled
exception, never a secret in the output. ``make test`` runs a few hundred examples per
property; ``make fuzz`` (HYPOTHESIS_PROFILE=fuzz) thousands.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kioskvoice.config import Settings, load_config
from kioskvoice.errors import ConfigError
from kioskvoice.provision import Paths, ProvisionError, plan, read_file
from kioskvoice.system.control import ControlServer

SECRET_KEY = "sk-fuzz-0123456789abcdefghijSECRET"
fuzz = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

# --- building blocks ----------------------------------------------------------------------------

scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    st.none() | scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
nesting = st.integers(min_value=1, max_value=200_000).map(lambda n: "[" * n)


def toml_value(value: Any) -> str | None:
    """``value`` as TOML (None when TOML cannot say it, e.g. null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        items = [toml_value(v) for v in value]
        return "[" + ", ".join(i for i in items if i is not None) + "]"
    if isinstance(value, dict):
        pairs = [(json.dumps(k), toml_value(v)) for k, v in value.items()]
        return "{" + ", ".join(f"{k} = {v}" for k, v in pairs if v is not None) + "}"
    return None


SECTIONS = list(Settings.model_fields)
keys_by_section = {
    name: list(getattr(field.annotation, "model_fields", {})) or ["name", "url"]
    for name, field in Settings.model_fields.items()
}


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    """A TOML file in the config's shape with any values (and the API key always present)."""
    lines = ["[realtime]", f'api_key = "{SECRET_KEY}"']
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "bogus"]), max_size=4, unique=True)):
        keys = draw(
            st.lists(
                st.sampled_from(keys_by_section.get(section, ["x"])) | st.text(max_size=8),
                max_size=5,
                unique=True,
            )
        )
        header = f"[[{section}]]" if section == "tools" else f"[{section}]"
        if section != "realtime":
            lines.append(header)
        for key in keys:
            if section == "realtime" and key == "api_key":
                continue
            rendered = toml_value(draw(json_values))
            if rendered is not None:
                lines.append(f"{json.dumps(key)} = {rendered}")
        if section == "realtime":
            lines.append("[_after_realtime]")
    return "\n".join(line for line in lines if line != "[_after_realtime]") + "\n"


def assert_one_clear_line(exc: Exception) -> None:
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message
    assert SECRET_KEY not in message


# --- the control socket --------------------------------------------------------------------------


@given(
    st.binary(max_size=4000)
    | json_values.map(lambda v: json.dumps(v).encode())
    | nesting.map(str.encode)
    | st.fixed_dictionaries({"cmd": json_values}).map(lambda v: json.dumps(v).encode())
)
def test_any_control_line_gets_an_answer(line: bytes) -> None:
    server = ControlServer(
        Path("/nonexistent/control.sock"), lambda cmd, request: {"state": "idle"}
    )
    reply = server._answer(line)
    assert isinstance(reply["ok"], bool)
    json.dumps(reply)  # the reply itself can always be sent


# --- the config file ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


@fuzz
@given(config_texts() | st.binary(max_size=2000).map(lambda b: b.decode("latin-1")) | nesting)
def test_any_config_file_loads_or_is_one_line_naming_the_problem(scratch: Path, text) -> None:
    path = scratch / "kiosk.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    try:
        settings_ = load_config(path)
    except ConfigError as exc:
        assert_one_clear_line(exc)
        return
    assert settings_.realtime.api_key is None or SECRET_KEY not in repr(settings_)


@fuzz
@given(st.binary(max_size=3000))
def test_any_bytes_as_a_config_file(scratch: Path, data: bytes) -> None:
    path = scratch / "bytes.toml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        assert_one_clear_line(exc)


# --- the provisioning file ---------------------------------------------------------------


@fuzz
@given(config_texts() | st.binary(max_size=2000).map(lambda b: b.decode("latin-1")) | nesting)
def test_any_provisioning_file_is_planned_or_refused_naming_the_keys(scratch: Path, text) -> None:
    boot, root = scratch / "boot", scratch / "root"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    boot.mkdir(exist_ok=True)
    (root / "etc/passwd").write_text("admin:x:1000:1000::/home/admin:/bin/sh\n")
    (root / "etc/group").write_text("kioskvoice:x:999:\n")
    paths = Paths(boot=boot, root=root)
    paths.source.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        source, data = read_file(paths.source)
        plan(data, paths, source)
    except ProvisionError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert SECRET_KEY not in str(problem) and "\n" not in str(problem)


# --- tool answers ----------------------------------------------------------------------


class _Endpoint:
    """A loopback HTTP endpoint on its own loop and thread; answers what ``answer`` says."""

    def __init__(self) -> None:
        self.answer: tuple[int, bytes] = (200, b"{}")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    async def _start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        length = 0
        while (line := await reader.readline()).strip():
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        status, body = self.answer
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, len(body)) + body)
        await writer.drain()
        writer.close()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[_Endpoint]:
    server = _Endpoint()
    yield server
    server.close()


@fuzz
@given(
    status=st.sampled_from([200, 201, 204, 301, 302, 400, 404, 500, 503]),
    body=st.binary(max_size=6000),
    arguments=st.text(max_size=200) | json_values.map(json.dumps),
)
def test_any_tool_answer_becomes_a_string_for_the_model(
    endpoint: _Endpoint, status: int, body: bytes, arguments: str
) -> None:
    import httpx

    from kioskvoice.config import ToolSettings
    from kioskvoice.tools import ToolRunner

    tool = ToolSettings(
        name="t",
        description="a tool",
        parameters={"type": "object"},
        url=f"http://127.0.0.1:{endpoint.port}/t?fixed=1",
        method="GET",
        timeout_s=5,
    )
    endpoint.answer = (status, body)

    async def call() -> str:
        async with httpx.AsyncClient() as client:
            return await ToolRunner([tool]).call("t", arguments, client)

    output = endpoint.run(call())
    assert isinstance(output, str) and len(output) <= 4096 + 200


# --- server events into the protocol core --------------------------------------------------------

EVENT_TYPES = [
    "session.created", "session.updated", "response.created", "response.output_audio.delta",
    "response.done", "response.output_audio_transcript.done", "error",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.failed", "input_audio_buffer.committed",
    "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
    "response.function_call_arguments.done", "rate_limits.updated", "something.new",
]  # fmt: skip
FIELDS = ["session", "response", "error", "delta", "item_id", "response_id", "transcript",
          "id", "expires_at", "status", "status_details", "code", "call_id", "name",
          "arguments", "event_id"]  # fmt: skip


@st.composite
def server_messages(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:  # any bytes
        return draw(st.binary(max_size=500))
    if kind == 1:  # nesting without end
        return draw(nesting)
    event: dict[str, Any] = {"type": draw(st.sampled_from(EVENT_TYPES) | st.text(max_size=10))}
    fields = draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True))
    for name in fields:
        event[name] = draw(
            json_values
            | st.fixed_dictionaries(
                {
                    n: json_values
                    for n in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True))
                }
            )
            | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
            | st.text(alphabet="ABCD=!", max_size=9)  # broken base64, odd lengths
        )
    return json.dumps(event, allow_nan=True)


@given(server_messages())
def test_any_server_message_becomes_events_or_a_logged_skip(message: str | bytes) -> None:
    from kioskvoice.realtime.protocol import Malformed, Protocol, SessionOptions

    protocol = Protocol(SessionOptions(instructions="x", voice="alloy"))
    events = protocol.receive(message)  # documented never to raise
    assert isinstance(events, list)
    for event in events:
        if isinstance(event, Malformed):
            assert "\n" not in event.reason and len(event.reason) <= 300


# --- the token broker's requests ----------------------------------------------------------------


@pytest.fixture(scope="module")
def broker_app(endpoint: _Endpoint) -> Iterator[tuple[_Endpoint, Any, str]]:
    """The broker app (called in-process through ASGI) with a real upstream stand-in served
    on loopback, on the endpoint fixture's loop; and a registered device's token."""
    import contextlib as _contextlib

    from kioskvoice.broker.app import create_app
    from kioskvoice.broker.server import serving
    from openai_standin import OpenAIStandIn
    from test_broker import REAL_KEY, add, settings_for

    directory = Path(tempfile.mkdtemp())
    stack = _contextlib.AsyncExitStack()
    standin = OpenAIStandIn(REAL_KEY)
    url = endpoint.run(stack.enter_async_context(serving(standin.app)))
    settings = settings_for(directory, url, limits={"burst": 1000})
    token = add(settings.registry, "lobby")
    yield endpoint, create_app(settings, REAL_KEY), token
    endpoint.run(stack.aclose())


header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=200)


@fuzz
@given(
    body=st.binary(max_size=3000)
    | json_values.map(lambda v: json.dumps(v).encode())
    | nesting.map(str.encode),
    authorization=st.none() | header_values | st.just("VALID"),
    extra=st.dictionaries(
        st.sampled_from(["content-type", "x-forwarded-for", "content-length", "cookie"]),
        header_values,
        max_size=3,
    ),
)
def test_any_request_to_the_broker_gets_a_clear_answer(
    broker_app, body: bytes, authorization: str | None, extra: dict[str, str]
) -> None:
    import httpx

    from test_broker import REAL_KEY

    loop_host, app, token = broker_app
    headers = {k: v for k, v in extra.items() if k != "content-length"}
    if authorization is not None:
        headers["authorization"] = f"Bearer {token}" if authorization == "VALID" else authorization

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://broker") as client:
            return await client.post("/v1/realtime/client_secrets", content=body, headers=headers)

    response = loop_host.run(post())
    assert response.status_code in (200, 400, 401, 408, 413, 429, 502, 503), response.text
    assert REAL_KEY not in response.text and token not in response.text
