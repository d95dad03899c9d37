"""``kioskvoice demo``: the whole kiosk against the embedded simulator, no network, no hardware.

The kiosk stands in a virtual acoustic room (``room:``, both its microphone and its speaker):
it hears its own replies through the room, as on a real stand. gpiozero's MockFactory provides
the button; the visitor presses it, speaks the question into the room after the listening beep
(espeak-ng, or a tone pattern without it; ``RoomDevice.say`` through the control socket, as
``kioskvoice ctl say`` does) and holds the button for as long as the question lasts. The
speaker's output is recorded to a WAV file, and the demo prints the echo reduction the kiosk
measured on itself while it answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from pathlib import Path

from .app import App
from .config import (
    AudioSettings,
    ControlSettings,
    GpioSettings,
    InteractionSettings,
    LoggingSettings,
    RealtimeSettings,
    Settings,
)
from .events import State
from .sim import Simulator
from .sim.voice import synthesize
from .system.control_client import request
from .system.logging import setup_logging
from .wavio import write_wav

QUESTION = "Hello! What time does the museum open today?"
BUTTON_PIN = 17
LED_PIN = 27
RATE = 16000
ROOM = "room:echo_db=-20,delay_ms=30"
BEEP_S = 0.4  # the visitor speaks once the listening beep is over
MORE = (
    "The museum opens at ten in the morning and closes at six in the evening, every day "
    "except Monday. The cafe on the ground floor opens half an hour earlier."
)


async def _wait_state(states: asyncio.Queue[State], wanted: State, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while await states.get() is not wanted:
            pass


async def _demo(out_dir: Path) -> int:
    from gpiozero.pins.mock import MockFactory

    question = out_dir / "visitor.wav"
    reply = out_dir / "kiosk-reply.wav"
    pcm = synthesize(QUESTION, rate=RATE)
    write_wav(question, pcm, RATE)
    hold_s = BEEP_S + len(pcm) / (2 * RATE) + 0.3
    room = f"{ROOM},out={reply}"
    socket = out_dir / "control.sock"

    factory = MockFactory()
    async with Simulator(api_key="demo-key") as sim:
        sim.reply_more = MORE  # long enough for the canceller to converge and be measured
        settings = Settings.model_construct(
            realtime=RealtimeSettings(url=sim.url, api_key="demo-key"),
            audio=AudioSettings(input_device=room, output_device=room),
            interaction=InteractionSettings(),
            gpio=GpioSettings(button_pin=BUTTON_PIN, status_led_pin=LED_PIN),
            control=ControlSettings(socket=socket),
            logging=LoggingSettings(level="warning"),
        )
        app = App(settings, pin_factory=factory)
        states: asyncio.Queue[State] = asyncio.Queue()
        app.on_state.append(states.put_nowait)

        def show(role: str, text: str) -> None:
            if role == "user":
                print(f'visitor: "{QUESTION}"  (the model heard {text})', flush=True)
            else:
                print(f"kiosk:   {text}", flush=True)

        app.on_transcript.append(show)
        task = asyncio.create_task(app.run())
        try:
            await _wait_state(states, State.IDLE, 15)
            print(f"kiosk is ready on {sim.url}; the visitor holds the button...", flush=True)
            button = factory.pin(BUTTON_PIN)
            button.drive_low()
            await asyncio.sleep(BEEP_S)
            said = await asyncio.to_thread(request, socket, "say", path=str(question))
            if not said.get("ok"):
                print(f"kioskvoice demo: the visitor could not speak: {said}", flush=True)
                return 1
            await asyncio.sleep(hold_s - BEEP_S)
            button.drive_high()
            await _wait_state(states, State.SPEAKING, 15)
            await _wait_state(states, State.IDLE, 60)
        finally:
            app.stop()
            async with asyncio.timeout(5):
                await task
    echo = app.echo.last if app.echo else None
    if echo is None:
        print("echo reduction: not measured (the reply was too short)")
    else:
        print(
            f"echo reduction measured in the room ({ROOM}): {echo.erle_db:.1f} dB, residual "
            f"{echo.residual_dbfs:.0f} dBFS over {echo.seconds:.1f} s of the kiosk speaking"
        )
    print(f"the speaker's output: {reply}")
    return 0


def run_demo(out_dir: Path | None = None) -> int:
    """Run the demo; WAV files go to ``out_dir`` (a new temporary directory by default)."""
    setup_logging("warning")
    logging.getLogger("gpiozero").setLevel(logging.ERROR)
    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="kioskvoice-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return asyncio.run(_demo(out_dir))
        except TimeoutError:
            print("kioskvoice demo: the kiosk did not answer in time", flush=True)
            return 1
    return 130
