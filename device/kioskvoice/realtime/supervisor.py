"""Keeps a Realtime session available: connects, classifies failures, backs off, reconnects.

The retry policy is two pure functions, :func:`classify` and :func:`backoff_delay`, so it is
tested without sockets or clocks. The supervisor loop only applies them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
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
from .credentials import Credentials
from .link import Link, auth_headers, session_url
from .protocol import Incoming, Protocol, SessionOptions, Transcript

log = logging.getLogger(__name__)

FORCE_SWAP_S = 2.0
"""A prepared session is swapped in this long before the cap even mid-turn: the cap would
end the old session anyway."""
IDLE_POLL_S = 0.1


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
    """Keeps one configured session current and replaces it when it ends or ages out.

    ``post`` receives :class:`LinkUp`, :class:`LinkDown`, :class:`LinkFatal` and every event of
    the *current* session, on the event loop (events of a session being opened or retired are
    dropped). ``is_idle`` tells when a rollover may swap sessions without cutting a turn.

    Rollover (make-before-break): at ``min(session_max_s, server-announced lifetime) -
    rollover_margin_s`` the next session is opened, configured and seeded with the recent
    turns in the background; the swap happens at the next idle moment, and at the latest
    :data:`FORCE_SWAP_S` before the cap.
    """

    def __init__(
        self,
        settings: RealtimeSettings,
        credentials: Credentials,
        *,
        post: Callable[[Any], None],
        is_idle: Callable[[], bool] = lambda: True,
        healthy_after_s: float = 3.0,
        tools: Sequence[dict[str, Any]] = (),
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self._post = post
        self._is_idle = is_idle
        self.fatal_retry_s = settings.fatal_retry_s
        self.healthy_after_s = healthy_after_s
        self.link: Link | None = None
        self.state = LinkState.DOWN
        self.sessions = 0
        self.rollovers = 0
        self.failed_rollovers = 0
        self.last_error: str | None = None
        self.history: collections.deque[tuple[str, str]] = collections.deque(
            maxlen=2 * settings.replay_turns
        )
        self.options = SessionOptions(
            instructions=settings.instructions,
            voice=settings.voice,
            transcribe_input=settings.transcribe_input,
            tools=tuple(tools),
        )
        self._omit_model = False
        self._retiring: set[asyncio.Task[None]] = set()
        self._reset = asyncio.Event()
        self.resets = 0

    @property
    def reconnects(self) -> int:
        """Sessions established after a failure (not rollovers, not resets)."""
        return max(0, self.sessions - 1 - self.rollovers - self.resets)

    @property
    def session_age_s(self) -> float | None:
        link = self.link
        if link is None or link.opened_at is None:
            return None
        return time.monotonic() - link.opened_at

    @staticmethod
    def session_request(settings: RealtimeSettings) -> dict[str, Any]:
        """The session a token broker is asked to mint a secret for."""
        options = SessionOptions(settings.instructions, settings.voice, settings.transcribe_input)
        return {**Protocol(options).session_config(), "model": settings.model}

    def reset(self) -> None:
        """New visitor: forget the remembered turns and replace the current session (whose
        server-side conversation holds them) with a fresh one. The kiosk is told the link
        went down meanwhile, so no turn can reach the old conversation."""
        self.history.clear()
        self._reset.set()

    def send(
        self, build: Callable[..., dict[str, Any]], *args: Any, droppable: bool = False
    ) -> bool:
        """Build a client event with the current session's protocol (``build(protocol, *args)``,
        e.g. ``Protocol.commit``) and send it; False when no session is ready or it was dropped."""
        link = self.link
        if link is None or not link.ready:
            return False
        return link.send(build(link.protocol, *args), droppable=droppable)

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled."""
        attempt = 0
        link: Link | None = None
        try:
            while True:
                if link is None:
                    self.state = LinkState.CONNECTING
                    try:
                        link = await self._open_link()
                    except Exception as exc:
                        await self._back_off(self._failure(exc), attempt, None)
                        attempt += 1
                        continue
                self._activate(link)
                served_from = time.monotonic()
                next_link, failure = await self._serve(link)
                if next_link is not None:
                    link = next_link
                    continue
                assert failure is not None
                if failure.code == "reset":
                    self.resets += 1
                    self.link = None
                    self._post(LinkDown("reset"))
                    log_event(log, logging.INFO, "conversation_reset", "new visitor: new session")
                    link = None
                    continue
                if time.monotonic() - served_from >= self.healthy_after_s:
                    attempt = 0
                if link.expired or failure.code == "close_1001":
                    self.failed_rollovers += 1
                    log_event(
                        log,
                        logging.WARNING,
                        "rollover_failed",
                        "the server ended the session at its cap before a rollover",
                        session=link.session_id,
                    )
                await self._back_off(failure, attempt, link.session_id)
                attempt += 1
                link = None
        finally:
            self.link = None
            self.state = LinkState.DOWN
            for task in list(self._retiring):
                task.cancel()

    def _failure(self, exc: BaseException) -> Failure:
        failure = classify(exc)
        if failure.code == "http_400" and self.credentials.ephemeral and not self._omit_model:
            # Reports differ on whether ?model= may accompany an ek_ secret; the secret binds
            # the model anyway, so try once more without it.
            self._omit_model = True
            return Failure("retry_without_model", False, "handshake refused with HTTP 400")
        return failure

    async def _back_off(self, failure: Failure, attempt: int, session_id: str | None) -> None:
        self.state = LinkState.DOWN
        self.link = None
        self.last_error = failure.code
        if failure.fatal:
            delay = self.fatal_retry_s
            self._post(LinkFatal(failure.code, failure.detail))
        else:
            delay = 0.0 if failure.code == "retry_without_model" else backoff_delay(attempt)
            self._post(LinkDown(failure.code))
        log_event(
            log,
            logging.ERROR if failure.fatal else logging.WARNING,
            "disconnect",
            f"realtime link down: {failure.detail}; retrying in {delay:.1f} s",
            error_code=failure.code,
            session=session_id,
        )
        await asyncio.sleep(delay)

    async def _open_link(self) -> Link:
        """Fetch a fresh secret, connect, configure and replay the recent turns."""
        secret = await self.credentials.fetch()
        self._reset.clear()  # a reset asked for after this point replaces this session too
        model = None if self._omit_model else self.settings.model
        link: Link

        def on_event(event: Incoming) -> None:
            if link is not self.link:
                return  # a session being opened or retired: not the kiosk's business
            if isinstance(event, Transcript) and event.text.strip():
                self.history.append((event.role, event.text))
            self._post(event)

        link = Link(
            url=session_url(self.settings.url, model),
            headers=auth_headers(self.settings.auth, secret.value),
            options=self.options,
            on_event=on_event,
            setup_timeout_s=self.settings.connect_timeout_s,
            ping_interval_s=self.settings.ping_interval_s,
            ping_timeout_s=self.settings.ping_timeout_s,
        )
        await link.open([link.protocol.item_create(role, text) for role, text in self.history])
        return link

    def _activate(self, link: Link) -> None:
        rolled = self.sessions > 0 and self.link is not None
        self.link = link
        self.sessions += 1
        self.state = LinkState.CONNECTED
        if rolled:
            self.rollovers += 1
            event = "rollover"
        else:
            event = "connect" if self.sessions == 1 else "reconnect"
        log_event(
            log,
            logging.INFO,
            event,
            f"realtime session {link.session_id} ready ({len(self.history)} items replayed)",
            session=link.session_id,
        )
        self._post(LinkUp(link.session_id or ""))

    def _budget_s(self, link: Link) -> float:
        budget = self.settings.session_max_s
        if link.server_expires_in_s is not None:
            budget = min(budget, link.server_expires_in_s)
        return budget

    async def _serve(self, link: Link) -> tuple[Link | None, Failure | None]:
        """Serve ``link`` until it fails (→ its failure) or a rollover replaces it (→ the
        next link, already open and current-to-be)."""
        serving = asyncio.create_task(link.serve(), name=f"session {link.session_id}")
        assert link.opened_at is not None
        budget = self._budget_s(link)
        roll_at = link.opened_at + budget - self.settings.rollover_margin_s
        force_at = max(roll_at, link.opened_at + budget - FORCE_SWAP_S)
        next_try = roll_at
        tries = 0
        preparing: asyncio.Task[Link] | None = None
        reset = asyncio.create_task(self._reset.wait(), name="reset")
        try:
            while True:
                if reset.done():
                    serving.cancel()
                    await link.close()
                    return None, Failure("reset", False, "conversation reset")
                now = time.monotonic()
                if preparing is None and now >= next_try:
                    preparing = asyncio.create_task(self._open_link(), name="next session")
                if preparing is not None and preparing.done():
                    exc = preparing.exception()
                    if exc is not None:
                        tries += 1
                        next_try = now + backoff_delay(tries)
                        log.warning("could not open the next session yet: %s", classify(exc).detail)
                        preparing = None
                    elif self._is_idle() or now >= force_at:
                        next_link, preparing = preparing.result(), None
                        if not self._is_idle():
                            # Forced mid-turn: what the old session was doing for the turn
                            # is lost with it; the kiosk sends the turn again or says so.
                            self._post(LinkDown("rollover"))
                        self._retire(link, serving)
                        return next_link, None
                waiting: set[asyncio.Task[Any]] = {serving, reset}
                if preparing is not None:
                    waiting.add(preparing)
                    timeout = IDLE_POLL_S
                else:
                    timeout = max(0.0, next_try - now)
                done, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if serving in done:
                    exc = serving.exception()
                    if exc is None:
                        return None, Failure("closed", False, "the server closed the session")
                    return None, classify(exc)
        except asyncio.CancelledError:
            serving.cancel()
            await link.close()
            raise
        finally:
            reset.cancel()
            if preparing is not None:
                preparing.cancel()
                if preparing.done() and not preparing.cancelled() and not preparing.exception():
                    await preparing.result().close()

    def _retire(self, link: Link, serving: asyncio.Task[None]) -> None:
        """Close a replaced session gracefully in the background."""

        async def retire() -> None:
            await link.close(1000)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await serving

        task = asyncio.create_task(retire(), name=f"retire {link.session_id}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
