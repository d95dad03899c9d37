"""What only a real kiosk shows: the USB microphone survives an unplug, and the installed
unit's sandbox still lets the daemon reach ALSA and GPIO (checked offline on the repository's
unit file in virtual mode)."""

from __future__ import annotations

from pathlib import Path

import pytest
from system_checks import check_sandbox, check_unit_captures, check_usb_replug, unit_installed
from virtual import SIM

from kioskvoice.selftest import Rig, Status

pytestmark = pytest.mark.timeout(180)

REPO_UNIT = Path(__file__).resolve().parent.parent / "systemd" / "kioskvoice.service"


def test_usb_mic_unplug_replug_recovered(
    need_real: None, need_mic: None, request: pytest.FixtureRequest
) -> None:
    rig: Rig = request.getfixturevalue("rig")
    if not rig.prompter.attended:
        pytest.skip("usb_replug: needs a tester to unplug the microphone (run with -s)")
    result = check_usb_replug(rig)
    assert result.status is Status.PASS, result.message


def test_unit_sandbox_allows_alsa_and_gpio() -> None:
    if SIM:
        result = check_sandbox(REPO_UNIT)
    else:
        missing = unit_installed()
        if missing:
            pytest.skip(missing)
        result = check_sandbox()
    print(result)
    assert result.status is Status.PASS, f"{result.value}: {result.message}"


def test_capture_under_the_real_unit(need_real: None, need_mic: None) -> None:
    missing = unit_installed()
    if missing:
        pytest.skip(missing)
    result = check_unit_captures()
    assert result.status is Status.PASS, f"{result.value}: {result.message}"
