"""One WebSocket connection to the Realtime API: the thin I/O shell around :class:`Protocol`.

The shell connects, configures the session, then only feeds received messages to the protocol
core, dispatches what comes out, and flushes the outbox. Everything it decides is in the core.
Opening (connect + configure + replay) and serving are separate steps, so the supervisor can
open the next session while the current one still serves (make-before-break).

However a connection ends, it ends in a :class:`LinkError` that carries what the policy needs:
the server's close code and the code of the last ``error`` before it (:class:`LinkClosed`), or
the error that refused the session's setup. The real service refuses a bad key or model
*after* the upgrade, with an ``error`` and a close in the same millisecond; messages received
before a close are still read, so the error's code is never lost to the race.
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
from websockets.exceptions import ConnectionClosed

from ..errors import LinkError
from ..events import ServerError
from .policy import code_from_reason, is_fatal
from .protocol import (
    FatalError,
    Incoming,
    Protocol,
    SessionConfigured,
    SessionCreated,
    SessionOptions,
)

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Largest message the link accepts (a minute of audio in one event is under 4 MiB); a larger
one closes the connection (1009), and the supervisor reconnects."""

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DRAIN_S = 0.5
"""After a close, how long messages received before it are still read."""
_ECHOES_SECRET = frozenset({"invalid_api_key"})
"""Error codes whose message quotes part of the credential: never logged."""


class LinkClosed(LinkError):
    """The server ended the connection: its close code and reason, and the code of the last
    ``error`` it sent before (or the one the reason names)."""

    def __init__(self, close_code: int, reason: str, error_code: str | None) -> None:
        if error_code == "invalid_request_error":  # an error type, not a code (code null)
            error_code = None
        self.close_code = close_code
        self.reason = reason
        self.error_code = error_code
        fatal = is_fatal(close_code, error_code)
        super().__init__(
            f"connection closed ({close_code} {reason})".replace(" )", ")"),
            code=error_code or f"close_{close_code}",
            fatal=fatal,
        )


def _refused(code: str, message: str, *, during: str) -> LinkError:
    """A LinkError for an ``error`` event; the message is left out where it quotes a key."""
    text = "" if code in _ECHOES_SECRET else f": {message}"
    return LinkError(f"{during}: {code}{text}", code=code, fatal=is_fatal(None, code))


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
        self.last_error_code: str | None = None
        """The code of the last ``error`` the server sent."""

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
            try:
                await self._open(host, prelude)
            except ConnectionClosed:
                raise await self._closed() from None
        except BaseException:
            await self.close()
            raise
        self.opened_at = time.monotonic()
        self.ready = True

    async def _open(self, host: str, prelude: list[dict[str, Any]] | None) -> None:
        async with asyncio.timeout(self._setup_timeout_s):
            self._ws = await connect(
                self.url,
                additional_headers=self._headers,
                # Replies and retrieved items exceed websockets' 1 MiB default; the SDK takes
                # no limit at all, which a 512 MB Pi cannot afford from a hostile peer.
                max_size=MAX_FRAME_BYTES,
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

    async def _closed(self) -> LinkClosed:
        """Why the server closed: read what it sent before the close (an ``error`` in the same
        millisecond, typically), then its close code and reason."""
        if self._ws is None:
            return LinkClosed(1006, "", None)
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                while True:
                    self._note_errors(self.protocol.receive(await self._ws.recv()))
        code = self._ws.close_code if self._ws.close_code is not None else 1006
        reason = self._ws.close_reason or ""
        return LinkClosed(code, reason, self.last_error_code or code_from_reason(reason))

    def _note_errors(self, events: list[Incoming]) -> None:
        for event in events:
            if isinstance(event, FatalError | ServerError):
                self.last_error_code = event.code
                if event.code == "session_expired":
                    self.expired = True

    async def serve(self) -> None:
        """Pump until the connection ends, then raise why: :class:`LinkClosed` when the
        server closed it (cleanly or not), :class:`LinkError` for a dead keepalive."""
        assert self._ws is not None, "open() first"
        try:
            with contextlib.suppress(ConnectionClosed):
                await self._pump()
            raise await self._closed()
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
                if isinstance(event, FatalError | ServerError):
                    # Before session.updated, any error means the session will not serve:
                    # the policy says whether trying again can help (server_error can).
                    self._note_errors([event])
                    raise _refused(event.code, event.message, during="session setup refused")
                if isinstance(event, SessionCreated):
                    self.session_id = event.session_id
                    now = self._server_clock()
                    if event.expires_at is not None and now is not None:
                        self.server_expires_in_s = event.expires_at - now
                elif isinstance(event, SessionConfigured):
                    self.session_id = event.session_id or self.session_id
                    return
        raise await self._closed()

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
        """Dispatch every event; an ``error`` is remembered for the close that may follow it
        (on its own it ends nothing, whatever its code)."""
        assert self._ws is not None
        async for message in self._ws:
            events = self.protocol.receive(message)
            self._note_errors(events)
            for event in events:
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
