"""Microphone, capture level, speaker and the live echo test on the kiosk's own devices."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kioskvoice.selftest import CheckResult

pytestmark = pytest.mark.timeout(120)

Check = Callable[[str], CheckResult]


def test_mic_array_found_with_channels_and_rate(check: Check, need_mic: None) -> None:
    check("mic")


def test_capture_level_above_noise_floor_while_speaking(check: Check, need_mic: None) -> None:
    check("capture")


def test_speaker_plays(check: Check, need_speaker: None) -> None:
    check("speaker")


def test_echo_cancelled_by_the_live_chain(check: Check, need_speaker: None) -> None:
    result = check("echo")
    assert "ERLE" in result.value and "delay" in result.value
