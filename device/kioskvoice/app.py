"""Wires the kiosk together under one ``asyncio.TaskGroup``.

Data flow: capture thread → :class:`CaptureChain` (frame and its level) → :class:`FrameQueue`
→ :class:`TurnAudio` → ``input_audio_buffer.append``. Server events → :class:`Kiosk` → actions
carried out by the :class:`Executor`; notices become sounds, looks and records in
:class:`Feedback`; tool calls run in :class:`ToolCalls`. Buttons post events through
``call_soon_threadsafe``; LEDs, sd_notify and logs listen to state changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import jobs
from .audio.player import Player
from .audio.resilient import ResilientAudio, room_of
from .audio.streams import FrameQueue
from .calibration import Calibration
from .config import Settings
from .dsp.chain import CaptureChain, DspOptions
from .echo_memory import EchoMemory, Remembered
from .echo_report import EchoReport
from .errors import AudioDeviceError
from .events import (
    DeviceBack,
    DeviceLost,
    Press,
    Release,
    Reset,
    State,
    Tick,
)
from .executor import Executor
from .feedback import Feedback
from .kiosk import Kiosk
from .panel import Panel
from .realtime.credentials import credentials_from
from .realtime.protocol import Ignored, Malformed
from .realtime.supervisor import Supervisor
from .system.control import ControlServer
from .system.logging import REDACTOR, log_event
from .system.metrics import Metrics
from .system.notify import Notifier
from .tool_calls import ToolCalls
from .tools import declarations
from .transcripts import TranscriptLog
from .turn_audio import TurnAudio
from .wavio import read_wav

log = logging.getLogger(__name__)

TICK_S = 0.05


class _Stop(Exception):
    """Raised inside the task group to end it on request."""


class App:
    """The running kiosk. Construct, then ``await run()``; ``stop()`` ends it cleanly.

    Constructing does no I/O. ``pin_factory`` goes to gpiozero (None: gpiozero's default).
    ``on_state`` and ``on_transcript`` callbacks observe the kiosk (the demo prints with them).
    """

    def __init__(self, settings: Settings, *, pin_factory: Any = None) -> None:
        self.settings = settings
        i = settings.interaction
        self.voice_barge_in = voice_barge_in(settings)
        self.kiosk = Kiosk(
            min_turn_s=i.min_turn_ms / 1000,
            max_turn_s=settings.audio.max_turn_s,
            reply_timeout_s=i.reply_timeout_s,
            deliver_within_s=settings.realtime.deliver_within_s,
            hands_free=i.mode == "hands_free",
            conversation_idle_s=i.idle_reset_s,
            mic_suspect_turns=i.mic_suspect_turns,
            voice_barge_in=self.voice_barge_in,
        )
        self.on_state: list[Callable[[State], None]] = []
        self.transcripts = TranscriptLog(
            record=settings.logging.transcripts, awaits_user=settings.realtime.transcribe_input
        )
        self.on_transcript = self.transcripts.callbacks
        self.ready = asyncio.Event()
        self.notifier = Notifier()
        self.feedback = Feedback(i)
        self.metrics = Metrics()
        self._pin_factory = pin_factory
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: Supervisor | None = None
        self._player: Player | None = None
        self._frames: FrameQueue | None = None
        self._executor: Executor | None = None
        self._panel: Panel | None = None
        self.echo: EchoReport | None = None
        """The echo figures of the last reply (``echo.last``), once the devices are open."""

    # --- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask ``run`` to end (safe from signal handlers on the loop)."""
        self._stop.set()

    async def run(self) -> None:
        """Open everything, serve until :meth:`stop`, then close everything.

        Raises :class:`~kioskvoice.errors.ConfigError` or
        :class:`~kioskvoice.errors.AudioDeviceError` before serving if set-up fails.
        """
        settings, a = self.settings, self.settings.audio
        loop = self._loop = asyncio.get_running_loop()
        sup = self._supervisor = Supervisor(
            settings.realtime,
            credentials_from(settings.realtime, Supervisor.session_request(settings.realtime)),
            post=self.post,
            is_idle=lambda: not self.kiosk.busy,
            tools=declarations(settings.tools),
        )
        REDACTOR.add(sup.credentials.values())
        kiosk_log = logging.getLogger("kioskvoice")
        kiosk_log.addHandler(self.metrics)  # counts the records: journal and metrics agree
        turn = TurnAudio(
            sup,
            self.post,
            preroll_frames=max(0, settings.interaction.preroll_ms // a.frame_ms),
            floor_dbfs=a.silence_floor_dbfs,
            voice_barge_in=self.voice_barge_in,
        )
        tools = ToolCalls(
            settings.tools,
            transcripts=settings.logging.transcripts,
            send=sup.send,
            post=self.post,
        )
        REDACTOR.add(tools.secrets())
        self.feedback.load()
        if settings.interaction.long_press_s is not None:
            log.warning(
                "interaction.long_press_s is ignored: a long press is a long question; "
                "use gpio.reset_button_pin or 'kioskvoice ctl reset' for a new visitor"
            )
        wanted = settings.interaction.voice_barge_in
        if self.voice_barge_in:
            how = "set" if wanted else "the hands-free default"
            log.info("voice barge-in on (%s): the visitor may talk over the kiosk", how)
        elif wanted or (wanted is None and settings.interaction.mode == "hands_free"):
            log.log(  # a warning when asked for in so many words
                logging.WARNING if wanted else logging.INFO,
                "interaction.voice_barge_in is off: it needs dsp.enabled (without the echo "
                "canceller the kiosk would take its own voice for a visitor)",
            )
        audio = ResilientAudio(
            a.input_device,
            a.output_device,
            rate=a.sample_rate,
            channels=a.input_channels,
            frame_ms=a.frame_ms,
            on_lost=lambda reason: self._call_threadsafe(self.post, DeviceLost(reason)),
            on_back=lambda: self._call_threadsafe(self.post, DeviceBack()),
        )
        panel = Panel(settings.gpio, self.post, pin_factory=self._pin_factory)
        control = ControlServer(settings.control.socket, _Commands(self, audio))
        chain: CaptureChain | None = None
        try:
            audio.open()
            player = self._player = self.feedback.player = Player(
                audio.output_rate, audio.output_block_samples
            )
            memory = EchoMemory.from_environment(
                {
                    "input_device": a.input_device,
                    "output_device": a.output_device,
                    "sample_rate": a.sample_rate,
                    "output_rate": audio.output_rate,
                    "frame_ms": a.frame_ms,
                }
            )
            auto = settings.dsp.enabled and settings.dsp.reference_delay_ms == "auto"
            kept = memory.load(settings.dsp.max_delay_ms) if auto else None
            chain = _capture_chain(
                settings, audio.output_rate, talk_over=self.voice_barge_in, kept=kept
            )
            if kept is not None:
                primed = " and the echo filter primed," if chain.primed else ","
                log_event(
                    log,
                    logging.INFO,
                    "dsp_delay",
                    f"echo reference aligned at {kept.delay_ms:.1f} ms{primed} as found in "
                    "the last run",
                    delay_ms=kept.delay_ms,
                    remembered=True,
                    primed=chain.primed,
                )

            # Kept on the loop in the order found, written off it (an fsync on an SD card can
            # take a while): overlapping writes all write the latest.
            def delay_found(delay_ms: float, confidence: float) -> None:  # the loop's thread
                _log_delay(delay_ms, confidence)
                memory.keep(delay_ms)
                loop.run_in_executor(None, memory.write)

            chain.on_delay = lambda delay_ms, confidence: self._call_threadsafe(
                delay_found, delay_ms, confidence
            )

            def keep_filter(delay_ms: float, path: np.ndarray) -> None:  # the loop's thread
                memory.keep(delay_ms, path)
                loop.run_in_executor(None, memory.write)

            if auto:
                chain.on_echo_path = lambda delay_ms, path: self._call_threadsafe(
                    keep_filter, delay_ms, path
                )
            echo_tally = chain.echo
            self.echo = EchoReport(lambda: echo_tally.tally, a.sample_rate)
            self.on_state.append(self.echo.on_state)
            self._frames = frames = FrameQueue(loop)
            self._executor = Executor(
                settings,
                self.kiosk,
                loop=loop,
                supervisor=sup,
                turn=turn,
                player=player,
                feedback=self.feedback,
                tools=tools,
                transcripts=self.transcripts.order,
                post=self.post,
                on_state=[self._announce],
            )
            await control.start()
            panel.open(loop)
            self._panel = self.feedback.panel = panel
            self.on_state.append(panel.show)
            panel.show(self.kiosk.state)
            process, level = chain.process, chain.level

            def captured(block: bytes) -> None:  # the capture thread
                frames.push_threadsafe((process(block), level(block)))

            audio.start(captured, player, chain.far_end)
            calibration = None
            if (
                auto
                and settings.dsp.calibrate
                and chain.gate is not None
                and not chain.primed
                and memory.path is not None  # without a place to keep it: every start
            ):
                calibration = Calibration(player, chain)
                self.on_state.append(calibration.on_state)
            log_event(log, logging.INFO, "config_loaded", "kiosk started")
            self.ready.set()
            # READY once config is loaded and devices are open; the link may still be
            # connecting: the kiosk is then offline, not failed.
            self.notifier.ready(self._status_line())
            try:
                async with asyncio.TaskGroup() as tasks:
                    if interval_s := self.notifier.watchdog_interval_s:
                        watchdog = jobs.watchdog(audio, self.notifier, interval_s)
                        tasks.create_task(watchdog, name="watchdog")
                    tasks.create_task(sup.run(), name="link")
                    tasks.create_task(self._pump(frames, turn), name="pump")
                    tasks.create_task(self._ticker(), name="ticker")
                    tasks.create_task(jobs.stats(frames, sup, self.status), name="stats")
                    m = settings.metrics
                    tasks.create_task(
                        jobs.metrics(self.metrics, m.textfile_dir, m.interval_s, self.status),
                        name="metrics",
                    )
                    tasks.create_task(self._wait_stop(), name="stop")
                    if calibration is not None:
                        tasks.create_task(calibration.run(), name="calibration")
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
            await tools.close()
            await self.feedback.close()
            log_event(log, logging.INFO, "stopped", "kiosk stopped")
            kiosk_log.removeHandler(self.metrics)

    async def _wait_stop(self) -> None:
        await self._stop.wait()
        raise _Stop

    def _status_line(self) -> str:
        sup = self._supervisor
        link = sup.state.value if sup else "down"
        return f"{self.kiosk.state.value}, link {link}"

    def _announce(self, new: State) -> None:
        self.notifier.status(self._status_line())
        for callback in self.on_state:
            callback(new)

    async def _ticker(self) -> None:
        assert self._player is not None and self._executor is not None
        while True:
            await asyncio.sleep(TICK_S)
            self.post(Tick(playback_idle=self._player.idle))
            self._executor.housekeep()

    async def _pump(self, frames: FrameQueue, turn: TurnAudio) -> None:
        while True:
            pcm, level = await frames.get()
            turn.frame(pcm, level)

    # --- events ------------------------------------------------------------------------------

    def _call_threadsafe(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                self._loop.call_soon_threadsafe(callback, *args)

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
        assert self._loop is not None
        if self.kiosk.accepts(event):
            assert self._executor is not None
            self._executor.handle(event)
        elif self.transcripts.receive(event, self._loop.time()):
            pass
        elif isinstance(event, Malformed):
            log.warning("skipped a malformed server event: %s", event.reason)
        elif isinstance(event, Ignored):
            log.debug("ignored server event %s", event.type)

    @property
    def turns(self) -> int:
        """Turns started since the daemon started."""
        return self._executor.turns if self._executor else 0

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


def voice_barge_in(settings: Settings) -> bool:
    """Whether the visitor may talk over the kiosk: ``interaction.voice_barge_in``; unset, on
    in hands-free and off in push-to-talk (issue 16); never without the DSP (no gate: the
    kiosk would hear itself).

    On in hands-free since the double-talk gate judges both the canceller's and the chain's
    output (dsp/gate.py): no self-interruption in 13 minutes of distorted reply in the
    daemon and 30 offline, and a visitor 10 dB under the echo silences a kiosk in service
    within 280 ms (make bench). Push-to-talk stays as it was unless asked: visitors there
    expect the button to be the way in."""
    wanted = settings.interaction.voice_barge_in
    if wanted is None:
        wanted = settings.interaction.mode == "hands_free"
    return wanted and settings.dsp.enabled


def _capture_chain(
    settings: Settings, out_rate: int, *, talk_over: bool, kept: Remembered | None = None
) -> CaptureChain:
    a = settings.audio
    return CaptureChain(
        rate=a.sample_rate,
        channels=a.input_channels,
        channel=a.channel,
        frame_ms=a.frame_ms,
        options=DspOptions(**settings.dsp.model_dump(exclude={"calibrate"}))
        if settings.dsp.enabled
        else None,
        out_rate=out_rate,
        talk_over=talk_over,
        delay_hint_ms=kept.delay_ms if kept is not None else None,
        echo_path=kept.echo_path if kept is not None else None,
    )


def _log_delay(delay_ms: float, confidence: float) -> None:
    log_event(
        log,
        logging.INFO,
        "dsp_delay",
        f"echo reference aligned at {delay_ms:.1f} ms",
        delay_ms=round(delay_ms, 1),
        confidence=round(confidence, 1),
    )


class _Commands:
    """What the control socket's commands do to the running kiosk (``kioskvoice ctl``)."""

    def __init__(self, app: App, audio: ResilientAudio) -> None:
        self._app = app
        self._audio = audio

    def __call__(self, cmd: str, request: dict[str, Any]) -> dict[str, Any]:
        app = self._app
        if cmd == "say":
            self._say(request.get("path"))
        elif cmd == "press":
            app.post(Press("ctl"))
        elif cmd == "release":
            app.post(Release("ctl"))
        elif cmd == "reset":
            app.post(Reset("ctl"))
        return app.status()

    def _say(self, path: Any) -> None:
        """The room's visitor speaks the WAV at ``path``; ValueError (one line) otherwise."""
        room = room_of(self._audio)
        if room is None:
            raise ValueError(
                "ctl say needs the virtual room: set audio.input_device and "
                'audio.output_device to the same "room:..." string'
            )
        if not isinstance(path, str):
            raise ValueError('say needs "path": a mono WAV file')
        try:
            pcm, rate, channels = read_wav(Path(path))
        except AudioDeviceError as exc:
            raise ValueError(str(exc)) from None
        if channels != 1:
            raise ValueError(f"{path}: must be mono")
        seconds = room.say(pcm, rate)
        log.info("the room's visitor says %s (%.1f s)", Path(path).name, seconds)
