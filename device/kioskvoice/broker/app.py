"""The broker's ASGI app (Starlette): ``POST /v1/realtime/client_secrets``, ``/healthz`` and
``/metrics`` (Prometheus text: :mod:`.metrics`).

A request for a secret goes through, in order (cheapest and least revealing first):

1. ``Authorization: Bearer <device token>`` looked up in the registry → **401** with the same
   bare body for a missing, malformed, unknown or revoked token (the body is never read);
2. the device's rate limit → **429** with ``Retry-After``;
3. the body, at most ``limits.max_body_bytes`` within ``limits.body_timeout_s`` → **413**,
   **408**; it must be empty or a JSON object → **400**;
4. the upstream mint with the operator's session → **503** (or **502**) on any upstream trouble
   (see :mod:`.upstream`), else **200** with ``value``, ``expires_at`` and ``session``, the
   upstream's ``Date`` and ``Cache-Control: no-store``.

What the kiosk asks for is advisory: no field of its requested session is honoured. The secret
is minted for the operator's ``[session]``; a requested ``model`` that differs is logged once
per device (the kiosk would connect to a model its secret is not for).

Every request leaves one access-log line (logger ``kioskvoice.broker.access``): method, route,
status, device name, latency, client address and, on failure, a code. Never a token, the key,
a minted secret, a body or a header.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import PATH
from .metrics import BrokerMetrics
from .ratelimit import RateLimiter
from .registry import Registry
from .settings import BrokerSettings
from .upstream import Upstream, UpstreamError

log = logging.getLogger("kioskvoice.broker")
access_log = logging.getLogger("kioskvoice.broker.access")

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
_ACCESS = "kioskvoice.broker.access"  # scope key: what the endpoint tells the access log
# RFC 6750 b64token, bounded: anything else is malformed (and gets the same 401).
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]{1,512}=*)")
_NO_STORE = {"Cache-Control": "no-store"}


def create_app(
    settings: BrokerSettings, api_key: str, *, registry: Registry | None = None
) -> ASGIApp:
    """The broker as an ASGI app. Construction does no I/O.

    ``registry`` defaults to the file ``settings.registry``; it is re-read when it changes.
    The upstream HTTP client is opened on first use and closed at lifespan shutdown.
    """
    broker = Broker(settings, api_key, registry or Registry(settings.registry))
    metrics = BrokerMetrics()

    async def serve_metrics(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await broker.aclose()

    app = Starlette(
        routes=[
            Route(PATH, broker.client_secrets, methods=["POST"]),
            Route(HEALTH_PATH, broker.healthz, methods=["GET"]),
            Route(METRICS_PATH, serve_metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    return AccessLog(app, metrics)


class Broker:
    """The endpoints' state: registry, rate limiter, upstream client."""

    def __init__(self, settings: BrokerSettings, api_key: str, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.limiter = RateLimiter(settings.limits.secrets_per_minute, settings.limits.burst)
        self._api_key = api_key
        self._request = settings.session.upstream_request()
        self._client: httpx.AsyncClient | None = None
        self._upstream: Upstream | None = None
        self._generation = -1
        self._warned: set[str] = set()  # devices told about a model mismatch

    def __repr__(self) -> str:
        return f"Broker({self.settings.upstream.endpoint!r})"

    @property
    def upstream(self) -> Upstream:
        """The upstream client, opened on first use (with or without a lifespan)."""
        if self._upstream is None:
            timeout = self.settings.upstream.timeout_s
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(timeout),
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                follow_redirects=False,
            )
            self._upstream = Upstream(self.settings.upstream, self._api_key, self._client)
        return self._upstream

    async def aclose(self) -> None:
        """Close the upstream client's connections (it is reopened if used again)."""
        client, self._client, self._upstream = self._client, None, None
        if client is not None:
            await client.aclose()

    def _refresh(self) -> None:
        self.registry.refresh()
        if self.registry.generation != self._generation:
            self._generation = self.registry.generation
            names = self.registry.names
            self.limiter.retain(names)
            self._warned = {device for device in self._warned if device in names}

    async def client_secrets(self, request: Request) -> Response:
        """``POST /v1/realtime/client_secrets``: the steps in the module docstring."""
        access: dict[str, Any] = request.scope.get(_ACCESS, {})
        self._refresh()
        token = _bearer(request.headers.getlist("authorization"))
        device = self.registry.lookup(token) if token is not None else None
        if device is None:
            return _unauthorized()
        access["device"] = device

        wait_s = self.limiter.take(device)
        if wait_s > 0:
            access["code"] = "rate_limited"
            return _error(429, "rate_limited", retry_after_s=math.ceil(wait_s))

        limits = self.settings.limits
        try:
            async with asyncio.timeout(limits.body_timeout_s):
                raw = await _read_body(request, limits.max_body_bytes)
        except _TooLarge:
            access["code"] = "body_too_large"
            return _error(413, "body_too_large")
        except TimeoutError:
            access["code"] = "body_timeout"
            return _error(408, "body_timeout")
        try:
            requested = json.loads(raw) if raw.strip() else {}
        except (ValueError, RecursionError):  # nesting: a 400, not a 500 with a traceback
            requested = None
        if not isinstance(requested, dict):
            access["code"] = "bad_request"
            return _error(400, "bad_request")
        self._check_model(device, requested)

        try:
            minted = await self.upstream.mint(self._request)
        except UpstreamError as exc:
            access["code"] = exc.code
            log.log(
                logging.ERROR if exc.operator else logging.WARNING,
                "no secret for device %s: %s",
                device,
                exc,
                extra={
                    "KIOSKVOICE_EVENT": "upstream_failed",
                    "KIOSKVOICE_DEVICE": device,
                    "KIOSKVOICE_ERROR_CODE": exc.code,
                },
            )
            return _error(exc.status, "upstream_unavailable", retry_after_s=exc.retry_after_s)
        body = {
            "value": minted.value,
            "expires_at": minted.expires_at,
            "session": minted.session or self._request["session"],
        }
        return JSONResponse(body, headers={**_NO_STORE, "Date": _date(minted.date)})

    def _check_model(self, device: str, requested: dict[str, Any]) -> None:
        session = requested.get("session")
        model = session.get("model") if isinstance(session, dict) else None
        ours = self.settings.session.model
        # Once per device, whatever it asks for: remembering every distinct string a device
        # sends (up to a body's size each) would grow without bound.
        if not isinstance(model, str) or model == ours or device in self._warned:
            return
        self._warned.add(device)
        log.warning(
            "device %s asks for model %r, its secrets are for %r (session.model): set the same "
            "model in the kiosk's config",
            device,
            model[:64],
            ours,
            extra={"KIOSKVOICE_EVENT": "model_mismatch", "KIOSKVOICE_DEVICE": device},
        )

    async def healthz(self, request: Request) -> Response:
        """200 while a registry is in force (``"registry": "stale"`` if the file on disk is
        broken and the previous contents still apply), 503 before any could be read. The
        upstream is not probed: its outages must not take every replica out of a pool."""
        self._refresh()
        if not self.registry.loaded:
            return JSONResponse({"status": "unavailable"}, status_code=503, headers=_NO_STORE)
        body = {"status": "ok", "registry": "stale" if self.registry.stale else "ok"}
        return JSONResponse(body, headers=_NO_STORE)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or :class:`_TooLarge` as soon as it is known to exceed ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise _TooLarge  # a non-numeric length is rejected the same way: nothing is read
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _bearer(values: list[str]) -> str | None:
    if len(values) != 1:
        return None
    match = _BEARER.fullmatch(values[0].strip())
    return match.group(1) if match else None


def _unauthorized() -> Response:
    # The same answer for every cause: no hint whether a token exists, was revoked or is
    # malformed.
    return JSONResponse(
        {"error": "unauthorized"},
        status_code=401,
        headers={**_NO_STORE, "WWW-Authenticate": "Bearer"},
    )


def _error(status: int, code: str, *, retry_after_s: int | None = None) -> Response:
    headers = dict(_NO_STORE)
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, retry_after_s))
    return JSONResponse({"error": code}, status_code=status, headers=headers)


def _date(upstream: str | None) -> str:
    """The upstream's ``Date`` if it parses (``expires_at`` is on its clock), else ours."""
    if upstream:
        try:
            parsedate_to_datetime(upstream)
            return upstream
        except (TypeError, ValueError):
            pass
    return formatdate(usegmt=True)


class AccessLog:
    """ASGI middleware: one access-log record per HTTP request, and a ``Date`` header on every
    response that has none (the server is run without its own, which would duplicate ours)."""

    _METHODS = frozenset({"GET", "HEAD", "POST"})
    _PATHS = frozenset({PATH, HEALTH_PATH, METRICS_PATH})

    def __init__(self, app: ASGIApp, metrics: BrokerMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        access: dict[str, Any] = {"device": None, "code": None}
        scope[_ACCESS] = access
        status = 500

        async def send_with_date(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if "date" not in headers:
                    headers["Date"] = formatdate(usegmt=True)
            await send(message)

        try:
            await self.app(scope, receive, send_with_date)
        finally:
            latency_ms = (time.monotonic() - started) * 1000
            # Only known methods and routes are logged as they are: a path or method is
            # whatever the client sent, and a token pasted into a URL must not reach the log.
            method = scope["method"] if scope["method"] in self._METHODS else "other"
            path = scope["path"] if scope["path"] in self._PATHS else "other"
            client = scope.get("client")
            device, code = access["device"], access["code"]
            if self.metrics is not None and path == PATH and method == "POST":
                self.metrics.minting_request(status, code, latency_ms / 1000)
            access_log.info(
                "%s %s %d device=%s latency_ms=%.1f client=%s%s",
                method,
                path,
                status,
                device or "-",
                latency_ms,
                client[0] if client else "-",
                f" code={code}" if code else "",
                extra={
                    "KIOSKVOICE_EVENT": "access",
                    "KIOSKVOICE_STATUS": status,
                    "KIOSKVOICE_DEVICE": device,
                    "KIOSKVOICE_LATENCY_MS": round(latency_ms, 1),
                    "KIOSKVOICE_ERROR_CODE": code,
                },
            )
