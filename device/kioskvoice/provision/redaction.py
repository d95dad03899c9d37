"""Which values of a provisioning file are secrets, and the :class:`Redactor` that keeps
them out of every text provisioning emits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..config import secret_keys

WIFI_SECRET = ("network", "wifi_passphrase")
MASK = "********"


def _secret_values(data: Mapping[str, Any]) -> list[str]:
    """Every secret string in the file, wherever validation will find it valid or not."""
    out = []
    for section, key in (*secret_keys(), WIFI_SECRET):
        table = data.get(section)
        value = table.get(key) if isinstance(table, Mapping) else None
        if isinstance(value, str) and value:
            out.append(value)
    return out


class Redactor:
    """Replaces every known secret value with ``********`` in any text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so that a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text
