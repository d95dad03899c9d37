"""Logging: structured records to journald, or one line per record on stderr.

Structured fields are passed as upper-case ``extra`` keys (``KIOSKVOICE_EVENT``, ...) because
journald drops lower-case field names. A redacting filter sits on every handler and replaces
every registered secret in every record, so a secret that slips into a message (an exception
text, a URL) never leaves the process.

Where records go (:func:`setup_logging`): ``target="journal"`` sends them to journald's native
socket, with ``SYSLOG_IDENTIFIER=kioskvoice``, ``PRIORITY``, the ``KIOSKVOICE_*`` fields and a
``MESSAGE_ID`` for key events (:mod:`kioskvoice.system.catalog`); ``"stderr"`` writes lines;
``"auto"`` picks the journal when systemd connected our stderr to it (``$JOURNAL_STREAM`` names
stderr's device and inode), else stderr. Without a journald socket the journal target falls
back to stderr with one warning.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TextIO

from .catalog import message_id

FIELD_PREFIX = "KIOSKVOICE_"
MASK = "****"
EPHEMERAL_KEPT = 8
SYSLOG_IDENTIFIER = "kioskvoice"
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")

Target = Literal["auto", "journal", "stderr"]


def log_event(logger: logging.Logger, level: int, event: str, message: str, **fields: Any) -> None:
    """Log ``message`` with ``KIOSKVOICE_EVENT=event`` and ``KIOSKVOICE_<NAME>`` fields.

    ``None`` values are left out. Never pass per-frame events: journald rate-limits a service
    to 10000 records per 30 s by default and the kiosk would lose the records that matter.
    """
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
        # Short-lived secrets: one per connection for as long as the daemon runs, so only the
        # newest few are kept (an expired one opens nothing, and each costs every record).
        self._ephemeral: collections.deque[str] = collections.deque(maxlen=EPHEMERAL_KEPT)

    def add(self, secrets: Iterable[str]) -> None:
        # Very short values would mask ordinary words; no real key is that short.
        self._secrets.update(s for s in secrets if s and len(s) >= 6)

    def add_ephemeral(self, secret: str) -> None:
        """A short-lived secret (a broker's ``ek_…``): masked while it is among the newest."""
        if secret and len(secret) >= 6 and secret not in self._ephemeral:
            self._ephemeral.append(secret)

    def scrub(self, text: str) -> str:
        for secret in (*self._secrets, *self._ephemeral):
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets and not self._ephemeral:
            return True
        record.msg = self.scrub(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # Render the traceback now, scrubbed, and drop the live exception.
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key.startswith(FIELD_PREFIX) and isinstance(value, str):
                setattr(record, key, self.scrub(value))
        return True


REDACTOR = Redactor()


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k.startswith(FIELD_PREFIX)}


def _message_with_traceback(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_text:
        text += "\n" + record.exc_text
    elif record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    if record.stack_info:
        text += "\n" + record.stack_info
    return text


class LineFormatter(logging.Formatter):
    """``LEVEL logger: message [event=x key=value]`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = [
            f"{key[len(FIELD_PREFIX) :].lower()}={value}" for key, value in _fields(record).items()
        ]
        line = f"{record.levelname.lower()} {record.name}: {record.getMessage()}"
        if fields:
            line += " [" + " ".join(fields) + "]"
        if record.exc_text:
            line += " | " + record.exc_text.replace("\n", " | ")
        elif record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


def syslog_priority(levelno: int) -> int:
    """The syslog priority journald stores for a logging level (3 err, 4 warning, 6 info...)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def _journal_sendv(*fields: str) -> None:
    from systemd import journal

    journal.sendv(*fields)


class JournalHandler(logging.Handler):
    """Sends each record to journald's native socket as one entry with structured fields.

    Fields: ``MESSAGE`` (with the traceback, if any), ``PRIORITY``, ``SYSLOG_IDENTIFIER``,
    ``LOGGER``, ``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``, ``THREAD_NAME``, every
    ``KIOSKVOICE_*`` field of the record, and ``MESSAGE_ID`` when ``KIOSKVOICE_EVENT`` names a
    key event. Nothing else of the record is sent.

    ``send`` receives ``"FIELD=value"`` strings (default: systemd-python's ``journal.sendv``).
    When it raises ``OSError`` (journald restarting, its socket gone) the record is written to
    ``fallback`` as a line instead, with one warning per outage: no record is lost or raised.
    """

    def __init__(
        self,
        *,
        identifier: str = SYSLOG_IDENTIFIER,
        send: Callable[..., Any] = _journal_sendv,
        fallback: TextIO | None = None,
    ) -> None:
        super().__init__()
        self.identifier = identifier
        self._send = send
        self._fallback = fallback
        self._fallback_formatter = LineFormatter()
        self._outage = False
        self._outage_lock = threading.Lock()

    def entry(self, record: logging.LogRecord) -> list[str]:
        """The journal fields for ``record`` as ``FIELD=value`` strings."""
        fields = [
            f"MESSAGE={_message_with_traceback(record)}",
            f"PRIORITY={syslog_priority(record.levelno)}",
            f"SYSLOG_IDENTIFIER={self.identifier}",
            f"LOGGER={record.name}",
            f"CODE_FILE={record.pathname}",
            f"CODE_LINE={record.lineno}",
            f"CODE_FUNC={record.funcName}",
            f"THREAD_NAME={record.threadName}",
        ]
        extra = _fields(record)
        for key, value in extra.items():
            fields.append(f"{key}={_field_value(value)}")
        mid = message_id(str(extra.get(f"{FIELD_PREFIX}EVENT", "")))
        if mid is not None:
            fields.append(f"MESSAGE_ID={mid.hex}")
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = self.entry(record)
        except Exception:
            self.handleError(record)
            return
        try:
            self._send(*fields)
        except OSError as exc:
            self._write_fallback(record, exc)
            return
        if self._outage:
            with self._outage_lock:
                self._outage = False

    def _write_fallback(self, record: logging.LogRecord, exc: OSError) -> None:
        stream = self._fallback or sys.stderr
        with self._outage_lock:
            first = not self._outage
            self._outage = True
        try:
            if first:
                stream.write(
                    f"warning {__name__}: journald unavailable "
                    f"({exc.strerror or type(exc).__name__}); writing records to stderr\n"
                )
            stream.write(self._fallback_formatter.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def _field_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def journal_available(path: Path | None = None) -> bool:
    """True when a journald listens on ``path`` (default :data:`JOURNAL_SOCKET`, the socket
    systemd-python sends to). Connecting sends nothing."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path or JOURNAL_SOCKET))
        except OSError:
            return False
    return True


def stream_is_journal(stream: Any, env: Mapping[str, str] | None = None) -> bool:
    """True when systemd connected ``stream`` to the journal.

    systemd sets ``$JOURNAL_STREAM=<device>:<inode>`` of the stream it connected; comparing it
    with the stream's own file descriptor keeps a child whose stderr was redirected (a test, a
    pipe) from taking the journal for its stderr.
    """
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def setup_logging(
    level: str = "info",
    *,
    stream: TextIO | None = None,
    target: Target = "auto",
    env: Mapping[str, str] | None = None,
) -> Literal["journal", "stderr"]:
    """Route the root logger to one redacting handler and return where it sends records.

    ``target``: ``"journal"`` (journald's native protocol), ``"stderr"`` (lines on ``stream``,
    default ``sys.stderr``) or ``"auto"`` (the journal when ``$JOURNAL_STREAM`` in ``env``
    names ``stream``, i.e. under systemd; else stderr). When the journal is wanted but no
    journald listens (:func:`journal_available`), records go to ``stream``, with one warning
    if the journal was asked for explicitly. Replaces
    any handlers already on the root logger, so calling it twice is harmless.
    """
    out = stream or sys.stderr
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    wanted = target == "journal" or (target == "auto" and stream_is_journal(out, env))
    chosen: Literal["journal", "stderr"] = "stderr"
    handler: logging.Handler
    if wanted and journal_available():
        handler = JournalHandler(fallback=out)
        chosen = "journal"
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(LineFormatter())
    handler.addFilter(REDACTOR)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # websockets logs request headers (Authorization included) at debug level.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if wanted and chosen == "stderr" and target == "journal":
        logging.getLogger(__name__).warning(
            "logging.target is journal but no journald listens on %s; logging to stderr",
            JOURNAL_SOCKET,
        )
    return chosen
