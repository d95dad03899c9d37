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
    "SERVER",
    "assert_client_event",
    "assert_server_event",
    "unknown_keys",
]


def _discriminated(alias: Any) -> TypeAdapter[Any]:
    """TypeAdapter over the members of an SDK ``Annotated[Union[...], PropertyInfo]`` alias."""
    members = typing.get_args(typing.get_args(alias)[0])
    return TypeAdapter(Annotated[Union[members], Field(discriminator="type")])  # noqa: UP007


CLIENT: TypeAdapter[Any] = _discriminated(RealtimeClientEvent)
SERVER: TypeAdapter[Any] = _discriminated(RealtimeServerEvent)

# The SDK types the session in session.created/.updated as the *request* shape, which lacks the
# identity fields the live GA server sends there (the REST response shape,
# RealtimeSessionCreateResponse, does declare them). Only these paths are tolerated.
_SESSION_IDENTITY = frozenset({"$.session.id", "$.session.object", "$.session.expires_at"})
KNOWN_SERVER_EXTRAS: dict[str, frozenset[str]] = {
    "session.created": _SESSION_IDENTITY,
    "session.updated": _SESSION_IDENTITY,
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
