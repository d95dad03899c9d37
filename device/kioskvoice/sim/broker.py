"""A token-broker stand-in on loopback: ``POST /v1/realtime/client_secrets``.

It answers the way OpenAI's client-secret endpoint (and kioskvoice's reference broker) does:
``{"value": "ek_…", "expires_at": <unix s>, "session": {…}}``, minting secrets that the
:class:`~kioskvoice.sim.server.Simulator` then accepts until they expire. Faults: a queue of
HTTP statuses to answer first, a delay, and the TTL of minted secrets.

A deliberately small HTTP/1.1 server (one request per connection) on asyncio streams: the
simulator must not pull a web framework into the kiosk's dependencies.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from kioskvoice.sim.server import Simulator

log = logging.getLogger(__name__)

PATH = "/v1/realtime/client_secrets"
_MAX_BODY = 64 * 1024
_TIMEOUT_S = 5.0


@dataclass
class BrokerRequest:
    """One request as recorded for tests (the device token is never stored)."""

    method: str
    path: str
    authorized: bool
    body: Any


@dataclass
class BrokerStub:
    """Serve minted secrets for ``sim`` to holders of ``device_token``."""

    sim: Simulator
    device_token: str
    ttl_s: float = 600.0
    delay_s: float = 0.0
    fail_with: list[int] = field(default_factory=list)
    """Statuses answered to the next requests, one each, before answering normally."""
    requests: list[BrokerRequest] = field(default_factory=list)
    minted: int = 0
    host: str = "127.0.0.1"
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{PATH}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            async with asyncio.timeout(_TIMEOUT_S):
                await server.wait_closed()

    async def __aenter__(self) -> BrokerStub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_TIMEOUT_S):
                status, body = await self._answer(reader)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            payload = json.dumps(body).encode()
            head = (
                f"HTTP/1.1 {status.value} {status.phrase}\r\n"
                f"Date: {formatdate(usegmt=True)}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + payload)
            async with asyncio.timeout(_TIMEOUT_S):
                await writer.drain()
        except (TimeoutError, ConnectionError, ValueError) as exc:
            log.debug("broker stub: dropped a request: %s", exc)
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[HTTPStatus, Any]:
        request_line = (await reader.readline()).decode("latin-1").split()
        if len(request_line) != 3:
            return HTTPStatus.BAD_REQUEST, _error("bad request line")
        method, path, _ = request_line
        headers: dict[str, str] = {}
        while (line := (await reader.readline()).decode("latin-1").strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if length > _MAX_BODY:
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _error("body too large")
        raw = await reader.readexactly(length) if length else b""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        authorized = scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.device_token.encode()
        )
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.requests.append(BrokerRequest(method, path, authorized, body))
        if path != PATH or method != "POST":
            return HTTPStatus.NOT_FOUND, _error("not found")
        if self.fail_with:
            return HTTPStatus(self.fail_with.pop(0)), _error("simulated failure")
        if not authorized:
            return HTTPStatus.UNAUTHORIZED, _error("unknown device")
        self.minted += 1
        minted = self.sim.mint_secret(self.ttl_s)
        session = body.get("session") if isinstance(body, dict) else None
        return HTTPStatus.OK, {**minted, "session": session or {"type": "realtime"}}


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error"}}
