"""The push-to-talk button (press, release, debounce on real contacts) and the LEDs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kioskvoice.selftest import CheckResult

pytestmark = pytest.mark.timeout(120)

Check = Callable[[str], CheckResult]


def test_button_press_release_debounced(check: Check, need_gpio: None) -> None:
    result = check("button")
    assert "1 press" in result.value


def test_every_led_pattern(check: Check, need_gpio: None) -> None:
    check("leds")
