"""Keeps a Realtime session available: connects, classifies failures, backs off, reconnects.

The retry policy is two pure functions, :func:`classify` and :func:`backoff_delay`, so it is
tested without sockets or clocks. The supervisor loop only applies them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from ..config import RealtimeSettings
from ..errors import LinkError
from ..events import LinkDown, LinkFatal, LinkState, LinkUp
from ..system.logging import log_event
from .credentials import StaticKey
from .link import Link, auth_headers, session_url
from .protocol import Incoming, SessionOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a connection ended. ``fatal`` failures need an operator; they are retried only
    at the slow fatal interval so that a fixed config is picked up without a restart."""

    code: str
    fatal: bool
    detail: str


_FATAL_HTTP = {401: "unauthorized", 403: "forbidden", 404: "not_found"}


def classify(exc: BaseException) -> Failure:
    """Map an exception from a connection attempt or session to a :class:`Failure`."""
    if isinstance(exc, LinkError):
        return Failure(exc.code or "link_error", exc.fatal, str(exc))
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in _FATAL_HTTP:
            return Failure(_FATAL_HTTP[status], True, f"handshake refused with HTTP {status}")
        fatal = 400 <= status < 500 and status not in (408, 429)
        return Failure(f"http_{status}", fatal, f"handshake refused with HTTP {status}")
    if isinstance(exc, InvalidURI):
        return Failure("bad_url", True, "realtime.url is not a valid WebSocket URL")
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        reason = exc.rcvd.reason if exc.rcvd is not None else "no close frame"
        return Failure(f"close_{code}", False, f"connection closed ({code} {reason})".strip())
    if isinstance(exc, TimeoutError):
        return Failure("timeout", False, "timed out connecting or configuring the session")
    if isinstance(exc, OSError | InvalidHandshake):
        return Failure("network", False, f"{type(exc).__name__}: {exc}")
    return Failure("unexpected", False, f"{type(exc).__name__}: {exc}")


def backoff_delay(
    attempt: int,
    *,
    first_s: float = 0.5,
    cap_s: float = 30.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempt`` (0-based): doubling from ``first_s`` up to
    ``cap_s``, jittered into the upper half so that a fleet does not reconnect in lockstep.
    Attempt 0 waits at most ``first_s``."""
    ceiling = min(cap_s, first_s * (2 ** min(attempt, 32)))
    return ceiling * (0.5 + 0.5 * rng())


class Supervisor:
    """Owns the current :class:`Link` and replaces it when it ends.

    ``post`` receives :class:`LinkUp`, :class:`LinkDown`, :class:`LinkFatal` and every
    session event, on the event loop.
    """

    def __init__(
        self,
        settings: RealtimeSettings,
        credentials: StaticKey,
        *,
        post: Callable[[Any], None],
        fatal_retry_s: float = 300.0,
        healthy_after_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self._post = post
        self.fatal_retry_s = fatal_retry_s
        self.healthy_after_s = healthy_after_s
        self.link: Link | None = None
        self.state = LinkState.DOWN
        self.sessions = 0
        self.last_error: str | None = None
        self.options = SessionOptions(
            instructions=settings.instructions,
            voice=settings.voice,
            transcribe_input=settings.transcribe_input,
        )

    @property
    def reconnects(self) -> int:
        """Sessions established after the first one."""
        return max(0, self.sessions - 1)

    def send(
        self, build: Callable[..., dict[str, Any]], *args: Any, droppable: bool = False
    ) -> bool:
        """Build a client event with the current session's protocol (``build(protocol, *args)``,
        e.g. ``Protocol.commit``) and send it; False when no session is ready or it was dropped."""
        link = self.link
        if link is None or not link.ready:
            return False
        return link.send(build(link.protocol, *args), droppable=droppable)

    async def run(self) -> None:
        """Run forever (until cancelled)."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            self.state = LinkState.CONNECTING
            secret = await self.credentials.fetch()
            link = Link(
                url=session_url(self.settings.url, self.settings.model),
                headers=auth_headers(self.settings.auth, secret.value),
                options=self.options,
                on_event=self._on_event,
                setup_timeout_s=self.settings.connect_timeout_s,
            )
            self.link = link
            started = loop.time()
            try:
                await link.run(on_ready=self._on_ready)
                failure = Failure("closed", False, "the server closed the session")
            except asyncio.CancelledError:
                await link.close()
                raise
            except Exception as exc:
                failure = classify(exc)
            finally:
                self.link = None
            self.state = LinkState.DOWN
            self.last_error = failure.code
            healthy = link.session_id is not None and loop.time() - started >= self.healthy_after_s
            if healthy:
                attempt = 0
            if failure.fatal:
                delay = self.fatal_retry_s
                self._post(LinkFatal(failure.code, failure.detail))
            else:
                delay = backoff_delay(attempt)
                self._post(LinkDown(failure.code))
            attempt += 1
            log_event(
                log,
                logging.ERROR if failure.fatal else logging.WARNING,
                "disconnect",
                f"realtime link down: {failure.detail}; retrying in {delay:.1f} s",
                error_code=failure.code,
                session=link.session_id or "",
            )
            await asyncio.sleep(delay)

    def _on_ready(self, session_id: str) -> None:
        self.sessions += 1
        self.state = LinkState.CONNECTED
        log_event(
            log,
            logging.INFO,
            "connect" if self.sessions == 1 else "reconnect",
            f"realtime session {session_id} ready",
            session=session_id,
        )
        self._post(LinkUp(session_id))

    def _on_event(self, event: Incoming) -> None:
        self._post(event)
