"""Responses: ``response.create`` and ``response.cancel``, the one active response of a
connection, what it answers, and its ``response.created``/``response.done`` (the output in
between is :mod:`kioskvoice.sim.streaming`'s).

A response runs as a child task of its connection. :class:`~kioskvoice.sim.faults.Faults` is
read when it starts (``reply_delay_s``, ``fail_responses``, ``fail_code``) and after its
``response.done`` (``drop_after_response``). As on the real service, a failed response still
starts with ``response.created``, and every ``response.done`` is followed about 40 ms later by
``rate_limits.updated`` (gauravzqa/llmgw capabilities/captures-ws.md, probe 8: 43 ms).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol

from kioskvoice.sim.conversation import Conversation
from kioskvoice.sim.faults import Faults
from kioskvoice.sim.outbox import Outbox
from kioskvoice.sim.session import BYTES_PER_MS, SimSession, lookup, new_id
from kioskvoice.sim.streaming import Response, Streamer, StreamSettings
from kioskvoice.sim.validation import ClientError, validate_response_options

__all__ = [
    "RATE_LIMITS_AFTER_S",
    "TOKENS_LIMIT",
    "ReplySettings",
    "Responses",
    "Spawn",
    "failure",
    "response_object",
    "usage",
]

log = logging.getLogger(__name__)

RATE_LIMITS_AFTER_S: Final = 0.04
TOKENS_LIMIT: Final = 15_000_000
_FAILURES: Final[dict[str, tuple[str, str]]] = {
    # code: (type, message), as the service words them (community.openai.com/t/1005042).
    "insufficient_quota": (
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details. For "
        "more information on this error, read the docs: "
        "https://platform.openai.com/docs/guides/error-codes/api-errors.",
    ),
    "server_error": (
        "server_error",
        "The server had an error while processing your request. Sorry about that!",
    ),
}


def failure(code: str) -> dict[str, Any]:
    """``status_details`` of a response that failed for ``code``."""
    error_type, message = _FAILURES.get(code, ("invalid_request_error", f"Failed: {code}."))
    return {"type": "failed", "error": {"type": error_type, "code": code, "message": message}}


Spawn = Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]
"""Start a child task of the connection (it ends when the connection does)."""


class ReplySettings(StreamSettings, Protocol):
    """What responses read of the simulator, live: tests change it while sessions run."""

    faults: Faults
    tool_calls: list[tuple[str, dict[str, Any]]]


def usage(
    input_text: str,
    input_audio_ms: float,
    output_text: str,
    output_audio_ms: float,
    *,
    failed: bool = False,
) -> dict[str, Any]:
    """Plausible token counts: ~4 characters per text token, 10 (in) / 20 (out) audio tokens/s;
    all zero for a failed response, as the real service reports it."""
    in_text = 0 if failed else max(1, math.ceil(len(input_text) / 4))
    in_audio = 0 if failed else math.ceil(input_audio_ms / 100)
    out_text = math.ceil(len(output_text) / 4)
    out_audio = math.ceil(output_audio_ms / 50)
    return {
        "total_tokens": in_text + in_audio + out_text + out_audio,
        "input_tokens": in_text + in_audio,
        "output_tokens": out_text + out_audio,
        "input_token_details": {
            "text_tokens": in_text,
            "audio_tokens": in_audio,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
    }


def response_object(
    response: Response,
    status: str,
    status_details: dict[str, Any] | None,
    *,
    config: dict[str, Any],
    conversation_id: str,
) -> dict[str, Any]:
    """The ``response`` of ``response.created``/``.done`` in a session with ``config``."""
    finished = status != "in_progress"
    output_audio = lookup(config, "audio", "output") or {}
    return {
        "object": "realtime.response",
        "id": response.id,
        "status": status,
        "status_details": status_details,
        "output": [response.item] if finished and response.item is not None else [],
        "conversation_id": conversation_id if response.in_conversation else None,
        "output_modalities": response.modalities,
        "max_output_tokens": config.get("max_output_tokens", "inf"),
        "audio": {
            "output": {
                "format": output_audio.get("format"),
                "voice": output_audio.get("voice"),
            }
        },
        "usage": (
            usage(
                response.instructions,
                response.input_audio_ms,
                response.text_sent,
                response.audio_bytes_sent / BYTES_PER_MS,
                failed=status == "failed",
            )
            if finished
            else None
        ),
        "metadata": response.metadata,
    }


class Responses:
    """The responses of one connection: at most one :attr:`active`, and what the next answers."""

    def __init__(
        self,
        sim: ReplySettings,
        session: SimSession,
        outbox: Outbox,
        conversation: Conversation,
        spawn: Spawn,
    ) -> None:
        self._sim = sim
        self._session = session
        self._outbox = outbox
        self._conversation = conversation
        self._spawn = spawn
        self._streamer = Streamer(sim, outbox, conversation)
        self._conversation_id = new_id("conv")
        self._tokens_left = TOKENS_LIMIT
        self.active: Response | None = None
        self.reply_ms: float | None = None
        """Milliseconds of committed speech the next response answers (None: nothing heard)."""
        self.tool_output: str | None = None
        """The last ``function_call_output``, which the next response reports instead."""

    def create(self, event: dict[str, Any]) -> None:
        """Handle ``response.create``."""
        if self.active is not None:
            raise ClientError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        self.start(validate_response_options(event.get("response")))

    def start(self, options: dict[str, Any]) -> None:
        """Start a response (none may be active) replying to the last committed audio."""
        config = self._session.config
        modalities = (
            options.get("output_modalities") or config.get("output_modalities") or ["audio"]
        )
        reply_ms, self.reply_ms = self.reply_ms, None
        text = (
            f"You spoke for {reply_ms / 1000:.1f} seconds. {self._sim.reply_more}".rstrip()
            if reply_ms is not None
            else "I did not hear anything."
        )
        tool_output, self.tool_output = self.tool_output, None
        if tool_output is not None:
            text = f"The tool answered: {tool_output[:120]}"
        declared = {t.get("name") for t in config.get("tools") or []}
        tool_call = None
        if tool_output is None and self._sim.tool_calls and self._sim.tool_calls[0][0] in declared:
            tool_call = self._sim.tool_calls.pop(0)
        response = Response(
            id=new_id("resp"),
            item_id=new_id("item"),
            modalities=list(modalities),
            in_conversation=options.get("conversation", "auto") != "none",
            metadata=options.get("metadata"),
            text=text,
            instructions=options.get("instructions") or config.get("instructions") or "",
            input_audio_ms=reply_ms or 0.0,
            tool_call=tool_call,
        )
        self.active = response
        response.task = self._spawn(self._run(response))

    def cancel_active(self, event: dict[str, Any]) -> None:
        """Handle ``response.cancel``."""
        response = self.active
        wanted = event.get("response_id")
        if response is None or (wanted is not None and wanted != response.id):
            raise ClientError(
                "response_cancel_not_active", "Cancellation failed: no active response found"
            )
        self.cancel(response, "client_cancelled")

    def cancel(self, response: Response, reason: str) -> None:
        """End the active ``response`` with ``response.done`` cancelled for ``reason``."""
        # The task is suspended (handlers run on the same loop), so after cancel() it never
        # resumes normal execution: no delta of it can be queued after this point.
        assert response.task is not None
        response.task.cancel()
        self.active = None
        if not response.created_sent:
            self._outbox.emit("response.created", response=self._object(response, "in_progress"))
        if response.item is not None:
            response.item["status"] = "incomplete"
            response.item["content"] = [response.final_part()]
        self._finish(response, "cancelled", {"type": "cancelled", "reason": reason})

    def _finish(
        self, response: Response, status: str, status_details: dict[str, Any] | None = None
    ) -> None:
        """Send the ``response.done`` of ``response``; ``rate_limits.updated`` follows."""
        self.active = None
        done = self._outbox.emit(
            "response.done", response=self._object(response, status, status_details)
        )
        used = done["response"]["usage"]["total_tokens"]
        self._spawn(self._rate_limits(used))

    async def _rate_limits(self, used_tokens: int) -> None:
        await asyncio.sleep(RATE_LIMITS_AFTER_S)
        self._tokens_left = max(0, self._tokens_left - used_tokens)
        limits = {"name": "tokens", "limit": TOKENS_LIMIT, "remaining": self._tokens_left,
                  "reset_seconds": 0.001}  # fmt: skip
        self._outbox.emit("rate_limits.updated", rate_limits=[limits])

    def _object(
        self, response: Response, status: str, status_details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return response_object(
            response,
            status,
            status_details,
            config=self._session.config,
            conversation_id=self._conversation_id,
        )

    def _fail(self, response: Response, code: str) -> None:
        """End ``response`` as failed for ``code``; ``response.created`` comes first, always."""
        if not response.created_sent:
            self._outbox.emit("response.created", response=self._object(response, "in_progress"))
            response.created_sent = True
        self._finish(response, "failed", failure(code))

    async def _run(self, response: Response) -> None:
        try:
            await self._stream(response)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A simulator bug must not take the connection down; report it like the server.
            log.exception("sim response %s failed", response.id)
            if self.active is response:
                self._fail(response, "server_error")

    async def _stream(self, response: Response) -> None:
        delay = self._sim.faults.reply_delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        if self._sim.faults.fail_responses:
            self._fail(response, self._sim.faults.fail_code)
            return
        self._outbox.emit("response.created", response=self._object(response, "in_progress"))
        response.created_sent = True
        if response.tool_call is not None:
            await self._streamer.function_call(response, *response.tool_call)
        else:
            await self._streamer.message(response)
        self._finish(response, "completed")
        if self._sim.faults.drop_after_response:
            self._outbox.close(1006, "", abort=True)
