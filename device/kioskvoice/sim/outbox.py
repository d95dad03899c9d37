"""The ordered outbox of one connection: server events and close commands in one queue.

Protocol handlers never touch the socket: they queue server events here, and the connection's
single writer drains the queue in order. The outbox carries control commands (:class:`Close`)
too, so "close with code X after these events" is ordered with the events themselves.
"""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass
from typing import Any

from kioskvoice.sim.session import new_id
from kioskvoice.sim.validation import ClientError

__all__ = ["Close", "Outbox"]


@dataclass(frozen=True)
class Close:
    """Outbox command: close the WebSocket with this code once earlier events are written."""

    code: int
    reason: str
    abort: bool = False
    """Drop the TCP connection instead, without a close frame (a network failure)."""


class Outbox:
    """What one connection will write, in order; :attr:`queue` is drained by its writer."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | Close] = asyncio.Queue()

    def emit(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """Queue a server event (deep-copied, so later state changes never alter it)."""
        event = {"type": event_type, "event_id": new_id("event"), **copy.deepcopy(fields)}
        self.queue.put_nowait(event)
        return event

    def error(self, exc: ClientError, client_event_id: str | None = None) -> None:
        """Queue the ``error`` event that tells the client about ``exc``."""
        self.emit(
            "error",
            error={
                "type": exc.error_type,
                "code": exc.code,
                "message": exc.message,
                "param": exc.param,
                "event_id": client_event_id,
            },
        )

    def close(self, code: int, reason: str, *, abort: bool = False) -> None:
        """Queue a close (or, with ``abort``, a TCP abort) after the events queued so far."""
        self.queue.put_nowait(Close(code, reason, abort))
