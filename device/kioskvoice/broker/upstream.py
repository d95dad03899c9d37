"""Minting a client secret upstream: OpenAI's or Azure OpenAI's ``client_secrets`` endpoint.

Every failure becomes an :class:`UpstreamError` that says what the kiosk is told and what the
operator is told. The kiosk treats 401/403 from its broker as "this device was revoked" (fatal:
error state, a retry only every ``fatal_retry_s``) and 429/5xx as "try again with backoff". So
nothing that goes wrong upstream may reach a kiosk as 401/403, least of all the upstream
refusing *the broker's* key: that is the operator's problem, every kiosk would go dark for
minutes after the fix, and a kiosk cannot tell it from its own revocation. Upstream trouble of
any kind therefore reaches kiosks as 503 (502 for an answer the broker cannot use); the log
line names the cause for the operator. Upstream message texts are never logged (OpenAI's 401
message quotes part of the key); only their ``code``/``type`` when they look like codes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import httpx

from .settings import UpstreamSettings

log = logging.getLogger("kioskvoice.broker")

_CODE = re.compile(r"[a-z][a-z0-9_.]{0,63}")


@dataclass(frozen=True, slots=True, repr=False)
class Minted:
    """A secret as the upstream minted it. ``repr`` never shows the value."""

    value: str
    expires_at: int | float
    session: dict[str, Any] | None
    date: str | None
    """The upstream's ``Date`` header: ``expires_at`` is on the upstream's clock, and the kiosk
    measures the lifetime against the ``Date`` it receives."""

    def __repr__(self) -> str:
        return f"Minted(****, expires_at={self.expires_at})"


class UpstreamError(Exception):
    """Minting failed. ``status`` is what the kiosk gets, ``code`` names the cause in logs,
    ``operator`` marks causes only the operator can fix (logged as errors)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        operator: bool = False,
        retry_after_s: int = 10,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.operator = operator
        self.retry_after_s = retry_after_s


class Upstream:
    """Mints secrets with the organisation's key through a shared ``httpx.AsyncClient``.

    The key is held privately and sent only in the upstream request's auth header:
    ``Authorization: Bearer`` for OpenAI, ``api-key`` for Azure.
    """

    def __init__(self, settings: UpstreamSettings, api_key: str, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self._client = client
        if settings.kind == "azure":
            self._headers = {"api-key": api_key}
        else:
            self._headers = {"Authorization": f"Bearer {api_key}"}

    def __repr__(self) -> str:
        return f"Upstream({self.settings.endpoint!r})"

    async def mint(self, request: dict[str, Any]) -> Minted:
        """POST ``request`` upstream; the minted secret, or :class:`UpstreamError`."""
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                response = await self._client.post(
                    self.settings.endpoint, json=request, headers=self._headers
                )
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamError(
                503, "upstream_timeout", f"no answer within {self.settings.timeout_s:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise UpstreamError(
                503, "upstream_unreachable", f"cannot reach the upstream: {type(exc).__name__}"
            ) from None
        return _result(response)


def _result(response: httpx.Response) -> Minted:
    status = response.status_code
    if status == 200:
        try:
            body = response.json()
            value = body["value"]
            expires_at = body["expires_at"]
            if not isinstance(value, str) or not value:
                raise ValueError
            if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
                raise ValueError
            session = body.get("session")
        except (ValueError, KeyError, TypeError):
            raise UpstreamError(
                502, "upstream_malformed", "HTTP 200 without a usable value/expires_at"
            ) from None
        return Minted(
            value,
            expires_at,
            session if isinstance(session, dict) else None,
            response.headers.get("date"),
        )
    code = _error_code(response)
    detail = f"HTTP {status}" + (f", {code}" if code else "")
    if status in (401, 403):
        raise UpstreamError(
            503,
            "upstream_unauthorized",
            f"the upstream refused the broker's API key ({detail}): check the credential "
            "broker.openai_api_key (and, for Azure, upstream.url)",
            operator=True,
            retry_after_s=60,
        )
    if status == 429:
        quota = code == "insufficient_quota"
        raise UpstreamError(
            503,
            "upstream_quota" if quota else "upstream_rate_limited",
            f"the upstream is rate-limiting the organisation ({detail})",
            operator=quota,
            retry_after_s=_retry_after(response) or (60 if quota else 10),
        )
    if 400 <= status < 500:
        raise UpstreamError(
            503,
            "upstream_rejected",
            f"the upstream rejected the session config ({detail}): check [session] in the "
            "broker's config (model or deployment name, tools) and upstream.url",
            operator=True,
            retry_after_s=60,
        )
    # 5xx, and anything unexpected (a redirect: redirects are not followed with the key).
    raise UpstreamError(503, "upstream_error", f"the upstream failed ({detail})")


def _error_code(response: httpx.Response) -> str | None:
    """OpenAI's ``error.code`` (else ``error.type``) if it looks like a code; never the text."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    if not isinstance(error, dict):
        return None
    for key in ("code", "type"):
        value = error.get(key)
        if isinstance(value, str) and _CODE.fullmatch(value):
            return value
    return None


def _retry_after(response: httpx.Response) -> int | None:
    value = response.headers.get("retry-after", "")
    return min(int(value), 3600) if value.isdigit() else None
