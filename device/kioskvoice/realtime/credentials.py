"""Where the secret for each new Realtime connection comes from.

The kiosk asks its credential source for a secret before every connection. A static key is the
simple case; a token broker that mints short-lived secrets comes with the link issue.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RealtimeSettings
from ..errors import ConfigError


@dataclass(frozen=True, slots=True, repr=False)
class Secret:
    """A connection secret. ``repr`` and ``str`` never show the value."""

    value: str
    expires_at: float | None = None  # monotonic seconds, None = no expiry

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__


class StaticKey:
    """The configured API key, the same for every connection."""

    def __init__(self, key: str) -> None:
        self._secret = Secret(key)

    async def fetch(self) -> Secret:
        return self._secret

    def values(self) -> list[str]:
        """Secret strings to redact from logs."""
        return [self._secret.value]


def credentials_from(settings: RealtimeSettings) -> StaticKey:
    """The credential source the settings describe; :class:`ConfigError` if there is none."""
    if settings.api_key is None or not settings.api_key.get_secret_value().strip():
        raise ConfigError(
            "config error: realtime.api_key: required (set it in the config file, as a systemd "
            "credential named realtime.api_key, or in $KIOSKVOICE_REALTIME__API_KEY)"
        )
    return StaticKey(settings.api_key.get_secret_value().strip())
