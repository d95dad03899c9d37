"""The retry policy is pure: classification of failures and the backoff schedule."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from kioskvoice.errors import LinkError
from kioskvoice.realtime.supervisor import backoff_delay, classify


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


def test_backoff_is_capped_exponential_with_jitter() -> None:
    assert backoff_delay(0, rng=lambda: 1.0) == 0.5  # first retry within 0.5 s
    assert backoff_delay(0, rng=lambda: 0.0) == 0.25
    assert backoff_delay(3, rng=lambda: 1.0) == 4.0
    assert backoff_delay(10, rng=lambda: 1.0) == 30.0
    assert backoff_delay(1000, rng=lambda: 0.0) == 15.0
    delays = {backoff_delay(4) for _ in range(50)}
    assert len(delays) > 1 and all(4.0 <= d <= 8.0 for d in delays)
