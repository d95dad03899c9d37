"""One exception root for kioskvoice.

Each subclass also inherits the matching built-in, so callers that only know the built-in
(``ValueError``, ``OSError``, ``ConnectionError``) still catch it. Messages are single lines
meant for an operator and never contain secrets.
"""

from __future__ import annotations


class KioskError(Exception):
    """Root of every error kioskvoice raises on purpose."""


class ConfigError(KioskError, ValueError):
    """The configuration is invalid. The daemon exits with EX_CONFIG (78)."""

    exit_code = 78


class AudioDeviceError(KioskError, OSError):
    """An audio device cannot be found, opened, or has stopped delivering frames."""


class LinkError(KioskError, ConnectionError):
    """The Realtime link failed. ``fatal`` errors need an operator (bad key, quota, model)."""

    def __init__(self, message: str, *, code: str | None = None, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal


class ControlError(KioskError, OSError):
    """The control socket cannot be reached or answered with an error."""
