"""Running the kiosk in-process against the simulator, for tests: settings with wav: devices
and a mock button, and the App in a task with its state changes queued."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kioskvoice.app import App
from kioskvoice.config import (
    AudioSettings,
    ControlSettings,
    GpioSettings,
    InteractionSettings,
    LoggingSettings,
    RealtimeSettings,
    Settings,
)
from kioskvoice.events import State

BUTTON_PIN = 17


def kiosk_settings(
    url: str, speech_wav: Path, tmp_path: Path, *, api_key: str | None, **realtime: Any
) -> Settings:
    """Settings for a kiosk on ``url`` with wav: devices and a button on :data:`BUTTON_PIN`;
    ``realtime`` overrides [realtime] keys."""
    return Settings.model_construct(
        realtime=RealtimeSettings(url=url, api_key=api_key, **realtime),
        audio=AudioSettings(
            input_device=f"wav:{speech_wav}", output_device=f"wav:{tmp_path / 'out.wav'}"
        ),
        interaction=InteractionSettings(),
        gpio=GpioSettings(button_pin=BUTTON_PIN),
        control=ControlSettings(socket=tmp_path / "control.sock"),
        logging=LoggingSettings(),
    )


class Running:
    """An App running in a task; ``await wait(state)`` for its next entry into ``state``."""

    def __init__(self, app: App, *, ready: State | None = State.IDLE) -> None:
        self.app = app
        self.states: asyncio.Queue[State] = asyncio.Queue()
        app.on_state.append(self.states.put_nowait)
        self._ready = ready
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.app.run())
        if self._ready is not None:
            await self.wait(self._ready)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.app.stop()
        async with asyncio.timeout(5):
            await self.task

    async def wait(self, state: State, timeout_s: float = 15) -> None:
        async with asyncio.timeout(timeout_s):
            while await self.states.get() is not state:
                pass

    async def until(self, predicate, timeout_s: float = 15, poll_s: float = 0.02) -> None:
        """Poll ``predicate()`` until true (for status fields that are not state changes)."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(poll_s)

    async def turn(self, button: Any, hold_s: float = 1.0, timeout_s: float = 15) -> None:
        """Hold the mock button for ``hold_s``, then wait until the reply has been played."""
        button.drive_low()
        await asyncio.sleep(hold_s)
        button.drive_high()
        await self.wait(State.SPEAKING, timeout_s)
        await self.wait(State.IDLE, timeout_s)
