"""One ``echo_stats`` journal record per reply: the echo reduction the daemon measured on
itself while it spoke (see :mod:`kioskvoice.dsp.echo_stats`).

Per reply, not per conversation: push-to-talk has no conversation, a reply is exactly the
stretch in which the far end plays, and a fresh figure per reply lets ``diag`` and the metrics
show a speaker turned up or a canceller diverging at the next answer, not at the end of a
visit that may last half an hour.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .dsp.echo_stats import EchoFigures, EchoTally, figures
from .events import State
from .system.logging import log_event

log = logging.getLogger(__name__)

MIN_SECONDS = 1.0
"""A reply with less far-end-only audio than this gives no record (too few blocks to mean
anything: a two-word answer spoken over by the visitor)."""


class EchoReport:
    """Loop thread. ``tally`` reads the capture chain's latest :class:`EchoTally` (lock-free);
    :meth:`on_state` is called with every state the kiosk enters."""

    def __init__(self, tally: Callable[[], EchoTally], rate: int) -> None:
        self._tally = tally
        self._rate = rate
        self._start: EchoTally | None = None
        self.last: EchoFigures | None = None

    def on_state(self, new: State) -> None:
        if new is State.SPEAKING:
            if self._start is None:
                self._start = self._tally()
            return
        if new is State.THINKING:
            return  # tools between two parts of one reply: still the same reply
        start, self._start = self._start, None
        if start is None:
            return
        measured = figures(start, self._tally(), self._rate)
        if measured is None or measured.seconds < MIN_SECONDS:
            return
        self.last = measured
        log_event(
            log,
            logging.INFO,
            "echo_stats",
            f"echo reduced by {measured.erle_db:.1f} dB while speaking, residual "
            f"{measured.residual_dbfs:.0f} dBFS ({measured.seconds:.1f} s measured)",
            erle_db=round(measured.erle_db, 1),
            residual_dbfs=round(measured.residual_dbfs, 1),
            seconds=round(measured.seconds, 1),
        )
