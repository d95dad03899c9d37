"""An offline OpenAI Realtime (GA) server for push-to-talk turns, on loopback.

:class:`Simulator` is a real ``websockets`` server that speaks the GA wire protocol closely
enough for the kiosk, its tests and any GA client (the official ``openai`` SDK included) to hold
turns without the network: it accepts ``session.update``, buffers and commits input audio,
answers ``response.create`` with synthesized speech ("You spoke for N.N seconds.") streamed
faster than real time, and honours ``response.cancel``, ``conversation.item.truncate``,
``conversation.item.create`` and ``input_audio_buffer.clear``.

Server VAD: while the effective ``audio.input.turn_detection`` is ``server_vad`` or
``semantic_vad`` (a fresh session has ``server_vad`` on, as on the real server), an energy VAD
(:class:`EnergyVad`) runs over the appended audio in 20 ms windows. Speech onset emits
``input_audio_buffer.speech_started`` and, with ``interrupt_response``, cancels the running
response (``status_details.reason: "turn_detected"``); ``silence_duration_ms`` of non-speech emits
``input_audio_buffer.speech_stopped``, commits the buffer as a client commit would and, with
``create_response``, starts a response. Decisions depend only on the appended audio (never on
the wall clock), so tests are deterministic. With ``turn_detection: null`` (push-to-talk) none of
this runs. See :class:`VadParams` for which fields are honoured and how ``threshold`` is mapped.

Structure (so fault injection can grow without restructuring):

* ``_process_request`` decides the HTTP handshake (path, auth) before any WebSocket exists.
* Each accepted connection gets one ``_Connection`` with its own task group: a reader (this
  coroutine), one writer draining an ordered outbox, and child tasks for responses and
  transcriptions. Leaving the group cancels everything the connection started.
* Protocol handlers are plain synchronous methods in a dispatch table. They validate, mutate
  the session state and queue server events; they never touch the socket.
* The outbox carries events and control commands (``_Close``), so "close with code X after these
  events" is ordered with the events themselves.
* :class:`Faults` is read at named points: dispatch (``error_on``) and response start
  (``reply_delay_s``).
* The VAD is a pure object (PCM in, speech edges out; no clock, no socket); the connection turns
  its edges into events, commits and responses.

The simulator deliberately knows nothing of the kiosk core and imports none of it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final, NamedTuple, TypeVar
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from kioskvoice.sim.voice import synthesize

__all__ = ["EnergyVad", "Faults", "SimSession", "Simulator", "Truncation", "VadEdge", "VadParams"]

log = logging.getLogger(__name__)

REALTIME_PATH: Final = "/v1/realtime"
DEFAULT_MODEL: Final = "gpt-realtime"
DEFAULT_INSTRUCTIONS: Final = (
    "You are a helpful voice assistant. Answer briefly and speak clearly. "
    "(This is the kioskvoice Realtime simulator.)"
)
SAMPLE_RATE: Final = 24000
BYTES_PER_MS: Final = SAMPLE_RATE * 2 // 1000  # PCM16 mono
MIN_COMMIT_MS: Final = 100
TRANSCRIPTION_DELAY_S: Final = 0.05
BETA_CLOSE_CODE: Final = 4000
BETA_MESSAGE: Final = (
    "Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
)
_CLOSE_TIMEOUT_S: Final = 5.0
_SECRET_HEADERS: Final = frozenset({"authorization", "api-key"})
_REDACTED: Final = "<redacted>"

T = TypeVar("T")

# Session fields a GA client may send; a nested dict lists the allowed sub-keys of an object,
# None means "any value of this field" (checked separately where the simulator cares).
_SESSION_SCHEMA: Final[dict[str, Any]] = {
    "type": None,
    "model": None,
    "instructions": None,
    "output_modalities": None,
    "audio": {
        "input": {"format": None, "transcription": None, "noise_reduction": None,
                  "turn_detection": None},
        "output": {"format": None, "voice": None, "speed": None},
    },
    "include": None,
    "max_output_tokens": None,
    "parallel_tool_calls": None,
    "prompt": None,
    "reasoning": None,
    "tool_choice": None,
    "tools": None,
    "tracing": None,
    "truncation": None,
}  # fmt: skip
_RESPONSE_KEYS: Final = frozenset(
    {
        "audio", "conversation", "input", "instructions", "max_output_tokens", "metadata",
        "output_modalities", "parallel_tool_calls", "prompt", "reasoning", "tool_choice", "tools",
    }
)  # fmt: skip
_MESSAGE_CONTENT_TYPES: Final[dict[str, frozenset[str]]] = {
    "user": frozenset({"input_text", "input_audio", "input_image"}),
    "assistant": frozenset({"output_text"}),
    "system": frozenset({"input_text"}),
}
_VALID_MODALITIES: Final = (["audio"], ["text"])
_WORD_RE: Final = re.compile(r"\s*\S+")

VAD_WINDOW_MS: Final = 20
VAD_FLOOR_DBFS: Final = -70.0
"""Speech level for ``threshold`` 0.0 (see :func:`threshold_dbfs`)."""
VAD_CEILING_DBFS: Final = -20.0
"""Speech level for ``threshold`` 1.0."""
SEMANTIC_SILENCE_MS: Final = 500
"""End-of-turn silence for ``semantic_vad`` (any eagerness: the simulator has no semantics)."""
_VAD_WINDOW_BYTES: Final = BYTES_PER_MS * VAD_WINDOW_MS
_FULL_SCALE: Final = 32768.0
# Effective-config defaults the server fills in, in the order it reports them.
_TURN_DETECTION_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "server_vad": {
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    },
    "semantic_vad": {"eagerness": "auto", "create_response": True, "interrupt_response": True},
}
_EAGERNESS: Final = frozenset({"low", "medium", "high", "auto"})


@dataclass
class Faults:
    """Fault-injection switches, read live by every session; tests flip fields at any time."""

    reply_delay_s: float = 0.0
    """Seconds between accepting ``response.create`` and sending ``response.created``."""

    error_on: dict[str, str] = field(default_factory=dict)
    """Client event type -> error code answered instead of handling that event."""

    refuse_connections: bool = False
    """Answer every new handshake with HTTP 503 (an outage)."""

    session_cap_s: float | None = None
    """Session cap: at this age a session gets ``error`` ``session_expired`` and a 1001 close,
    as the real server does at 60 (Azure: 30) minutes."""

    drop_after_response: bool = False
    """Abort the TCP connection (no close frame) right after each ``response.done``."""

    fail_responses: bool = False
    """End every response at once with ``response.done`` status ``failed``."""


def threshold_dbfs(threshold: float) -> float:
    """The 20 ms RMS level (dBFS) above which a window counts as speech.

    ``turn_detection.threshold`` (clamped to 0..1) maps linearly onto
    [:data:`VAD_FLOOR_DBFS`, :data:`VAD_CEILING_DBFS`]: 0.0 -> -70 dBFS, 0.5 (the default)
    -> -45 dBFS, 1.0 -> -20 dBFS. At 0.5, espeak-ng speech (about -35..-12 dBFS per window)
    counts, digital silence and noise around -60 dBFS do not; a higher threshold needs louder
    audio, as on the real server.
    """
    clamped = min(1.0, max(0.0, float(threshold)))
    return VAD_FLOOR_DBFS + (VAD_CEILING_DBFS - VAD_FLOOR_DBFS) * clamped


@dataclass(frozen=True)
class VadParams:
    """What the simulator's VAD honours of a ``turn_detection`` object.

    ``server_vad``: ``threshold``, ``prefix_padding_ms``, ``silence_duration_ms``,
    ``create_response``, ``interrupt_response`` (absent or null -> the GA defaults 0.5, 300,
    500, true, true). ``idle_timeout_ms`` is accepted and reported but ignored: the simulator
    never sends ``input_audio_buffer.timeout_triggered``. ``semantic_vad``: ``create_response``
    and ``interrupt_response``; ``eagerness`` is accepted but every value behaves as ``medium``
    would here: the default threshold and padding, and :data:`SEMANTIC_SILENCE_MS` of silence.
    """

    threshold_dbfs: float
    prefix_padding_ms: int
    silence_duration_ms: int
    create_response: bool
    interrupt_response: bool

    @classmethod
    def from_turn_detection(cls, turn_detection: Any) -> VadParams | None:
        """Parameters for a session's ``audio.input.turn_detection``; None means VAD off."""
        if not isinstance(turn_detection, dict):
            return None
        kind = turn_detection.get("type")
        if kind not in _TURN_DETECTION_DEFAULTS:
            return None
        server = _TURN_DETECTION_DEFAULTS["server_vad"]

        def value(key: str) -> Any:
            found = turn_detection.get(key) if kind == "server_vad" else None
            return server[key] if found is None else found

        create = turn_detection.get("create_response")
        interrupt = turn_detection.get("interrupt_response")
        return cls(
            threshold_dbfs=threshold_dbfs(value("threshold")),
            prefix_padding_ms=int(value("prefix_padding_ms")),
            silence_duration_ms=(
                int(value("silence_duration_ms")) if kind == "server_vad" else SEMANTIC_SILENCE_MS
            ),
            create_response=True if create is None else bool(create),
            interrupt_response=True if interrupt is None else bool(interrupt),
        )


class VadEdge(NamedTuple):
    """A change of the VAD's state, in ms of session audio (not wall-clock time)."""

    started: bool
    """True: speech onset. False: end of turn."""
    at_ms: int
    """Onset: start of the first speech window. End: end of the window that completed the
    silence (the ``audio_end_ms`` of ``speech_stopped``)."""
    speech_ms: int = 0
    """End of turn only: from the start of the first speech window to the end of the last."""


class EnergyVad:
    """An energy VAD over PCM16 mono 24 kHz, in 20 ms windows aligned to session audio time.

    Pure: audio in, :class:`VadEdge` out; no clock, no I/O. A window is speech when its RMS
    exceeds ``params.threshold_dbfs``. The first speech window starts a turn; the turn ends once
    ``params.silence_duration_ms`` of audio has followed the last speech window with no speech
    in it. A partial window waits for the next chunk, so edges never depend on how the audio
    was split into chunks. Fed with ``params=None`` (VAD off) it only keeps time.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._position_ms = 0  # session audio time where the next window starts
        self._speech_start_ms: int | None = None
        self._speech_end_ms = 0

    @property
    def in_speech(self) -> bool:
        """True between an onset edge and its end-of-turn edge."""
        return self._speech_start_ms is not None

    def reset(self) -> None:
        """Forget the current turn (after a manual commit or clear); time keeps running."""
        self._speech_start_ms = None

    def feed(self, pcm: bytes, params: VadParams | None) -> list[VadEdge]:
        """Consume appended audio; return the edges it completes, in order."""
        self._pending += pcm
        whole = len(self._pending) // _VAD_WINDOW_BYTES * _VAD_WINDOW_BYTES
        if whole == 0:
            return []
        chunk = bytes(self._pending[:whole])
        del self._pending[:whole]
        count = whole // _VAD_WINDOW_BYTES
        if params is None:
            self._position_ms += count * VAD_WINDOW_MS
            self.reset()
            return []
        samples = np.frombuffer(chunk, dtype="<i2").astype(np.float64).reshape(count, -1)
        limit = (_FULL_SCALE * 10 ** (params.threshold_dbfs / 20)) ** 2
        loud = np.mean(samples * samples, axis=1) > limit
        edges: list[VadEdge] = []
        for is_speech in loud.tolist():
            start = self._position_ms
            end = self._position_ms = start + VAD_WINDOW_MS
            if is_speech:
                if self._speech_start_ms is None:
                    self._speech_start_ms = start
                    edges.append(VadEdge(started=True, at_ms=start))
                self._speech_end_ms = end
            elif (
                self._speech_start_ms is not None
                and end - self._speech_end_ms >= params.silence_duration_ms
            ):
                speech_ms = self._speech_end_ms - self._speech_start_ms
                edges.append(VadEdge(started=False, at_ms=end, speech_ms=speech_ms))
                self._speech_start_ms = None
        return edges


class Truncation(NamedTuple):
    """One accepted ``conversation.item.truncate``."""

    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(eq=False)
class SimSession:
    """Record of one accepted connection, written by the simulator and read by tests.

    Secrets are never stored: the ``authorization`` and ``api-key`` header values are replaced
    by ``"<redacted>"``; ``auth_matched`` says whether the credential equalled the simulator's
    ``api_key`` (``None`` when the simulator accepts any credential).
    """

    id: str
    model: str
    path: str
    headers: dict[str, str]
    """Request headers, lower-case names, secret values redacted."""
    auth_present: bool
    auth_matched: bool | None
    config: dict[str, Any]
    """Effective session config, exactly as last sent in ``session.created``/``.updated``."""
    received: list[dict[str, Any]] = field(default_factory=list)
    """Every client event that parsed as a JSON object, in arrival order."""
    sent: list[dict[str, Any]] = field(default_factory=list)
    """Every server event handed to the socket, in order."""
    items: list[dict[str, Any]] = field(default_factory=list)
    """The conversation, in order, as the server holds it (never with audio bytes)."""
    truncations: list[Truncation] = field(default_factory=list)
    closed: bool = False
    close_code: int | None = None
    auth_fingerprint: str | None = None
    """A short hash of the credential (never the credential), to tell connections apart."""
    secret_ttl_s: float | None = None
    """For a minted ``ek_`` secret: its remaining lifetime when the connection was accepted."""
    started_at: float = field(default_factory=time.monotonic)
    """Monotonic time the session was accepted."""

    def sent_of_type(self, event_type: str) -> list[dict[str, Any]]:
        """The sent events of one type, in order."""
        return [e for e in self.sent if e.get("type") == event_type]


class _ClientError(Exception):
    """A client mistake, answered with an ``error`` event; the connection stays open."""

    def __init__(
        self,
        code: str | None,
        message: str,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.error_type = error_type


@dataclass(frozen=True)
class _Close:
    """Outbox command: close the WebSocket with this code once earlier events are written."""

    code: int
    reason: str
    abort: bool = False
    """Drop the TCP connection instead, without a close frame (a network failure)."""


@dataclass
class _Response:
    """State of one response, owned by the connection."""

    id: str
    item_id: str
    modalities: list[str]
    in_conversation: bool
    metadata: Any
    text: str
    instructions: str
    input_audio_ms: float
    task: asyncio.Task[None] | None = None
    created_sent: bool = False
    item: dict[str, Any] | None = None
    audio_bytes_sent: int = 0
    text_sent: str = ""
    tool_call: tuple[str, dict[str, Any]] | None = None
    """Answer with this function call (name, arguments) instead of speech."""


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:22]}"


def default_session_config(session_id: str, model: str) -> dict[str, Any]:
    """The session a fresh GA connection starts with (server VAD on, as the real server does).

    The VAD runs (see :class:`EnergyVad`) until a client sets ``turn_detection`` to null.
    """
    pcm = {"type": "audio/pcm", "rate": SAMPLE_RATE}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "audio": {
            "input": {
                "format": dict(pcm),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": dict(pcm), "voice": "marin", "speed": 1.0},
        },
    }


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Return a new dict: ``patch`` merged into ``base``.

    Objects merge recursively; any other value (lists, scalars, ``None``) replaces. ``None``
    keeps the key with a null value, which is how a GA client clears a field.
    """
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        current = merged.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _check_keys(obj: dict[str, Any], schema: dict[str, Any], path: str) -> None:
    for key, value in obj.items():
        param = f"{path}.{key}"
        if key not in schema:
            raise _ClientError("unknown_parameter", f"Unknown parameter: '{param}'.", param)
        sub = schema[key]
        if isinstance(sub, dict) and value is not None:
            if not isinstance(value, dict):
                raise _ClientError(
                    "invalid_type", f"Invalid type for '{param}': expected an object.", param
                )
            _check_keys(value, sub, param)


def _check_format(fmt: Any, param: str) -> None:
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "audio/pcm":
        raise _ClientError(
            "invalid_value",
            f"Invalid value for '{param}': the simulator supports only audio/pcm at 24000 Hz.",
            f"{param}.type",
        )
    if fmt.get("rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise _ClientError(
            "invalid_value",
            f"Invalid value: '{fmt.get('rate')}'. Supported values are: 24000.",
            f"{param}.rate",
        )


def _check_modalities(value: Any, param: str) -> None:
    if value is not None and value not in _VALID_MODALITIES:
        raise _ClientError(
            "invalid_value",
            f'Invalid value for \'{param}\': use ["audio"] or ["text"].',
            param,
        )


def _validate_session_patch(patch: Any, current: dict[str, Any]) -> None:
    """Raise ``_ClientError`` unless ``patch`` is a GA ``session`` object acceptable now.

    Beta-shaped fields (``modalities``, ``input_audio_format``, ``voice``...) are unknown keys.
    """
    if not isinstance(patch, dict):
        raise _ClientError(
            "missing_required_parameter", "Missing required parameter: 'session'.", "session"
        )
    if "type" not in patch:
        raise _ClientError(
            "missing_required_parameter",
            "Missing required parameter: 'session.type'.",
            "session.type",
        )
    _check_keys(patch, _SESSION_SCHEMA, "session")
    if patch["type"] != "realtime":
        raise _ClientError(
            "invalid_value",
            f"Invalid value: '{patch['type']}'. This session has type 'realtime'.",
            "session.type",
        )
    if "model" in patch and patch["model"] != current.get("model"):
        raise _ClientError(
            "invalid_value", "The model of a session cannot be changed.", "session.model"
        )
    if "instructions" in patch and not isinstance(patch["instructions"], str | None):
        raise _ClientError(
            "invalid_type", "Invalid type for 'session.instructions'.", "session.instructions"
        )
    _check_modalities(patch.get("output_modalities"), "session.output_modalities")
    _check_format(_get(patch, "audio", "input", "format"), "session.audio.input.format")
    _check_format(_get(patch, "audio", "output", "format"), "session.audio.output.format")
    _check_turn_detection(_get(patch, "audio", "input", "turn_detection"))


def _check_turn_detection(value: Any) -> None:
    """Raise ``_ClientError`` unless ``value`` is null or a GA server/semantic VAD object."""
    path = "session.audio.input.turn_detection"
    if value is None:
        return
    if not isinstance(value, dict):
        raise _ClientError("invalid_type", f"Invalid type for '{path}'.", path)
    kind = value.get("type")
    if kind not in _TURN_DETECTION_DEFAULTS:
        raise _ClientError(
            "invalid_value",
            f"Invalid value for '{path}.type': use 'server_vad' or 'semantic_vad'.",
            f"{path}.type",
        )
    allowed = _TURN_DETECTION_DEFAULTS[kind]
    for key, field_value in value.items():
        param = f"{path}.{key}"
        if key == "type":
            continue
        if key not in allowed:
            raise _ClientError("unknown_parameter", f"Unknown parameter: '{param}'.", param)
        if field_value is None:
            continue
        if key == "threshold":
            valid = (
                isinstance(field_value, int | float)
                and not isinstance(field_value, bool)
                and 0.0 <= field_value <= 1.0
            )
        elif key.endswith("_ms"):
            valid = (
                isinstance(field_value, int)
                and not isinstance(field_value, bool)
                and field_value >= 0
            )
        elif key == "eagerness":
            valid = field_value in _EAGERNESS
        else:  # create_response, interrupt_response
            valid = isinstance(field_value, bool)
        if not valid:
            raise _ClientError("invalid_value", f"Invalid value for '{param}'.", param)


def _effective_turn_detection(current: Any, patch: Any) -> dict[str, Any] | None:
    """The ``turn_detection`` a session has after ``patch`` (already validated).

    The same type merges into the current object; another type replaces it (a semantic VAD
    never inherits ``threshold``). Absent or null fields get the server's defaults, except
    ``idle_timeout_ms``, whose null means "off".
    """
    if patch is None:
        return None
    kind = patch["type"]
    merged = dict(patch)
    if isinstance(current, dict) and current.get("type") == kind:
        merged = {**current, **patch}
    effective: dict[str, Any] = {"type": kind}
    for key, default in _TURN_DETECTION_DEFAULTS[kind].items():
        found = merged.get(key)
        effective[key] = default if found is None else found
    return effective


def _validate_response_options(options: Any) -> dict[str, Any]:
    """Return the ``response`` overrides of a ``response.create`` (``{}`` when absent)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise _ClientError("invalid_type", "Invalid type for 'response'.", "response")
    for key in options:
        if key not in _RESPONSE_KEYS:
            param = f"response.{key}"
            raise _ClientError("unknown_parameter", f"Unknown parameter: '{param}'.", param)
    _check_modalities(options.get("output_modalities"), "response.output_modalities")
    if not isinstance(options.get("instructions", ""), str):
        raise _ClientError(
            "invalid_type", "Invalid type for 'response.instructions'.", "response.instructions"
        )
    if not isinstance(options.get("conversation", "auto"), str):
        raise _ClientError(
            "invalid_type", "Invalid type for 'response.conversation'.", "response.conversation"
        )
    return options


def _require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    param = f"{path}.{key}" if path else key
    if key not in obj or obj[key] is None:
        raise _ClientError(
            "missing_required_parameter", f"Missing required parameter: '{param}'.", param
        )
    value = obj[key]
    # bool is an int subclass; JSON true is never a valid count or offset.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _ClientError("invalid_type", f"Invalid type for '{param}'.", param)
    return value


def _decode_audio(value: str, param: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _ClientError(
            "invalid_value", f"Invalid value for '{param}': not valid base64.", param
        ) from exc


def _normalize_item(item: Any) -> dict[str, Any]:
    """Validate a ``conversation.item.create`` item and return it as the server stores it.

    Accepts ``message`` items (user: input_text/input_audio/input_image; assistant:
    output_text; system: input_text), ``function_call`` and ``function_call_output``. Audio
    bytes are checked then dropped: items are stored and echoed without them.
    """
    if not isinstance(item, dict):
        raise _ClientError(
            "missing_required_parameter", "Missing required parameter: 'item'.", "item"
        )
    item_type = _require(item, "type", str, "item")
    item_id = item.get("id")
    if item_id is not None and not isinstance(item_id, str):
        raise _ClientError("invalid_type", "Invalid type for 'item.id'.", "item.id")
    stored: dict[str, Any] = {
        "id": item_id or _new_id("item"),
        "type": item_type,
        "object": "realtime.item",
        "status": "completed",
    }
    if item_type == "message":
        role = _require(item, "role", str, "item")
        allowed = _MESSAGE_CONTENT_TYPES.get(role)
        if allowed is None:
            raise _ClientError(
                "invalid_value",
                f"Invalid value: '{role}'. Supported values are: 'user', 'assistant', 'system'.",
                "item.role",
            )
        content = _require(item, "content", list, "item")
        stored["role"] = role
        stored["content"] = [_normalize_part(p, allowed, f"item.content[{i}]")
                             for i, p in enumerate(content)]  # fmt: skip
    elif item_type == "function_call_output":
        stored["call_id"] = _require(item, "call_id", str, "item")
        stored["output"] = _require(item, "output", str, "item")
    elif item_type == "function_call":
        stored["call_id"] = _require(item, "call_id", str, "item")
        stored["name"] = _require(item, "name", str, "item")
        stored["arguments"] = _require(item, "arguments", str, "item")
    else:
        raise _ClientError(
            "invalid_value",
            f"Invalid value: '{item_type}'. Supported values are: 'message', 'function_call', "
            "'function_call_output'.",
            "item.type",
        )
    return stored


def _normalize_part(part: Any, allowed: frozenset[str], path: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise _ClientError("invalid_type", f"Invalid type for '{path}'.", path)
    part_type = _require(part, "type", str, path)
    if part_type not in allowed:
        supported = ", ".join(f"'{t}'" for t in sorted(allowed))
        raise _ClientError(
            "invalid_value",
            f"Invalid value: '{part_type}'. Supported values are: {supported}.",
            f"{path}.type",
        )
    if part_type in ("input_text", "output_text"):
        return {"type": part_type, "text": _require(part, "text", str, path)}
    if part_type == "input_audio":
        _decode_audio(_require(part, "audio", str, path), f"{path}.audio")
        transcript = part.get("transcript")
        return {
            "type": part_type,
            "transcript": transcript if isinstance(transcript, str) else None,
        }
    return {"type": part_type, "image_url": _require(part, "image_url", str, path)}


def _usage(
    input_text: str, input_audio_ms: float, output_text: str, output_audio_ms: float
) -> dict[str, Any]:
    """Plausible token counts: ~4 characters per text token, 10 (in) / 20 (out) audio tokens/s."""
    in_text = max(1, math.ceil(len(input_text) / 4))
    in_audio = math.ceil(input_audio_ms / 100)
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


class _Auth(NamedTuple):
    present: bool
    matched: bool | None

    def accepted(self) -> bool:
        return self.present and self.matched is not False


def _single_header(headers: Headers, name: str) -> str | None:
    values = headers.get_all(name)
    return values[0] if len(values) == 1 else None


def _credential(headers: Headers) -> str | None:
    """The token of ``Authorization: Bearer <token>`` or Azure's ``api-key: <key>``."""
    authorization = _single_header(headers, "Authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    key = _single_header(headers, "api-key")
    if key is not None and key.strip():
        return key.strip()
    return None


def authenticate(headers: Headers, api_key: str | None) -> _Auth:
    """Check ``Authorization: Bearer <token>`` (or Azure's ``api-key: <key>``) against ``api_key``.

    ``api_key=None`` accepts any non-empty credential.
    """
    token = _credential(headers)
    if token is None:
        return _Auth(present=False, matched=None)
    if api_key is None:
        return _Auth(present=True, matched=None)
    return _Auth(present=True, matched=hmac.compare_digest(token.encode(), api_key.encode()))


def _wants_beta(headers: Headers) -> bool:
    for value in headers.get_all("OpenAI-Beta"):
        if any(part.strip().lower() == "realtime=v1" for part in value.split(",")):
            return True
    return False


def _redacted_headers(headers: Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.raw_items():
        key = name.lower()
        shown = _REDACTED if key in _SECRET_HEADERS else value
        out[key] = f"{out[key]}, {shown}" if key in out else shown
    return out


class _Connection:
    """One accepted WebSocket: reader, ordered writer, and the protocol handlers."""

    def __init__(
        self, sim: Simulator, ws: ServerConnection, session: SimSession, *, refuse_beta: bool
    ) -> None:
        self._sim = sim
        self._ws = ws
        self.session = session
        self._refuse_beta = refuse_beta
        self._outbox: asyncio.Queue[dict[str, Any] | _Close] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._buffer = bytearray()
        self._buffer_start = 0  # session audio position (bytes) of self._buffer[0]
        self._vad = EnergyVad()
        self._vad_item_id: str | None = None  # the user item the current speech will become
        self._pending_reply_ms: float | None = None
        self._active: _Response | None = None
        self._tool_output: str | None = None  # the last function_call_output, for the reply
        self._audio_ms: dict[str, float] = {}  # assistant item id -> audio sent, for truncate
        self._conversation_id = _new_id("conv")
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_audio_append,
            "input_audio_buffer.commit": self._on_audio_commit,
            "input_audio_buffer.clear": self._on_audio_clear,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
            "conversation.item.create": self._on_item_create,
            "conversation.item.truncate": self._on_item_truncate,
        }

    # --- I/O shell ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes; every child task ends with it."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._spawn(self._write_loop())
                if self._refuse_beta:
                    self._emit_error(_ClientError("beta_api_shape_disabled", BETA_MESSAGE), None)
                    self._outbox.put_nowait(_Close(BETA_CLOSE_CODE, BETA_MESSAGE))
                else:
                    self._emit("session.created", session=self.session.config)
                    if self._sim.faults.session_cap_s is not None:
                        self._spawn(self._enforce_cap(self._sim.faults.session_cap_s))
                await self._read_loop()
                for task in list(self._tasks):
                    task.cancel()
        finally:
            self._active = None
            self.session.closed = True
            self.session.close_code = self._ws.close_code
            self._sim._notify()
            log.info("sim session %s closed (code %s)", self.session.id, self._ws.close_code)

    async def _enforce_cap(self, cap_s: float) -> None:
        await asyncio.sleep(cap_s)
        message = f"Your session hit the maximum duration of {cap_s:g} seconds."
        self._emit_error(_ClientError("session_expired", message), None)
        self._outbox.put_nowait(_Close(1001, message))
        self._sim.capped += 1

    def abort(self) -> None:
        """Drop the TCP connection now, without a close frame."""
        self._ws.transport.abort()

    def stall(self) -> None:
        """Stop reading: pings go unanswered, as on a half-open link."""
        self._ws.transport.pause_reading()

    def close_soon(self, code: int, reason: str) -> None:
        self._outbox.put_nowait(_Close(code, reason))

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
                command = await self._outbox.get()
                if isinstance(command, _Close):
                    if command.abort:
                        self._ws.transport.abort()
                    else:
                        await self._ws.close(command.code, command.reason)
                    return
                if self._sim.record:
                    self.session.sent.append(command)
                self._sim._notify()
                await self._ws.send(json.dumps(command))
        except ConnectionClosed:
            pass

    def _emit(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """Queue a server event (deep-copied, so later state changes never alter it)."""
        event = {"type": event_type, "event_id": _new_id("event"), **copy.deepcopy(fields)}
        self._outbox.put_nowait(event)
        return event

    def _emit_error(self, exc: _ClientError, client_event_id: str | None) -> None:
        self._emit(
            "error",
            error={
                "type": exc.error_type,
                "code": exc.code,
                "message": exc.message,
                "param": exc.param,
                "event_id": client_event_id,
            },
        )

    # --- dispatch -------------------------------------------------------------------------

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._emit_error(
                _ClientError("invalid_type", "Binary frames are not supported; send JSON text."),
                None,
            )
            return
        try:
            event = json.loads(message)
        except ValueError:
            self._emit_error(
                _ClientError("invalid_json", "We could not parse the JSON body of your request."),
                None,
            )
            return
        if not isinstance(event, dict):
            self._emit_error(
                _ClientError("invalid_type", "Client events must be JSON objects."), None
            )
            return
        if self._sim.record:
            self.session.received.append(event)
        self._sim._notify()
        if self._refuse_beta:
            return
        raw_id = event.get("event_id")
        client_event_id = raw_id if isinstance(raw_id, str) else None
        try:
            self._dispatch(event)
        except _ClientError as exc:
            self._emit_error(exc, client_event_id)

    def _dispatch(self, event: dict[str, Any]) -> None:
        event_type = event.get("type")
        if not isinstance(event_type, str):
            raise _ClientError(
                "missing_required_parameter", "Missing required parameter: 'type'.", "type"
            )
        fault_code = self._sim.faults.error_on.get(event_type)
        if fault_code:
            raise _ClientError(fault_code, f"Simulated failure for '{event_type}'.")
        handler = self._handlers.get(event_type)
        if handler is None:
            supported = ", ".join(f"'{t}'" for t in self._handlers)
            raise _ClientError(
                "invalid_value",
                f"Invalid value: '{event_type}'. Supported values are: {supported}.",
                "type",
            )
        handler(event)

    # --- session --------------------------------------------------------------------------

    def _on_session_update(self, event: dict[str, Any]) -> None:
        patch = event.get("session")
        _validate_session_patch(patch, self.session.config)
        config = deep_merge(self.session.config, patch)
        input_patch = _get(patch, "audio", "input")
        if isinstance(input_patch, dict) and "turn_detection" in input_patch:
            config["audio"]["input"]["turn_detection"] = _effective_turn_detection(
                _get(self.session.config, "audio", "input", "turn_detection"),
                input_patch["turn_detection"],
            )
        self.session.config = config
        if self._vad_params() is None:
            self._forget_speech()
        self._emit("session.updated", session=self.session.config)

    # --- input audio ----------------------------------------------------------------------

    def _on_audio_append(self, event: dict[str, Any]) -> None:
        audio = _decode_audio(_require(event, "audio", str, ""), "audio")
        self._buffer += audio
        params = self._vad_params()
        for edge in self._vad.feed(audio, params):
            assert params is not None  # the VAD reports no edges while off
            if edge.started:
                self._on_speech_started(edge, params)
            else:
                self._on_speech_stopped(edge, params)

    def _on_audio_commit(self, event: dict[str, Any]) -> None:
        # A manual commit during speech takes the item id speech_started announced.
        item_id = self._vad_item_id or _new_id("item")
        buffered_ms = len(self._buffer) / BYTES_PER_MS
        self._drop_buffer()
        if buffered_ms < MIN_COMMIT_MS:
            raise _ClientError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms:.2f}ms of audio.",
            )
        self._commit(item_id, buffered_ms)

    def _drop_buffer(self) -> None:
        """Empty the input buffer; the VAD's current speech (if any) goes with it."""
        self._buffer_start += len(self._buffer)
        self._buffer.clear()
        self._forget_speech()

    def _forget_speech(self) -> None:
        self._vad.reset()
        self._vad_item_id = None

    def _commit(self, item_id: str, spoken_ms: float) -> None:
        """Turn committed audio into a user item; ``spoken_ms`` is what the reply reports."""
        item = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        previous = self._insert_item(item, len(self.session.items))
        self._pending_reply_ms = spoken_ms
        self._emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item["id"])
        self._emit("conversation.item.added", previous_item_id=previous, item=item)
        self._emit("conversation.item.done", previous_item_id=previous, item=item)
        if _get(self.session.config, "audio", "input", "transcription") is not None:
            self._spawn(self._transcribe(item, spoken_ms))

    # --- server VAD -----------------------------------------------------------------------

    def _vad_params(self) -> VadParams | None:
        return VadParams.from_turn_detection(
            _get(self.session.config, "audio", "input", "turn_detection")
        )

    def _on_speech_started(self, edge: VadEdge, params: VadParams) -> None:
        # Prefix padding reaches back at most to the start of the current buffer.
        buffer_start_ms = self._buffer_start // BYTES_PER_MS
        audio_start_ms = max(buffer_start_ms, edge.at_ms - params.prefix_padding_ms)
        self._vad_item_id = _new_id("item")
        self._emit(
            "input_audio_buffer.speech_started",
            audio_start_ms=audio_start_ms,
            item_id=self._vad_item_id,
        )
        active = self._active
        # Only a response writing to the default conversation is interrupted (as documented).
        if params.interrupt_response and active is not None and active.in_conversation:
            self._cancel_response(active, "turn_detected")

    def _on_speech_stopped(self, edge: VadEdge, params: VadParams) -> None:
        item_id = self._vad_item_id or _new_id("item")
        self._vad_item_id = None
        self._emit("input_audio_buffer.speech_stopped", audio_end_ms=edge.at_ms, item_id=item_id)
        # Commit the buffer up to audio_end_ms; audio appended after it starts the next one.
        cut = min(len(self._buffer), max(0, edge.at_ms * BYTES_PER_MS - self._buffer_start))
        del self._buffer[:cut]
        self._buffer_start += cut
        self._commit(item_id, edge.speech_ms)
        if not params.create_response:
            return
        if self._active is not None:
            # interrupt_response false and the model still talking: no automatic response.
            log.info("sim VAD: response %s still active, no automatic reply", self._active.id)
            return
        self._start_response({})

    async def _transcribe(self, item: dict[str, Any], buffered_ms: float) -> None:
        await asyncio.sleep(TRANSCRIPTION_DELAY_S)
        transcript = f"({buffered_ms / 1000:.1f} seconds of speech)"
        item["content"][0]["transcript"] = transcript
        audio_tokens = math.ceil(buffered_ms / 100)
        text_tokens = math.ceil(len(transcript) / 4)
        self._emit(
            "conversation.item.input_audio_transcription.completed",
            item_id=item["id"],
            content_index=0,
            transcript=transcript,
            usage={
                "type": "tokens",
                "input_tokens": audio_tokens,
                "output_tokens": text_tokens,
                "total_tokens": audio_tokens + text_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
            },
        )

    def _on_audio_clear(self, event: dict[str, Any]) -> None:
        self._drop_buffer()
        self._emit("input_audio_buffer.cleared")

    # --- conversation ---------------------------------------------------------------------

    def _insert_item(self, item: dict[str, Any], index: int) -> str | None:
        """Insert ``item`` at ``index``; return the id of the item before it (or None)."""
        self.session.items.insert(index, item)
        return self.session.items[index - 1]["id"] if index > 0 else None

    def _find_item(self, item_id: str) -> dict[str, Any] | None:
        return next((i for i in self.session.items if i.get("id") == item_id), None)

    def _on_item_create(self, event: dict[str, Any]) -> None:
        item = _normalize_item(event.get("item"))
        if self._find_item(item["id"]) is not None:
            raise _ClientError(
                "invalid_value", f"Item with id '{item['id']}' already exists.", "item.id"
            )
        previous_id = event.get("previous_item_id")
        if previous_id is None:
            index = len(self.session.items)
        elif previous_id == "root":
            index = 0
        else:
            ids = [i.get("id") for i in self.session.items]
            if previous_id not in ids:
                raise _ClientError(
                    "invalid_value",
                    f"Item with item_id not found: {previous_id}",
                    "previous_item_id",
                )
            index = ids.index(previous_id) + 1
        previous = self._insert_item(item, index)
        self._emit("conversation.item.added", previous_item_id=previous, item=item)
        self._emit("conversation.item.done", previous_item_id=previous, item=item)
        if item.get("type") == "function_call_output":
            self._tool_output = str(item.get("output", ""))

    def _on_item_truncate(self, event: dict[str, Any]) -> None:
        item_id = _require(event, "item_id", str, "")
        content_index = _require(event, "content_index", int, "")
        audio_end_ms = _require(event, "audio_end_ms", int, "")
        if audio_end_ms < 0:
            raise _ClientError(
                "invalid_value", "'audio_end_ms' must not be negative.", "audio_end_ms"
            )
        item = self._find_item(item_id)
        if item is None:
            raise _ClientError(
                "invalid_value", f"Item with item_id not found: {item_id}", "item_id"
            )
        content = item.get("content") or []
        if (
            item.get("role") != "assistant"
            or not 0 <= content_index < len(content)
            or content[content_index].get("type") != "output_audio"
        ):
            raise _ClientError(
                "unsupported_content_type",
                "Only model output audio messages can be truncated",
                "item_id",
            )
        # ceil: any rounding of the exact played duration is accepted, anything beyond is not.
        audio_ms = math.ceil(self._audio_ms.get(item_id, 0.0))
        if audio_end_ms > audio_ms:
            raise _ClientError(
                "invalid_value",
                f"Audio content of {audio_ms}ms is already shorter than {audio_end_ms}ms",
                "audio_end_ms",
            )
        # As the real server does: drop the transcript so no unheard text stays in context.
        content[content_index]["transcript"] = None
        self.session.truncations.append(Truncation(item_id, content_index, audio_end_ms))
        self._emit(
            "conversation.item.truncated",
            item_id=item_id,
            content_index=content_index,
            audio_end_ms=audio_end_ms,
        )

    # --- responses ------------------------------------------------------------------------

    def _on_response_create(self, event: dict[str, Any]) -> None:
        if self._active is not None:
            raise _ClientError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        self._start_response(_validate_response_options(event.get("response")))

    def _start_response(self, options: dict[str, Any]) -> None:
        """Start a response (none may be active) replying to the last committed audio."""
        modalities = (
            options.get("output_modalities")
            or self.session.config.get("output_modalities")
            or ["audio"]
        )
        reply_ms, self._pending_reply_ms = self._pending_reply_ms, None
        text = (
            f"You spoke for {reply_ms / 1000:.1f} seconds."
            if reply_ms is not None
            else "I did not hear anything."
        )
        tool_output, self._tool_output = self._tool_output, None
        if tool_output is not None:
            text = f"The tool answered: {tool_output[:120]}"
        declared = {t.get("name") for t in self.session.config.get("tools") or []}
        tool_call = None
        if tool_output is None and self._sim.tool_calls and self._sim.tool_calls[0][0] in declared:
            tool_call = self._sim.tool_calls.pop(0)
        response = _Response(
            id=_new_id("resp"),
            item_id=_new_id("item"),
            modalities=list(modalities),
            in_conversation=options.get("conversation", "auto") != "none",
            metadata=options.get("metadata"),
            text=text,
            instructions=options.get("instructions")
            or self.session.config.get("instructions")
            or "",
            input_audio_ms=reply_ms or 0.0,
            tool_call=tool_call,
        )
        self._active = response
        response.task = self._spawn(self._run_response(response))

    def _on_response_cancel(self, event: dict[str, Any]) -> None:
        response = self._active
        wanted = event.get("response_id")
        if response is None or (wanted is not None and wanted != response.id):
            raise _ClientError(
                "response_cancel_not_active", "Cancellation failed: no active response found"
            )
        self._cancel_response(response, "client_cancelled")

    def _cancel_response(self, response: _Response, reason: str) -> None:
        """End the active ``response`` with ``response.done`` cancelled for ``reason``."""
        # The task is suspended (handlers run on the same loop), so after cancel() it never
        # resumes normal execution: no delta of it can be queued after this point.
        assert response.task is not None
        response.task.cancel()
        self._active = None
        if not response.created_sent:
            self._emit("response.created", response=self._response_object(response, "in_progress"))
        if response.item is not None:
            response.item["status"] = "incomplete"
            response.item["content"] = [self._final_part(response)]
        self._emit(
            "response.done",
            response=self._response_object(
                response, "cancelled", {"type": "cancelled", "reason": reason}
            ),
        )

    def _audio_mode(self, response: _Response) -> bool:
        return "audio" in response.modalities

    def _final_part(self, response: _Response) -> dict[str, Any]:
        if self._audio_mode(response):
            return {"type": "output_audio", "transcript": response.text_sent}
        return {"type": "output_text", "text": response.text_sent}

    def _response_object(
        self, response: _Response, status: str, status_details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        finished = status != "in_progress"
        output_audio = _get(self.session.config, "audio", "output") or {}
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": status_details,
            "output": [response.item] if finished and response.item is not None else [],
            "conversation_id": self._conversation_id if response.in_conversation else None,
            "output_modalities": response.modalities,
            "max_output_tokens": self.session.config.get("max_output_tokens", "inf"),
            "audio": {
                "output": {
                    "format": output_audio.get("format"),
                    "voice": output_audio.get("voice"),
                }
            },
            "usage": (
                _usage(
                    response.instructions,
                    response.input_audio_ms,
                    response.text_sent,
                    response.audio_bytes_sent / BYTES_PER_MS,
                )
                if finished
                else None
            ),
            "metadata": response.metadata,
        }

    async def _run_response(self, response: _Response) -> None:
        try:
            await self._stream_response(response)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A simulator bug must not take the connection down; report it like the server.
            log.exception("sim response %s failed", response.id)
            if self._active is response:
                self._active = None
                self._emit_error(
                    _ClientError(
                        "server_error", f"Simulator failure: {exc!r}", None, "server_error"
                    ),
                    None,
                )
                self._emit(
                    "response.done",
                    response=self._response_object(
                        response,
                        "failed",
                        {"type": "failed", "error": {"type": "server_error", "code": None}},
                    ),
                )

    async def _call_function(
        self, response: _Response, name: str, arguments: dict[str, Any]
    ) -> None:
        """A response that calls a function, as the GA server streams one."""
        call_id = _new_id("call")
        args = json.dumps(arguments)
        item: dict[str, Any] = {
            "id": response.item_id,
            "type": "function_call",
            "object": "realtime.item",
            "status": "in_progress",
            "name": name,
            "call_id": call_id,
            "arguments": "",
        }
        response.item = item
        self._emit("response.output_item.added", response_id=response.id, output_index=0, item=item)
        previous = self._insert_item(item, len(self.session.items))
        self._emit("conversation.item.added", previous_item_id=previous, item=item)
        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": 0}
        for start in range(0, len(args), 16):
            self._emit(
                "response.function_call_arguments.delta",
                **ids,
                call_id=call_id,
                delta=args[start : start + 16],
            )
            await asyncio.sleep(self._sim.burst_interval_s / 4)
        self._emit(
            "response.function_call_arguments.done",
            **ids,
            call_id=call_id,
            name=name,
            arguments=args,
        )
        item["status"] = "completed"
        item["arguments"] = args
        self._emit("response.output_item.done", response_id=response.id, output_index=0, item=item)
        self._emit("conversation.item.done", previous_item_id=previous, item=item)
        self._active = None
        self._emit("response.done", response=self._response_object(response, "completed"))

    async def _stream_response(self, response: _Response) -> None:
        delay = self._sim.faults.reply_delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        if self._sim.faults.fail_responses:
            raise RuntimeError("simulated response failure")
        self._emit("response.created", response=self._response_object(response, "in_progress"))
        response.created_sent = True
        if response.tool_call is not None:
            await self._call_function(response, *response.tool_call)
            return

        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": 0}
        item: dict[str, Any] = {
            "id": response.item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        response.item = item
        self._emit("response.output_item.added", response_id=response.id, output_index=0, item=item)
        previous: str | None = None
        if response.in_conversation:
            previous = self._insert_item(item, len(self.session.items))
            self._emit("conversation.item.added", previous_item_id=previous, item=item)

        audio_mode = self._audio_mode(response)
        part = {"type": "audio", "transcript": ""} if audio_mode else {"type": "text", "text": ""}
        self._emit("response.content_part.added", **ids, content_index=0, part=part)
        if audio_mode:
            await self._stream_audio(response, ids)
            self._emit("response.output_audio.done", **ids, content_index=0)
            self._emit(
                "response.output_audio_transcript.done",
                **ids,
                content_index=0,
                transcript=response.text,
            )
            done_part = {"type": "audio", "transcript": response.text}
        else:
            await self._stream_text(response, ids)
            self._emit("response.output_text.done", **ids, content_index=0, text=response.text)
            done_part = {"type": "text", "text": response.text}
        self._emit("response.content_part.done", **ids, content_index=0, part=done_part)

        item["status"] = "completed"
        item["content"] = [self._final_part(response)]
        self._emit("response.output_item.done", response_id=response.id, output_index=0, item=item)
        if response.in_conversation:
            self._emit("conversation.item.done", previous_item_id=previous, item=item)
        self._active = None
        self._emit("response.done", response=self._response_object(response, "completed"))
        if self._sim.faults.drop_after_response:
            self._outbox.put_nowait(_Close(1006, "", abort=True))

    async def _stream_audio(self, response: _Response, ids: dict[str, Any]) -> None:
        """Audio in ``burst_ms`` deltas, one per ``burst_interval_s``, words interleaved."""
        audio = await asyncio.to_thread(synthesize, response.text, SAMPLE_RATE)
        burst = max(2, BYTES_PER_MS * self._sim.burst_ms)
        chunks = [audio[i : i + burst] for i in range(0, len(audio), burst)]
        words = _WORD_RE.findall(response.text)
        words_sent = 0
        for index, chunk in enumerate(chunks):
            if index:
                await asyncio.sleep(self._sim.burst_interval_s)
            self._emit(
                "response.output_audio.delta",
                **ids,
                content_index=0,
                delta=base64.b64encode(chunk).decode("ascii"),
            )
            response.audio_bytes_sent += len(chunk)
            self._audio_ms[response.item_id] = response.audio_bytes_sent / BYTES_PER_MS
            due = math.ceil((index + 1) * len(words) / len(chunks))
            while words_sent < due:
                self._emit_transcript_delta(response, ids, words[words_sent])
                words_sent += 1
        for word in words[words_sent:]:  # only when there was no audio at all
            self._emit_transcript_delta(response, ids, word)

    def _emit_transcript_delta(self, response: _Response, ids: dict[str, Any], word: str) -> None:
        response.text_sent += word
        self._emit("response.output_audio_transcript.delta", **ids, content_index=0, delta=word)

    async def _stream_text(self, response: _Response, ids: dict[str, Any]) -> None:
        for index, word in enumerate(_WORD_RE.findall(response.text)):
            if index:
                await asyncio.sleep(self._sim.burst_interval_s)
            response.text_sent += word
            self._emit("response.output_text.delta", **ids, content_index=0, delta=word)


class Simulator:
    """A loopback Realtime GA server; one :class:`SimSession` per accepted connection.

    Constructing it does no I/O; :meth:`start` binds. Use as ``async with Simulator() as sim``.
    ``api_key=None`` accepts any bearer token (one is still required, as on the real API).
    Reply audio is sent as ``burst_ms`` of PCM per ``response.output_audio.delta``, one delta
    every ``burst_interval_s`` seconds, i.e. faster than real time with the defaults.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        burst_ms: int = 240,
        burst_interval_s: float = 0.05,
        faults: Faults | None = None,
        record: bool = True,
    ) -> None:
        if burst_ms <= 0:
            raise ValueError("burst_ms must be positive")
        if burst_interval_s < 0:
            raise ValueError("burst_interval_s must not be negative")
        self.host = host
        self.port = port
        self.burst_ms = burst_ms
        self.burst_interval_s = burst_interval_s
        self.faults = faults if faults is not None else Faults()
        self.record = record
        self.tool_calls: list[tuple[str, dict[str, Any]]] = []
        """Queued function calls: the next response of a session that declares the named tool
        calls it (name, arguments) instead of speaking; the response after the tool's output
        then says what the tool answered."""
        """Keep every event in ``SimSession.received``/``sent`` (off for long soaks)."""
        self.sessions: list[SimSession] = []
        self.capped = 0
        """Sessions ended by the session cap (``Faults.session_cap_s``)."""
        self.refused = 0
        """Handshakes answered with an HTTP error (bad credential, outage)."""
        self._api_key = api_key
        self._connections: list[_Connection] = []
        self._minted: dict[str, float] = {}  # ek_ secret -> monotonic expiry
        self._server: Server | None = None
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        """``ws://host:port/v1/realtime``; meaningful after :meth:`start`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}{REALTIME_PATH}"

    async def start(self) -> None:
        """Bind and start accepting connections; afterwards :attr:`port` is the real port."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=None,
            compression=None,
            close_timeout=_CLOSE_TIMEOUT_S,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("Realtime simulator listening on %s", self.url)

    async def close(self) -> None:
        """Close every connection (code 1001) and the server. Idempotent.

        Raises :class:`TimeoutError` if connections do not finish closing within ~11 s.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        async with asyncio.timeout(2 * _CLOSE_TIMEOUT_S + 1):
            await server.wait_closed()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # The explicit timeout is the point of this test helper; it is applied with asyncio.timeout.
    async def wait_for(self, predicate: Callable[[Simulator], T], timeout: float) -> T:  # noqa: ASYNC109
        """Wait until ``predicate(self)`` is truthy and return its value.

        Re-evaluated whenever a session opens, closes, receives or sends an event.
        Raises :class:`TimeoutError` after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                result = predicate(self)
                if result:
                    return result
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()

    # --- fault injection ------------------------------------------------------------------

    def drop_all(self) -> None:
        """Abort every open connection's TCP stream at once (no close frame)."""
        for connection in list(self._connections):
            connection.abort()

    def stall_all(self) -> None:
        """Stop reading on every open connection: pings go unanswered (a half-open link)."""
        for connection in list(self._connections):
            connection.stall()

    def close_all(self, code: int, reason: str = "") -> None:
        """Close every open connection with ``code`` after what is already queued."""
        for connection in list(self._connections):
            connection.close_soon(code, reason)

    # --- ephemeral secrets ------------------------------------------------------------------

    def mint_secret(self, ttl_s: float) -> dict[str, Any]:
        """A client secret as OpenAI's ``POST /v1/realtime/client_secrets`` returns it.

        The simulator accepts it for new connections until it expires (``expires_at`` is
        wall-clock Unix seconds, as on the wire; enforcement uses the monotonic clock).
        """
        value = "ek_" + secrets.token_urlsafe(24)
        self._minted[value] = time.monotonic() + ttl_s
        now = time.monotonic()
        self._minted = {k: v for k, v in self._minted.items() if v > now - 60}
        wall = datetime.now(UTC).timestamp()
        return {"value": value, "expires_at": math.floor(wall + ttl_s)}

    def _secret_ttl(self, token: str | None) -> float | None:
        """Remaining lifetime of a minted secret, None if ``token`` is not one we minted."""
        if token is None or token not in self._minted:
            return None
        return self._minted[token] - time.monotonic()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        response = self._check_request(connection, request)
        if response is not None:
            self.refused += 1
            self._notify()
        return response

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != REALTIME_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if self.faults.refuse_connections:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
        ttl = self._secret_ttl(_credential(request.headers))
        if ttl is not None:
            if ttl <= 0:
                return _json_error(
                    connection,
                    HTTPStatus.UNAUTHORIZED,
                    "invalid_api_key",
                    "The client secret has expired.",
                )
            return None
        if not authenticate(request.headers, self._api_key).accepted():
            return _json_error(
                connection,
                HTTPStatus.UNAUTHORIZED,
                "invalid_api_key",
                "Missing or incorrect API key. Send 'Authorization: Bearer <key>'.",
            )
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None  # handshake completed
        query = parse_qs(urlsplit(request.path).query)
        model = query.get("model", [DEFAULT_MODEL])[0]
        auth = authenticate(request.headers, self._api_key)
        token = _credential(request.headers)
        ttl = self._secret_ttl(token)
        if ttl is not None:
            auth = _Auth(present=True, matched=True)
        session_id = _new_id("sess")
        session = SimSession(
            id=session_id,
            model=model,
            path=urlsplit(request.path).path,
            headers=_redacted_headers(request.headers),
            auth_present=auth.present,
            auth_matched=auth.matched,
            config=default_session_config(session_id, model),
            auth_fingerprint=(
                hashlib.sha256(token.encode()).hexdigest()[:12] if token is not None else None
            ),
            secret_ttl_s=ttl,
        )
        self.sessions.append(session)
        self._notify()
        log.info("sim session %s opened (model %s)", session_id, model)
        connection = _Connection(self, ws, session, refuse_beta=_wants_beta(request.headers))
        self._connections.append(connection)
        try:
            await connection.run()
        finally:
            self._connections.remove(connection)


def _json_error(
    connection: ServerConnection, status: HTTPStatus, code: str, message: str
) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code,
                      "param": None}}  # fmt: skip
    response = connection.respond(status, json.dumps(body))
    # Headers.__setitem__ appends, so replace the text/plain type explicitly.
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response
