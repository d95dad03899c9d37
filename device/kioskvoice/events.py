"""Typed events into the kiosk state machine and the actions it asks for.

All are small frozen dataclasses: no sockets, threads or clocks. Times are monotonic seconds
passed in by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    """What the kiosk is doing, as shown on the LEDs and in ``ctl status``."""

    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    OFFLINE = "offline"
    ERROR = "error"


class LinkState(StrEnum):
    """The Realtime link as reported by ``ctl status``."""

    CONNECTED = "connected"
    CONNECTING = "connecting"
    DOWN = "down"


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Press:
    """The push-to-talk button went down (GPIO or ``ctl press``)."""

    source: str = "button"


@dataclass(frozen=True, slots=True)
class Release:
    """The push-to-talk button came up."""

    source: str = "button"


@dataclass(frozen=True, slots=True)
class Tick:
    """Periodic clock event; ``playback_idle`` is true when the player has nothing left."""

    playback_idle: bool = True


@dataclass(frozen=True, slots=True)
class LinkUp:
    """A configured Realtime session is ready for turns."""

    session_id: str = ""


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The link is gone and being re-established."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class LinkFatal:
    """The link cannot work without an operator (bad key, quota, unknown model)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    """``response.created``."""

    response_id: str


@dataclass(frozen=True, slots=True)
class ReplyAudio:
    """A chunk of reply audio, 24 kHz PCM16 mono."""

    response_id: str
    item_id: str
    pcm: bytes


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """``response.done`` with its final status (completed, cancelled, failed, incomplete)
    and, when it did not complete, why (``status_details.error.code`` or
    ``status_details.reason``; empty when the server gave none). ``fatal``: the reply failed
    for a reason only an operator can fix (quota, permission, model): every reply will."""

    response_id: str
    status: str
    code: str = ""
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class ServerError:
    """A non-fatal ``error`` event from the server."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Hands-free: the server's VAD heard the visitor start speaking."""


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """Hands-free: the server's VAD heard the visitor stop; it commits the turn itself."""


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """The model asks for a tool: ``response.function_call_arguments.done``. Acted on only
    once its response completes (arguments also arrive for cancelled responses)."""

    response_id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolsDone:
    """The tool outputs were sent with a new ``response.create``: a reply follows."""


@dataclass(frozen=True, slots=True)
class Reset:
    """New visitor (the reset button, ``ctl reset``, the idle timeout, the model's
    ``end_conversation``): forget the conversation."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class VoiceHeard:
    """The open turn's audio holds speech (or at least sound above the silence floor): the
    turn is worth sending."""


@dataclass(frozen=True, slots=True)
class VoiceEnded:
    """The visitor whose words opened the turn (push-to-talk voice barge-in: no button held,
    no server VAD) has been quiet long enough: their turn is over."""


@dataclass(frozen=True, slots=True)
class TalkOver:
    """The double-talk gate heard the visitor talk over the kiosk's own voice (voice
    barge-in): found locally, before the server's VAD could say so."""


@dataclass(frozen=True, slots=True)
class DeviceLost:
    """An audio device stopped delivering (error, or no frames) and is being reopened."""

    reason: str


@dataclass(frozen=True, slots=True)
class DeviceBack:
    """The audio devices work again."""


Event = (
    Press
    | TalkOver
    | Release
    | Tick
    | LinkUp
    | LinkDown
    | LinkFatal
    | ResponseStarted
    | ReplyAudio
    | ResponseDone
    | ServerError
    | DeviceLost
    | DeviceBack
    | Reset
    | VoiceHeard
    | VoiceEnded
    | SpeechStarted
    | SpeechStopped
    | FunctionCall
    | ToolsDone
)


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenMic:
    """Start streaming captured audio to the model."""

    by_voice: bool = False
    """The visitor's voice opened the turn (push-to-talk voice barge-in): it ends when they
    fall quiet (:class:`VoiceEnded`), not on a release."""


@dataclass(frozen=True, slots=True)
class CloseMic:
    """Stop streaming without committing (hands-free: the server's VAD commits)."""


@dataclass(frozen=True, slots=True)
class OpenConversation:
    """Hands-free: switch the session to server VAD (the mic then streams continuously)."""


@dataclass(frozen=True, slots=True)
class CloseConversation:
    """Hands-free: back to push-to-talk (server VAD off, input buffer cleared)."""


@dataclass(frozen=True, slots=True)
class CommitTurn:
    """Stop streaming, commit the audio buffer and ask for a response."""


@dataclass(frozen=True, slots=True)
class DiscardTurn:
    """Stop streaming and clear the server's audio buffer; nothing is answered."""


@dataclass(frozen=True, slots=True)
class CancelResponse:
    """Cancel a response that started after its turn was given up (``response.cancel``);
    nothing else changes: the visitor may already be on the next turn."""

    response_id: str


@dataclass(frozen=True, slots=True)
class PlayAudio:
    """Queue reply audio on the speaker."""

    item_id: str
    pcm: bytes


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Barge-in: silence the speaker now, cancel the response if it still runs
    (``response_id`` None: whichever is in progress), truncate ``item_id`` to what was played,
    clear the input buffer (``clear``; not for a hands-free voice barge-in, whose first words
    are in it). ``by_voice``: the visitor's voice, not a press, did it (what the log says)."""

    response_id: str | None
    item_id: str | None
    cancel: bool
    clear: bool = True
    by_voice: bool = False


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the visitor or operator should learn: ``too_short``, ``max_turn``,
    ``no_speech``, ``mic_suspect``, ``mic_ok``, ``unavailable``, ``turn_dropped``,
    ``no_reply``, ``reply_cut``, ``reply_failed``, ``new_visitor``."""

    kind: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RunTools:
    """Run these calls of a completed response, send their outputs, ask for the reply."""

    calls: tuple[FunctionCall, ...]


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The kiosk moved from ``old`` to ``new``."""

    old: State
    new: State


Action = (
    OpenMic
    | CloseMic
    | OpenConversation
    | CloseConversation
    | CommitTurn
    | DiscardTurn
    | CancelResponse
    | PlayAudio
    | Interrupt
    | Notice
    | RunTools
    | StateChanged
)
