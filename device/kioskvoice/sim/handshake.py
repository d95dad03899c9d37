"""Authentication and the handshake: what is decided before the WebSocket exists (the path, an
outage: HTTP errors) and what right after the upgrade (the credential, the beta header, the
model: an ``error`` and a close, as the real service does), and the
:class:`~kioskvoice.sim.session.SimSession` a connection records of its request, secrets
redacted.

Credentials: the simulator's API key (any non-empty one when it has none) or an ``ek_`` client
secret it minted and that has not expired, as ``Authorization: Bearer`` or Azure's ``api-key``.
Paths: OpenAI's ``/v1/realtime`` and Azure's GA ``/openai/v1/realtime`` (``?model=DEPLOYMENT``);
Azure's older ``/openai/realtime?api-version=…`` preview path speaks the beta shapes and is not
served.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Collection
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from kioskvoice.sim.faults import Faults
from kioskvoice.sim.session import SimSession, default_session_config, new_id
from kioskvoice.sim.validation import ClientError

__all__ = [
    "AUTH_CLOSE_CODE",
    "AZURE_PATH",
    "BETA_CLOSE_CODE",
    "BETA_MESSAGE",
    "DEFAULT_MODEL",
    "REALTIME_PATH",
    "REQUEST_CLOSE_CODE",
    "SESSION_CAPS_S",
    "Auth",
    "ClientSecrets",
    "Refusal",
    "announced_expiry",
    "authenticate",
    "check_request",
    "credential",
    "is_realtime_model",
    "new_session",
    "refusal",
    "requested_model",
    "wants_beta",
]

REALTIME_PATH: Final = "/v1/realtime"
AZURE_PATH: Final = "/openai/v1/realtime"
SESSION_CAPS_S: Final[dict[str, float]] = {REALTIME_PATH: 3600.0, AZURE_PATH: 1800.0}
"""The session cap of each path: 60 minutes on OpenAI, 30 on Azure."""
DEFAULT_MODEL: Final = "gpt-realtime"
AUTH_CLOSE_CODE: Final = 3000
REQUEST_CLOSE_CODE: Final = 4000
BETA_CLOSE_CODE: Final = REQUEST_CLOSE_CODE
BETA_MESSAGE: Final = (
    "Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
)
MISSING_MODEL_MESSAGE: Final = (
    "You must provide a model parameter, for example "
    "wss://api.openai.com/v1/realtime?model=gpt-realtime-1.5"
)
_REALTIME_MODEL: Final = re.compile(
    r"(gpt-realtime|gpt-4o-realtime-preview|gpt-4o-mini-realtime-preview|gpt-audio)[-.a-z0-9]*"
)
_SECRET_HEADERS: Final = frozenset({"authorization", "api-key"})
_REDACTED: Final = "<redacted>"


class Refusal(NamedTuple):
    """An upgraded connection the server ends at once: this error, then this close."""

    error: ClientError
    close_code: int

    @property
    def reason(self) -> str:
        """The close reason: the error's ``type.code`` (just the type when code is null)."""
        code = self.error.code
        return f"{self.error.error_type}.{code}" if code else self.error.error_type


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
    connection: ServerConnection, request: Request, *, faults: Faults
) -> Response | None:
    """The HTTP error answering a handshake (an unknown path, an outage), or None to upgrade.

    Everything else, credentials and model included, is decided after the upgrade (see
    :func:`refusal`), as the real service does.
    """
    if urlsplit(request.path).path not in SESSION_CAPS_S:
        return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
    if faults.refuse_connections:
        return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
    return None


def refusal(
    request: Request,
    *,
    api_key: str | None,
    client_secrets: ClientSecrets,
    models: Collection[str] | None,
) -> Refusal | None:
    """Why an upgraded connection is refused at once (then: one ``error`` and a close in the
    same millisecond), or None to open a session.

    Live captures of the GA service (gauravzqa/llmgw ``capabilities/captures-ws.md``, probes
    7c, 8b, 10, 10b, 11, 11b): a bad key gets ``invalid_api_key`` and close 3000, a missing one
    code null and close 3000; a beta-shaped client ``beta_api_shape_disabled`` and close 4000;
    a bad or missing model ``invalid_model``/``missing_model`` and close 4000. The close reason
    is the error's ``type.code``.
    """
    token = credential(request.headers)
    ttl = client_secrets.ttl(token)
    if token is None:
        missing = ClientError(None, "Missing bearer or basic authentication in header")
        return Refusal(missing, AUTH_CLOSE_CODE)
    if (ttl is not None and ttl <= 0) or (
        ttl is None and not authenticate(request.headers, api_key).accepted()
    ):
        return Refusal(ClientError("invalid_api_key", _incorrect_key(token)), AUTH_CLOSE_CODE)
    if wants_beta(request.headers):
        return Refusal(ClientError("beta_api_shape_disabled", BETA_MESSAGE), BETA_CLOSE_CODE)
    model = requested_model(request)
    if model is None and ttl is None:
        return Refusal(ClientError("missing_model", MISSING_MODEL_MESSAGE), REQUEST_CLOSE_CODE)
    if model is not None and not is_realtime_model(model, models):
        message = f'Model "{model}" is not supported in realtime mode.'
        return Refusal(ClientError("invalid_model", message), REQUEST_CLOSE_CODE)
    return None


def requested_model(request: Request) -> str | None:
    """The ``model`` query parameter (Azure: the deployment name), None when absent."""
    values = parse_qs(urlsplit(request.path).query).get("model")
    return values[0] if values and values[0] else None


def is_realtime_model(model: str, models: Collection[str] | None) -> bool:
    """Whether the simulator serves ``model``: one of ``models``, or by default a realtime
    model id of the SDK's families (``gpt-realtime*``, ``gpt-4o[-mini]-realtime-preview*``,
    ``gpt-audio*``)."""
    if models is not None:
        return model in models
    return _REALTIME_MODEL.fullmatch(model) is not None


def new_session(
    request: Request,
    *,
    api_key: str | None,
    client_secrets: ClientSecrets,
    faults: Faults,
) -> SimSession:
    """The record of an upgraded connection (refused or not), secrets redacted."""
    path = urlsplit(request.path).path
    model = requested_model(request) or DEFAULT_MODEL
    auth = authenticate(request.headers, api_key)
    token = credential(request.headers)
    ttl = client_secrets.ttl(token)
    if ttl is not None:
        auth = Auth(present=True, matched=ttl > 0)
    cap_s = faults.session_cap_s if faults.session_cap_s is not None else SESSION_CAPS_S[path]
    session_id = new_id("sess")
    return SimSession(
        id=session_id,
        model=model,
        path=path,
        headers=_redacted_headers(request.headers),
        auth_present=auth.present,
        auth_matched=auth.matched,
        config=default_session_config(
            session_id, model, announced_expiry(cap_s, faults.announced_expiry)
        ),
        auth_fingerprint=(
            hashlib.sha256(token.encode()).hexdigest()[:12] if token is not None else None
        ),
        secret_ttl_s=ttl,
        cap_s=cap_s,
    )


def announced_expiry(cap_s: float, override: Any = None) -> Any:
    """``session.expires_at``: Unix seconds at which a session starting now is cut, or what
    :attr:`Faults.announced_expiry` says instead."""
    wall = datetime.now(UTC).timestamp()
    if override is None:
        return math.floor(wall + cap_s)
    if isinstance(override, int | float) and not isinstance(override, bool):
        return math.floor(wall + min(override, 1e12))
    return override


def _incorrect_key(token: str) -> str:
    """The real service's text, which quotes the key's first 8 and last 4 characters."""
    shown = f"{token[:8]}{'*' * max(0, len(token) - 12)}{token[-4:]}" if len(token) > 12 else "***"
    return (
        f"Incorrect API key provided: {shown}. You can find your API key at "
        "https://platform.openai.com/account/api-keys."
    )
