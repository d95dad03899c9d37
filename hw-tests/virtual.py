"""Virtual hardware for ``KIOSKVOICE_HW=sim``: ``wav:`` devices, gpiozero's MockFactory with
PWM pins, the embedded Realtime simulator and a token-broker stand-in, and a virtual tester
who presses the mock button (with contact chatter) when the check asks for it.

The simulator runs on its own event loop in a thread, because the checks are synchronous
(each runs its own ``asyncio.run``), as they are in ``kioskvoice selftest``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from kioskvoice.config import (
    AudioSettings,
    ControlSettings,
    DspSettings,
    GpioSettings,
    InteractionSettings,
    LoggingSettings,
    RealtimeSettings,
    Settings,
)
from kioskvoice.wavio import read_wav, write_wav

MODE = os.environ.get("KIOSKVOICE_HW", "real").strip().lower()
SIM = MODE == "sim"
"""True for virtual hardware (``KIOSKVOICE_HW=sim``)."""

BUTTON_PIN = 17
STATUS_LED_PIN = 27
RING_LED_PIN = 12
DEVICE_TOKEN = "kvd_virtual-rig-device-token-0123456789"
STARTUP_TIMEOUT_S = 10.0


class SimThread:
    """The Realtime simulator and a token-broker stand-in on loopback, on a private loop."""

    def __init__(self, device_token: str = DEVICE_TOKEN) -> None:
        self.device_token = device_token
        self.realtime_url = ""
        self.token_url = ""
        self.sessions = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sim", daemon=True)
        self._stop: asyncio.Event | None = None
        self._done: Any = None
        self._sim: Any = None

    def __enter__(self) -> SimThread:
        self._thread.start()
        ready = threading.Event()
        self._done = asyncio.run_coroutine_threadsafe(self._serve(ready), self._loop)
        if not ready.wait(STARTUP_TIMEOUT_S):
            raise TimeoutError("the Realtime simulator did not start")
        if self._done.done():
            self._done.result()  # raise why it failed
        return self

    async def _serve(self, ready: threading.Event) -> None:
        from kioskvoice.sim import Simulator
        from kioskvoice.sim.broker import BrokerStub

        self._stop = asyncio.Event()
        async with Simulator() as sim, BrokerStub(sim, self.device_token) as broker:
            self._sim = sim
            self.realtime_url = sim.url
            self.token_url = broker.url
            ready.set()
            await self._stop.wait()
            self.sessions = len(sim.sessions)

    def set_reply_more(self, text: str) -> None:
        """What the simulator says after "You spoke for N seconds." (a long reply)."""
        self._loop.call_soon_threadsafe(setattr, self._sim, "reply_more", text)

    def session_count(self) -> int:
        """Sessions the simulator has seen so far."""
        return len(self._sim.sessions) if self._sim is not None else 0

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._done is not None:
            self._done.result(timeout=15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def speech_wav(path: Path) -> Path:
    """The kiosk's own spoken "Sorry, I cannot answer right now..." as a 16 kHz mono WAV: a
    person speaking into the virtual microphone."""
    with resources.as_file(resources.files("kioskvoice") / "data" / "error.wav") as src:
        frames, rate, _ = read_wav(src)
    write_wav(path, frames, rate)
    return path


def silent_wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """A microphone that hears nothing: digital zeros."""
    write_wav(path, bytes(2 * int(seconds * rate)), rate)
    return path


def virtual_settings(
    tmp: Path, *, realtime_url: str, token_url: str, device_token: str, mic: Path
) -> Settings:
    """A kiosk on virtual hardware: ``wav:`` devices, a button and two LEDs on mock pins, the
    simulator reached through the broker stand-in."""
    return Settings.model_construct(
        realtime=RealtimeSettings(
            url=realtime_url, token_url=token_url, device_token=device_token, connect_timeout_s=5
        ),
        audio=AudioSettings(input_device=f"wav:{mic}", output_device=f"wav:{tmp / 'out.wav'}"),
        dsp=DspSettings(),
        interaction=InteractionSettings(),
        gpio=GpioSettings(
            button_pin=BUTTON_PIN, status_led_pin=STATUS_LED_PIN, ring_led_pin=RING_LED_PIN
        ),
        control=ControlSettings(socket=tmp / "control.sock"),
        logging=LoggingSettings(target="stderr"),
        tools=[],
    )


def mock_factory() -> Any:
    """gpiozero's MockFactory with PWM pins (the status LED dims)."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    return MockFactory(pin_class=MockPWMPin)


def chattering_press(
    factory: Any, pin: int = BUTTON_PIN, hold_s: float = 0.4
) -> Callable[[], None]:
    """A virtual finger: a press and a release, each with a few ms of contact chatter (as a
    real button makes), shorter than the default 30 ms debounce."""

    def press() -> None:
        button = factory.pin(pin)
        time.sleep(0.2)  # the tester reads the instruction
        for level in (0, 1, 0, 1, 0):
            (button.drive_low if level == 0 else button.drive_high)()
            time.sleep(0.003)
        time.sleep(hold_s)
        for level in (1, 0, 1, 0, 1):
            (button.drive_low if level == 0 else button.drive_high)()
            time.sleep(0.003)

    return press


def led_probe(factory: Any, pin: int = STATUS_LED_PIN) -> Callable[[], float]:
    """The status LED's brightness, read from its mock pin (a photodiode's stand-in)."""

    def read() -> float:
        return float(factory.pin(pin).state or 0.0)

    return read
