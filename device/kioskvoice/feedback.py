"""What the visitor hears and sees when something is not an ordinary answer.

Every :class:`~kioskvoice.events.Notice` from the state machine ends here and becomes, at
once, a local sound (through the player, so the echo canceller hears it as far end; never sent
to the model), a look on the LEDs, and one journald record whose event has its own MESSAGE_ID
where an operator needs to find it (:mod:`kioskvoice.system.catalog`):

========================  =====================  ===================  =====================
notice                    sound                  LEDs                 record
========================  =====================  ===================  =====================
too_short                 falling beep           orange double flash  info
max_turn                  two short beeps        (turn goes on)       info
no_speech                 "I did not hear..."    error look, 3 s      info
mic_suspect / mic_ok      (none)                 error look when idle warning / info
reply_failed, no_reply,   "Sorry, something      error look, 3 s      warning, the cause
reply_cut                 went wrong..."                              in ERROR_CODE
turn_dropped, unavailable "Sorry, I cannot       (error state)        warning
                          answer right now"
========================  =====================  ===================  =====================

It also plays the "still working" cue while a slow tool call runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re

from .audio.earcons import Earcons
from .audio.player import Player
from .config import InteractionSettings
from .panel import FAILURE_LOOK_S, Look, Panel
from .system.logging import log_event

log = logging.getLogger(__name__)

APOLOGISE = frozenset({"reply_failed", "no_reply", "reply_cut"})
THINKING_PERIOD_S = 1.6  # the cue repeats this often (it is about 0.4 s long)
_CODE = re.compile(r"[a-z][a-z0-9_.]{0,63}")
_SOUNDS = {
    "too_short": "too_short",
    "max_turn": "max_turn",
    "no_speech": "no_speech",
    "turn_dropped": "error",
    "unavailable": "error",
    **{kind: "apology" for kind in APOLOGISE},
}
_LEVELS = {
    "too_short": logging.INFO,
    "max_turn": logging.INFO,
    "no_speech": logging.INFO,
    "mic_ok": logging.INFO,
    "new_visitor": logging.INFO,
}


def cause_code(detail: str) -> str:
    """A machine-readable cause from a notice's detail: ``failed: server_error`` gives
    ``server_error``, ``no progress`` gives ``no_progress``."""
    last = detail.rsplit(":", 1)[-1].strip().lower().replace(" ", "_")
    return last if _CODE.fullmatch(last) else "unknown"


class Feedback:
    """Turns notices into sounds, looks and records. Loop thread only; construction does no
    I/O (:meth:`load` reads the sounds)."""

    def __init__(self, settings: InteractionSettings) -> None:
        self.settings = settings
        self.earcons = Earcons(settings)
        self.player: Player | None = None
        self.panel: Panel | None = None
        self._seq = itertools.count()
        self._thinking: asyncio.Task[None] | None = None

    def load(self) -> None:
        """Read every sound; raises ConfigError naming the key of a bad file."""
        self.earcons.load()

    def play(self, name: str) -> None:
        """Play a local sound now, after whatever is queued."""
        pcm = self.earcons.get(name)
        if pcm is not None and self.player is not None:
            self.player.feed(f"earcon-{name}-{next(self._seq)}", pcm)
            self.player.finish()

    def notice(self, kind: str, detail: str, turn: int) -> None:
        """Carry out one notice: sound, look, record."""
        sound = _SOUNDS.get(kind)
        if sound is not None:
            self.play(sound)
        panel = self.panel
        if panel is not None:
            if kind == "too_short":
                panel.show(Look.TOO_SHORT)
            elif kind in APOLOGISE or kind == "no_speech":
                panel.flash(Look.ERROR, FAILURE_LOOK_S)
            elif kind in ("mic_suspect", "mic_ok"):
                panel.alert(kind == "mic_suspect")
        fields: dict[str, object] = {"turn": turn}
        if kind in APOLOGISE:
            fields["error_code"] = cause_code(detail)
        level = _LEVELS.get(kind, logging.WARNING)
        log_event(log, level, kind, f"{kind} {detail}".strip(), **fields)

    # --- the "still working" cue ----------------------------------------------------------

    def start_thinking(self) -> None:
        """Tools are running: after ``thinking_cue_s`` play the cue, repeating, until
        :meth:`stop_thinking`. A no-op when the cue is off."""
        self.stop_thinking()
        self._cued = False
        if self.settings.thinking_cue_s > 0 and self.earcons.get("thinking") is not None:
            self._thinking = asyncio.create_task(self._think(), name="thinking-cue")

    def stop_thinking(self) -> bool:
        """Stop the cue; True when it had started playing (the caller may flush it)."""
        task, self._thinking = self._thinking, None
        if task is None:
            return False
        task.cancel()
        return self._cued

    async def _think(self) -> None:
        self._cued = False
        await asyncio.sleep(self.settings.thinking_cue_s)
        log_event(log, logging.INFO, "thinking_cue", "a tool call is slow: still-working cue")
        while True:
            if self.player is not None and self.player.idle:
                self._cued = True
                self.play("thinking")
            await asyncio.sleep(THINKING_PERIOD_S)

    async def close(self) -> None:
        task, self._thinking = self._thinking, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    _cued = False
