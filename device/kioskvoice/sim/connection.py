"""One accepted WebSocket: its task group, reader, ordered writer and the dispatch of client
events to the handlers of each concern (session, input audio, conversation, responses).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from kioskvoice.sim.conversation import Conversation
from kioskvoice.sim.handshake import Refusal
from kioskvoice.sim.input_audio import InputAudio
from kioskvoice.sim.outbox import Close, Outbox
from kioskvoice.sim.responses import ReplySettings, Responses
from kioskvoice.sim.session import SimSession, deep_merge, lookup
from kioskvoice.sim.vad import effective_turn_detection
from kioskvoice.sim.validation import ClientError, validate_session_patch

__all__ = ["SUPPORTED_TYPES", "Connection", "Host"]

log = logging.getLogger(__name__)

SUPPORTED_TYPES: Final = (
    "session.update",
    "session.close",
    "input_audio_buffer.append",
    "session.input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
)
"""The client event types the GA service accepts over WebSocket, in the order its ``invalid_value``
error lists them (gauravzqa/llmgw ``capabilities/captures-ws.md``, probe 8). The SDK's
``output_audio_buffer.clear`` is not among them: it exists for WebRTC and SIP only."""
_UNSUPPORTED_TYPE: Final = (
    "Invalid value: '{}'. Supported values are: "
    + ", ".join(f"'{t}'" for t in SUPPORTED_TYPES[:-1])
    + f", and '{SUPPORTED_TYPES[-1]}'."
)


class Host(ReplySettings, Protocol):
    """What a connection reads and writes of its simulator."""

    record: bool
    capped: int

    def notify(self) -> None: ...


class Connection:
    """One accepted WebSocket: reader, ordered writer, and the protocol handlers."""

    def __init__(
        self,
        sim: Host,
        ws: ServerConnection,
        session: SimSession,
        *,
        refusal: Refusal | None = None,
    ) -> None:
        self._sim = sim
        self._ws = ws
        self.session = session
        self._refusal = refusal
        self._outbox = Outbox()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._conversation = Conversation(session, self._outbox)
        self._responses = Responses(sim, session, self._outbox, self._conversation, self._spawn)
        self._input = InputAudio(
            session, self._outbox, self._conversation, self._responses, self._spawn, sim.faults
        )
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "session.update": self._on_session_update,
            "session.close": self._on_session_close,
            "input_audio_buffer.append": self._input.append,
            "session.input_audio_buffer.append": self._input.append,
            "input_audio_buffer.commit": self._input.commit,
            "input_audio_buffer.clear": self._input.clear,
            "response.create": self._responses.create,
            "response.cancel": self._responses.cancel_active,
            "conversation.item.create": self._on_item_create,
            "conversation.item.truncate": self._conversation.truncate,
            "conversation.item.delete": self._conversation.delete,
            "conversation.item.retrieve": self._conversation.retrieve,
        }

    # --- I/O shell ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes; every child task ends with it."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._spawn(self._write_loop())
                if self._refusal is not None:
                    # In the same millisecond as the upgrade: the error, then the close.
                    self._outbox.error(self._refusal.error)
                    self._outbox.close(self._refusal.close_code, self._refusal.reason)
                else:
                    self._outbox.emit("session.created", session=self.session.config)
                    if self.session.cap_s is not None:
                        self._spawn(self._enforce_cap(self.session.cap_s))
                await self._read_loop()
                for task in list(self._tasks):
                    task.cancel()
        finally:
            self._responses.active = None
            self.session.closed = True
            self.session.close_code = self._ws.close_code
            self._sim.notify()
            log.info("sim session %s closed (code %s)", self.session.id, self._ws.close_code)

    async def _enforce_cap(self, cap_s: float) -> None:
        await asyncio.sleep(cap_s)
        # As reported of the real service (pollen-robotics/reachy_mini_conversation_app #134):
        # this error, then a *clean* close 1001 with the same text as its reason.
        duration = f"{cap_s / 60:g} minutes" if cap_s % 60 == 0 else f"{cap_s:g} seconds"
        message = f"Your session hit the maximum duration of {duration}."
        self._outbox.error(ClientError("session_expired", message))
        self._outbox.close(1001, message)
        self._sim.capped += 1

    def abort(self) -> None:
        """Drop the TCP connection now, without a close frame."""
        self._ws.transport.abort()

    def stall(self) -> None:
        """Stop reading: pings go unanswered, as on a half-open link."""
        self._ws.transport.pause_reading()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        assert self._tg is not None
        task = self._tg.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _read_loop(self) -> None:
        try:
            async for message in self._ws:
                self._on_message(message)
        except ConnectionClosed:
            pass

    async def _write_loop(self) -> None:
        try:
            while True:
                command = await self._outbox.queue.get()
                if isinstance(command, Close):
                    if command.abort:
                        self._ws.transport.abort()
                    else:
                        await self._ws.close(command.code, command.reason)
                    return
                if self._sim.record:
                    self.session.sent.append(command)
                self._sim.notify()
                await self._ws.send(json.dumps(command))
        except ConnectionClosed:
            pass

    # --- dispatch -------------------------------------------------------------------------

    def _on_message(self, message: str | bytes) -> None:
        # The texts of the real service (gauravzqa/llmgw capabilities/captures-ws.md, probe 8).
        if isinstance(message, bytes):
            self._outbox.error(
                ClientError(
                    "invalid_event",
                    "Expected a text WebSocket message; binary frames are not supported.",
                )
            )
            return
        try:
            event = json.loads(message)
        except ValueError:
            self._outbox.error(
                ClientError("invalid_json", "Invalid event: failed to parse JSON value.")
            )
            return
        if not isinstance(event, dict):
            self._outbox.error(
                ClientError("invalid_event", "Invalid event: expected a JSON object.")
            )
            return
        if self._sim.record:
            self.session.received.append(event)
        self._sim.notify()
        if self._refusal is not None:
            return
        raw_id = event.get("event_id")
        client_event_id = raw_id if isinstance(raw_id, str) else None
        try:
            self._dispatch(event)
        except ClientError as exc:
            self._outbox.error(exc, client_event_id)

    def _dispatch(self, event: dict[str, Any]) -> None:
        event_type = event.get("type")
        if not isinstance(event_type, str):
            raise ClientError(
                "missing_required_parameter", "Missing required parameter: 'type'.", "type"
            )
        fault_code = self._sim.faults.error_on.get(event_type)
        if fault_code:
            raise ClientError(fault_code, f"Simulated failure for '{event_type}'.")
        handler = self._handlers.get(event_type)
        if handler is None:
            raise ClientError("invalid_value", _UNSUPPORTED_TYPE.format(event_type), "type")
        handler(event)

    # --- handlers that span concerns --------------------------------------------------------

    def _on_session_update(self, event: dict[str, Any]) -> None:
        patch = event.get("session")
        validate_session_patch(patch, self.session.config)
        config = deep_merge(self.session.config, patch)
        input_patch = lookup(patch, "audio", "input")
        if isinstance(input_patch, dict) and "turn_detection" in input_patch:
            config["audio"]["input"]["turn_detection"] = effective_turn_detection(
                lookup(self.session.config, "audio", "input", "turn_detection"),
                input_patch["turn_detection"],
            )
        self.session.config = config
        if self._input.vad_params() is None:
            self._input.forget_speech()
        self._outbox.emit("session.updated", session=self.session.config)

    def _on_session_close(self, event: dict[str, Any]) -> None:
        self._outbox.close(1000, "")

    def _on_item_create(self, event: dict[str, Any]) -> None:
        item = self._conversation.create(event)
        if item.get("type") == "function_call_output":
            self._responses.tool_output = str(item.get("output", ""))
