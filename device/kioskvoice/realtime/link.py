"""One WebSocket connection to the Realtime API: the thin I/O shell around :class:`Protocol`.

The shell connects, configures the session, then only feeds received messages to the protocol
core, dispatches what comes out, and flushes the outbox. Everything it decides is in the core.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect

from ..errors import LinkError
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


def session_url(url: str, model: str) -> str:
    """``url`` with ``model`` as a query parameter, unless the URL names one already."""
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

    ``on_event`` is called on the event loop for each incoming event once the session is
    configured (the setup events are consumed here). ``send`` never blocks: droppable events
    (audio appends) are refused when more than ``max_outbox`` messages wait; control events
    are always queued, so a commit is never lost behind audio.
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

    def send(self, event: dict[str, Any], *, droppable: bool = False) -> bool:
        """Queue one client event; False if the link is not ready or the event was dropped."""
        if not self.ready:
            return False
        if droppable and self._outbox.qsize() >= self._max_outbox:
            self.dropped += 1
            return False
        self._outbox.put_nowait(json.dumps(event, separators=(",", ":")))
        return True

    async def run(self, on_ready: Callable[[str], None]) -> None:
        """Connect, configure, then pump until the connection ends.

        Returns when the server closes cleanly; raises the connection's exception otherwise,
        or :class:`LinkError` for a fatal server error or a setup timeout.
        """
        host = urlsplit(self.url).hostname or ""
        async with asyncio.timeout(self._setup_timeout_s):
            self._ws = await connect(
                self.url,
                additional_headers=self._headers,
                # The SDK's settings: replies and retrieved items exceed websockets' 1 MiB
                # default, and the server does not negotiate compression.
                max_size=None,
                compression=None,
                open_timeout=self._setup_timeout_s,
                ping_interval=self._ping_interval_s,
                ping_timeout=self._ping_timeout_s,
                close_timeout=2,
                proxy=None if host in LOOPBACK_HOSTS else True,
            )
        try:
            async with asyncio.timeout(self._setup_timeout_s):
                await self._configure()
            self.ready = True
            on_ready(self.session_id or "")
            await self._pump()
        finally:
            self.ready = False
            await self._ws.close()

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        self.ready = False
        if self._ws is not None:
            await self._ws.close()

    async def _configure(self) -> None:
        assert self._ws is not None
        await self._ws.send(json.dumps(self.protocol.session_update()))
        async for message in self._ws:
            for event in self.protocol.receive(message):
                if isinstance(event, FatalError):
                    raise LinkError(f"{event.code}: {event.message}", code=event.code, fatal=True)
                if isinstance(event, SessionCreated):
                    self.session_id = event.session_id
                elif isinstance(event, SessionConfigured):
                    self.session_id = event.session_id or self.session_id
                    return
                else:
                    self._on_event(event)
        raise LinkError("connection closed during session setup", code="setup_closed")

    async def _pump(self) -> None:
        reader = asyncio.create_task(self._reader())
        writer = asyncio.create_task(self._writer())
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
        for task in done:
            task.result()  # re-raise why the connection ended; a clean close returns

    async def _reader(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            for event in self.protocol.receive(message):
                if isinstance(event, FatalError):
                    raise LinkError(f"{event.code}: {event.message}", code=event.code, fatal=True)
                self._on_event(event)

    async def _writer(self) -> None:
        assert self._ws is not None
        while True:
            message = await self._outbox.get()
            await self._ws.send(message)
