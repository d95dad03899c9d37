"""Opening one session: paced, with a fresh secret, configured, and seeded with the
conversation so far (what :class:`~kioskvoice.realtime.supervisor.Supervisor` calls for at
start, after a failure, for a new visitor and for each rollover)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..config import RealtimeSettings
from ..system.logging import REDACTOR, log_event
from .credentials import Credentials
from .history import History
from .link import Link, auth_headers, session_url
from .policy import SessionPacer
from .protocol import Incoming, SessionOptions

__all__ = ["Opener"]

log = logging.getLogger(__name__)

SHORT_SECRET_S = 30.0
"""A fresh secret with less life than this left points at a skewed clock or a tiny ttl_s."""


class Opener:
    """Opens configured sessions: waits for the :class:`~.policy.SessionPacer`, fetches a
    secret, connects, configures and replays :attr:`history`."""

    def __init__(
        self,
        settings: RealtimeSettings,
        credentials: Credentials,
        options: SessionOptions,
        history: History,
        pacer: SessionPacer | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.options = options
        self.history = history
        self.pacer = pacer or SessionPacer()
        self.omit_model = False
        """Connect without ``?model=`` (an ephemeral secret binds the model already)."""

    async def open(
        self,
        on_event: Callable[[Link, Incoming], None],
        on_secret: Callable[[], None] = lambda: None,
    ) -> Link:
        """A new, configured session; ``on_event(link, event)`` gets its events,
        ``on_secret()`` is called once the secret is there, before the conversation so far is
        taken for the replay. Raises what the connection attempt raised."""
        wait_s = self.pacer.wait_s(time.monotonic())
        if wait_s > 0:
            log_event(
                log,
                logging.WARNING,
                "session_paced",
                f"too many new sessions: the next one waits {wait_s:.1f} s",
            )
            await asyncio.sleep(wait_s)
        self.pacer.take(time.monotonic())
        secret = await self.credentials.fetch()
        if secret.expires_at is not None:
            REDACTOR.add_ephemeral(secret.value)
            left_s = secret.expires_at - time.monotonic()
            if left_s < SHORT_SECRET_S:
                log_event(
                    log,
                    logging.WARNING,
                    "secret_short",
                    f"the token broker's secret expires in {left_s:.0f} s: check the broker's "
                    "clock and its ttl_s (a connection may fail to open in time)",
                    seconds_left=round(left_s),
                )
        on_secret()
        settings = self.settings
        link: Link = Link(
            url=session_url(settings.url, None if self.omit_model else settings.model),
            headers=auth_headers(settings.auth, secret.value),
            options=self.options,
            on_event=lambda event: on_event(link, event),
            setup_timeout_s=settings.connect_timeout_s,
            ping_interval_s=settings.ping_interval_s,
            ping_timeout_s=settings.ping_timeout_s,
        )
        replay = self.history.replay()
        await link.open([link.protocol.item_create(role, text) for role, text in replay])
        return link
