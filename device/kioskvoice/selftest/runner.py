"""Every check by name, in the order an installer works through a kiosk (:data:`CHECKS`),
and running them so that a crash is a failure and no secret reaches the table."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ..system.logging import REDACTOR
from .audio import check_capture, check_mic, check_speaker
from .echo import check_echo
from .gpio import check_button, check_leds
from .link import check_broker, check_realtime
from .results import CheckResult, Status
from .rig import Rig

log = logging.getLogger("kioskvoice.selftest")


Check = Callable[[Rig], CheckResult]
CHECKS: dict[str, Check] = {
    "mic": check_mic,
    "capture": check_capture,
    "speaker": check_speaker,
    "echo": check_echo,
    "button": check_button,
    "leds": check_leds,
    "broker": check_broker,
    "realtime": check_realtime,
}
"""Every check, in the order they run (the order an installer works through a kiosk)."""


def run_check(rig: Rig, name: str) -> CheckResult:
    """Run one check; an unexpected exception is a failure naming it, not a crash."""
    try:
        result = CHECKS[name](rig)
    except Exception as exc:
        log.debug("check %s raised", name, exc_info=True)
        result = CheckResult(
            name, Status.FAIL, type(exc).__name__, f"the check failed unexpectedly: {exc}"
        )
    # No secret may reach the table, even through an exception's text.
    return CheckResult(
        result.name, result.status, REDACTOR.scrub(result.value), REDACTOR.scrub(result.message)
    )


def run_checks(rig: Rig, names: Sequence[str] | None = None) -> list[CheckResult]:
    """Run ``names`` (default: every check) in :data:`CHECKS` order."""
    wanted = list(CHECKS) if not names else [n for n in CHECKS if n in names]
    return [run_check(rig, name) for name in wanted]
