"""Serving the broker with uvicorn: in the foreground (``kioskvoice broker serve``) or in a task
(tests, the benchmark), with the same server settings either way.

The listening socket is bound before uvicorn starts, so that a port in use is reported as such
(exit 69) rather than from inside the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterable

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ListenSettings

_SECRETS = re.compile(r"\b(?:ek|kvd|sk)[_-][A-Za-z0-9_\-]{8,}")
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: any free one); :class:`OSError`
    if the address is in use or not ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so,
    # and without it Nagle plus delayed ACKs add 40 ms to every reply on a kept-alive connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def config(app: ASGIApp, listen: ListenSettings) -> uvicorn.Config:
    """uvicorn's settings for the broker: no access log of its own (ours names the device and
    nothing else), no ``Server``/``Date`` headers (the app sets ``Date``), proxy headers only
    from ``listen.forwarded_allow_ips``, bounded concurrency and keep-alive."""
    return uvicorn.Config(
        app,
        host=listen.host,
        port=listen.port,
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=True,
        forwarded_allow_ips=listen.forwarded_allow_ips,
        limit_concurrency=listen.max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
        lifespan="on",
        http=_IdleLimitedH11,
    )


class _IdleLimitedH11(H11Protocol):
    """uvicorn closes an idle keep-alive connection only after a first response: a client
    that connects and says nothing held a slot of ``max_connections`` for ever (512 of them
    made ``/healthz`` answer 503). The same keep-alive timeout now runs from the connection's
    first moment; uvicorn cancels it when the first bytes arrive."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )


def run(app: ASGIApp, listen: ListenSettings, sock: socket.socket) -> bool:
    """Serve in the foreground until SIGTERM/SIGINT (uvicorn's handlers: a graceful stop);
    False if the server never started (uvicorn has logged why)."""
    server = uvicorn.Server(config(app, listen))
    # After a graceful stop uvicorn re-raises the signal it caught under the handler that was
    # there before; for SIGTERM that is this no-op, so a stop requested by systemd ends in exit
    # 0, not in death by signal. SIGINT keeps its default (KeyboardInterrupt, exit 130).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
    return server.started


@contextlib.asynccontextmanager
async def serving(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    listen: ListenSettings | None = None,
    timeout_s: float = 10.0,
) -> AsyncIterator[str]:
    """Serve ``app`` in a task on ``host``:``port`` (0: a free port) with ``listen``'s limits;
    yields the base URL (``http://127.0.0.1:PORT``) once it accepts connections, and stops
    the server (graceful, bounded by ``timeout_s``) on exit."""
    sock = bind(host, port)
    server = uvicorn.Server(config(app, listen or ListenSettings()))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(timeout_s):
            while not server.started:
                if task.done():
                    await task
                    raise RuntimeError("the broker's server stopped while starting")
                await asyncio.sleep(0.01)
        address, bound = sock.getsockname()[:2]
        yield f"http://{'[' + address + ']' if ':' in address else address}:{bound}"
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(timeout_s):
                await task
        finally:
            sock.close()


class _Redact(logging.Filter):
    """Masks the upstream key and anything shaped like a secret (``ek_…``, ``kvd_…``,
    ``sk-…``) in every formatted record: a safety net for libraries' messages, not a licence
    to log secrets (the broker never passes one to a logger)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _SECRETS.sub("****", message)
        for secret in self._secrets:
            masked = masked.replace(secret, "****")
        if masked != message or record.exc_info:
            record.msg, record.args = masked, None
            if record.exc_info:
                text = logging.Formatter().formatException(record.exc_info)
                for secret in self._secrets:
                    text = text.replace(secret, "****")
                record.exc_text = _SECRETS.sub("****", text)
        return True


class _Formatter(logging.Formatter):
    """``<priority>name: message`` under systemd (journald reads the prefix), else with the
    level name."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self._journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        return f"{record.levelname.lower()}: {text}"


def setup_logging(level: str, secrets: Iterable[str] = ()) -> logging.Handler:
    """One line per record on stderr, secrets masked; returns the handler installed on the
    root logger. httpx's per-request lines are turned down (the access log says it all)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    handler.addFilter(_Redact(secrets))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    return handler
