"""What one simulated session is: the wire audio format, the config a fresh connection starts
with, how a ``session.update`` merges into it, and :class:`SimSession`, the record tests read.
"""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

__all__ = [
    "BYTES_PER_MS",
    "DEFAULT_INSTRUCTIONS",
    "DEFAULT_VOICE",
    "SAMPLE_RATE",
    "SimSession",
    "Truncation",
    "deep_merge",
    "default_session_config",
    "lookup",
    "new_id",
]

DEFAULT_INSTRUCTIONS: Final = (
    "You are a helpful voice assistant. Answer briefly and speak clearly. "
    "(This is the kioskvoice Realtime simulator.)"
)
DEFAULT_VOICE: Final = "alloy"
SAMPLE_RATE: Final = 24000
BYTES_PER_MS: Final = SAMPLE_RATE * 2 // 1000  # PCM16 mono


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
    cap_s: float | None = None
    """Age at which the server cuts the session (``session_expired``, close 1001)."""
    refused: str | None = None
    """Why the upgraded connection was refused at once (the close reason, e.g.
    ``invalid_request_error.invalid_api_key``); None for a session that opened."""

    def sent_of_type(self, event_type: str) -> list[dict[str, Any]]:
        """The sent events of one type, in order."""
        return [e for e in self.sent if e.get("type") == event_type]


def new_id(prefix: str) -> str:
    """A server-side id (session, item, response, event...) in the GA shape ``prefix_...``."""
    return f"{prefix}_{uuid.uuid4().hex[:22]}"


def default_session_config(session_id: str, model: str, expires_at: Any = None) -> dict[str, Any]:
    """The session a fresh GA connection starts with, as the real server announces it: server
    VAD on, voice ``alloy``, and ``expires_at`` (Unix seconds) when the session will be cut.

    The VAD runs (see :class:`~kioskvoice.sim.vad.EnergyVad`) until a client sets
    ``turn_detection`` to null.
    """
    pcm = {"type": "audio/pcm", "rate": SAMPLE_RATE}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "expires_at": expires_at,
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
            "output": {"format": dict(pcm), "voice": DEFAULT_VOICE, "speed": 1.0},
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


def lookup(obj: Any, *path: str) -> Any:
    """``obj[path[0]][path[1]]...``, or None where a step is missing or not an object."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj
