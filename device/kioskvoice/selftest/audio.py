"""The audio checks an installer hears and speaks to: the microphone is found (``mic``), it
hears a person speak (``capture``) and the speaker plays (``speaker``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..audio.devices import WAV_PREFIX
from ..errors import AudioDeviceError, KioskError
from .results import CheckResult, Status
from .rig import Rig
from .sound import _block_levels, _capture, _device_hint, _tone, _tone_share, _voice

SPEECH_MIN_DBFS = -50.0
"""Loudest speech blocks must reach this level (a person talking at arm's length)."""
DYNAMICS_MIN_DB = 10.0
"""Speech must stand this far above the noise floor (10th percentile of block levels)."""


def check_mic(rig: Rig) -> CheckResult:
    """The configured microphone is found by name with the channels and rate configured."""
    a = rig.settings.audio
    name = "mic"
    if a.input_device.startswith(WAV_PREFIX):
        from ..wavio import read_wav

        path = Path(a.input_device[len(WAV_PREFIX) :]).expanduser()
        try:
            _, rate, channels = read_wav(path)
        except (OSError, KioskError, ValueError) as exc:
            return CheckResult(name, Status.FAIL, "-", f"virtual microphone {path}: {exc}")
        if channels != a.input_channels:
            return CheckResult(
                name,
                Status.FAIL,
                f"{channels} ch",
                f"virtual microphone {path} has {channels} channel(s), the config expects "
                f"{a.input_channels}",
            )
        return CheckResult(
            name, Status.PASS, f"wav: {channels} ch, {rate} Hz", f"virtual microphone {path}"
        )
    from ..audio.devices import find_device, list_devices, open_portaudio

    pa = open_portaudio()
    try:
        try:
            dev = find_device(pa, a.input_device, direction="input", channels=a.input_channels)
        except AudioDeviceError as exc:
            found = ", ".join(
                f"{d.name} ({d.max_input_channels} in)"
                for d in list_devices(pa)
                if d.max_input_channels
            )
            return CheckResult(
                name,
                Status.FAIL,
                "not found",
                f"no microphone {a.input_device!r} with {a.input_channels} channels: is it "
                f"plugged in (try another USB port) and does audio.input_device name it? "
                f"Found: {found or 'no capture devices at all'}. ({exc})",
            )
        try:
            import pyaudio

            pa.is_format_supported(
                a.sample_rate,
                input_device=dev.index,
                input_channels=a.input_channels,
                input_format=pyaudio.paInt16,
            )
        except ValueError as exc:
            return CheckResult(
                name,
                Status.FAIL,
                f"{dev.name}",
                f"{dev.name!r} refuses {a.sample_rate} Hz with {a.input_channels} channels "
                f"({exc}): check audio.sample_rate and audio.input_channels (ReSpeaker "
                "6-channel firmware: 6 channels, 16000 Hz)",
            )
    finally:
        pa.terminate()
    value = f"{dev.name}: {dev.max_input_channels} ch, {a.sample_rate} Hz"
    return CheckResult(name, Status.PASS, value, "microphone found")


def check_capture(rig: Rig) -> CheckResult:
    """The capture level rises above the noise floor while a person speaks."""
    name = "capture"
    rig.prompter.say(
        name,
        f"Speak normally at arm's length from the kiosk for {rig.capture_s:.0f} seconds, now.",
    )
    try:
        take = _capture(rig, rig.capture_s)
    except AudioDeviceError as exc:
        return CheckResult(
            name,
            Status.FAIL,
            "-",
            f"cannot capture from {_device_hint(rig)!r}: {exc}. Is the kiosk service stopped "
            "(systemctl stop kioskvoice) and the microphone plugged in?",
        )
    finally:
        rig.prompter.join_actions()
    voice = _voice(rig, take.mic)
    levels = _block_levels(voice, rig.settings.audio.sample_rate * 20 // 1000)
    speech = float(np.percentile(levels, 90))
    floor = float(np.percentile(levels, 10))
    value = f"speech {speech:.0f} dBFS, floor {floor:.0f} dBFS"
    if not np.any(voice):
        return CheckResult(
            name,
            Status.FAIL,
            "silence",
            f"microphone is silent: is the microphone ({_device_hint(rig)}) plugged in and not "
            "muted (alsamixer, F4: capture), and audio.channel the voice channel?",
        )
    if speech < SPEECH_MIN_DBFS:
        return CheckResult(
            name,
            Status.FAIL,
            value,
            f"microphone is too quiet ({speech:.0f} dBFS, needs {SPEECH_MIN_DBFS:.0f}): raise "
            "the capture level in alsamixer, or check the microphone is not covered",
        )
    if speech - floor < DYNAMICS_MIN_DB:
        return CheckResult(
            name,
            Status.FAIL,
            value,
            f"no speech above the noise ({speech - floor:.0f} dB, needs {DYNAMICS_MIN_DB:.0f}):"
            " the microphone hears only steady noise (a fan, a bad cable?) or nobody spoke",
        )
    return CheckResult(name, Status.PASS, value, "speech is well above the noise floor")


def check_speaker(rig: Rig) -> CheckResult:
    """The speaker plays: a beep the tester confirms, or hears in a loopback on one card."""
    name = "speaker"
    beep_s = 0.8
    rig.prompter.say(name, "Listen: the kiosk plays a beep.")
    try:
        take = _capture(rig, beep_s + 0.6, _tone(beep_s))
    except AudioDeviceError as exc:
        return CheckResult(
            name,
            Status.FAIL,
            "-",
            f"cannot play on {rig.settings.audio.output_device!r}: {exc}. Is the speaker "
            "plugged in and audio.output_device its name?",
        )
    finally:
        rig.prompter.join_actions()
    rate = rig.settings.audio.sample_rate
    block_ms = rig.settings.audio.frame_ms
    played_s = take.blocks_played * block_ms / 1000
    if played_s < beep_s * 0.8:
        return CheckResult(
            name,
            Status.FAIL,
            f"{played_s:.1f} s played",
            "the speaker stalled: the output device did not take the beep (wrong device, "
            "or another program holds it)",
        )
    value = f"{played_s:.1f} s played"
    loopback: float | None = None
    if not rig.settings.audio.output_device.startswith(WAV_PREFIX):
        # A real speaker in the same enclosure: the mic should hear the beep.
        loopback = _tone_share(_voice(rig, take.mic), rate)
        value += f", beep is {loopback:.0%} of what the mic heard"
    heard = rig.prompter.confirm(
        name, "Did you hear a clear beep from the speaker?", timeout_s=rig.confirm_timeout_s
    )
    if heard is False:
        return CheckResult(
            name,
            Status.FAIL,
            value,
            "nobody heard the beep: check the speaker's cable and power, and the playback "
            "volume (alsamixer)",
        )
    if heard is None:
        if loopback is not None and loopback >= 0.3:
            return CheckResult(name, Status.PASS, value, "the microphone heard the beep")
        return CheckResult(name, Status.SKIP, value, "played the beep; nobody confirmed hearing it")
    return CheckResult(name, Status.PASS, value, "the tester heard the beep")
