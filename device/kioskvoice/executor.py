"""What carries out the state machine's actions: the wire, the player, the turn's audio, the
sounds and looks, the tools, and the records that say what a turn did."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .audio.player import Player
from .config import Settings
from .events import (
    Action,
    CancelResponse,
    CloseConversation,
    CloseMic,
    CommitTurn,
    DeviceLost,
    DiscardTurn,
    Interrupt,
    Notice,
    OpenConversation,
    OpenMic,
    PlayAudio,
    Press,
    Reset,
    ResponseDone,
    RunTools,
    State,
    StateChanged,
)
from .feedback import Feedback
from .kiosk import Kiosk
from .realtime.protocol import Protocol
from .realtime.supervisor import Supervisor
from .system.logging import log_event
from .tool_calls import ToolCalls
from .transcripts import TranscriptOrder
from .turn_audio import TurnAudio

log = logging.getLogger(__name__)


class Executor:
    """Loop thread only. Built by the app once its devices are open; ``on_state`` callbacks
    (LEDs, sd_notify status, tests) see every state change after it is carried out."""

    def __init__(
        self,
        settings: Settings,
        kiosk: Kiosk,
        *,
        loop: asyncio.AbstractEventLoop,
        supervisor: Supervisor,
        turn: TurnAudio,
        player: Player,
        feedback: Feedback,
        tools: ToolCalls,
        transcripts: TranscriptOrder,
        post: Callable[[Any], None],
        on_state: list[Callable[[State], None]],
    ) -> None:
        self.settings = settings
        self.kiosk = kiosk
        self._loop = loop
        self._sup = supervisor
        self._turn = turn
        self._player = player
        self.feedback = feedback
        self._tools = tools
        self._transcripts = transcripts
        self._post = post
        self._on_state = on_state
        self.turns = 0
        self.conversation_dirty = False  # something a new visitor must not meet
        self.last_press = loop.time()
        self._released_at: float | None = None
        self._overflowed: str | None = None
        self._awaiting_playback: tuple[str, float] | None = None  # (item, first audio at)

    def handle(self, event: Any) -> None:
        """Drive the state machine with one of its events and carry out what it asks."""
        if isinstance(event, ResponseDone):
            self._player.finish()
        actions = self.kiosk.handle(event, self._loop.time())
        # A beep greets a fresh press only: not a barge-in (whose silence is the feedback)
        # nor a hands-free conversation listening again after a reply.
        fresh = any(
            isinstance(a, StateChanged)
            and a.old in (State.IDLE, State.OFFLINE)
            and a.new is State.LISTENING
            for a in actions
        )
        for action in actions:
            self.do(action, fresh)
        if isinstance(event, Press):
            self.last_press = self._loop.time()
        elif isinstance(event, DeviceLost):
            # Nobody can hear it now, and it must not play when the device returns.
            self._player.flush()

    def housekeep(self) -> None:
        """Every tick: overdue transcripts, the idle reset, and when the reply's first
        sample went out (the player's thread notes it; the record is written here)."""
        now = self._loop.time()
        self._transcripts.tick(now)
        if self._awaiting_playback is not None:
            item_id, arrived = self._awaiting_playback
            started = self._player.started_at(item_id)
            if started is not None or now - arrived > 10:
                self._awaiting_playback = None
            if started is not None:
                latency_ms = max(0, int((started - arrived) * 1000))
                log_event(
                    log,
                    logging.INFO,
                    "playback_start",
                    f"reply audible {latency_ms} ms after its first audio arrived",
                    turn=self.turns,
                    latency_ms=latency_ms,
                )
        if (
            self.conversation_dirty
            and not self.kiosk.busy
            and now - self.last_press >= self.settings.interaction.idle_reset_s
        ):
            # Visitor privacy: the next visitor must not meet this conversation.
            self._post(Reset("idle"))

    def _send(self, build: Callable[..., dict[str, Any]], *args: Any) -> bool:
        return self._sup.send(build, *args)

    def do(self, action: Action, fresh: bool = False) -> None:
        """Carry out one action; ``fresh``: it belongs to a press from idle (beep)."""
        now = self._loop.time()
        turn, player = self._turn, self._player
        match action:
            case OpenMic():
                self.turns += 1
                self.conversation_dirty = True
                log_event(log, logging.INFO, "turn_start", "listening", turn=self.turns)
                if fresh:
                    self.feedback.play("listening")
                turn.open(streaming=self.kiosk.conversation, by_voice=action.by_voice)
            case CommitTurn():
                if turn.mic_open:
                    turn.close()
                    self._log_turn_end(f"turn ended: {turn.seconds:.2f} s of audio")
                turn.deliver()
                self._released_at = now
            case CloseMic():
                turn.close()
            case OpenConversation():
                self._send(Protocol.turn_detection, self.settings.interaction.vad)
            case CloseConversation():
                self._send(Protocol.turn_detection, None)
                self._send(Protocol.clear)
            case DiscardTurn():
                turn.discard()
            case CancelResponse(response_id=response_id):
                self._send(Protocol.cancel, response_id)
            case PlayAudio(item_id=item_id, pcm=pcm):
                turn.forget()  # answered: nothing left to send again
                if self.feedback.stop_thinking():
                    player.flush()  # the answer, not the rest of a chime
                self._reply_started(item_id, now)
                if not player.feed(item_id, pcm) and item_id != self._overflowed:
                    self._overflowed = item_id  # one record per reply, not per delta
                    log_event(
                        log,
                        logging.WARNING,
                        "playback_overflow",
                        "reply audio dropped: the player already holds its maximum",
                        turn=self.turns,
                    )
            case Interrupt(response_id=response_id, item_id=item_id, cancel=cancel, clear=clear):
                self._tools.moved_on()
                self.feedback.stop_thinking()
                player.flush()
                heard_ms = player.heard_ms(item_id) if item_id is not None else None
                if cancel:
                    self._send(Protocol.cancel, response_id)
                if item_id is not None:
                    self._send(Protocol.truncate, item_id, heard_ms)
                if clear:  # a hands-free voice barge-in keeps the buffer: their words are in it
                    self._send(Protocol.clear)
                self._released_at = None
                by = "voice" if action.by_voice else "button"
                log_event(
                    log,
                    logging.INFO,
                    "barge_in",
                    f"reply interrupted by {by}",
                    turn=self.turns,
                    trigger=by,
                    heard_ms=heard_ms,
                )
            case RunTools(calls=calls):
                self._tools.start(calls)
                self.feedback.start_thinking()
            case Notice(kind=kind, detail=detail):
                self._notice(kind, detail)
            case StateChanged(old=old, new=new):
                self._state_changed(old, new)

    def _reply_started(self, item_id: str, now: float) -> None:
        if self._released_at is None:
            return
        self._awaiting_playback = (item_id, now)
        latency_ms = int((now - self._released_at) * 1000)
        self._released_at = None
        log_event(
            log,
            logging.INFO,
            "reply_start",
            f"reply started {latency_ms} ms after release",
            turn=self.turns,
            latency_ms=latency_ms,
        )

    def _state_changed(self, old: State, new: State) -> None:
        turn = self._turn
        turn.listening = new not in (State.THINKING, State.SPEAKING)
        if new not in (State.THINKING, State.SPEAKING):
            self.feedback.stop_thinking()  # (the answer's first audio stops it too)
        if new in (State.OFFLINE, State.ERROR):
            self._tools.moved_on()  # that session's calls cannot be answered
        if new is State.IDLE and self._tools.end_after_reply:
            self._tools.end_after_reply = False
            self._loop.call_soon(self._post, Reset("end_conversation"))
        if (
            old is State.LISTENING
            and new is State.THINKING
            and turn.mic_open
            and not self.kiosk.conversation  # voice barge-in: the mic stays open
        ):
            # Released while the link is down: the turn waits for delivery.
            turn.close()
            self.feedback.play("offline")
            self._log_turn_end("turn ended while the link is down; waiting to deliver it")
        if old is State.SPEAKING and new is State.IDLE:
            log_event(log, logging.INFO, "reply_end", "reply finished", turn=self.turns)
        log.debug("state %s -> %s", old, new)
        for callback in self._on_state:
            callback(new)

    def _notice(self, kind: str, detail: str) -> None:
        turn = self._turn
        if kind == "turn_dropped":
            turn.forget()
        elif kind == "new_visitor":
            self._transcripts.forget()
            self._tools.moved_on()
            self._tools.end_after_reply = False
            turn.forget()
            self.conversation_dirty = False
            self.feedback.stop_thinking()
            self._sup.reset()
        elif kind == "no_speech":
            detail = f"{detail}; loudest {turn.meter.peak_dbfs:.0f} dBFS".lstrip("; ")
        self.feedback.notice(kind, detail, self.turns)

    def _log_turn_end(self, message: str) -> None:
        meter = self._turn.meter
        log_event(
            log,
            logging.INFO,
            "turn_end",
            message,
            turn=self.turns,
            audio_ms=int(self._turn.seconds * 1000),
            peak_dbfs=round(meter.peak_dbfs, 1),
        )
        if meter.clipping:
            log_event(
                log,
                logging.WARNING,
                "mic_clipping",
                f"the microphone clipped: {100 * meter.clipped_fraction:.1f} % of the turn's "
                "samples at full scale; lower the capture gain",
                turn=self.turns,
                clipped_permille=round(1000 * meter.clipped_fraction),
            )
