"""Serving one session until it ends or its successor takes over (make-before-break).

From the session's :class:`~.policy.RolloverPlan` on, the next session is opened in the
background (retried with backoff if it fails); it is swapped in at the next idle moment, and
at the latest at the plan's ``force_at``, and the old one is closed gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..events import LinkDown
from .link import Link
from .policy import Failure, RolloverPlan, backoff_delay, classify

__all__ = ["IDLE_POLL_S", "Retirements", "serve_until_replaced"]

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.1
"""While a prepared session waits for an idle moment, how often idleness is checked."""


class Retirements:
    """Replaced sessions closing in the background."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def retire(self, link: Link, serving: asyncio.Task[None]) -> None:
        """Close ``link`` gracefully; its serving task may end within 5 s."""

        async def retire() -> None:
            await link.close(1000)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(5):
                    await serving

        task = asyncio.create_task(retire(), name=f"retire {link.session_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def serve_until_replaced(
    link: Link,
    plan: RolloverPlan,
    *,
    open_next: Callable[[], Awaitable[Link]],
    is_idle: Callable[[], bool],
    stop: asyncio.Event,
    stop_reason: Callable[[], Failure],
    post: Callable[[Any], None],
    retirements: Retirements,
) -> tuple[Link | None, Failure | None]:
    """Serve ``link`` until it fails or ``stop`` is set (→ the failure) or a rollover replaces
    it (→ the next link, already open)."""
    serving = asyncio.create_task(link.serve(), name=f"session {link.session_id}")
    next_try, tries = plan.prepare_at, 0
    preparing: asyncio.Task[Link] | None = None
    stopped = asyncio.create_task(stop.wait(), name="stop")
    try:
        while True:
            if stopped.done():
                serving.cancel()
                await link.close()
                return None, stop_reason()
            now = time.monotonic()
            if preparing is None and now >= next_try:
                preparing = asyncio.create_task(open_next(), name="next session")
            if preparing is not None and preparing.done():
                exc = preparing.exception()
                if exc is not None:
                    tries += 1
                    next_try = now + backoff_delay(tries)
                    log.warning("could not open the next session yet: %s", classify(exc).detail)
                    preparing = None
                elif is_idle() or now >= plan.force_at:
                    next_link, preparing = preparing.result(), None
                    if not is_idle():
                        # Forced mid-turn: what the old session was doing for the turn is
                        # lost with it; the kiosk sends the turn again or says so.
                        post(LinkDown("rollover"))
                    retirements.retire(link, serving)
                    return next_link, None
            waiting: set[asyncio.Task[Any]] = {serving, stopped}
            if preparing is not None:
                waiting.add(preparing)
            timeout = IDLE_POLL_S if preparing is not None else max(0.0, next_try - now)
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
        stopped.cancel()
        if preparing is not None:
            preparing.cancel()
            if preparing.done() and not preparing.cancelled() and not preparing.exception():
                await preparing.result().close()
