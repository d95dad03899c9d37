"""The kiosk's buttons and LEDs (gpiozero).

The button posts :class:`Press`/:class:`Release` events after our own debouncing (the optional
reset button a :class:`Reset`); the LEDs only listen to what the kiosk shows (:class:`Look`).
The pin factory is passed in (tests use gpiozero's ``MockFactory``); library code never touches
gpiozero's global ``Device.pin_factory``.

Debouncing is ours, fed by raw edges, because gpiozero's ``bounce_time`` is not honoured by
its mock pins (tests could not see it) and delays nothing we can measure: the first edge acts
at once, edges within ``debounce_ms`` after it are chatter, and the pin is read again when that
time is over so that a release hidden in the chatter is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .config import GpioSettings
from .events import Press, Release, Reset, State

log = logging.getLogger(__name__)


class Look(StrEnum):
    """What the LEDs show: the kiosk's states plus two panel-only signals."""

    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    OFFLINE = "offline"
    ERROR = "error"
    CONFIG_ERROR = "config_error"
    TOO_SHORT = "too_short"  # transient: shown once, then the state's look returns


Color = tuple[float, float, float]
WHITE, GREEN, BLUE, CYAN = (1.0, 1.0, 1.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 1.0)
AMBER, RED, ORANGE = (1.0, 0.5, 0.0), (1.0, 0.0, 0.0), (1.0, 0.25, 0.0)


@dataclass(frozen=True, slots=True)
class Pattern:
    """One LED pattern. ``level`` 0..1 is the brightness (RGB: scales ``color``).

    ``steady``: constant. ``blink``: ``on_s`` at ``level``, ``off_s`` dark, ``times`` times
    (None: forever). ``pulse``: fading in and out over ``on_s`` each.
    """

    kind: str  # steady | blink | pulse
    level: float = 1.0
    color: Color = WHITE
    on_s: float = 0.0
    off_s: float = 0.0
    times: int | None = None


# The documented patterns (README "Wiring"): one per look, for each kind of LED.
STATUS_PATTERNS: dict[Look, Pattern] = {
    Look.IDLE: Pattern("steady", 0.1, WHITE),
    Look.LISTENING: Pattern("steady", 1.0, GREEN),
    Look.THINKING: Pattern("pulse", 1.0, BLUE, on_s=0.4),
    Look.SPEAKING: Pattern("steady", 0.5, CYAN),
    Look.OFFLINE: Pattern("blink", 1.0, AMBER, on_s=0.1, off_s=1.9),
    Look.ERROR: Pattern("blink", 1.0, RED, on_s=1.0, off_s=1.0),
    Look.CONFIG_ERROR: Pattern("blink", 1.0, RED, on_s=0.15, off_s=0.15),
    Look.TOO_SHORT: Pattern("blink", 1.0, ORANGE, on_s=0.08, off_s=0.08, times=2),
}
# The button ring says "a press is heard here": bright while listening, lit when a press
# starts a turn, dim while a press would interrupt the reply, dark when it cannot help.
RING_PATTERNS: dict[Look, Pattern] = {
    Look.IDLE: Pattern("steady", 0.6),
    Look.LISTENING: Pattern("steady", 1.0),
    Look.THINKING: Pattern("steady", 0.2),
    Look.SPEAKING: Pattern("steady", 0.2),
    Look.OFFLINE: Pattern("steady", 0.6),
    Look.ERROR: Pattern("steady", 0.0),
    Look.CONFIG_ERROR: Pattern("steady", 0.0),
    Look.TOO_SHORT: Pattern("blink", 1.0, on_s=0.08, off_s=0.08, times=2),
}
TRANSIENT_S = 0.4  # how long a transient look lasts before the state's look returns
RESET_QUIET_S = 1.0  # reset-button presses closer together than this are one
FAILURE_LOOK_S = 3.0  # how long the error look stays after an apology or a silent turn


class Debouncer:
    """Turns raw button edges into clean presses and releases. Pure: time is passed in."""

    def __init__(self, debounce_s: float) -> None:
        self.debounce_s = debounce_s
        self.pressed = False
        self._quiet_until = float("-inf")

    def edge(self, pressed: bool, now: float) -> bool | None:
        """A raw edge; returns the new clean level, or None when it is chatter or no change."""
        if now < self._quiet_until or pressed == self.pressed:
            return None
        self.pressed = pressed
        self._quiet_until = now + self.debounce_s
        return pressed

    def settle(self, level: bool, now: float) -> bool | None:
        """The pin's level read when the quiet time is over; returns a change the chatter
        hid (a tap shorter than the debounce time), else None."""
        if now < self._quiet_until or level == self.pressed:
            return None
        return self.edge(level, now)


def _apply(device: Any, pattern: Pattern, rgb: bool) -> None:
    from gpiozero import LED

    level = max(0.0, min(1.0, pattern.level))
    on: Any = tuple(c * level for c in pattern.color) if rgb else level
    off: Any = (0.0, 0.0, 0.0) if rgb else 0.0
    if isinstance(device, LED):
        # An on/off LED (no PWM on its pin) cannot dim or fade: on for any level, blink for
        # a pulse.
        if pattern.kind == "steady":
            device.value = 1 if level > 0 else 0
        else:
            on_s = pattern.on_s or 0.4
            device.blink(on_time=on_s, off_time=pattern.off_s or on_s, n=pattern.times)
        return
    if pattern.kind == "steady":
        device.value = on
        return
    kwargs: dict[str, Any] = {"n": pattern.times, "background": True}
    if rgb:
        kwargs |= {"on_color": on, "off_color": off}
    if pattern.kind == "pulse":
        device.pulse(fade_in_time=pattern.on_s, fade_out_time=pattern.on_s, **kwargs)
    else:
        device.blink(on_time=pattern.on_s, off_time=pattern.off_s, **kwargs)


class Panel:
    """Owns the gpiozero devices.

    ``post`` receives clean :class:`Press`/:class:`Release` events on the event loop given to
    :meth:`open`. Without usable GPIO the kiosk still runs: ``ctl`` presses work.
    """

    def __init__(
        self, settings: GpioSettings, post: Callable[[Any], None], *, pin_factory: Any = None
    ) -> None:
        self.settings = settings
        self._post = post
        self._pin_factory = pin_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._debouncer = Debouncer(settings.debounce_ms / 1000)
        self._look = Look.OFFLINE
        self._restore: asyncio.TimerHandle | None = None
        self._flashing: Look | None = None
        self._alert = False
        self._last_reset = float("-inf")
        self.shown = Look.OFFLINE
        """The look on the LEDs now (``ctl status`` reports it)."""
        self.button: Any = None
        self.reset_button: Any = None
        self.status_led: Any = None
        self.rgb_led: Any = None
        self.ring_led: Any = None

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Create the devices (gpiozero's callbacks run on its own thread)."""
        from gpiozero import LED, PWMLED, RGBLED, Button
        from gpiozero.exc import GPIOZeroError, PinPWMUnsupported

        self._loop = loop
        s = self.settings

        def dimmable(pin: int) -> Any:
            try:
                return PWMLED(pin, pin_factory=self._pin_factory)
            except PinPWMUnsupported:
                return LED(pin, pin_factory=self._pin_factory)

        try:
            if s.button_pin is not None:
                self.button = Button(
                    s.button_pin, pull_up=s.button_active_low, pin_factory=self._pin_factory
                )
                self.button.when_pressed = lambda: self._raw(True)
                self.button.when_released = lambda: self._raw(False)
            if s.reset_button_pin is not None:
                # Its own pin, so no gesture on the talk button is ever taken from a question.
                self.reset_button = Button(
                    s.reset_button_pin,
                    pull_up=s.button_active_low,
                    pin_factory=self._pin_factory,
                )
                self.reset_button.when_pressed = self._raw_reset
            if s.status_led_pin is not None:
                self.status_led = dimmable(s.status_led_pin)
            if s.rgb_led_pins is not None:
                red, green, blue = s.rgb_led_pins
                self.rgb_led = RGBLED(red, green, blue, pin_factory=self._pin_factory)
            if s.ring_led_pin is not None:
                self.ring_led = dimmable(s.ring_led_pin)
        except (GPIOZeroError, OSError) as exc:
            log.warning("GPIO unavailable, buttons and LEDs disabled: %s", exc)
            self.close()

    # --- button ------------------------------------------------------------------------------

    def _raw(self, pressed: bool) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                self._loop.call_soon_threadsafe(self._edge, pressed)

    def _raw_reset(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._reset_pressed)

    def _reset_pressed(self) -> None:
        # Contact chatter (and an impatient double press) is one new visitor, not several.
        assert self._loop is not None
        now = self._loop.time()
        if now - self._last_reset >= RESET_QUIET_S:
            self._last_reset = now
            self._post(Reset("reset_button"))

    def _edge(self, pressed: bool) -> None:
        assert self._loop is not None
        level = self._debouncer.edge(pressed, self._loop.time())
        if level is not None:
            self._emit(level)
            self._loop.call_later(self._debouncer.debounce_s, self._settle)

    def _settle(self) -> None:
        if self.button is None or self._loop is None:
            return
        level = self._debouncer.settle(bool(self.button.is_pressed), self._loop.time())
        if level is not None:
            self._emit(level)
            self._loop.call_later(self._debouncer.debounce_s, self._settle)

    def _emit(self, pressed: bool) -> None:
        self._post(Press("button") if pressed else Release("button"))

    # --- LEDs --------------------------------------------------------------------------------

    def show(self, look: Look | State) -> None:
        """Show the kiosk's state (``TOO_SHORT``: flash it for :data:`TRANSIENT_S`). A flash
        in progress outlasts a state change, except into listening: a press is answered at
        once."""
        look = Look(look.value)
        if look is Look.TOO_SHORT:
            self.flash(look, TRANSIENT_S)
            return
        self._look = look
        if self._flashing is not None and look is not Look.LISTENING:
            return
        self._cancel_flash()
        self._paint(self._base())

    def flash(self, look: Look, seconds: float) -> None:
        """Show ``look`` for ``seconds``, then the state's look again."""
        self._cancel_flash()
        self._flashing = look
        if self._loop is not None:
            self._restore = self._loop.call_later(seconds, self._end_flash)
        self._paint(look)

    def alert(self, on: bool) -> None:
        """A standing alarm (a suspect microphone): the error look whenever the kiosk is
        idle, so it is seen without hiding what a visitor's press does."""
        self._alert = on
        if self._flashing is None:
            self._paint(self._base())

    def _base(self) -> Look:
        return Look.ERROR if self._alert and self._look is Look.IDLE else self._look

    def _end_flash(self) -> None:
        self._restore = None
        self._flashing = None
        self._paint(self._base())

    def _cancel_flash(self) -> None:
        if self._restore is not None:
            self._restore.cancel()
            self._restore = None
        self._flashing = None

    def _paint(self, look: Look) -> None:
        self.shown = look
        for device, table, rgb in (
            (self.status_led, STATUS_PATTERNS, False),
            (self.rgb_led, STATUS_PATTERNS, True),
            (self.ring_led, RING_PATTERNS, False),
        ):
            if device is not None:
                _apply(device, table[look], rgb)

    def close(self) -> None:
        if self._restore is not None:
            self._restore.cancel()
        devices = (self.button, self.reset_button, self.status_led, self.rgb_led, self.ring_led)
        for device in devices:
            if device is not None:
                device.close()
        self.button = self.reset_button = None
        self.status_led = self.rgb_led = self.ring_led = None
