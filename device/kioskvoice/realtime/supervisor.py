"""Keeps a Realtime session available: connects, classifies failures, backs off, reconnects,
rolls sessions over before their cap and replays the conversation into each new one.

Every decision is a pure function of :mod:`.policy` (fatal or not, backoff, the session's
lifetime and rollover times, the pacing of new sessions) or of :class:`.history.History` (what
a new session is told); the supervisor only applies them, on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..config import RealtimeSettings
from ..events import LinkDown, LinkFatal, LinkState, LinkUp, ResponseDone
from ..system.logging import log_event
from .credentials import Credentials
from .history import History
from .link import Link
from .opener import Opener
from .policy import Failure, backoff_delay, classify, plan_rollover, session_lifetime
from .protocol import Incoming, Protocol, SessionOptions
from .rollover import Retirements, serve_until_replaced

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)


class Supervisor:
    """Keeps one configured session current and replaces it when it ends or ages out.

    ``post`` receives :class:`LinkUp`, :class:`LinkDown`, :class:`LinkFatal` and every event of
    the *current* session, on the event loop (events of a session being opened or retired are
    dropped). ``is_idle`` tells when a rollover may swap sessions without cutting a turn.

    Rollover (make-before-break, see :func:`.policy.plan_rollover`): before the earlier of the
    server's announced ``expires_at`` and ``session_max_s``, the next session is opened,
    configured and seeded with the recent turns in the background; the swap happens at the
    next idle moment, and at the latest just before the cap. New sessions are paced
    (:class:`.policy.SessionPacer`) whatever the server announces.

    A reply that fails for a reason only an operator can fix (quota, permission, model) ends
    the session as fatally as a refused key: error state, and a retry every ``fatal_retry_s``.
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
        self.session_max_s: float | None = getattr(settings, "session_max_s", None)
        """None: follow the server's announced ``expires_at``."""
        self.link: Link | None = None
        self.state = LinkState.DOWN
        self.sessions = 0
        self.rollovers = 0
        self.failed_rollovers = 0
        self.resets = 0
        self.last_error: str | None = None
        self.history = History(2 * settings.replay_turns)
        options = SessionOptions(
            instructions=settings.instructions,
            voice=settings.voice,
            transcribe_input=settings.transcribe_input,
            tools=tuple(tools),
        )
        self.opener = Opener(settings, credentials, options, self.history)
        self._fresh_secret_tried = False
        self._logged_fatal: str | None = None
        self._retirements = Retirements()
        self._stop = asyncio.Event()
        self._stop_reason: Failure | None = None

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
        self._end_session(Failure("reset", False, "conversation reset"))

    def send(
        self, build: Callable[..., dict[str, Any]], *args: Any, droppable: bool = False
    ) -> bool:
        """Build a client event with the current session's protocol (``build(protocol, *args)``,
        e.g. ``Protocol.commit``) and send it; False when no session is ready or it was dropped."""
        link = self.link
        if link is None or not link.ready:
            return False
        event = build(link.protocol, *args)
        if event["type"] == "conversation.item.truncate":
            self.history.truncated(event["item_id"], event["audio_end_ms"])
        return link.send(event, droppable=droppable)

    def _end_session(self, failure: Failure) -> None:
        if self._stop_reason is None or failure.fatal:
            self._stop_reason = failure
        self._stop.set()

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
                self.link = None
                if failure.code == "reset":
                    self.resets += 1
                    self._post(LinkDown("reset"))
                    log_event(log, logging.INFO, "conversation_reset", "new visitor: new session")
                    link = None
                    continue
                if time.monotonic() - served_from >= self.healthy_after_s:
                    attempt = 0
                if link.expired or failure.close_code == 1001:
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
            self._retirements.cancel()

    def _failure(self, exc: BaseException) -> Failure:
        failure = classify(exc)
        if not self.credentials.ephemeral:
            return failure
        refused_model = failure.code in ("http_400", "invalid_model", "missing_model")
        if refused_model and not self.opener.omit_model:
            # Reports differ on whether ?model= may accompany an ek_ secret; the secret binds
            # the model anyway, so try once more without it.
            self.opener.omit_model = True
            return Failure("retry_without_model", False, failure.detail)
        if failure.fatal and failure.auth and not self._fresh_secret_tried:
            # A minted secret may have expired on the way: one more try with a fresh one.
            self._fresh_secret_tried = True
            return Failure(failure.code, False, f"{failure.detail}; trying a fresh secret")
        return failure

    async def _back_off(self, failure: Failure, attempt: int, session_id: str | None) -> None:
        self.state = LinkState.DOWN
        self.link = None
        self.last_error = failure.code
        level = logging.WARNING
        if failure.fatal:
            delay = self.fatal_retry_s
            self._post(LinkFatal(failure.code, failure.detail))
            # The cause is logged once, not at every slow retry.
            level = logging.DEBUG if failure.code == self._logged_fatal else logging.ERROR
            self._logged_fatal = failure.code
        else:
            delay = 0.0 if failure.code == "retry_without_model" else backoff_delay(attempt)
            self._post(LinkDown(failure.code))
        log_event(
            log,
            level,
            "disconnect",
            f"realtime link down: {failure.detail}; retrying in {delay:.1f} s",
            error_code=failure.code,
            session=session_id,
        )
        await asyncio.sleep(delay)

    async def _open_link(self) -> Link:
        return await self.opener.open(self._route, on_secret=self._arm_stop)

    def _arm_stop(self) -> None:
        """A reset asked for from now on replaces the session being opened too."""
        if self._stop_reason is None or not self._stop_reason.fatal:
            self._stop.clear()
            self._stop_reason = None

    def _take_stop(self) -> Failure:
        failure, self._stop_reason = self._stop_reason, None
        self._stop.clear()
        return failure or Failure("reset", False, "conversation reset")

    def _route(self, link: Link, event: Incoming) -> None:
        """An event of ``link``: the kiosk's business only if ``link`` is current."""
        if link is not self.link or self.history.observe(event):
            return
        self._post(event)
        if isinstance(event, ResponseDone) and event.fatal:
            detail = f"a reply failed with {event.code}: every reply will, until an operator acts"
            self._end_session(Failure(event.code, True, detail))

    def _activate(self, link: Link) -> None:
        rolled = self.sessions > 0 and self.link is not None
        self.link = link
        self.sessions += 1
        self.state = LinkState.CONNECTED
        self._logged_fatal = None
        self._fresh_secret_tried = False
        if rolled:
            self.rollovers += 1
            event = "rollover"
        else:
            event = "connect" if self.sessions == 1 else "reconnect"
        log_event(
            log,
            logging.INFO,
            event,
            f"realtime session {link.session_id} ready ({len(self.history.replay())} items "
            "replayed)",
            session=link.session_id,
        )
        self._post(LinkUp(link.session_id or ""))

    async def _serve(self, link: Link) -> tuple[Link | None, Failure | None]:
        assert link.opened_at is not None
        lifetime = session_lifetime(self.session_max_s, link.server_expires_in_s)
        return await serve_until_replaced(
            link,
            plan_rollover(link.opened_at, lifetime, self.settings.rollover_margin_s),
            open_next=self._open_link,
            is_idle=self._is_idle,
            stop=self._stop,
            stop_reason=self._take_stop,
            post=self._post,
            retirements=self._retirements,
        )
