"""The kiosk's buttons and LEDs (gpiozero).

The button posts :class:`Press`/:class:`Release` events; the LED only listens to state
changes. The pin factory is passed in (tests use gpiozero's ``MockFactory``); library code
never touches gpiozero's global ``Device.pin_factory``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .config import GpioSettings
from .events import Press, Release, State

log = logging.getLogger(__name__)

# (on seconds, off seconds) per state; None = steady on, (0, 0) = off.
LED_PATTERNS: dict[State, tuple[float, float] | None] = {
    State.IDLE: None,
    State.LISTENING: (0.1, 0.1),
    State.THINKING: (0.4, 0.4),
    State.SPEAKING: None,
    State.OFFLINE: (0.1, 1.9),
    State.ERROR: (1.0, 1.0),
}


class Panel:
    """Owns the gpiozero devices. ``post`` is called from gpiozero's thread and must be
    thread-safe (the app passes a ``call_soon_threadsafe`` wrapper)."""

    def __init__(
        self, settings: GpioSettings, post: Callable[[Any], None], *, pin_factory: Any = None
    ) -> None:
        self.settings = settings
        self._post = post
        self._pin_factory = pin_factory
        self.button: Any = None
        self.led: Any = None

    def open(self) -> None:
        """Create the devices. Without usable GPIO the kiosk still runs (``ctl`` works)."""
        from gpiozero import LED, Button
        from gpiozero.exc import GPIOZeroError

        try:
            if self.settings.button_pin is not None:
                self.button = Button(
                    self.settings.button_pin,
                    pull_up=self.settings.button_active_low,
                    pin_factory=self._pin_factory,
                )
                self.button.when_pressed = lambda: self._post(Press("button"))
                self.button.when_released = lambda: self._post(Release("button"))
            if self.settings.status_led_pin is not None:
                self.led = LED(self.settings.status_led_pin, pin_factory=self._pin_factory)
        except (GPIOZeroError, OSError) as exc:
            log.warning("GPIO unavailable, button and LED disabled: %s", exc)
            self.close()

    def show(self, state: State) -> None:
        """Show ``state`` on the LED."""
        if self.led is None:
            return
        pattern = LED_PATTERNS[state]
        if pattern is None:
            self.led.on()
        else:
            self.led.blink(on_time=pattern[0], off_time=pattern[1], background=True)

    def close(self) -> None:
        for device in (self.button, self.led):
            if device is not None:
                device.close()
        self.button = self.led = None
