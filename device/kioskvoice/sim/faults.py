"""Fault injection: the switches tests (and ``kioskvoice simulate``) flip on a running simulator.

Read at named points: the handshake (``refuse_connections``), dispatch (``error_on``), the
session's start (``session_cap_s``), each response (``reply_delay_s``, ``fail_responses``,
``drop_after_response``) and each transcription (``transcription_delay_s``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Faults"]


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

    transcription_delay_s: float | None = None
    """Seconds from a commit to the user's ``...input_audio_transcription.completed`` (None:
    the default); the real service takes 1.2-1.4 s, often finishing after the reply's own
    transcript."""
