"""What a new session is told of the conversation so far, pure: the recent turns as text, in
conversation order, each assistant turn cut to what the visitor heard.

Events arrive out of conversation order: the visitor's transcript completes 1.2-1.4 s after the
commit, often after the reply's own transcript. So turns are kept by item id, placed where the
server put them (``previous_item_id``), and filled in when their text arrives.

Assistant audio cannot be replayed (the service rejects ``output_audio`` content; openai-agents
-js #963): turns go back as ``output_text``. After a barge-in the server keeps only the heard
part of the transcript; so does the replay: the transcript is cut at the fraction of the
received audio that was played, back to a word boundary (an estimate that never includes a word
the visitor did not hear begin). Replies that were cancelled or failed before anything was
played (a barge-in while thinking, a reply the kiosk gave up on) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from ..events import ReplyAudio, ResponseDone
from .protocol import Incoming, ItemAdded, Transcript

__all__ = ["History", "Turn", "heard_part"]

BYTES_PER_MS: Final = 48  # 24 kHz PCM16 mono
_PLAYED: Final = frozenset({"completed", "incomplete"})


@dataclass(slots=True)
class Turn:
    """One message item of the conversation, as the kiosk knows it."""

    item_id: str
    role: str
    text: str | None = None
    response_id: str | None = None
    audio_ms: float = 0.0
    """Assistant audio received for the item so far."""
    heard_ms: int | None = None
    """Set by a truncation: how much of the audio was played."""
    status: str | None = None
    """The final status of the response that made the item (assistant turns)."""

    def replay_text(self) -> str | None:
        """The text a new session is given for this turn, None to leave it out."""
        text = (self.text or "").strip()
        if not text:
            return None
        if self.role != "assistant":
            return text
        if self.heard_ms is not None:
            return heard_part(text, self.heard_ms, self.audio_ms) or None
        return text if self.status in _PLAYED else None


def heard_part(text: str, heard_ms: float, audio_ms: float) -> str:
    """The words of ``text`` whose start was heard when ``heard_ms`` of ``audio_ms`` played."""
    if audio_ms <= 0 or heard_ms <= 0:
        return ""
    if heard_ms >= audio_ms:
        return text.strip()
    cut = int(len(text) * heard_ms / audio_ms)
    if cut < len(text) and not text[cut].isspace():
        cut = text.rfind(" ", 0, cut + 1)  # a word cut in the middle was not heard
    return text[: max(cut, 0)].strip()


@dataclass
class History:
    """The conversation of the current visitor across sessions, bounded."""

    max_turns: int
    """Turns replayed (a turn is a question or an answer: ``2 * replay_turns``)."""
    turns: list[Turn] = field(default_factory=list)

    def _find(self, item_id: str) -> Turn | None:
        return next((t for t in reversed(self.turns) if t.item_id == item_id), None)

    def _bound(self) -> None:
        # Keep room for turns whose text has not arrived yet (they are skipped on replay).
        excess = len(self.turns) - max(4 * self.max_turns, 8)
        if excess > 0:
            del self.turns[:excess]

    def clear(self) -> None:
        self.turns.clear()

    def added(self, item_id: str, previous_id: str | None, role: str) -> None:
        """A message item joined the conversation after ``previous_id``. An unknown (or no)
        previous item puts it at the end: replayed items of an earlier session have other
        ids, and everything new follows them."""
        if self._find(item_id) is not None:
            return
        turn = Turn(item_id, role)
        previous = self._find(previous_id) if previous_id else None
        if previous is None:
            self.turns.append(turn)
        else:
            self.turns.insert(self.turns.index(previous) + 1, turn)
        self._bound()

    def _assistant(self, item_id: str, response_id: str) -> Turn:
        turn = self._find(item_id)
        if turn is None:  # the reply's item.added was not seen: it is the newest turn
            self.added(item_id, None, "assistant")
            turn = self.turns[-1]
        turn.response_id = response_id or turn.response_id
        return turn

    def audio(self, response_id: str, item_id: str, nbytes: int) -> None:
        """Reply audio arrived for an assistant item."""
        self._assistant(item_id, response_id).audio_ms += nbytes / BYTES_PER_MS

    def transcript(self, role: str, item_id: str, text: str, response_id: str = "") -> None:
        """An item's transcript is complete."""
        turn = self._assistant(item_id, response_id) if role == "assistant" else self._find(item_id)
        if turn is None:
            self.added(item_id, None, role)
            turn = self.turns[-1]
        turn.text = text

    def truncated(self, item_id: str, heard_ms: int) -> None:
        """The kiosk told the server only ``heard_ms`` of this item's audio was played."""
        turn = self._find(item_id)
        if turn is not None:
            turn.heard_ms = heard_ms

    def response_done(self, response_id: str, status: str) -> None:
        """The response's final status (a reply that was never played is left out)."""
        for turn in self.turns:
            if turn.response_id == response_id:
                turn.status = status

    def observe(self, event: Incoming) -> bool:
        """Learn from one event of the current session; True for the events only the history
        needs (the kiosk has no use for them)."""
        if isinstance(event, ItemAdded):
            self.added(event.item_id, event.previous_item_id, event.role)
            return True
        if isinstance(event, ReplyAudio):
            self.audio(event.response_id, event.item_id, len(event.pcm))
        elif isinstance(event, Transcript) and event.text.strip():
            self.transcript(event.role, event.item_id, event.text, event.response_id)
        elif isinstance(event, ResponseDone):
            self.response_done(event.response_id, event.status)
        return False

    def replay(self) -> list[tuple[str, str]]:
        """(role, text) of the last :attr:`max_turns` turns worth replaying, in conversation
        order."""
        if self.max_turns <= 0:
            return []
        kept = [(t.role, text) for t in self.turns if (text := t.replay_text()) is not None]
        return kept[-self.max_turns :]
