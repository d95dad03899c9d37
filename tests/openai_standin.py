"""A stand-in for OpenAI's (and Azure OpenAI's) ``POST …/v1/realtime/client_secrets`` on
loopback, for the broker's tests and benchmark: it checks the key, records each request, and
answers in OpenAI's shape, minting through the Realtime simulator when it is given one (so the
simulator then accepts the secret) or on its own otherwise. Faults: statuses to answer next,
a delay, a malformed answer."""

from __future__ import annotations

import asyncio
import math
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kioskvoice.sim import Simulator

OPENAI_PATH = "/v1/realtime/client_secrets"
AZURE_PATH = "/openai/v1/realtime/client_secrets"


@dataclass
class Seen:
    """One request as the stand-in saw it."""

    path: str
    authorized: bool
    body: Any


@dataclass
class OpenAIStandIn:
    api_key: str
    sim: Simulator | None = None
    fail_with: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    malformed: bool = False
    record: bool = True
    requests: list[Seen] = field(default_factory=list)
    minted: list[str] = field(default_factory=list)

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(OPENAI_PATH, self._mint, methods=["POST"]),
                Route(AZURE_PATH, self._mint, methods=["POST"]),
            ]
        )

    async def _mint(self, request: Request) -> JSONResponse:
        body = await request.json()
        if request.url.path == AZURE_PATH:
            authorized = request.headers.get("api-key") == self.api_key
        else:
            authorized = request.headers.get("authorization") == f"Bearer {self.api_key}"
        if self.record:
            self.requests.append(Seen(request.url.path, authorized, body))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        date = {"Date": formatdate(usegmt=True)}
        if self.fail_with:
            status = self.fail_with.pop(0)
            # OpenAI's own 401 text quotes part of the key; this one quotes all of it, so that
            # a broker passing upstream texts on would be caught.
            error = {
                "message": f"Incorrect API key provided: {self.api_key}",
                "type": "invalid_request_error",
                "code": "invalid_api_key" if status == 401 else None,
            }
            return JSONResponse({"error": error}, status_code=status, headers=date)
        if not authorized:
            return JSONResponse({"error": {"code": "invalid_api_key"}}, 401, headers=date)
        if self.malformed:
            return JSONResponse({"value": None}, headers=date)
        ttl = body["expires_after"]["seconds"]
        if self.sim is not None:
            minted = self.sim.mint_secret(ttl)
        else:
            wall = datetime.now(UTC).timestamp()
            minted = {
                "value": "ek_" + secrets.token_urlsafe(24),
                "expires_at": math.floor(wall + ttl),
            }
        if self.record:
            self.minted.append(minted["value"])
        session = {
            **body["session"],
            "id": "sess_" + secrets.token_hex(8),
            "object": "realtime.session",
        }
        return JSONResponse({**minted, "session": session}, headers=date)
