"""Authentication and the HTTP handshake, decided before any WebSocket exists.

The path, the credential (the simulator's API key, any bearer token when it has none, or an
``ek_`` client secret it minted and that has not expired), the beta header that gets a session
refused, and the :class:`~kioskvoice.sim.session.SimSession` a connection records of its request,
secrets redacted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import time
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from kioskvoice.sim.faults import Faults
from kioskvoice.sim.session import SimSession, default_session_config, new_id

__all__ = [
    "BETA_CLOSE_CODE",
    "BETA_MESSAGE",
    "DEFAULT_MODEL",
    "REALTIME_PATH",
    "Auth",
    "ClientSecrets",
    "authenticate",
    "check_request",
    "credential",
    "new_session",
    "wants_beta",
]

REALTIME_PATH: Final = "/v1/realtime"
DEFAULT_MODEL: Final = "gpt-realtime"
BETA_CLOSE_CODE: Final = 4000
BETA_MESSAGE: Final = (
    "Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
)
_SECRET_HEADERS: Final = frozenset({"authorization", "api-key"})
_REDACTED: Final = "<redacted>"


class Auth(NamedTuple):
    present: bool
    matched: bool | None

    def accepted(self) -> bool:
        return self.present and self.matched is not False


def _single_header(headers: Headers, name: str) -> str | None:
    values = headers.get_all(name)
    return values[0] if len(values) == 1 else None


def credential(headers: Headers) -> str | None:
    """The token of ``Authorization: Bearer <token>`` or Azure's ``api-key: <key>``."""
    authorization = _single_header(headers, "Authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    key = _single_header(headers, "api-key")
    if key is not None and key.strip():
        return key.strip()
    return None


def authenticate(headers: Headers, api_key: str | None) -> Auth:
    """Check ``Authorization: Bearer <token>`` (or Azure's ``api-key: <key>``) against ``api_key``.

    ``api_key=None`` accepts any non-empty credential.
    """
    token = credential(headers)
    if token is None:
        return Auth(present=False, matched=None)
    if api_key is None:
        return Auth(present=True, matched=None)
    return Auth(present=True, matched=hmac.compare_digest(token.encode(), api_key.encode()))


def wants_beta(headers: Headers) -> bool:
    for value in headers.get_all("OpenAI-Beta"):
        if any(part.strip().lower() == "realtime=v1" for part in value.split(",")):
            return True
    return False


def _redacted_headers(headers: Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.raw_items():
        key = name.lower()
        shown = _REDACTED if key in _SECRET_HEADERS else value
        out[key] = f"{out[key]}, {shown}" if key in out else shown
    return out


class ClientSecrets:
    """The ephemeral ``ek_`` client secrets a simulator minted, each with its expiry."""

    def __init__(self) -> None:
        self._minted: dict[str, float] = {}  # ek_ secret -> monotonic expiry

    def mint(self, ttl_s: float) -> dict[str, Any]:
        """A client secret as OpenAI's ``POST /v1/realtime/client_secrets`` returns it.

        It is accepted for new connections until it expires (``expires_at`` is wall-clock Unix
        seconds, as on the wire; enforcement uses the monotonic clock).
        """
        value = "ek_" + secrets.token_urlsafe(24)
        self._minted[value] = time.monotonic() + ttl_s
        now = time.monotonic()
        self._minted = {k: v for k, v in self._minted.items() if v > now - 60}
        wall = datetime.now(UTC).timestamp()
        return {"value": value, "expires_at": math.floor(wall + ttl_s)}

    def ttl(self, token: str | None) -> float | None:
        """Remaining lifetime of a minted secret, None if ``token`` is not one we minted."""
        if token is None or token not in self._minted:
            return None
        return self._minted[token] - time.monotonic()


def check_request(
    connection: ServerConnection,
    request: Request,
    *,
    api_key: str | None,
    client_secrets: ClientSecrets,
    faults: Faults,
) -> Response | None:
    """The HTTP error answering a handshake, or None to accept it."""
    if urlsplit(request.path).path != REALTIME_PATH:
        return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
    if faults.refuse_connections:
        return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
    ttl = client_secrets.ttl(credential(request.headers))
    if ttl is not None:
        if ttl <= 0:
            return _json_error(
                connection,
                HTTPStatus.UNAUTHORIZED,
                "invalid_api_key",
                "The client secret has expired.",
            )
        return None
    if not authenticate(request.headers, api_key).accepted():
        return _json_error(
            connection,
            HTTPStatus.UNAUTHORIZED,
            "invalid_api_key",
            "Missing or incorrect API key. Send 'Authorization: Bearer <key>'.",
        )
    return None


def new_session(
    request: Request, *, api_key: str | None, client_secrets: ClientSecrets
) -> SimSession:
    """The record of a connection whose handshake :func:`check_request` accepted."""
    query = parse_qs(urlsplit(request.path).query)
    model = query.get("model", [DEFAULT_MODEL])[0]
    auth = authenticate(request.headers, api_key)
    token = credential(request.headers)
    ttl = client_secrets.ttl(token)
    if ttl is not None:
        auth = Auth(present=True, matched=True)
    session_id = new_id("sess")
    return SimSession(
        id=session_id,
        model=model,
        path=urlsplit(request.path).path,
        headers=_redacted_headers(request.headers),
        auth_present=auth.present,
        auth_matched=auth.matched,
        config=default_session_config(session_id, model),
        auth_fingerprint=(
            hashlib.sha256(token.encode()).hexdigest()[:12] if token is not None else None
        ),
        secret_ttl_s=ttl,
    )


def _json_error(
    connection: ServerConnection, status: HTTPStatus, code: str, message: str
) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code,
                      "param": None}}  # fmt: skip
    response = connection.respond(status, json.dumps(body))
    # Headers.__setitem__ appends, so replace the text/plain type explicitly.
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response
