"""The checks of what hangs on the GPIO pins: the button (``button``) and each LED pattern
(``leds``); and the overall result shown on the LEDs when the selftest ends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .results import CheckResult, Status
from .rig import Rig


async def _button(rig: Rig) -> CheckResult:
    from ..events import Press, Release
    from ..panel import Panel

    name = "button"
    s = rig.settings.gpio
    events: asyncio.Queue[tuple[str, float]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def post(event: Any) -> None:
        kind = (
            "press" if isinstance(event, Press) else "release" if isinstance(event, Release) else ""
        )
        events.put_nowait((kind, loop.time()))

    panel = Panel(s, post, pin_factory=rig.pin_factory)
    panel.open(loop)
    try:
        if panel.button is None:
            return CheckResult(
                name,
                Status.FAIL,
                "no GPIO",
                f"cannot use the button on GPIO{s.button_pin}: is this a Raspberry Pi and is "
                "the user in the gpio group? (the log says why)",
            )
        asked = loop.time()
        rig.prompter.say(
            name,
            f"Press the button once, hold it about half a second, release it "
            f"(within {rig.button_timeout_s:.0f} s).",
        )
        try:
            async with asyncio.timeout(rig.button_timeout_s):
                kind, pressed_at = await events.get()
            async with asyncio.timeout(rig.button_timeout_s):
                kind2, released_at = await events.get()
        except TimeoutError:
            return CheckResult(
                name,
                Status.FAIL,
                "no press",
                f"no press and release within {rig.button_timeout_s:.0f} s: check the button's "
                f"wiring (GPIO{s.button_pin}, pin to ground) and gpio.button_active_low",
            )
        # Chatter after the release must not make another press.
        await asyncio.sleep(max(0.2, 3 * s.debounce_ms / 1000))
        extra = events.qsize()
        value = (
            f"press after {pressed_at - asked:.1f} s, held {released_at - pressed_at:.2f} s, "
            f"{1 + extra // 2} press(es)"
        )
        if (kind, kind2) != ("press", "release"):
            return CheckResult(
                name,
                Status.FAIL,
                value,
                "the button reads backwards (release before press): flip gpio.button_active_low",
            )
        if extra:
            return CheckResult(
                name,
                Status.FAIL,
                value,
                f"one press counted as {1 + extra // 2}: the contacts chatter longer than "
                f"gpio.debounce_ms={s.debounce_ms}; raise it or replace the button",
            )
        return CheckResult(name, Status.PASS, value, "one clean press and release")
    finally:
        panel.close()
        rig.prompter.join_actions()


def check_button(rig: Rig) -> CheckResult:
    """Press and release are seen once each, debounced (prompted, with a timeout)."""
    if rig.settings.gpio.button_pin is None:
        return CheckResult("button", Status.SKIP, "-", "no button configured (gpio.button_pin)")
    if not rig.prompter.attended:
        return CheckResult(
            "button", Status.SKIP, "-", "needs a tester: run with --interactive or --answers"
        )
    if rig.prompter.declined("button"):
        return CheckResult("button", Status.SKIP, "-", "skipped by the answers file")
    return asyncio.run(_button(rig))


LED_LOOKS = {
    "idle": "dim steady white (ring on)",
    "listening": "full steady green (ring full)",
    "thinking": "pulsing blue (ring dim)",
    "speaking": "half-bright cyan (ring dim)",
    "offline": "a short amber flash every 2 s (ring on)",
    "error": "red blinking once a second (ring off)",
    "config_error": "fast red blinking (ring off)",
    "too_short": "two quick orange flashes",
}


async def _leds(rig: Rig) -> CheckResult:
    from ..panel import STATUS_PATTERNS, Look, Panel

    name = "leds"
    panel = Panel(rig.settings.gpio, lambda _e: None, pin_factory=rig.pin_factory)
    panel.open(asyncio.get_running_loop())
    try:
        if panel.status_led is None and panel.rgb_led is None and panel.ring_led is None:
            return CheckResult(
                name,
                Status.FAIL,
                "no GPIO",
                "cannot drive the LEDs: is this a Raspberry Pi and the user in the gpio group?",
            )
        refused: list[str] = []
        dark: list[str] = []
        unconfirmed: list[str] = []
        for look in Look:
            panel.show(look)
            if rig.led_probe is not None:
                # A photodiode (or a mock pin): the LED must light at some point.
                brightest = 0.0
                deadline = time.monotonic() + 0.25
                while time.monotonic() < deadline:
                    brightest = max(brightest, rig.led_probe())
                    await asyncio.sleep(0.01)
                wanted = STATUS_PATTERNS[look].level
                if brightest < min(0.05, wanted / 2):
                    dark.append(look.value)
            answer = await asyncio.to_thread(
                rig.prompter.confirm,
                f"leds.{look.value}",
                f"Do the LEDs show {look.value}: {LED_LOOKS[look.value]}?",
                timeout_s=rig.confirm_timeout_s,
            )
            if answer is False:
                refused.append(look.value)
            elif answer is None:
                unconfirmed.append(look.value)
    finally:
        panel.close()
    count = len(LED_LOOKS)
    value = f"{count - len(refused) - len(unconfirmed)}/{count} confirmed"
    if rig.led_probe is not None:
        value += f", {count - len(dark)}/{count} lit"
    if refused or dark:
        bad = ", ".join(dict.fromkeys(refused + dark))
        return CheckResult(
            name,
            Status.FAIL,
            value,
            f"wrong LED pattern for: {bad}. Check the LED's wiring and resistor, and the pins "
            "in [gpio] (status_led_pin, rgb_led_pins in red, green, blue order)",
        )
    if unconfirmed:
        return CheckResult(name, Status.SKIP, value, "nobody confirmed the LED patterns")
    return CheckResult(name, Status.PASS, value, "every LED pattern confirmed")


def check_leds(rig: Rig) -> CheckResult:
    """Each LED pattern is shown and confirmed by the tester (or read by a probe)."""
    g = rig.settings.gpio
    if g.status_led_pin is None and g.rgb_led_pins is None and g.ring_led_pin is None:
        return CheckResult("leds", Status.SKIP, "-", "no LED configured in [gpio]")
    if not rig.prompter.attended and rig.led_probe is None:
        return CheckResult(
            "leds", Status.SKIP, "-", "needs a tester: run with --interactive or --answers"
        )
    return asyncio.run(_leds(rig))


def show_result(rig: Rig, passed: bool, hold_s: float) -> None:
    """Show the overall result on the LEDs for ``hold_s`` (idle look: pass; error: fail)."""
    from ..panel import Look, Panel

    g = rig.settings.gpio
    if g.status_led_pin is None and g.rgb_led_pins is None and g.ring_led_pin is None:
        return

    async def show() -> None:
        panel = Panel(g, lambda _e: None, pin_factory=rig.pin_factory)
        panel.open(asyncio.get_running_loop())
        try:
            panel.show(Look.IDLE if passed else Look.ERROR)
            await asyncio.sleep(hold_s)
        finally:
            panel.close()

    asyncio.run(show())
