"""What a selftest check reports: :class:`Status`, :class:`CheckResult`, and the pass/fail
table an installer reads (:func:`render_table`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check: what was measured and what it means for the installer."""

    name: str
    status: Status
    value: str
    """The measurement, e.g. ``"speech -23 dBFS, floor -61 dBFS"``."""
    message: str
    """One sentence an installer understands (what failed and what to look at)."""

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL


def render_table(results: Sequence[CheckResult]) -> str:
    """The pass/fail table printed on stdout."""
    width = max(18, *(len(r.value) for r in results)) if results else 18
    width = min(width, 44)
    lines = [f"{'check':9} {'result':6} {'measured':{width}} what it means"]
    for r in results:
        lines.append(f"{r.name:9} {r.status.upper():6} {r.value[:width]:{width}} {r.message}")
    failed = [r.name for r in results if r.failed]
    lines.append("")
    lines.append(f"selftest FAILED: {', '.join(failed)}" if failed else "selftest PASSED")
    return "\n".join(lines)
