"""What goes wrong: a bad key (:class:`Problem`), an invalid file (:class:`ProvisionError`,
exit 78, nothing applied) and a failure while applying a valid one (:class:`ApplyError`,
exit 1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, KioskError


class ProvisionError(ConfigError):
    """The provisioning file is invalid; ``problems`` names every bad key (exit 78)."""

    def __init__(self, path: Path, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{path}: {count}: " + "; ".join(str(p) for p in problems))


class ApplyError(KioskError, OSError):
    """Applying a valid file failed part way (I/O, ``systemd-creds``); exit 1, retried at the
    next boot because the file stays in place."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One bad key: ``key`` is dotted (``audio.frame_ms``, ``network.ssh_authorized_keys.1``)
    or ``(file)``; ``message`` never contains a secret."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"
