"""One WebSocket connection to the Realtime API: the thin I/O shell around :class:`Protocol`.

The shell connects, configures the session, then only feeds received messages to the protocol
core, dispatches what comes out, and flushes the outbox. Everything it decides is in the core.
Opening (connect + configure + replay) and serving are separate steps, so the supervisor can
open the next session while the current one still serves (make-before-break).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect

from ..errors import LinkError
from ..events import ServerError
from .protocol import (
    FatalError,
    Incoming,
    Protocol,
    SessionConfigured,
    SessionCreated,
    SessionOptions,
)

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def session_url(url: str, model: str | None) -> str:
    """``url`` with ``model`` as a query parameter, unless the URL names one already or
    ``model`` is None (an ephemeral secret already binds the model)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if model and not any(key in ("model", "deployment") for key, _ in query):
        query.append(("model", model))
    return urlunsplit(parts._replace(query=urlencode(query)))


def auth_headers(auth: str, secret: str) -> dict[str, str]:
    """Headers carrying ``secret`` as ``auth`` says: ``bearer``, or Azure's ``api-key``."""
    if auth == "api-key":
        return {"api-key": secret}
    return {"Authorization": f"Bearer {secret}"}


class Link:
    """A single configured Realtime session over one WebSocket.

    Use: ``await open(prelude)``, then ``await serve()`` until the connection ends.
    ``on_event`` is called on the event loop for each incoming event after the session is
    configured. ``send`` never blocks: droppable events (audio appends) are refused when more
    than ``max_outbox`` messages wait; control events are always queued, so a commit is never
    lost behind audio.
    """

    def __init__(
        self,
        *,
        url: str,
        headers: dict[str, str],
        options: SessionOptions,
        on_event: Callable[[Incoming], None],
        setup_timeout_s: float = 10.0,
        ping_interval_s: float = 10.0,
        ping_timeout_s: float = 10.0,
        max_outbox: int = 500,
    ) -> None:
        self.url = url
        self._headers = headers
        self.protocol = Protocol(options)
        self._on_event = on_event
        self._setup_timeout_s = setup_timeout_s
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._max_outbox = max_outbox
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self.ready = False
        self.dropped = 0
        self.session_id: str | None = None
        self.opened_at: float | None = None
        """Monotonic time the session was configured."""
        self.server_expires_in_s: float | None = None
        """Session lifetime the server announced, counted from ``opened_at``."""
        self.expired = False
        """The server said ``session_expired`` (it hit its cap)."""

    def send(self, event: dict[str, Any], *, droppable: bool = False) -> bool:
        """Queue one client event; False if the link is not ready or the event was dropped."""
        if not self.ready:
            return False
        if droppable and self._outbox.qsize() >= self._max_outbox:
            self.dropped += 1
            return False
        self._outbox.put_nowait(json.dumps(event, separators=(",", ":")))
        return True

    async def open(self, prelude: list[dict[str, Any]] | None = None) -> None:
        """Connect, configure the session and send ``prelude`` (replayed items).

        Raises on failure (the connection is closed again); afterwards :attr:`ready` is True.
        """
        host = urlsplit(self.url).hostname or ""
        try:
            async with asyncio.timeout(self._setup_timeout_s):
                self._ws = await connect(
                    self.url,
                    additional_headers=self._headers,
                    # The SDK's settings: replies and retrieved items exceed websockets' 1 MiB
                    # default, and the server does not negotiate compression.
                    max_size=None,
                    compression=None,
                    open_timeout=self._setup_timeout_s,
                    # Keepalive is ours (see _keepalive): websockets' own waits close_timeout
                    # for a TCP close that a half-open link never delivers.
                    ping_interval=None,
                    close_timeout=2,
                    proxy=None if host in LOOPBACK_HOSTS else True,
                )
                await self._configure()
            for event in prelude or ():
                await self._ws.send(json.dumps(event, separators=(",", ":")))
        except BaseException:
            await self.close()
            raise
        self.opened_at = time.monotonic()
        self.ready = True

    async def serve(self) -> None:
        """Pump until the connection ends: returns on a clean close, raises otherwise
        (:class:`LinkError` for a fatal server error)."""
        assert self._ws is not None, "open() first"
        try:
            await self._pump()
        finally:
            self.ready = False
            await self.close()

    async def close(self, code: int = 1000) -> None:
        """Close the connection (idempotent; waits at most the close timeout)."""
        self.ready = False
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close(code)

    def _server_clock(self) -> float | None:
        assert self._ws is not None
        response = self._ws.response
        date = response.headers.get("Date") if response is not None else None
        if not date:
            return None
        try:
            return parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return None

    async def _configure(self) -> None:
        assert self._ws is not None
        await self._ws.send(json.dumps(self.protocol.session_update()))
        async for message in self._ws:
            for event in self.protocol.receive(message):
                if isinstance(event, FatalError):
                    raise LinkError(f"{event.code}: {event.message}", code=event.code, fatal=True)
                if isinstance(event, SessionCreated):
                    self.session_id = event.session_id
                    now = self._server_clock()
                    if event.expires_at is not None and now is not None:
                        self.server_expires_in_s = event.expires_at - now
                elif isinstance(event, SessionConfigured):
                    self.session_id = event.session_id or self.session_id
                    return
                elif isinstance(event, ServerError):
                    # The server refused our configuration: this session cannot serve turns.
                    raise LinkError(
                        f"session.update refused: {event.code}: {event.message}",
                        code=event.code,
                        fatal=True,
                    )
        raise LinkError("connection closed during session setup", code="setup_closed")

    async def _pump(self) -> None:
        tasks = {
            asyncio.create_task(self._reader()),
            asyncio.create_task(self._writer()),
            asyncio.create_task(self._keepalive()),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # re-raise why the connection ended; a clean close returns

    async def _reader(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            for event in self.protocol.receive(message):
                if isinstance(event, FatalError):
                    raise LinkError(f"{event.code}: {event.message}", code=event.code, fatal=True)
                if isinstance(event, ServerError) and event.code == "session_expired":
                    self.expired = True
                self._on_event(event)

    async def _keepalive(self) -> None:
        """Ping every ``ping_interval_s``; no pong within ``ping_timeout_s`` (the ping's own
        send included: a half-open link may block it) drops the connection at once."""
        assert self._ws is not None
        while True:
            await asyncio.sleep(self._ping_interval_s)
            try:
                async with asyncio.timeout(self._ping_timeout_s):
                    pong = await self._ws.ping()
                    await pong
            except TimeoutError:
                self._ws.transport.abort()
                raise LinkError(
                    f"no answer to a keepalive ping within {self._ping_timeout_s:g} s",
                    code="ping_timeout",
                ) from None

    async def _writer(self) -> None:
        assert self._ws is not None
        while True:
            message = await self._outbox.get()
            await self._ws.send(message)
