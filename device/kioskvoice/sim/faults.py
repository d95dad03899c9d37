"""Fault injection: the switches tests (and ``kioskvoice simulate``) flip on a running simulator.

Read at named points: the handshake (``refuse_connections``), dispatch (``error_on``), the
session's start (``session_cap_s``, ``announced_expiry``), each response (``reply_delay_s``,
``fail_responses``, ``fail_code``, ``drop_after_response``) and each transcription
(``transcription_delay_s``).

What the real service does on its own (a bad key, a bad model, the session cap, a failed
reply's shape, late transcriptions) is the simulator's default behaviour, not a fault; the
faults choose *when* it happens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    and ``session.created`` announces it in ``expires_at``. None: the service's own cap, 60
    minutes (30 on the Azure path)."""

    announced_expiry: Any = None
    """Announce this in ``session.created`` instead of the real cap (which is still enforced):
    a number is seconds from now (negative: already expired); any other value is sent as
    ``expires_at`` verbatim, to test clients against nonsense. None: the truth."""

    drop_after_response: bool = False
    """Abort the TCP connection (no close frame) right after each ``response.done``."""

    fail_responses: bool = False
    """End every response at once: ``response.created``, then ``response.done`` with status
    ``failed`` and ``status_details.error.code`` = :attr:`fail_code`."""

    fail_code: str = "server_error"
    """Why failed responses fail: ``server_error`` (transient), ``insufficient_quota`` (the
    organisation's billing), ``inference_rate_limit_exceeded``, ..."""

    transcription_delay_s: float | None = None
    """Seconds from a commit to the user's ``...input_audio_transcription.completed`` (None:
    the default, about 1.3 s as on the real service, often after the reply's own
    transcript)."""
