"""The rig: the hardware the checks run against (:class:`Rig`), and the synthetic room that
stands in for the acoustic path when the speaker is virtual."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio.devices import WAV_PREFIX
from ..config import Settings
from .prompter import Prompter

Room = Callable[[np.ndarray, int], np.ndarray]
"""``room(played, rate) -> captured``: what the mic hears while ``played`` (mono int16 at
``rate``) goes out of the speaker, for outputs without an acoustic path."""


@dataclass
class Rig:
    """Everything a check needs. Built from settings; tests swap parts (a mock pin factory,
    a synthetic room, an LED probe)."""

    settings: Settings
    prompter: Prompter = field(default_factory=Prompter)
    pin_factory: Any = None
    """gpiozero pin factory (None: gpiozero's default, i.e. the Pi's GPIO chip)."""
    room: Room | None = None
    """Synthetic room for the echo check; default: one when the output is ``wav:``."""
    led_probe: Callable[[], float] | None = None
    """Reads the status LED's brightness 0..1 (a photodiode, or a mock pin's state)."""
    capture_s: float = 2.0
    """How long the capture check listens."""
    button_timeout_s: float = 20.0
    """How long the button check waits for each press and release."""
    confirm_timeout_s: float = 60.0
    """How long an interactive question waits for an answer."""

    def __post_init__(self) -> None:
        if self.room is None and self.settings.audio.output_device.startswith(WAV_PREFIX):
            self.room = synthetic_room


def synthetic_room(played: np.ndarray, rate: int, *, seed: int = 8) -> np.ndarray:
    """``played`` through a simulated loudspeaker-to-mic path (40 ms, RT60 0.3 s) with
    noise: the acoustic echo a kiosk's mic hears (see :mod:`kioskvoice.dsp.room`)."""
    from ..dsp.room import room_impulse_response

    rng = np.random.default_rng(seed)
    response = room_impulse_response(rate, delay_ms=40.0, rt60_s=0.3, rng=rng)
    far = played.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(far) + len(response))))
    echo = np.fft.irfft(np.fft.rfft(far, size) * np.fft.rfft(response, size), size)[: len(far)]
    echo += rng.standard_normal(len(far)) * 20.0
    return np.clip(np.round(echo), -32768, 32767).astype(np.int16)
