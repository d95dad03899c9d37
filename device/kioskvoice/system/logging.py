"""Logging: one line per record on stderr, structured fields ready for journald.

Structured fields are passed as upper-case ``extra`` keys (``KIOSKVOICE_EVENT``, ...) because
journald drops lower-case field names. A redacting filter replaces every registered secret in
every record, so a secret that slips into a message (an exception text, a URL) never leaves
the process.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any

FIELD_PREFIX = "KIOSKVOICE_"
MASK = "****"


def log_event(logger: logging.Logger, level: int, event: str, message: str, **fields: Any) -> None:
    """Log ``message`` with ``KIOSKVOICE_EVENT=event`` and ``KIOSKVOICE_<NAME>`` fields."""
    extra = {f"{FIELD_PREFIX}EVENT": event}
    for name, value in fields.items():
        if value is not None:
            extra[f"{FIELD_PREFIX}{name.upper()}"] = value
    logger.log(level, message, extra=extra, stacklevel=2)


class Redactor(logging.Filter):
    """Replaces registered secrets in the message, arguments and structured fields."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add(self, secrets: Iterable[str]) -> None:
        # Very short values would mask ordinary words; no real key is that short.
        self._secrets.update(s for s in secrets if s and len(s) >= 6)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        record.msg = self.scrub(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now, scrubbed, and drop the live exception.
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        for key, value in list(record.__dict__.items()):
            if key.startswith(FIELD_PREFIX) and isinstance(value, str):
                setattr(record, key, self.scrub(value))
        return True


REDACTOR = Redactor()


class LineFormatter(logging.Formatter):
    """``LEVEL logger: message [event=x key=value]`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = [
            f"{key[len(FIELD_PREFIX) :].lower()}={value}"
            for key, value in record.__dict__.items()
            if key.startswith(FIELD_PREFIX)
        ]
        line = f"{record.levelname.lower()} {record.name}: {record.getMessage()}"
        if fields:
            line += " [" + " ".join(fields) + "]"
        if record.exc_text:
            line += " | " + record.exc_text.replace("\n", " | ")
        elif record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


def setup_logging(level: str = "info", *, stream: Any = None) -> None:
    """Route the root logger to one stderr handler with redaction (journald: systemd issue)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LineFormatter())
    handler.addFilter(REDACTOR)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # websockets logs request headers (Authorization included) at debug level.
    logging.getLogger("websockets").setLevel(logging.WARNING)
