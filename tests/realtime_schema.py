"""Schema oracle for Realtime GA events, built from the official SDK's pydantic models.

Test-only (the kiosk never imports ``openai``). Two fixes over validating against the SDK's
unions directly, as realtime-protocol.md section 7 explains: the unions are rebuilt with a real
pydantic discriminator on ``type`` (one clear error instead of dozens), and ``model_extra`` is
walked, because SDK models allow extra keys and would let misspelled or beta-only fields pass.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Union

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

__all__ = [
    "CLIENT",
    "KNOWN_SERVER_EXTRAS",
    "PTT_SESSION",
    "SERVER",
    "assert_client_event",
    "assert_server_event",
    "unknown_keys",
]


def _discriminated(alias: Any) -> TypeAdapter[Any]:
    """TypeAdapter over the members of an SDK ``Annotated[Union[...], PropertyInfo]`` alias."""
    members = typing.get_args(typing.get_args(alias)[0])
    return TypeAdapter(Annotated[Union[members], Field(discriminator="type")])  # noqa: UP007


# The exact push-to-talk config of realtime-protocol.md section 4: a valid GA session.
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

CLIENT: TypeAdapter[Any] = _discriminated(RealtimeClientEvent)
SERVER: TypeAdapter[Any] = _discriminated(RealtimeServerEvent)

# The SDK types the session in session.created/.updated as the *request* shape, which lacks the
# identity fields the live GA server sends there (the REST response shape,
# RealtimeSessionCreateResponse, does declare them). Only these paths are tolerated.
_SESSION_IDENTITY = frozenset({"$.session.id", "$.session.object", "$.session.expires_at"})
# Live captures of the GA service (gauravzqa/llmgw capabilities/captures-ws.md, probes 7 and
# 8) show an ``obfuscation`` padding string on every content delta, which the SDK does not
# declare; and a failed response's ``status_details.error`` carries a ``message``
# (community.openai.com/t/incorrect-event-when-error-realtime-api/1005042).
_PADDING = frozenset({"$.obfuscation"})
KNOWN_SERVER_EXTRAS: dict[str, frozenset[str]] = {
    "session.created": _SESSION_IDENTITY,
    "session.updated": _SESSION_IDENTITY,
    "response.output_audio.delta": _PADDING,
    "response.output_audio_transcript.delta": _PADDING,
    "response.output_text.delta": _PADDING,
    "conversation.item.input_audio_transcription.delta": _PADDING,
    "response.done": frozenset({"$.response.status_details.error.message"}),
}


def unknown_keys(model: Any, path: str = "$") -> list[str]:
    """JSON paths of every key that no SDK model declares, recursively."""
    out: list[str] = []
    if isinstance(model, BaseModel):
        out += [f"{path}.{key}" for key in model.model_extra or {}]
        for name in type(model).model_fields:
            out += unknown_keys(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list):
        for index, value in enumerate(model):
            out += unknown_keys(value, f"{path}[{index}]")
    return out


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check(adapter: TypeAdapter[Any], event: Any, side: str) -> BaseModel:
    event_type = event.get("type") if isinstance(event, dict) else None
    try:
        model = adapter.validate_python(event)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {_shorten(err['msg'])}" for err in exc.errors()[:3]
        )
        raise AssertionError(
            f"invalid {side} event {event_type!r}: {problems}".replace("\n", " ")
        ) from None
    allowed = KNOWN_SERVER_EXTRAS.get(event_type, frozenset()) if side == "server" else frozenset()
    extra = [key for key in unknown_keys(model) if key not in allowed]
    if extra:
        raise AssertionError(f"{side} event {event_type!r} has unknown keys: {extra}")
    return model


def assert_client_event(event: Any) -> BaseModel:
    """Validate a client event dict; return the SDK model or raise a one-line AssertionError."""
    return _check(CLIENT, event, "client")


def assert_server_event(event: Any) -> BaseModel:
    """Validate a server event dict; return the SDK model or raise a one-line AssertionError."""
    return _check(SERVER, event, "server")
