"""Transcripts in conversation order.

The visitor's transcript arrives asynchronously, 1.2-1.4 s after the commit on the real
service: usually after the reply's own transcript. Written as they arrive, a log would read
answer first, question second. :class:`TranscriptOrder` keeps a slot per turn in the order the
conversation has them (a user slot at each commit, an assistant slot when its transcript
arrives, which is always after the commit it answers) and releases transcripts from the front
as their slots fill. A user transcript that fails, or has not come within ``wait_s``, gives up
its slot, so one lost transcription never holds back the rest. Pure: time is passed in.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .realtime.protocol import Committed, Transcript, TranscriptFailed
from .system.logging import log_event

log = logging.getLogger(__name__)

WAIT_S = 5.0


@dataclass(slots=True)
class _Slot:
    item_id: str
    since: float
    transcript: Transcript | None = None


class TranscriptOrder:
    """Releases each :class:`Transcript` to ``emit`` once everything before it in the
    conversation was released or given up."""

    def __init__(self, emit: Callable[[Transcript], None], *, wait_s: float = WAIT_S) -> None:
        self._emit = emit
        self.wait_s = wait_s
        self._slots: deque[_Slot] = deque()

    def committed(self, item_id: str, now: float) -> None:
        """A user item exists whose transcript will follow."""
        self._slots.append(_Slot(item_id, now))

    def failed(self, item_id: str) -> None:
        """No transcript will come for ``item_id``."""
        self._slots = deque(s for s in self._slots if s.item_id != item_id or s.transcript)
        self._release()

    def add(self, transcript: Transcript, now: float) -> None:
        """A finished transcript (user or assistant)."""
        for slot in self._slots:
            if slot.item_id == transcript.item_id and slot.transcript is None:
                slot.transcript = transcript
                break
        else:
            self._slots.append(_Slot(transcript.item_id, now, transcript))
        self._release()

    def tick(self, now: float) -> None:
        """Give up on user transcripts that are overdue."""
        while self._slots and self._slots[0].transcript is None:
            if now - self._slots[0].since < self.wait_s:
                return
            self._slots.popleft()
            self._release()

    def forget(self) -> None:
        """A new session or visitor: release what is complete, drop what never will be."""
        for slot in self._slots:
            if slot.transcript is not None:
                self._emit(slot.transcript)
        self._slots.clear()

    def _release(self) -> None:
        while self._slots and self._slots[0].transcript is not None:
            self._emit(self._slots.popleft().transcript)  # type: ignore[arg-type]


class TranscriptLog:
    """The daemon's transcripts: one ``transcript`` record each when ``record`` is on (off by
    default: visitors' privacy), and every ``callbacks`` entry called with ``(role, text)``,
    both in conversation order. ``awaits_user``: the session transcribes the visitor, so each
    commit holds a slot for that transcript."""

    def __init__(self, *, record: bool, awaits_user: bool) -> None:
        self.record = record
        self.awaits_user = awaits_user
        self.callbacks: list[Callable[[str, str], None]] = []
        self.order = TranscriptOrder(self._release)

    def receive(self, event: Any, now: float) -> bool:
        """Take a transcript-related server event; False when ``event`` is none."""
        if isinstance(event, Transcript):
            self.order.add(event, now)
        elif isinstance(event, Committed):
            if self.awaits_user:
                self.order.committed(event.item_id, now)
        elif isinstance(event, TranscriptFailed):
            self.order.failed(event.item_id)
        else:
            return False
        return True

    def _release(self, event: Transcript) -> None:
        if self.record:
            log_event(
                log,
                logging.INFO,
                "transcript",
                f"{event.role}: {event.text}",
                role=event.role,
                item_id=event.item_id,
                response_id=event.response_id or None,
                transcript=event.text,
            )
        for callback in self.callbacks:
            callback(event.role, event.text)
