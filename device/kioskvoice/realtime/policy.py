"""The link's policy, pure: what is fatal, how long to wait, when to roll a session over.

No socket, no clock, no asyncio: times are monotonic seconds passed in. The supervisor only
applies these functions.

What the real service does (gauravzqa/llmgw ``capabilities/captures-ws.md``, live captures): a
bad key, a bad model or a beta-shaped client still get HTTP 101, then one ``error`` and, in the
same millisecond, a close: **3000** for authentication (reason ``invalid_request_error
.invalid_api_key``, or just ``invalid_request_error`` for a missing key), **4000** for the
request's shape (``invalid_model``, ``missing_model``, ``beta_api_shape_disabled``). An
``error`` on its own is not fatal; at the cap, ``session_expired`` comes with a *clean* 1001.
So the verdict reads the close code *and* the error code, whenever in a session's life they
come (:func:`is_fatal`).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from ..errors import LinkError

__all__ = [
    "FATAL_CODES",
    "FORCE_SWAP_S",
    "MIN_LIFETIME_S",
    "TRANSIENT_CODES",
    "Failure",
    "RolloverPlan",
    "SessionPacer",
    "backoff_delay",
    "classify",
    "code_from_reason",
    "is_fatal",
    "is_fatal_code",
    "plan_rollover",
    "session_lifetime",
]

FATAL_CODES: Final = frozenset(
    {
        # the credential
        "invalid_api_key",
        "account_deactivated",
        "organization_deactivated",
        # the organisation's billing and permissions (LiveKit's plugin treats these as fatal)
        "insufficient_quota",
        "billing_hard_limit_reached",
        "permission_denied",
        "insufficient_permissions",
        "unsupported_country_region_territory",
        # the model and the protocol shape
        "model_not_found",
        "invalid_model",
        "missing_model",
        "beta_api_shape_disabled",
    }
)
"""Error codes no retry can fix without an operator: config, billing, account."""

TRANSIENT_CODES: Final = frozenset(
    {
        "server_error",
        "internal_error",
        "rate_limit_exceeded",
        "inference_rate_limit_exceeded",
        "session_expired",
    }
)
"""Error codes that a retry with backoff may well fix."""

AUTH_CLOSE_CODE: Final = 3000
"""The service's close code for a refused credential."""
_APP_CLOSE_CODES: Final = range(4000, 5000)
"""Private-use close codes: the service refused the request's shape (model, beta client)."""
_CODE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a connection ended. ``fatal`` failures need an operator; they are retried only
    at the slow fatal interval, so that a fixed config is picked up without a restart."""

    code: str
    fatal: bool
    detail: str
    close_code: int | None = None
    """The server's close code, when the server closed the connection."""

    @property
    def auth(self) -> bool:
        """The server refused the credential."""
        return self.close_code == AUTH_CLOSE_CODE or self.code == "invalid_api_key"


def is_fatal_code(code: str | None) -> bool:
    """An error code only an operator can fix (:data:`FATAL_CODES`)."""
    return code in FATAL_CODES


def is_fatal(close_code: int | None, error_code: str | None) -> bool:
    """The verdict on a session that ended (or was refused): fatal, or worth a retry.

    ``close_code`` is the server's close code (None: the session is still open, but an
    ``error`` refused what it needs, e.g. our ``session.update``); ``error_code`` the code of
    the last ``error`` before it (or the one the close reason names; None if there was none).
    Known codes decide first; otherwise a 3000 (auth) or 4000-4999 (request shape) close is
    fatal, as is an error that refused the session's setup; every other close is retried.
    """
    if error_code in FATAL_CODES:
        return True
    if error_code in TRANSIENT_CODES:
        return False
    if close_code is None:
        return error_code is not None
    return close_code == AUTH_CLOSE_CODE or close_code in _APP_CLOSE_CODES


_FATAL_HTTP: Final = {401: "unauthorized", 403: "forbidden", 404: "not_found"}


def classify(exc: BaseException) -> Failure:
    """Map an exception from a connection attempt or session to a :class:`Failure`.

    A close is judged by :func:`is_fatal` on its code and the error code before it (the
    :class:`~kioskvoice.realtime.link.LinkClosed` the link raises carries both; a bare
    ``ConnectionClosed`` names its error code only in the reason)."""
    if isinstance(exc, LinkError):
        close_code = getattr(exc, "close_code", None)
        return Failure(exc.code or "link_error", exc.fatal, str(exc), close_code)
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in _FATAL_HTTP:
            return Failure(_FATAL_HTTP[status], True, f"handshake refused with HTTP {status}")
        fatal = 400 <= status < 500 and status not in (408, 429)
        return Failure(f"http_{status}", fatal, f"handshake refused with HTTP {status}")
    if isinstance(exc, InvalidURI):
        return Failure("bad_url", True, "realtime.url is not a valid WebSocket URL")
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        reason = exc.rcvd.reason if exc.rcvd is not None else "no close frame"
        error_code = code_from_reason(reason)
        detail = f"connection closed ({code} {reason})".replace(" )", ")")
        return Failure(error_code or f"close_{code}", is_fatal(code, error_code), detail, code)
    if isinstance(exc, TimeoutError):
        return Failure("timeout", False, "timed out connecting or configuring the session")
    if isinstance(exc, OSError | InvalidHandshake):
        return Failure("network", False, f"{type(exc).__name__}: {exc}")
    return Failure("unexpected", False, f"{type(exc).__name__}: {exc}")


def code_from_reason(reason: str) -> str | None:
    """The error code a close reason names: ``invalid_request_error.invalid_api_key`` gives
    ``invalid_api_key``; None when the reason names none."""
    _, dot, code = reason.strip().rpartition(".")
    return code if dot and _CODE.fullmatch(code) else None


def backoff_delay(
    attempt: int,
    *,
    first_s: float = 0.5,
    cap_s: float = 30.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempt`` (0-based): doubling from ``first_s`` up to
    ``cap_s``, jittered into the upper half so that a fleet does not reconnect in lockstep.
    Attempt 0 waits at most ``first_s``."""
    ceiling = min(cap_s, first_s * (2 ** min(attempt, 32)))
    return ceiling * (0.5 + 0.5 * rng())


# --- session lifetime and rollover -----------------------------------------------------------

FALLBACK_LIFETIME_S: Final = 1800.0
"""Assumed when neither the server nor the config names a cap: the shortest published one
(Azure's 30 minutes)."""
MIN_LIFETIME_S: Final = 10.0
"""An announced lifetime shorter than this is taken as this: a session must live long enough
to open its successor."""
MAX_LIFETIME_S: Final = 7200.0
"""An announced lifetime longer than this (10 years, infinity) is taken as this."""
MARGIN_FRACTION: Final = 1 / 3
"""The rollover margin is at most this fraction of the session's lifetime."""
FORCE_SWAP_S: Final = 2.0
"""A prepared session is swapped in this long before the cap even mid-turn: the cap would end
the old session anyway."""


def session_lifetime(session_max_s: float | None, announced_s: float | None) -> float:
    """How long a session may serve: the earlier of the configured ``session_max_s`` (None:
    follow the server) and what the server announced (``expires_at`` minus the server's now).

    An announcement that cannot be true is not believed: not a finite number or already
    expired → ignored; shorter than :data:`MIN_LIFETIME_S` or longer than
    :data:`MAX_LIFETIME_S` → clamped.
    """
    candidates = []
    if session_max_s is not None and session_max_s > 0:
        candidates.append(session_max_s)
    if announced_s is not None and math.isfinite(announced_s) and announced_s > 0:
        candidates.append(min(max(announced_s, MIN_LIFETIME_S), MAX_LIFETIME_S))
    return min(candidates) if candidates else FALLBACK_LIFETIME_S


@dataclass(frozen=True, slots=True)
class RolloverPlan:
    """When to replace a session (monotonic seconds)."""

    prepare_at: float
    """Open, configure and seed the next session from this moment (make-before-break)."""
    force_at: float
    """Swap at the next idle moment, but at the latest now, even mid-turn."""


def plan_rollover(opened_at: float, lifetime_s: float, margin_s: float) -> RolloverPlan:
    """The rollover of a session opened at ``opened_at`` that lives ``lifetime_s``.

    The margin is clamped to :data:`MARGIN_FRACTION` of the lifetime, so a short-lived session
    is not replaced the moment it opens (the storm of 5,291 sessions in 24 s that an announced
    12 s lifetime once caused with a 120 s margin).
    """
    margin = min(margin_s, lifetime_s * MARGIN_FRACTION)
    prepare_at = opened_at + lifetime_s - margin
    force_at = max(prepare_at, opened_at + lifetime_s - min(FORCE_SWAP_S, margin / 2))
    return RolloverPlan(prepare_at, force_at)


class SessionPacer:
    """Rate limit on opening sessions: a token bucket of ``burst`` sessions, refilled by one
    every ``every_s``. A storm against the real service costs money and gets the key
    throttled; whatever goes wrong, the kiosk opens at most ``burst + t / every_s`` sessions
    in ``t`` seconds."""

    def __init__(self, *, burst: int = 4, every_s: float = 6.0) -> None:
        self.burst = burst
        self.every_s = every_s
        self._tokens = float(burst)
        self._at: float | None = None

    def _refill(self, now: float) -> None:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) / self.every_s)
        self._at = now

    def wait_s(self, now: float) -> float:
        """How long until a session may be opened (0: now)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) * self.every_s

    def take(self, now: float) -> None:
        """A session is being opened now."""
        self._refill(now)
        self._tokens -= 1
