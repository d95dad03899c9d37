"""Wires the kiosk together under one ``asyncio.TaskGroup``.

Data flow: capture thread → :class:`CaptureChain` (frame and its level) → :class:`FrameQueue`
→ :class:`TurnAudio` → ``input_audio_buffer.append``. Server events → :class:`Kiosk` → actions
carried out here; notices become sounds, looks and records in :class:`Feedback`. Buttons post
events through ``call_soon_threadsafe``; LEDs and logs listen to state changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from .audio.player import Player
from .audio.streams import FrameQueue, ResilientAudio
from .config import Settings
from .dsp.chain import CaptureChain, DspOptions
from .events import (
    Action,
    CancelResponse,
    CloseConversation,
    CloseMic,
    CommitTurn,
    DeviceBack,
    DeviceLost,
    DiscardTurn,
    FunctionCall,
    Interrupt,
    Notice,
    OpenConversation,
    OpenMic,
    PlayAudio,
    Press,
    Release,
    Reset,
    ResponseDone,
    RunTools,
    State,
    StateChanged,
    Tick,
    ToolsDone,
)
from .feedback import Feedback
from .kiosk import Kiosk
from .panel import Panel
from .realtime.credentials import credentials_from
from .realtime.protocol import (
    Committed,
    Ignored,
    Malformed,
    Protocol,
    Transcript,
    TranscriptFailed,
)
from .realtime.supervisor import Supervisor
from .system.control import ControlServer
from .system.logging import REDACTOR, log_event
from .system.notify import Notifier
from .tools import END_CONVERSATION, ToolRunner, declarations
from .transcripts import TranscriptOrder
from .turn_audio import TurnAudio

log = logging.getLogger(__name__)

TICK_S = 0.05
COUNTERS_S = 60.0  # overflow counters are checked this often, never logged per frame
STATS_EVERY = 10  # a stats record every STATS_EVERY * COUNTERS_S, even when all is well
# Audio making no progress this long (no capture block, and no recovery attempt either) means
# a PortAudio call is wedged: withhold the watchdog so systemd restarts us. It allows the
# 1.5 s stall detection plus a PortAudio re-initialisation, which can take a second.
PROGRESS_STALL_S = 5.0


class _Stop(Exception):
    """Raised inside the task group to end it on request."""


class App:
    """The running kiosk. Construct, then ``await run()``; ``stop()`` ends it cleanly.

    Constructing does no I/O. ``pin_factory`` goes to gpiozero (None: gpiozero's default).
    ``on_state`` and ``on_transcript`` callbacks observe the kiosk (the demo prints with them).
    """

    def __init__(self, settings: Settings, *, pin_factory: Any = None) -> None:
        self.settings = settings
        self.kiosk = Kiosk(
            min_turn_s=settings.interaction.min_turn_ms / 1000,
            max_turn_s=settings.audio.max_turn_s,
            reply_timeout_s=settings.interaction.reply_timeout_s,
            deliver_within_s=settings.realtime.deliver_within_s,
            hands_free=settings.interaction.mode == "hands_free",
            conversation_idle_s=settings.interaction.idle_reset_s,
            mic_suspect_turns=settings.interaction.mic_suspect_turns,
        )
        self.on_state: list[Callable[[State], None]] = []
        self.on_transcript: list[Callable[[str, str], None]] = []
        self.ready = asyncio.Event()
        self.turns = 0
        self._pin_factory = pin_factory
        self.notifier = Notifier()
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: Supervisor | None = None
        self._player: Player | None = None
        self._frames: FrameQueue | None = None
        self._released_at: float | None = None
        self._turn_started_at = 0.0
        self._turn: TurnAudio | None = None
        self._dropped_appends = 0
        self.feedback = Feedback(settings.interaction)
        self._transcripts = TranscriptOrder(self._transcript)
        self._panel: Panel | None = None
        self._tools: ToolRunner | None = None
        self._http: Any = None
        self._tool_tasks: set[asyncio.Task[None]] = set()
        # Bumped whenever tool results would no longer fit the conversation (barge-in,
        # reset, new session): results of an older generation are dropped.
        self._tool_generation = 0
        self._end_after_reply = False
        self._last_press = 0.0
        self._conversation_dirty = False

    # --- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to end (safe from signal handlers on the loop)."""
        self._stop.set()

    async def run(self) -> None:
        """Open everything, serve until :meth:`stop`, then close everything.

        Raises :class:`~kioskvoice.errors.ConfigError` or
        :class:`~kioskvoice.errors.AudioDeviceError` before serving if set-up fails.
        """
        settings = self.settings
        loop = self._loop = asyncio.get_running_loop()
        self._supervisor = Supervisor(
            settings.realtime,
            credentials_from(settings.realtime, Supervisor.session_request(settings.realtime)),
            post=self.post,
            is_idle=lambda: not self.kiosk.busy,
            tools=declarations(settings.tools),
        )
        REDACTOR.add(self._supervisor.credentials.values())
        self._turn = TurnAudio(
            self._supervisor,
            self.post,
            preroll_frames=max(0, settings.interaction.preroll_ms // settings.audio.frame_ms),
            floor_dbfs=settings.audio.silence_floor_dbfs,
        )
        self._tools = ToolRunner(settings.tools, transcripts=settings.logging.transcripts)
        REDACTOR.add(self._tools.secrets())
        self._http = httpx.AsyncClient()
        self.feedback.load()
        self._last_press = loop.time()
        if settings.interaction.long_press_s is not None:
            log.warning(
                "interaction.long_press_s is ignored: a long press is a long question; "
                "use gpio.reset_button_pin or 'kioskvoice ctl reset' for a new visitor"
            )

        a = settings.audio
        audio = ResilientAudio(
            a.input_device,
            a.output_device,
            rate=a.sample_rate,
            channels=a.input_channels,
            frame_ms=a.frame_ms,
            on_lost=lambda reason: self.post_threadsafe(DeviceLost(reason)),
            on_back=lambda: self.post_threadsafe(DeviceBack()),
        )
        panel = Panel(settings.gpio, self.post, pin_factory=self._pin_factory)
        control = ControlServer(settings.control.socket, self._control)
        chain: CaptureChain | None = None
        try:
            audio.open()
            self._player = self.feedback.player = Player(
                audio.output_rate, audio.output_block_samples
            )
            chain = CaptureChain(
                rate=a.sample_rate,
                channels=a.input_channels,
                channel=a.channel,
                frame_ms=a.frame_ms,
                options=DspOptions(**settings.dsp.model_dump()) if settings.dsp.enabled else None,
                out_rate=audio.output_rate,
            )
            chain.on_delay = lambda delay_ms, confidence: self._call_threadsafe(
                self._log_delay, delay_ms, confidence
            )
            self._frames = frames = FrameQueue(loop)
            await control.start()
            panel.open(loop)
            self._panel = self.feedback.panel = panel
            self.on_state.append(panel.show)
            panel.show(self.kiosk.state)
            process, level = chain.process, chain.level

            def captured(block: bytes) -> None:  # the capture thread
                frames.push_threadsafe((process(block), level(block)))

            audio.start(captured, self._player, chain.far_end)
            log_event(log, logging.INFO, "config_loaded", "kiosk started")
            self.ready.set()
            # READY once config is loaded and devices are open; the link may still be
            # connecting: the kiosk is then offline, not failed.
            self.notifier.ready(self._status_line())
            try:
                async with asyncio.TaskGroup() as tasks:
                    if self.notifier.watchdog_interval_s:
                        tasks.create_task(
                            self._watchdog(audio, self.notifier.watchdog_interval_s),
                            name="watchdog",
                        )
                    tasks.create_task(self._supervisor.run(), name="link")
                    tasks.create_task(self._pump(frames), name="pump")
                    tasks.create_task(self._ticker(), name="ticker")
                    tasks.create_task(self._counters(), name="counters")
                    tasks.create_task(self._wait_stop(), name="stop")
            except* _Stop:
                pass
        finally:
            self.notifier.stopping()
            # A wedged driver can block stop() for seconds: keep the loop (and SIGTERM's
            # 5 s promise) free of it.
            await asyncio.to_thread(audio.stop)
            if chain is not None:
                chain.close()  # only once audio stopped: its threads use the chain
            panel.close()
            await control.close()
            for task in list(self._tool_tasks):
                task.cancel()
            await self.feedback.close()
            await self._http.aclose()
            log_event(log, logging.INFO, "stopped", "kiosk stopped")

    async def _wait_stop(self) -> None:
        await self._stop.wait()
        raise _Stop

    async def _watchdog(self, audio: ResilientAudio, interval_s: float) -> None:
        """Pet systemd's watchdog only while the loop runs (this task) and audio makes
        progress (capture flows, or recovery from a lost device keeps trying)."""
        stalled = False
        while True:
            await asyncio.sleep(interval_s)
            if time.monotonic() - audio.last_progress_at < PROGRESS_STALL_S:
                self.notifier.watchdog()
                stalled = False
            elif not stalled:
                stalled = True
                log_event(
                    log,
                    logging.ERROR,
                    "capture_stalled",
                    "no audio from the capture device; withholding the watchdog",
                )

    async def _counters(self) -> None:
        """Counters that would be per-frame noise, logged as ``stats`` records: at once (as a
        warning) when audio was dropped — capture frames (the loop fell behind) or appends
        (the outbox was full: the network stalls) — and every ``STATS_EVERY`` checks anyway."""
        assert self._frames is not None and self._supervisor is not None
        last = (0, 0)
        for check in itertools.count(1):
            await asyncio.sleep(COUNTERS_S)
            link = self._supervisor.link
            if link is not None:
                self._dropped_appends += link.dropped
                link.dropped = 0
            now = (self._frames.dropped, self._dropped_appends)
            if now != last or check % STATS_EVERY == 0:
                status = self.status()
                log_event(
                    log,
                    logging.WARNING if now != last else logging.INFO,
                    "stats",
                    f"{status['turns']} turns, {now[0]} capture frames and {now[1]} appends "
                    "dropped so far",
                    turns=status["turns"],
                    reconnects=status["reconnects"],
                    rollovers=status["rollovers"],
                    dropped_frames=now[0],
                    dropped_appends=now[1],
                )
                last = now

    def _status_line(self) -> str:
        sup = self._supervisor
        link = sup.state.value if sup else "down"
        return f"{self.kiosk.state.value}, link {link}"

    async def _ticker(self) -> None:
        assert self._player is not None and self._loop is not None
        idle_reset_s = self.settings.interaction.idle_reset_s
        while True:
            await asyncio.sleep(TICK_S)
            self.post(Tick(playback_idle=self._player.idle))
            self._transcripts.tick(self._loop.time())
            if (
                self._conversation_dirty
                and not self.kiosk.busy
                and self._loop.time() - self._last_press >= idle_reset_s
            ):
                # Visitor privacy: the next visitor must not meet this conversation.
                self.post(Reset("idle"))

    async def _pump(self, frames: FrameQueue) -> None:
        assert self._turn is not None
        while True:
            pcm, level = await frames.get()
            self._turn.frame(pcm, level)

    # --- events ------------------------------------------------------------------------------

    def _call_threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                self._loop.call_soon_threadsafe(callback, *args)

    def _log_delay(self, delay_ms: float, confidence: float) -> None:
        log_event(
            log,
            logging.INFO,
            "dsp_delay",
            f"echo reference aligned at {delay_ms:.1f} ms",
            delay_ms=round(delay_ms, 1),
            confidence=round(confidence, 1),
        )

    def post_threadsafe(self, event: Any) -> None:
        """Post from a foreign thread (gpiozero)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.post, event)

    def post(self, event: Any) -> None:
        """Handle one event on the loop: kiosk events drive the state machine; transcripts
        and protocol noise are logged."""
        if isinstance(event, DeviceLost | DeviceBack):
            lost = isinstance(event, DeviceLost)
            log_event(
                log,
                logging.ERROR if lost else logging.INFO,
                "device_lost" if lost else "device_back",
                f"audio device lost: {event.reason}" if lost else "audio devices are back",
            )
        if self.kiosk.accepts(event):
            assert self._loop is not None
            if isinstance(event, ResponseDone) and self._player is not None:
                self._player.finish()
            actions = self.kiosk.handle(event, self._loop.time())
            # A beep greets a fresh press only: not a barge-in (whose silence is the
            # feedback) nor a hands-free conversation listening again after a reply.
            fresh = any(
                isinstance(a, StateChanged)
                and a.old in (State.IDLE, State.OFFLINE)
                and a.new is State.LISTENING
                for a in actions
            )
            for action in actions:
                self._do(action, fresh)
            if isinstance(event, Press):
                self._on_press()
            elif isinstance(event, DeviceLost) and self._player is not None:
                # Nobody can hear it now, and it must not play when the device returns.
                self._player.flush()
        elif isinstance(event, Transcript):
            assert self._loop is not None
            self._transcripts.add(event, self._loop.time())
        elif isinstance(event, Committed):
            if self.settings.realtime.transcribe_input:
                assert self._loop is not None
                self._transcripts.committed(event.item_id, self._loop.time())
        elif isinstance(event, TranscriptFailed):
            self._transcripts.failed(event.item_id)
        elif isinstance(event, Malformed):
            log.warning("skipped a malformed server event: %s", event.reason)
        elif isinstance(event, Ignored):
            log.debug("ignored server event %s", event.type)

    @property
    def mic_open(self) -> bool:
        """Captured audio is going to the model (or kept for it)."""
        return self._turn is not None and self._turn.mic_open

    def _transcript(self, event: Transcript) -> None:
        """One transcript, released in conversation order (see :mod:`.transcripts`)."""
        if self.settings.logging.transcripts:
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
        for callback in self.on_transcript:
            callback(event.role, event.text)

    def _send(self, build: Callable[..., dict[str, Any]], *args: Any) -> bool:
        assert self._supervisor is not None
        return self._supervisor.send(build, *args)

    def _do(self, action: Action, fresh: bool = False) -> None:
        assert self._player is not None and self._loop is not None and self._turn is not None
        now = self._loop.time()
        turn = self._turn
        match action:
            case OpenMic():
                self.turns += 1
                self._conversation_dirty = True
                self._turn_started_at = now
                log_event(log, logging.INFO, "turn_start", "listening", turn=self.turns)
                if fresh:
                    self.feedback.play("listening")
                turn.open(streaming=self.kiosk.conversation)
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
                    self._player.flush()  # the answer, not the rest of a chime
                if self._released_at is not None:
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
                self._player.feed(item_id, pcm)
            case Interrupt(response_id=response_id, item_id=item_id, cancel=cancel):
                self._tool_generation += 1
                self.feedback.stop_thinking()
                self._player.flush()
                if cancel:
                    self._send(Protocol.cancel, response_id)
                if item_id is not None:
                    self._send(Protocol.truncate, item_id, self._player.played_ms(item_id))
                self._send(Protocol.clear)
                self._released_at = None
                log_event(log, logging.INFO, "barge_in", "reply interrupted", turn=self.turns)
            case RunTools(calls=calls):
                task = asyncio.create_task(self._run_tools(calls, self._tool_generation))
                self._tool_tasks.add(task)
                task.add_done_callback(self._tool_tasks.discard)
                self.feedback.start_thinking()
            case Notice(kind=kind, detail=detail):
                self._notice(kind, detail)
            case StateChanged(old=old, new=new):
                if new not in (State.THINKING, State.SPEAKING):
                    self.feedback.stop_thinking()  # (the answer's first audio stops it too)
                if new in (State.OFFLINE, State.ERROR):
                    self._tool_generation += 1  # that session's calls cannot be answered
                if new is State.IDLE and self._end_after_reply:
                    self._end_after_reply = False
                    self._loop.call_soon(self.post, Reset("end_conversation"))
                if old is State.LISTENING and new is State.THINKING and turn.mic_open:
                    # Released while the link is down: the turn waits for delivery.
                    turn.close()
                    self.feedback.play("offline")
                    self._log_turn_end("turn ended while the link is down; waiting to deliver it")
                if old is State.SPEAKING and new is State.IDLE:
                    log_event(log, logging.INFO, "reply_end", "reply finished", turn=self.turns)
                log.debug("state %s -> %s", old, new)
                self.notifier.status(self._status_line())
                for callback in self.on_state:
                    callback(new)

    def _notice(self, kind: str, detail: str) -> None:
        assert self._turn is not None
        turn = self._turn
        if kind == "turn_dropped":
            turn.forget()
        elif kind == "new_visitor":
            self._transcripts.forget()
            self._tool_generation += 1
            self._end_after_reply = False
            turn.forget()
            self._conversation_dirty = False
            self.feedback.stop_thinking()
            assert self._supervisor is not None
            self._supervisor.reset()
        elif kind == "no_speech":
            detail = f"{detail}; loudest {turn.meter.peak_dbfs:.0f} dBFS".lstrip("; ")
        self.feedback.notice(kind, detail, self.turns)

    def _log_turn_end(self, message: str) -> None:
        assert self._turn is not None
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

    # --- control socket ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``ctl status`` reports."""
        sup = self._supervisor
        return {
            "state": self.kiosk.state.value,
            "link": sup.state.value if sup else "down",
            "reconnects": sup.reconnects if sup else 0,
            "session": (sup.link.session_id if sup and sup.link else None),
            "session_age_s": round(age, 1) if sup and (age := sup.session_age_s) else None,
            "rollovers": sup.rollovers if sup else 0,
            "failed_rollovers": sup.failed_rollovers if sup else 0,
            "last_error": sup.last_error if sup else None,
            "turns": self.turns,
            "dropped_frames": self._frames.dropped if self._frames else 0,
            "look": self._panel.shown.value if self._panel else None,
            "silent_turns": self.kiosk.silent_turns,
        }

    async def _run_tools(self, calls: tuple[FunctionCall, ...], generation: int) -> None:
        """Run a completed response's calls concurrently, then send every output and one
        ``response.create``. Never raises: each call ends in an output for the model."""
        assert self._tools is not None
        runner = self._tools

        async def one(call: FunctionCall) -> str:
            if call.name == END_CONVERSATION:
                self._end_after_reply = True
                log_event(
                    log,
                    logging.INFO,
                    "tool_call",
                    "the model ended the conversation",
                    tool=call.name,
                    outcome="ok",
                )
                return '{"ok": true}'
            return await runner.call(call.name, call.arguments, self._http)

        try:
            outputs = await asyncio.gather(*(one(call) for call in calls))
            if generation != self._tool_generation:
                log.info("dropped the results of %d tool call(s): the turn moved on", len(calls))
                return
            for call, output in zip(calls, outputs, strict=True):
                self._send(Protocol.function_output, call.call_id, output)
            self._send(Protocol.response_create)
        finally:
            if generation == self._tool_generation:
                self.post(ToolsDone())

    def _on_press(self) -> None:
        assert self._loop is not None
        self._last_press = self._loop.time()

    def _control(self, cmd: str) -> dict[str, Any]:
        if cmd == "press":
            self.post(Press("ctl"))
        elif cmd == "release":
            self.post(Release("ctl"))
        elif cmd == "reset":
            self.post(Reset("ctl"))
        return self.status()
