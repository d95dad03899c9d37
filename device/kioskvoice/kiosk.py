"""The kiosk's pure state machine: events in, actions out.

It owns no sockets, threads or clocks; the caller passes the monotonic time with each event.

Turn lifecycle (push-to-talk)::

    OFFLINE --LinkUp--> IDLE --Press--> LISTENING --Release--> THINKING
    THINKING --first ReplyAudio--> SPEAKING --ResponseDone + playback idle--> IDLE
    THINKING/SPEAKING --Press--> LISTENING (barge-in: Interrupt, then OpenMic)
    any --LinkDown--> OFFLINE, any --LinkFatal--> ERROR
    THINKING/SPEAKING --ResponseDone failed, fatal code--> ERROR (with the apology)

Nothing the visitor says is silently lost: a press while the link is down still records
(OFFLINE --Press--> LISTENING); a turn released while the link is down, or whose link fails
before the reply starts, waits in THINKING and is committed when the link returns within
``deliver_within_s``; otherwise it is dropped with a ``turn_dropped`` notice and the ERROR
state until the link is back.

Every committed turn ends audibly: in an answer, or in a ``Notice`` the app turns into a
spoken apology (``reply_failed``, ``no_reply``, ``reply_cut``) or error message
(``turn_dropped``). A push-to-talk turn in which no ``VoiceHeard`` arrived is not sent at all
(``no_speech``); ``mic_suspect_turns`` of them in a row raise ``mic_suspect`` until a turn with
speech arrives (``mic_ok``). No gesture on the push-to-talk button resets the conversation:
a hold of any length up to ``max_turn_s`` is a question.

Hands-free (``hands_free=True``): a press opens a conversation in which the server's VAD
decides the turns. The kiosk listens (streaming), thinks once the server heard the visitor
stop, speaks, and listens again; the mic is closed while it thinks and speaks, so it cannot
hear itself. The conversation closes after ``conversation_idle_s`` without speech, or on a
press while listening; a press while it speaks is a barge-in, as in push-to-talk.

Voice barge-in (``voice_barge_in=True``), hands-free: the mic stays open while the kiosk thinks
and speaks (the double-talk gate sends silence for its own echo). ``TalkOver`` (the local gate)
or ``SpeechStarted`` (the server's VAD) while it thinks or speaks is a barge-in that keeps the
server's input buffer (``Interrupt(clear=False)``): the visitor's first words are in it.
Push-to-talk: ``TalkOver`` while it thinks or speaks is a barge-in that opens a turn by voice
(``OpenMic(by_voice=True)``, the gate's look-back holding the onset); with no button held and
no server VAD, that turn ends on ``VoiceEnded`` (the visitor fell quiet), a release, or at
``max_turn_s``.
"""

from __future__ import annotations

from .events import (
    Action,
    CancelResponse,
    CloseConversation,
    CloseMic,
    CommitTurn,
    DeviceBack,
    DeviceLost,
    DiscardTurn,
    Event,
    FunctionCall,
    Interrupt,
    LinkDown,
    LinkFatal,
    LinkUp,
    Notice,
    OpenConversation,
    OpenMic,
    PlayAudio,
    Press,
    Release,
    ReplyAudio,
    Reset,
    ResponseDone,
    ResponseStarted,
    RunTools,
    ServerError,
    SpeechStarted,
    SpeechStopped,
    State,
    StateChanged,
    TalkOver,
    Tick,
    ToolsDone,
    VoiceEnded,
    VoiceHeard,
)

# Error codes that mean "the turn we just committed will get no reply".
_TURN_REJECTED = {"input_audio_buffer_commit_empty"}


class Kiosk:
    """Push-to-talk turn logic.

    ``min_turn_s``: a shorter press is a tap and sends nothing. ``max_turn_s``: a longer hold
    ends the turn by itself (checked on ``Tick``): it is sent and answered, with a
    ``max_turn`` notice. ``reply_timeout_s``: a committed turn with no response in that time
    (or a response making no progress that long) returns to idle with a ``no_reply`` (or
    ``reply_cut``) notice, so the kiosk never hangs in THINKING; a response that starts after
    that is cancelled. ``mic_suspect_turns``: silent push-to-talk turns in a row before
    ``mic_suspect``.
    """

    def __init__(
        self,
        *,
        min_turn_s: float = 0.25,
        max_turn_s: float = 30.0,
        reply_timeout_s: float = 8.0,
        deliver_within_s: float = 10.0,
        hands_free: bool = False,
        conversation_idle_s: float = 120.0,
        mic_suspect_turns: int = 3,
        voice_barge_in: bool = False,
    ) -> None:
        self.min_turn_s = min_turn_s
        self.voice_barge_in = voice_barge_in
        self.mic_suspect_turns = mic_suspect_turns
        self.silent_turns = 0  # push-to-talk turns in a row with no speech in them
        self._turn_heard = False
        self._voice_turn = False  # push-to-talk: the visitor's voice, not a press, opened it
        self._abandoned = False  # gave up on a committed turn: cancel its late response
        self._visitor_speaking = False  # hands-free: between the server's speech edges
        self.max_turn_s = max_turn_s
        self.reply_timeout_s = reply_timeout_s
        self.deliver_within_s = deliver_within_s
        self.hands_free = hands_free
        self.conversation_idle_s = conversation_idle_s
        self.conversation = False  # hands-free: a conversation is open
        self._heard_at = 0.0
        self.state = State.OFFLINE
        self.link_up = False
        self.device_ok = True
        self._fatal = False  # the link failed for a reason only an operator can fix
        self._deliver_by: float | None = None  # set while a turn waits for the link
        self._pressed_at = 0.0
        self._awaiting_response = False
        self._response_id: str | None = None
        self._response_done = False
        self._audio_item: str | None = None
        self._progress_at = 0.0  # last sign of life of the current response
        self._calls: list[FunctionCall] = []  # of the current response, run when it completes
        self._tools_running = False
        self._handlers = {
            Press: self._on_press,
            Release: self._on_release,
            Tick: self._on_tick,
            LinkUp: self._on_link_up,
            LinkDown: self._on_link_down,
            LinkFatal: self._on_link_fatal,
            ResponseStarted: self._on_response_started,
            ReplyAudio: self._on_reply_audio,
            ResponseDone: self._on_response_done,
            ServerError: self._on_server_error,
            DeviceLost: self._on_device_lost,
            DeviceBack: self._on_device_back,
            Reset: self._on_reset,
            VoiceHeard: self._on_voice_heard,
            VoiceEnded: self._on_voice_ended,
            SpeechStarted: self._on_speech_started,
            TalkOver: self._on_talk_over,
            SpeechStopped: self._on_speech_stopped,
            FunctionCall: self._on_function_call,
            ToolsDone: self._on_tools_done,
        }

    def accepts(self, event: object) -> bool:
        """Whether ``event`` is one of the kiosk's events (the others are not its business)."""
        return type(event) in self._handlers

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event at monotonic time ``now``; return the actions to carry out, in order."""
        return self._handlers[type(event)](event, now)  # type: ignore[operator]

    @property
    def response_in_progress(self) -> bool:
        """True from commit until the response is done or abandoned."""
        return self._awaiting_response or (
            self._response_id is not None and not self._response_done
        )

    @property
    def busy(self) -> bool:
        """A turn needs the current session: audio is streaming or the server still works on
        the reply (a reply fully received and only playing locally does not)."""
        if self.state is State.SPEAKING:
            return not self._response_done or self._tools_running or self._awaiting_response
        return self.state in (State.LISTENING, State.THINKING)

    # --- helpers ---------------------------------------------------------------------------

    def _go(self, new: State) -> list[Action]:
        if new is self.state:
            return []
        old, self.state = self.state, new
        return [StateChanged(old, new)]

    def _forget_response(self) -> None:
        self._calls = []
        self._tools_running = False
        self._deliver_by = None
        self._awaiting_response = False
        self._response_id = None
        self._response_done = False
        self._audio_item = None

    def _start_listening(self, now: float, *, by_voice: bool = False) -> list[Action]:
        self._pressed_at = self._heard_at = now
        self._turn_heard = False
        self._voice_turn = by_voice
        return [*self._go(State.LISTENING), OpenMic(by_voice=by_voice)]

    def _after_reply(self, now: float) -> list[Action]:
        """Where a finished (or abandoned) reply leads: listening again in a hands-free
        conversation, else idle (offline when the link is down)."""
        self._forget_response()
        if self.conversation and self.link_up:
            return self._start_listening(now)
        return self._go(State.IDLE if self.link_up else State.OFFLINE)

    def _close_conversation(self) -> list[Action]:
        if not self.conversation:
            return []
        self.conversation = False
        return [CloseMic(), CloseConversation()]

    def _end_turn(self, now: float, *, at_limit: bool = False) -> list[Action]:
        idle = State.IDLE if self.link_up else State.OFFLINE
        if now - self._pressed_at < self.min_turn_s:
            return [DiscardTurn(), Notice("too_short"), *self._go(idle)]
        if not self._turn_heard:
            return [DiscardTurn(), *self._silent_turn(), *self._go(idle)]
        actions: list[Action] = [Notice("max_turn")] if at_limit else []
        if self.silent_turns >= self.mic_suspect_turns:
            actions.append(Notice("mic_ok", "a turn with speech arrived"))
        self.silent_turns = 0
        self._forget_response()
        if not self.link_up:
            self._deliver_by = now + self.deliver_within_s
            return [*actions, *self._go(State.THINKING)]
        return [*actions, *self._commit(now), *self._go(State.THINKING)]

    def _silent_turn(self) -> list[Action]:
        self.silent_turns += 1
        actions: list[Action] = [Notice("no_speech", f"{self.silent_turns} in a row")]
        if self.silent_turns == self.mic_suspect_turns:
            actions.append(Notice("mic_suspect", f"{self.silent_turns} silent turns in a row"))
        return actions

    def _barge_in(self, now: float, *, clear: bool, by_voice: bool = False) -> list[Action]:
        cancel = self.response_in_progress and self.link_up
        barge = Interrupt(self._response_id, self._audio_item, cancel, clear, by_voice or not clear)
        self._forget_response()
        return [barge, *self._start_listening(now, by_voice=by_voice)]

    def _commit(self, now: float) -> list[Action]:
        self._deliver_by = None
        self._abandoned = False
        self._awaiting_response = True
        self._progress_at = now
        return [CommitTurn()]

    # --- handlers ---------------------------------------------------------------------------

    def _on_press(self, event: Press, now: float) -> list[Action]:
        if self.hands_free and self.state in (State.IDLE, State.OFFLINE):
            if not self.link_up:
                return [Notice("unavailable", self.state.value)]
            self.conversation = True
            return [OpenConversation(), *self._start_listening(now)]
        if self.conversation and self.state is State.LISTENING:
            return [*self._close_conversation(), *self._go(State.IDLE)]
        if self.state in (State.IDLE, State.OFFLINE):
            return self._start_listening(now)  # offline: recorded, delivered when the link returns
        if self.state in (State.THINKING, State.SPEAKING):
            return self._barge_in(now, clear=True)
        if self.state is State.ERROR:
            return [Notice("unavailable", self.state.value)]
        return []  # already listening

    def _on_release(self, event: Release, now: float) -> list[Action]:
        if self.state is not State.LISTENING or self.conversation:
            return []  # hands-free: the server's VAD ends turns, not the button
        return self._end_turn(now)

    def _on_tick(self, event: Tick, now: float) -> list[Action]:
        if self.conversation and self.state is State.LISTENING:
            quiet = not self._visitor_speaking and now - self._heard_at >= self.conversation_idle_s
            if quiet:
                return [*self._close_conversation(), *self._go(State.IDLE)]
            return []
        if self.state is State.LISTENING and now - self._pressed_at >= self.max_turn_s:
            return self._end_turn(now, at_limit=True)
        if self._deliver_by is not None and now >= self._deliver_by:
            self._forget_response()
            waited = f"link down for {self.deliver_within_s:g} s after the turn"
            return [Notice("turn_dropped", waited), *self._go(State.ERROR)]
        if self.state is State.SPEAKING and self._response_done and event.playback_idle:
            if self._tools_running:
                return self._go(State.THINKING)  # said "let me check"; the tools still run
            return self._after_reply(now)
        if (
            self.state in (State.THINKING, State.SPEAKING)
            and self.response_in_progress
            and now - self._progress_at >= self.reply_timeout_s
            and event.playback_idle
        ):
            # The response stopped making progress (no event for reply_timeout_s): never
            # hang in thinking or speaking.
            started = self._response_id is not None
            kind = "reply_cut" if started and self.state is State.SPEAKING else "no_reply"
            detail = "no progress" if started else "the reply did not start"
            # Whatever the server still sends for this turn is cancelled, not played.
            late = [CancelResponse(self._response_id)] if started and self.link_up else []
            self._abandoned = not started
            return [Notice(kind, detail), *late, *self._after_reply(now)]
        return []

    def _on_link_up(self, event: LinkUp, now: float) -> list[Action]:
        self.link_up = True
        self._fatal = False
        if not self.device_ok:
            return []  # still ERROR: no microphone or speaker
        if self.conversation:
            # A new session starts in push-to-talk: switch it to server VAD again.
            return [OpenConversation()]
        if self._deliver_by is not None and self.state is State.THINKING:
            return self._commit(now)  # the turn that waited for the link
        if self.state in (State.OFFLINE, State.ERROR):
            self._forget_response()
            return self._go(State.IDLE)
        return []

    def _on_link_down(self, event: LinkDown, now: float) -> list[Action]:
        self.link_up = False
        if not self.device_ok:
            return []
        if self.state is State.LISTENING:
            return []  # keep recording; the turn is delivered when the link returns
        if self.state is State.THINKING and self._audio_item is None:
            # The reply has not started: send the turn again on the next session.
            self._forget_response()
            self._deliver_by = now + self.deliver_within_s
            return []
        if self.state is State.SPEAKING and self._response_done:
            return []  # the whole reply is here: let it play out
        actions: list[Action] = []
        if self.state is State.SPEAKING:
            actions.append(Notice("reply_cut", event.reason or "link down"))
        self._forget_response()
        return [*actions, *self._go(State.OFFLINE)]

    def _on_link_fatal(self, event: LinkFatal, now: float) -> list[Action]:
        self.link_up = False
        self._fatal = True
        self.conversation = False
        actions: list[Action] = []
        if self.state in (State.LISTENING, State.THINKING):
            actions.append(Notice("turn_dropped", event.code))
        self._forget_response()
        return [*actions, *self._go(State.ERROR)]

    def _on_response_started(self, event: ResponseStarted, now: float) -> list[Action]:
        # Only the response to our latest commit counts; one created before a barge-in is
        # ignored (its audio too), since it was already cancelled.
        if self.state in (State.THINKING, State.SPEAKING) and self._awaiting_response:
            self._awaiting_response = False
            self._response_id = event.response_id
            self._progress_at = now
            return []
        if self._abandoned and not self._awaiting_response:
            # The reply to a turn the visitor was already told had failed: stop it, so it
            # neither speaks up late nor blocks the next turn's response.
            self._abandoned = False
            return [CancelResponse(event.response_id)]
        return []

    def _on_reply_audio(self, event: ReplyAudio, now: float) -> list[Action]:
        if event.response_id != self._response_id or self._response_done:
            return []
        if self.state not in (State.THINKING, State.SPEAKING):
            return []
        self._audio_item = event.item_id
        self._progress_at = now
        return [*self._go(State.SPEAKING), PlayAudio(event.item_id, event.pcm)]

    def _on_response_done(self, event: ResponseDone, now: float) -> list[Action]:
        if event.response_id != self._response_id:
            if not (self._awaiting_response and event.status in ("failed", "incomplete")):
                return []
            # A response that failed before its response.created reached us is still the
            # answer to the turn we wait for: the visitor must hear that it failed.
            self._awaiting_response = False
            self._response_id = event.response_id
        self._response_done = True
        calls, self._calls = self._calls, []
        actions: list[Action] = []
        if event.status == "completed" and calls:
            # Only a completed response's calls run: arguments also arrive for cancelled ones.
            self._tools_running = True
            return [RunTools(tuple(calls))]
        if event.status not in ("completed", "cancelled"):
            detail = f"{event.status}: {event.code}" if event.code else event.status
            actions.append(Notice("reply_failed", detail))
            if event.fatal:
                # Quota, permission, model: every reply will fail until an operator acts.
                # The visitor hears the apology; the kiosk shows the error state (the
                # supervisor ends the session and retries only every fatal_retry_s).
                self._fatal = True
                self.conversation = False
                self._forget_response()
                return [*actions, *self._go(State.ERROR)]
        if self.state is State.THINKING:
            actions += self._after_reply(now)
        return actions

    def _on_function_call(self, event: FunctionCall, now: float) -> list[Action]:
        if event.response_id == self._response_id and not self._response_done:
            self._calls.append(event)
            self._progress_at = now
        return []

    def _on_tools_done(self, event: ToolsDone, now: float) -> list[Action]:
        if not self._tools_running:
            return []  # abandoned meanwhile (barge-in, reset, link down)
        self._tools_running = False
        self._response_id = self._audio_item = None
        self._response_done = False
        self._awaiting_response = True  # the outputs went with a new response.create
        self._progress_at = now
        return []

    def _on_device_lost(self, event: DeviceLost, now: float) -> list[Action]:
        self.device_ok = False
        self.conversation = False
        actions: list[Action] = []
        if self.state in (State.LISTENING, State.THINKING):
            actions.append(Notice("turn_dropped", f"audio device lost: {event.reason}"))
        if self.state is State.SPEAKING:
            actions.append(Notice("reply_cut", "audio device lost"))
        self._forget_response()
        return [*actions, *self._go(State.ERROR)]

    def _on_device_back(self, event: DeviceBack, now: float) -> list[Action]:
        self.device_ok = True
        if self.state is State.ERROR and not self._fatal:
            return self._go(State.IDLE if self.link_up else State.OFFLINE)
        return []

    def _on_reset(self, event: Reset, now: float) -> list[Action]:
        actions: list[Action] = []
        if self.state is State.LISTENING:
            actions.append(DiscardTurn())
        elif self.state in (State.THINKING, State.SPEAKING):
            running = self.response_in_progress
            actions.append(Interrupt(self._response_id, self._audio_item, running))
        self._forget_response()
        actions += self._close_conversation()
        actions.append(Notice("new_visitor", event.reason))
        if self.state in (State.LISTENING, State.THINKING, State.SPEAKING):
            actions += self._go(State.IDLE if self.link_up else State.OFFLINE)
        return actions

    def _on_voice_heard(self, event: VoiceHeard, now: float) -> list[Action]:
        self._turn_heard = self._turn_heard or self.state is State.LISTENING
        return []

    def _on_speech_started(self, event: SpeechStarted, now: float) -> list[Action]:
        self._heard_at = now
        self._visitor_speaking = True
        return self._on_talk_over(TalkOver(), now)  # the server's VAD heard them first

    def _on_talk_over(self, event: TalkOver, now: float) -> list[Action]:
        if not (self.voice_barge_in and self.state in (State.THINKING, State.SPEAKING)):
            return []
        if self.conversation:  # the server's VAD ends the turn; its buffer has the onset
            return self._barge_in(now, clear=False)
        if self.hands_free:
            return []
        # Push-to-talk: nothing of the visitor is on the server yet (the mic was closed); the
        # gate's look-back holds their onset and goes out with the turn, which ends when they
        # fall quiet (VoiceEnded), on a release, or at max_turn_s.
        return self._barge_in(now, clear=True, by_voice=True)

    def _on_voice_ended(self, event: VoiceEnded, now: float) -> list[Action]:
        if self._voice_turn and self.state is State.LISTENING:
            return self._end_turn(now)
        return []

    def _on_speech_stopped(self, event: SpeechStopped, now: float) -> list[Action]:
        self._visitor_speaking = False
        if not (self.conversation and self.state is State.LISTENING):
            return []
        # The server commits and answers by itself; stop streaming so the kiosk's own reply
        # never reaches its VAD (with voice barge-in, the gate keeps it out instead).
        self._forget_response()
        self._awaiting_response = True
        self._progress_at = self._heard_at = now
        listen_on = [] if self.voice_barge_in else [CloseMic()]
        return [*listen_on, *self._go(State.THINKING)]

    def _on_server_error(self, event: ServerError, now: float) -> list[Action]:
        if event.code in _TURN_REJECTED and self.state is State.THINKING:
            self._forget_response()
            return [Notice("too_short", event.code), *self._go(State.IDLE)]
        return []
