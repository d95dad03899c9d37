"""The link's policy is pure: the verdict on a failure (close code + error code), the backoff
schedule, the session's lifetime, the rollover times and the pacing of new sessions."""

from __future__ import annotations

import math

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from kioskvoice.errors import LinkError
from kioskvoice.realtime.link import LinkClosed
from kioskvoice.realtime.policy import (
    FALLBACK_LIFETIME_S,
    MAX_LIFETIME_S,
    MIN_LIFETIME_S,
    SessionPacer,
    backoff_delay,
    classify,
    code_from_reason,
    is_fatal,
    plan_rollover,
    session_lifetime,
)


def status(code: int) -> InvalidStatus:
    return InvalidStatus(Response(code, "x", Headers()))


@pytest.mark.parametrize(
    ("exc", "code", "fatal"),
    [
        (status(401), "unauthorized", True),
        (status(403), "forbidden", True),
        (status(404), "not_found", True),
        (status(400), "http_400", True),
        (status(429), "http_429", False),
        (status(500), "http_500", False),
        (status(503), "http_503", False),
        (ConnectionRefusedError(111, "refused"), "network", False),
        (TimeoutError(), "timeout", False),
        (ConnectionClosedOK(Close(1001, "session expired"), None), "close_1001", False),
        (ConnectionClosedError(None, None), "close_1006", False),
        (ConnectionClosedError(Close(1011, "oops"), None), "close_1011", False),
        # The service's own closes (gauravzqa/llmgw capabilities/captures-ws.md, probes 10-11b).
        (
            ConnectionClosedError(Close(3000, "invalid_request_error.invalid_api_key"), None),
            "invalid_api_key",
            True,
        ),
        (ConnectionClosedError(Close(3000, "invalid_request_error"), None), "close_3000", True),
        (
            ConnectionClosedError(
                Close(4000, "invalid_request_error.beta_api_shape_disabled"), None
            ),
            "beta_api_shape_disabled",
            True,
        ),
        (LinkClosed(4000, "invalid_request_error.invalid_model", None), "close_4000", True),
        (LinkClosed(1001, "Your session hit ...", "session_expired"), "session_expired", False),
        (LinkClosed(1000, "", "insufficient_quota"), "insufficient_quota", True),
        (
            LinkError("invalid_api_key: bad", code="invalid_api_key", fatal=True),
            "invalid_api_key",
            True,
        ),
        (RuntimeError("?"), "unexpected", False),
    ],
)
def test_classify(exc: BaseException, code: str, fatal: bool) -> None:
    failure = classify(exc)
    assert (failure.code, failure.fatal) == (code, fatal)
    assert "\n" not in failure.detail


@pytest.mark.parametrize(
    ("close_code", "error_code", "fatal"),
    [
        # Any point of a session's life: at setup (no close yet) and after it.
        (None, "server_error", False),  # a passing server error before session.updated
        (None, "unknown_parameter", True),  # our session.update was refused: config
        (None, "invalid_api_key", True),
        (None, None, False),
        (3000, None, True),
        (3000, "invalid_api_key", True),
        (4000, "invalid_model", True),
        (4000, "missing_model", True),
        (4999, None, True),
        (1000, None, False),
        (1001, "session_expired", False),
        (1006, None, False),
        (1011, "server_error", False),
        (1011, "insufficient_quota", True),
        (4000, "server_error", False),  # a known transient code wins over the close code
    ],
)
def test_verdict_reads_close_code_and_error_code(
    close_code: int | None, error_code: str | None, fatal: bool
) -> None:
    assert is_fatal(close_code, error_code) is fatal


def test_close_reasons_name_codes() -> None:
    assert code_from_reason("invalid_request_error.invalid_api_key") == "invalid_api_key"
    assert code_from_reason("invalid_request_error") is None
    assert code_from_reason("Your session hit the maximum duration of 60 minutes.") is None
    assert code_from_reason("") is None


def test_backoff_is_capped_exponential_with_jitter() -> None:
    assert backoff_delay(0, rng=lambda: 1.0) == 0.5  # first retry within 0.5 s
    assert backoff_delay(0, rng=lambda: 0.0) == 0.25
    assert backoff_delay(3, rng=lambda: 1.0) == 4.0
    assert backoff_delay(10, rng=lambda: 1.0) == 30.0
    assert backoff_delay(1000, rng=lambda: 0.0) == 15.0
    delays = {backoff_delay(4) for _ in range(50)}
    assert len(delays) > 1 and all(4.0 <= d <= 8.0 for d in delays)


@pytest.mark.parametrize(
    ("session_max_s", "announced_s", "lifetime_s"),
    [
        (None, 3600.0, 3600.0),  # follow the server
        (1800.0, 3600.0, 1800.0),  # the earlier of the two
        (None, 12.0, 12.0),
        (None, None, FALLBACK_LIFETIME_S),
        # Announcements that cannot be true.
        (None, -30.0, FALLBACK_LIFETIME_S),  # already expired
        (None, 0.0, FALLBACK_LIFETIME_S),
        (None, 1.0, MIN_LIFETIME_S),
        (None, 10 * 365 * 86400.0, MAX_LIFETIME_S),
        (None, math.inf, FALLBACK_LIFETIME_S),
        (None, math.nan, FALLBACK_LIFETIME_S),
        (600.0, math.nan, 600.0),
    ],
)
def test_session_lifetime(
    session_max_s: float | None, announced_s: float | None, lifetime_s: float
) -> None:
    assert session_lifetime(session_max_s, announced_s) == lifetime_s


def test_rollover_margin_is_a_fraction_of_a_short_life() -> None:
    # 60 min with the default 120 s margin: prepared at 58 min, forced 2 s before the cap.
    plan = plan_rollover(100.0, 3600.0, 120.0)
    assert (plan.prepare_at, plan.force_at) == (100.0 + 3480.0, 100.0 + 3598.0)
    # An announced 12 s with a 120 s margin must not roll over at once (a storm): the margin
    # is clamped to a third of the lifetime, and the swap still comes before the cap.
    plan = plan_rollover(0.0, 12.0, 120.0)
    assert plan.prepare_at == 8.0 and 8.0 <= plan.force_at < 12.0
    for lifetime in (MIN_LIFETIME_S, 30.0, 600.0, MAX_LIFETIME_S):
        plan = plan_rollover(0.0, lifetime, 120.0)
        assert lifetime / 2 <= plan.prepare_at <= plan.force_at < lifetime


def test_pacer_bounds_sessions_whatever_happens() -> None:
    pacer = SessionPacer(burst=4, every_s=6.0)
    opened, now = 0, 0.0
    while now < 24.0:  # as fast as anything could ask, for 24 s
        wait = pacer.wait_s(now)
        if wait == 0:
            pacer.take(now)
            opened += 1
        now += max(wait, 0.01)
    assert opened <= 4 + 24 / 6 + 1
    assert SessionPacer().wait_s(0.0) == 0.0
