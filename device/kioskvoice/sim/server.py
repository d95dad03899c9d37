"""The simulator server itself: :class:`Simulator`, a loopback ``websockets`` server that hands
each accepted handshake to a :class:`~kioskvoice.sim.connection.Connection` and keeps the
records, counters and fault switches tests read and flip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any, Final, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from kioskvoice.sim.connection import Connection
from kioskvoice.sim.faults import Faults
from kioskvoice.sim.handshake import (
    AZURE_PATH,
    REALTIME_PATH,
    ClientSecrets,
    check_request,
    new_session,
    refusal,
)
from kioskvoice.sim.session import SimSession

__all__ = ["Simulator"]

log = logging.getLogger(__name__)

_CLOSE_TIMEOUT_S: Final = 5.0

T = TypeVar("T")


class Simulator:
    """A loopback Realtime GA server; one :class:`SimSession` per accepted connection.

    Constructing it does no I/O; :meth:`start` binds. Use as ``async with Simulator() as sim``.
    ``api_key=None`` accepts any bearer token (one is still required, as on the real API).
    ``models``: the model ids (Azure: deployment names) served; None serves the SDK's realtime
    model families. Sessions are served at :attr:`url` (OpenAI's path) and :attr:`azure_url`
    (Azure's GA path).
    Reply audio is sent as ``burst_ms`` of PCM per ``response.output_audio.delta``, one delta
    every ``burst_interval_s`` seconds, i.e. faster than real time with the defaults.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        burst_ms: int = 240,
        burst_interval_s: float = 0.05,
        faults: Faults | None = None,
        record: bool = True,
        models: Collection[str] | None = None,
    ) -> None:
        if burst_ms <= 0:
            raise ValueError("burst_ms must be positive")
        if burst_interval_s < 0:
            raise ValueError("burst_interval_s must not be negative")
        self.host = host
        self.port = port
        self.burst_ms = burst_ms
        self.burst_interval_s = burst_interval_s
        self.faults = faults if faults is not None else Faults()
        self.reply_more = ""
        """Said after "You spoke for N.N seconds." in every spoken reply (tests and the demo
        set it for long replies); empty by default."""
        self.record = record
        """Keep every event in ``SimSession.received``/``sent`` (off for long soaks)."""
        self.tool_calls: list[tuple[str, dict[str, Any]]] = []
        """Queued function calls: the next response of a session that declares the named tool
        calls it (name, arguments) instead of speaking; the response after the tool's output
        then says what the tool answered."""
        self.sessions: list[SimSession] = []
        self.capped = 0
        """Sessions ended by the session cap (``Faults.session_cap_s``)."""
        self.refused = 0
        """Connections refused: an HTTP error (unknown path, outage), or an ``error`` and a
        close right after the upgrade (credential, model, beta shape)."""
        self.models = frozenset(models) if models is not None else None
        self._api_key = api_key
        self._connections: list[Connection] = []
        self._secrets = ClientSecrets()
        self._server: Server | None = None
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        """``ws://host:port/v1/realtime``; meaningful after :meth:`start`."""
        return self._base + REALTIME_PATH

    @property
    def azure_url(self) -> str:
        """Azure's GA endpoint, ``ws://host:port/openai/v1/realtime`` (add
        ``?model=DEPLOYMENT``); meaningful after :meth:`start`."""
        return self._base + AZURE_PATH

    @property
    def _base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and start accepting connections; afterwards :attr:`port` is the real port."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=None,
            compression=None,
            close_timeout=_CLOSE_TIMEOUT_S,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("Realtime simulator listening on %s", self.url)

    async def close(self) -> None:
        """Close every connection (code 1001) and the server. Idempotent.

        Raises :class:`TimeoutError` if connections do not finish closing within ~11 s.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        async with asyncio.timeout(2 * _CLOSE_TIMEOUT_S + 1):
            await server.wait_closed()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # The explicit timeout is the point of this test helper; it is applied with asyncio.timeout.
    async def wait_for(self, predicate: Callable[[Simulator], T], timeout: float) -> T:  # noqa: ASYNC109
        """Wait until ``predicate(self)`` is truthy and return its value.

        Re-evaluated whenever a session opens, closes, receives or sends an event.
        Raises :class:`TimeoutError` after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                result = predicate(self)
                if result:
                    return result
                await self._changed.wait()

    def notify(self) -> None:
        """Wake :meth:`wait_for`: a session opened, closed, received or sent an event."""
        self._changed.set()

    # --- fault injection ------------------------------------------------------------------

    def drop_all(self) -> None:
        """Abort every open connection's TCP stream at once (no close frame)."""
        for connection in list(self._connections):
            connection.abort()

    def stall_all(self) -> None:
        """Stop reading on every open connection: pings go unanswered (a half-open link)."""
        for connection in list(self._connections):
            connection.stall()

    # --- ephemeral secrets ------------------------------------------------------------------

    def mint_secret(self, ttl_s: float) -> dict[str, Any]:
        """A client secret new connections may use for ``ttl_s`` seconds; the body of OpenAI's
        ``POST /v1/realtime/client_secrets`` (see :meth:`ClientSecrets.mint`)."""
        return self._secrets.mint(ttl_s)

    # --- connections ------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        response = check_request(connection, request, faults=self.faults)
        if response is not None:
            self.refused += 1
            self.notify()
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None  # handshake completed
        refused = refusal(
            request, api_key=self._api_key, client_secrets=self._secrets, models=self.models
        )
        session = new_session(
            request, api_key=self._api_key, client_secrets=self._secrets, faults=self.faults
        )
        if refused is not None:
            session.refused = refused.reason
            self.refused += 1
        self.sessions.append(session)
        self.notify()
        log.info("sim session %s opened (model %s)", session.id, session.model)
        connection = Connection(self, ws, session, refusal=refused)
        self._connections.append(connection)
        try:
            await connection.run()
        finally:
            self._connections.remove(connection)
