"""Where the secret for each new Realtime connection comes from.

The kiosk asks its credential source for a secret before every connection: either the static
API key, or a fresh short-lived secret from the operator's token broker, so that a stolen SD
card yields only a revocable device token.

Broker contract: ``POST token_url`` with ``Authorization: Bearer <device_token>`` and the JSON
body ``{"session": {…the kiosk's session config, model included…}}``; the answer has the shape
of OpenAI's client-secret response, ``{"value": "ek_…", "expires_at": <unix s>, "session":
{…}}``. 401/403 mean the device is unknown or revoked (fatal); 429/5xx and network errors are
retried with backoff.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..config import RealtimeSettings
from ..errors import ConfigError, LinkError

if TYPE_CHECKING:
    import httpx  # with tenacity, imported at the first fetch: a kiosk with a static key
    # never loads them (3.5 MB of the daemon's memory)


@dataclass(frozen=True, slots=True, repr=False)
class Secret:
    """A connection secret. ``repr`` and ``str`` never show the value."""

    value: str
    expires_at: float | None = None
    """Monotonic seconds when a short-lived secret stops opening sessions (None: a static
    key). The opener registers it with the log redactor and warns when little is left."""

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__


class Credentials(Protocol):
    async def fetch(self) -> Secret: ...
    def values(self) -> list[str]: ...

    @property
    def ephemeral(self) -> bool: ...


class StaticKey:
    """The configured API key, the same for every connection."""

    def __init__(self, key: str) -> None:
        self._secret = Secret(key)

    async def fetch(self) -> Secret:
        return self._secret

    def values(self) -> list[str]:
        """Secret strings to redact from logs."""
        return [self._secret.value]

    @property
    def ephemeral(self) -> bool:
        return False


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, LinkError) and not exc.fatal


class TokenBroker:
    """Fetches a fresh short-lived secret from the operator's broker for each connection.

    ``session`` is sent as the requested session config. A fetch retries retryable failures
    with jittered exponential backoff for up to ``give_up_s``, then raises a retryable
    :class:`LinkError` (the supervisor backs off further); 401/403 raise a fatal one.
    """

    def __init__(
        self,
        url: str,
        device_token: str,
        session: dict[str, Any],
        *,
        timeout_s: float = 10.0,
        give_up_s: float = 30.0,
    ) -> None:
        self.url = url
        self._device_token = device_token
        self._session = session
        self._timeout_s = timeout_s
        self._give_up_s = give_up_s

    def values(self) -> list[str]:
        return [self._device_token]

    @property
    def ephemeral(self) -> bool:
        return True

    async def fetch(self) -> Secret:
        from tenacity import (
            AsyncRetrying,
            retry_if_exception,
            stop_after_delay,
            wait_exponential_jitter,
        )

        retrying = AsyncRetrying(
            retry=retry_if_exception(_retryable),
            wait=wait_exponential_jitter(multiplier=0.5, max=8.0, jitter=0.5),
            stop=stop_after_delay(self._give_up_s),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._fetch_once()
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _fetch_once(self) -> Secret:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=self._timeout_s) as client:
                response = await client.post(
                    self.url,
                    headers={"Authorization": f"Bearer {self._device_token}"},
                    json={"session": self._session},
                )
        except httpx.HTTPError as exc:
            raise LinkError(
                f"token broker unreachable: {type(exc).__name__}", code="broker_unreachable"
            ) from None
        status = response.status_code
        if status in (401, 403):
            raise LinkError(
                f"token broker refused this kiosk's device token (HTTP {status})",
                code="broker_unauthorized",
                fatal=True,
            )
        if status in (408, 429) or status >= 500:
            raise LinkError(f"token broker answered HTTP {status}", code="broker_unavailable")
        if status != 200:
            raise LinkError(
                f"token broker rejected the request (HTTP {status})",
                code="broker_rejected",
                fatal=True,
            )
        try:
            body = response.json()
            value = body["value"]
            expires_at = float(body["expires_at"])
            if not isinstance(value, str) or not value:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise LinkError(
                "token broker answered without a usable value/expires_at",
                code="broker_malformed",
            ) from None
        return Secret(value, time.monotonic() + expires_at - _server_now(response))


def _server_now(response: httpx.Response) -> float:
    """The broker's wall clock (its ``Date`` header), else ours.

    ``expires_at`` is wall-clock time on the broker's clock. A Pi has no RTC and may boot with
    a wrong clock before NTP syncs, so the lifetime is taken against the broker's own Date.
    """
    date = response.headers.get("date")
    if date:
        try:
            return parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            pass
    return datetime.now(UTC).timestamp()


def credentials_from(settings: RealtimeSettings, session: dict[str, Any]) -> Credentials:
    """The credential source the settings describe; :class:`ConfigError` if there is none.

    ``session`` is the session config a token broker is asked for.
    """
    if settings.token_url is not None:
        if settings.api_key is not None:
            raise ConfigError(
                "config error: realtime.api_key: set either api_key or token_url, not both"
            )
        token = settings.device_token.get_secret_value().strip() if settings.device_token else ""
        if not token:
            raise ConfigError(
                "config error: realtime.device_token: required with token_url (a systemd "
                "credential named realtime.device_token, or $KIOSKVOICE_REALTIME__DEVICE_TOKEN)"
            )
        return TokenBroker(settings.token_url, token, session)
    if settings.api_key is None or not settings.api_key.get_secret_value().strip():
        raise ConfigError(
            "config error: realtime.api_key: required (set it in the config file, as a systemd "
            "credential named realtime.api_key, or in $KIOSKVOICE_REALTIME__API_KEY)"
        )
    return StaticKey(settings.api_key.get_secret_value().strip())
