"""The token broker answers and a Realtime session opens with the kiosk's credentials."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kioskvoice.selftest import CheckResult

pytestmark = pytest.mark.timeout(90)

Check = Callable[[str], CheckResult]


def test_token_broker_answers(check: Check, need_config: None) -> None:
    check("broker")


def test_realtime_reachable(check: Check, need_config: None) -> None:
    check("realtime")
