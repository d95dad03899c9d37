"""The Realtime GA protocol, pure: client events out, typed events in.

No socket, no clock, no asyncio. :class:`Protocol` builds every client event the kiosk sends
(each one validates against the official SDK's models, which the tests enforce) and turns
server JSON into kiosk events through a table of typed handlers. Unknown event types are
reported as :class:`Ignored`, malformed ones as :class:`Malformed`; neither ends a session.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..events import (
    FunctionCall,
    ReplyAudio,
    ResponseDone,
    ResponseStarted,
    ServerError,
    SpeechStarted,
    SpeechStopped,
)
from .policy import is_fatal_code

SAMPLE_RATE = 24000
TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"
_TEXT_PARTS = frozenset({"input_text", "output_text"})


@dataclass(frozen=True, slots=True)
class SessionCreated:
    """``session.created``: the server's defaults are in force until our update lands.
    ``expires_at``: the session's hard end in Unix seconds, when the server announces it."""

    session_id: str
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class ItemAdded:
    """``conversation.item.added``: a spoken message joined the conversation after
    ``previous_item_id`` (None: first). Text items (the kiosk's own replayed turns) and tool
    items are not reported."""

    item_id: str
    previous_item_id: str | None
    role: str


@dataclass(frozen=True, slots=True)
class SessionConfigured:
    """``session.updated``: the session now uses our configuration."""

    session_id: str


@dataclass(frozen=True, slots=True)
class Transcript:
    """A finished transcript: ``role`` is ``user`` (input transcription) or ``assistant``
    (``response_id`` names its response)."""

    role: str
    item_id: str
    text: str
    response_id: str = ""


@dataclass(frozen=True, slots=True)
class Committed:
    """``input_audio_buffer.committed``: the visitor's turn is now the user item ``item_id``
    (its transcript, if asked for, comes later; often after the reply's own)."""

    item_id: str


@dataclass(frozen=True, slots=True)
class TranscriptFailed:
    """``conversation.item.input_audio_transcription.failed``: no transcript will come for
    ``item_id``."""

    item_id: str


@dataclass(frozen=True, slots=True)
class FatalError:
    """An ``error`` event whose code needs an operator (see
    :data:`~kioskvoice.realtime.policy.FATAL_CODES`). On its own it ends nothing: the close
    that follows it does (see :func:`~kioskvoice.realtime.policy.is_fatal`)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed event the kiosk has no use for (logged at debug)."""

    type: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message that is not a valid server event (logged, skipped)."""

    reason: str


Incoming = (
    SessionCreated
    | SessionConfigured
    | ItemAdded
    | Transcript
    | Committed
    | TranscriptFailed
    | FatalError
    | Ignored
    | Malformed
    | ResponseStarted
    | ReplyAudio
    | ResponseDone
    | ServerError
    | SpeechStarted
    | SpeechStopped
    | FunctionCall
)


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """What the kiosk asks of every session."""

    instructions: str
    voice: str
    transcribe_input: bool = True
    tools: tuple[dict[str, Any], ...] = ()
    """Function tools declared to every session (``session.tools``)."""


class Protocol:
    """Builds client events and parses server events for one connection.

    Client ``event_id`` values are unique per instance, so an ``error`` naming one can be
    matched to what was sent.
    """

    def __init__(self, options: SessionOptions) -> None:
        self.options = options
        self.session_id: str | None = None
        self._ids = itertools.count(1)
        self._handlers: dict[str, Callable[[dict[str, Any]], list[Incoming]]] = {
            "session.created": self._session_created,
            "session.updated": self._session_updated,
            "response.created": self._response_created,
            "response.output_audio.delta": self._audio_delta,
            "response.done": self._response_done,
            "response.output_audio_transcript.done": self._assistant_transcript,
            "conversation.item.input_audio_transcription.completed": self._user_transcript,
            "conversation.item.input_audio_transcription.failed": lambda e: [
                TranscriptFailed(str(e["item_id"]))
            ],
            "input_audio_buffer.committed": lambda e: [Committed(str(e["item_id"]))],
            "error": self._error,
            "conversation.item.added": self._item_added,
            "conversation.item.created": self._item_added,
            "input_audio_buffer.speech_started": lambda e: [SpeechStarted()],
            "input_audio_buffer.speech_stopped": lambda e: [SpeechStopped()],
            "response.function_call_arguments.done": self._function_call,
        }

    # --- client events -----------------------------------------------------------------------

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": type_, "event_id": f"kv_{next(self._ids)}", **fields}

    def session_update(self) -> dict[str, Any]:
        """Push-to-talk session: 24 kHz PCM both ways, server VAD off, our voice/instructions."""
        return self._event("session.update", session=self.session_config())

    def session_config(self) -> dict[str, Any]:
        """The ``session`` object of :meth:`session_update` (also what a token broker is
        asked to mint a secret for)."""
        audio_format = {"type": "audio/pcm", "rate": SAMPLE_RATE}
        audio_input: dict[str, Any] = {"format": audio_format, "turn_detection": None}
        if self.options.transcribe_input:
            audio_input["transcription"] = {"model": TRANSCRIPTION_MODEL}
        session: dict[str, Any] = {
            "type": "realtime",
            "instructions": self.options.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": audio_input,
                "output": {"format": audio_format, "voice": self.options.voice},
            },
        }
        if self.options.tools:
            session["tools"] = list(self.options.tools)
            session["tool_choice"] = "auto"
        return session

    def turn_detection(self, vad: str | None) -> dict[str, Any]:
        """Switch the server's turn detection: ``server_vad``/``semantic_vad`` (hands-free: the
        server commits and answers by itself) or None (push-to-talk)."""
        detection = {"type": vad} if vad else None
        session = {"type": "realtime", "audio": {"input": {"turn_detection": detection}}}
        return self._event("session.update", session=session)

    def append(self, pcm: bytes) -> dict[str, Any]:
        """``input_audio_buffer.append`` with 24 kHz PCM16 mono."""
        return self._event("input_audio_buffer.append", audio=base64.b64encode(pcm).decode())

    def commit(self) -> dict[str, Any]:
        return self._event("input_audio_buffer.commit")

    def clear(self) -> dict[str, Any]:
        return self._event("input_audio_buffer.clear")

    def response_create(self) -> dict[str, Any]:
        return self._event("response.create")

    def cancel(self, response_id: str | None = None) -> dict[str, Any]:
        """``response.cancel``; without an id it cancels whatever response is in progress."""
        if response_id:
            return self._event("response.cancel", response_id=response_id)
        return self._event("response.cancel")

    def item_create(self, role: str, text: str) -> dict[str, Any]:
        """A text message item, for replaying earlier turns into a new session: the user's
        words as ``input_text``, the kiosk's as ``output_text`` (the GA content types)."""
        kind = "output_text" if role == "assistant" else "input_text"
        item = {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}
        return self._event("conversation.item.create", item=item)

    def function_output(self, call_id: str, output: str) -> dict[str, Any]:
        """A tool's result for the model (send ``response.create`` after the last one)."""
        item = {"type": "function_call_output", "call_id": call_id, "output": output}
        return self._event("conversation.item.create", item=item)

    def truncate(self, item_id: str, audio_end_ms: int) -> dict[str, Any]:
        """Drop what the visitor did not hear of an assistant item."""
        return self._event(
            "conversation.item.truncate",
            item_id=item_id,
            content_index=0,
            audio_end_ms=max(0, int(audio_end_ms)),
        )

    # --- server events -----------------------------------------------------------------------

    def receive(self, message: str | bytes) -> list[Incoming]:
        """Parse one WebSocket message into zero or more events; never raises."""
        try:
            event = json.loads(message)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError: a hostile proxy's nesting must not drop the session (or, sent
            # during set-up on every connection, keep the kiosk from ever coming up).
            return [Malformed(f"not JSON: {type(exc).__name__}")]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return [Malformed("not an event object with a string 'type'")]
        handler = self._handlers.get(event["type"])
        if handler is None:
            return [Ignored(event["type"])]
        try:
            return handler(event)
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            # AttributeError: a field of the wrong kind ("error": "x", "session": null).
            return [Malformed(f"{event['type']}: bad or missing field {exc!r}"[:200])]

    def _session_created(self, event: dict[str, Any]) -> list[Incoming]:
        session = event["session"]
        self.session_id = str(session["id"])
        return [SessionCreated(self.session_id, _unix_time(session.get("expires_at")))]

    def _item_added(self, event: dict[str, Any]) -> list[Incoming]:
        item = event["item"]
        content = item.get("content") or []
        spoken = not content or any(part.get("type") not in _TEXT_PARTS for part in content)
        if item.get("type") != "message" or not spoken:
            return [Ignored(event["type"])]
        previous = event.get("previous_item_id")
        return [ItemAdded(str(item["id"]), str(previous) if previous else None, str(item["role"]))]

    def _session_updated(self, event: dict[str, Any]) -> list[Incoming]:
        session_id = str(event["session"].get("id") or self.session_id or "")
        return [SessionConfigured(session_id)]

    def _response_created(self, event: dict[str, Any]) -> list[Incoming]:
        return [ResponseStarted(str(event["response"]["id"]))]

    def _audio_delta(self, event: dict[str, Any]) -> list[Incoming]:
        pcm = base64.b64decode(event["delta"], validate=True)
        return [ReplyAudio(str(event["response_id"]), str(event["item_id"]), pcm)]

    def _response_done(self, event: dict[str, Any]) -> list[Incoming]:
        response = event["response"]
        status = str(response.get("status") or "completed")
        why = _why(response.get("status_details"))
        fatal = status == "failed" and is_fatal_code(why)
        return [ResponseDone(str(response["id"]), status, why, fatal)]

    def _assistant_transcript(self, event: dict[str, Any]) -> list[Incoming]:
        return [
            Transcript(
                "assistant",
                str(event["item_id"]),
                str(event["transcript"]),
                str(event.get("response_id") or ""),
            )
        ]

    def _user_transcript(self, event: dict[str, Any]) -> list[Incoming]:
        return [Transcript("user", str(event["item_id"]), str(event["transcript"]))]

    def _function_call(self, event: dict[str, Any]) -> list[Incoming]:
        return [
            FunctionCall(
                str(event["response_id"]),
                str(event["call_id"]),
                str(event["name"]),
                str(event["arguments"]),
            )
        ]

    def _error(self, event: dict[str, Any]) -> list[Incoming]:
        error = event["error"]
        code = str(error.get("code") or error.get("type") or "unknown")
        message = str(error.get("message") or "")
        if is_fatal_code(code):
            return [FatalError(code, message)]
        return [ServerError(code, message)]


def _unix_time(value: Any) -> float | None:
    """A finite number of Unix seconds, else None (a string, a bool, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _why(details: Any) -> str:
    """Why a response did not complete: ``status_details.error.code`` (or its ``type``), else
    ``status_details.reason``; empty when the server said nothing usable."""
    if not isinstance(details, dict):
        return ""
    error = details.get("error")
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        if isinstance(code, str) and code:
            return code
    reason = details.get("reason")
    return reason if isinstance(reason, str) else ""
