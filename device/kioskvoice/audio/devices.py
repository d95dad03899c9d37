"""PortAudio device lookup by name.

Devices are always found by name, never by index: indices move between boots and when USB
devices enumerate in a different order.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import AudioDeviceError

WAV_PREFIX = "wav:"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    index: int
    name: str
    max_input_channels: int
    max_output_channels: int
    default_rate: int


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    # PortAudio's ALSA and JACK back ends print probe noise on fd 2 while initialising; it is
    # not ours to log and would land in the journal as errors.
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def open_portaudio() -> Any:
    """A new ``pyaudio.PyAudio`` instance (re-create it to see re-enumerated devices)."""
    import pyaudio

    with _quiet_stderr():
        return pyaudio.PyAudio()


def list_devices(pa: Any) -> list[DeviceInfo]:
    out = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        out.append(
            DeviceInfo(
                index=index,
                name=str(info["name"]),
                max_input_channels=int(info["maxInputChannels"]),
                max_output_channels=int(info["maxOutputChannels"]),
                default_rate=int(info["defaultSampleRate"]),
            )
        )
    return out


def find_device(pa: Any, name: str, *, direction: str, channels: int = 1) -> DeviceInfo:
    """The device whose name equals ``name`` or, failing that, contains it (case-insensitive).

    ``direction`` is ``input`` or ``output``; the device must offer ``channels`` that way.
    Raises :class:`AudioDeviceError` naming the candidates when none or several match.
    """
    devices = list_devices(pa)

    def usable(dev: DeviceInfo) -> bool:
        have = dev.max_input_channels if direction == "input" else dev.max_output_channels
        return have >= channels

    wanted = name.casefold()
    exact = [d for d in devices if d.name.casefold() == wanted and usable(d)]
    if exact:
        return exact[0]
    partial = [d for d in devices if wanted in d.name.casefold() and usable(d)]
    if len(partial) == 1:
        return partial[0]
    names = ", ".join(repr(d.name) for d in devices if usable(d)) or "none"
    if not partial:
        raise AudioDeviceError(
            f"no {direction} device matching {name!r} with {channels} channel(s); "
            f"available: {names}"
        )
    raise AudioDeviceError(
        f"{direction} device name {name!r} is ambiguous: "
        + ", ".join(repr(d.name) for d in partial)
    )
