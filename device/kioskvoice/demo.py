"""``kioskvoice demo``: the whole kiosk against the embedded simulator, no network, no hardware.

A spoken question (espeak-ng, or a tone pattern without it) is the microphone (``wav:``), the
reply goes to a WAV file, gpiozero's MockFactory provides the button, and the button is held
for as long as the question lasts.
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
from .system.logging import setup_logging
from .wavio import write_wav

QUESTION = "Hello! What time does the museum open today?"
BUTTON_PIN = 17
LED_PIN = 27
RATE = 16000


async def _wait_state(states: asyncio.Queue[State], wanted: State, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while await states.get() is not wanted:
            pass


async def _demo(out_dir: Path) -> int:
    from gpiozero.pins.mock import MockFactory

    question = out_dir / "visitor.wav"
    reply = out_dir / "kiosk-reply.wav"
    pcm = synthesize(QUESTION, rate=RATE)
    # A second of silence after the question, so the looped "microphone" has a pause.
    write_wav(question, pcm + bytes(2 * RATE), RATE)
    hold_s = len(pcm) / (2 * RATE) + 0.3

    factory = MockFactory()
    async with Simulator(api_key="demo-key") as sim:
        settings = Settings.model_construct(
            realtime=RealtimeSettings(url=sim.url, api_key="demo-key"),
            audio=AudioSettings(input_device=f"wav:{question}", output_device=f"wav:{reply}"),
            interaction=InteractionSettings(),
            gpio=GpioSettings(button_pin=BUTTON_PIN, status_led_pin=LED_PIN),
            control=ControlSettings(socket=out_dir / "control.sock"),
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
            await asyncio.sleep(hold_s)
            button.drive_high()
            await _wait_state(states, State.SPEAKING, 15)
            await _wait_state(states, State.IDLE, 30)
        finally:
            app.stop()
            async with asyncio.timeout(5):
                await task
    print(f"reply audio: {reply}")
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
