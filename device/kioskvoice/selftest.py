"""``kioskvoice selftest``: the hardware checks an installer runs after mounting a kiosk.

``kioskvoice selftest [--config PATH] [--interactive] [--answers FILE] [--check NAME ...]``
runs, in order: the mic array is found by name with the configured channels and rate
(``mic``); the capture level is above the noise floor while a person speaks (``capture``);
the speaker plays (``speaker``); a live echo test through the real capture chain, ERLE and
delay (``echo``); the button's press, release and debounce (``button``); each LED pattern
(``leds``); the token broker answers (``broker``); a Realtime session opens (``realtime``).

It prints a pass/fail table on stdout, logs one ``KIOSKVOICE_EVENT=selftest`` record, shows
the result on the LEDs (the idle look for a pass, the error look for a failure) and exits 0
when every required check passed, 1 otherwise (78 on a configuration error).

Questions for the tester go through a :class:`Prompter`: on a terminal with
``--interactive``, or from an answers file (TOML or JSON, check name -> answer) so that a rig
runs the same checks unattended. Without either, checks that need a person are skipped.

On virtual hardware (``wav:`` devices) there is no acoustic path from the speaker to the
microphone: the echo check then plays the sample into a room synthesised with
:mod:`kioskvoice.dsp.scene` and says so in its result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import select
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .audio.devices import WAV_PREFIX
from .config import Settings, load_config
from .errors import AudioDeviceError, ConfigError, KioskError, LinkError
from .system.logging import REDACTOR, log_event

__all__ = [
    "CHECKS",
    "CheckResult",
    "Prompter",
    "Rig",
    "Status",
    "add_parser",
    "main",
    "render_table",
    "run",
    "run_checks",
]

log = logging.getLogger("kioskvoice.selftest")

EX_CONFIG = 78
ERLE_PASS_DB = 15.0
SPEECH_MIN_DBFS = -50.0
"""Loudest speech blocks must reach this level (a person talking at arm's length)."""
DYNAMICS_MIN_DB = 10.0
"""Speech must stand this far above the noise floor (10th percentile of block levels)."""
TONE_HZ = 1000.0


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check: what was measured and what it means for the installer."""

    name: str
    status: Status
    value: str
    """The measurement, e.g. ``"speech -23 dBFS, floor -61 dBFS"``."""
    message: str
    """One sentence an installer understands (what failed and what to look at)."""

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL


# --- prompts --------------------------------------------------------------------------------

YES = frozenset({"y", "yes", "true", "1", "ok", "pass"})
NO = frozenset({"n", "no", "false", "0", "fail"})
SKIP_WORDS = frozenset({"s", "skip"})


class Prompter:
    """Asks the tester: on a terminal (``interactive``), or from ``answers``.

    ``answers`` maps a question's name (``"speaker"``, ``"leds.idle"``) to an answer; a name
    with a dot falls back to its prefix (``"leds"`` answers every LED question). ``actions``
    maps a name to a callable run (on a thread) when that instruction is shown: a rig's
    robot finger, or a virtual tester driving mock pins. Every name asked is recorded in
    :attr:`asked`.
    """

    def __init__(
        self,
        answers: Mapping[str, Any] | None = None,
        *,
        interactive: bool = False,
        actions: Mapping[str, Callable[[], None]] | None = None,
        stdin: TextIO | None = None,
        out: TextIO | None = None,
    ) -> None:
        self.answers = {str(k): str(v).strip().lower() for k, v in (answers or {}).items()}
        self.interactive = interactive
        self.actions = dict(actions or {})
        self._stdin = stdin
        self._out = out
        self.asked: list[str] = []
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> Prompter:
        """Answers from a TOML or JSON file (a flat table; nested tables become dotted
        names). Raises :class:`ConfigError` when the file cannot be read."""
        try:
            text = Path(path).read_text(encoding="utf-8")
            data = json.loads(text) if Path(path).suffix == ".json" else tomllib.loads(text)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"selftest: answers file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"selftest: answers file {path}: not a table of answers")
        return cls(_flatten(data), **kwargs)

    @property
    def attended(self) -> bool:
        """True when someone (or an answers file) can answer."""
        return self.interactive or bool(self.answers)

    def _print(self, text: str) -> None:
        out = self._out or sys.stderr
        print(text, file=out, flush=True)

    def _answer(self, name: str) -> str | None:
        if name in self.answers:
            return self.answers[name]
        prefix = name.split(".", 1)[0]
        return self.answers.get(prefix)

    def declined(self, name: str) -> bool:
        """True when the answers file says ``skip`` for ``name`` (a rig without that part)."""
        return self._answer(name) in SKIP_WORDS

    def say(self, name: str, instruction: str) -> None:
        """Show an instruction (``"Speak now"``); start ``name``'s action if there is one."""
        self.asked.append(name)
        self._print(f"[{name}] {instruction}")
        action = self.actions.get(name)
        if action is not None:
            thread = threading.Thread(target=action, name=f"selftest-action-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def join_actions(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for actions started by :meth:`say`."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def confirm(self, name: str, question: str, *, timeout_s: float = 60.0) -> bool | None:
        """Ask a yes/no question. True/False, or None when nobody answered (unattended, no
        answer in the file, a timeout, or the tester said ``skip``)."""
        self.asked.append(name)
        answer = self._answer(name)
        if answer is None and self.interactive:
            answer = self._read_tty(f"[{name}] {question} [y/n/skip] ", timeout_s)
        elif answer is not None:
            self._print(f"[{name}] {question} -> {answer} (answers file)")
        if answer is None or answer in SKIP_WORDS:
            return None
        if answer in YES:
            return True
        if answer in NO:
            return False
        self._print(f"[{name}] not understood: {answer!r}; counted as no")
        return False

    def _read_tty(self, prompt: str, timeout_s: float) -> str | None:
        stdin = self._stdin or sys.stdin
        out = self._out or sys.stderr
        print(prompt, end="", file=out, flush=True)
        try:
            ready, _, _ = select.select([stdin], [], [], timeout_s)
        except (OSError, ValueError, TypeError):
            ready = [stdin]  # not selectable (a test's StringIO): read at once
        if not ready:
            print("(no answer)", file=out, flush=True)
            return None
        line = stdin.readline()
        return line.strip().lower() or None


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


# --- the rig: the hardware the checks run against ---------------------------------------------

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
    noise: the acoustic echo a kiosk's mic hears (see :mod:`kioskvoice.dsp.scene`)."""
    from .dsp.scene import room_impulse_response

    rng = np.random.default_rng(seed)
    response = room_impulse_response(rate, delay_ms=40.0, rt60_s=0.3, rng=rng)
    far = played.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(far) + len(response))))
    echo = np.fft.irfft(np.fft.rfft(far, size) * np.fft.rfft(response, size), size)[: len(far)]
    echo += rng.standard_normal(len(far)) * 20.0
    return np.clip(np.round(echo), -32768, 32767).astype(np.int16)


# --- audio helpers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Take:
    """One capture: every mic channel (frames x channels) and the aligned reference."""

    mic: np.ndarray
    ref: np.ndarray
    blocks_played: int
    duplex: bool


def _capture(rig: Rig, seconds: float, play: bytes | None = None) -> _Take:
    """Capture ``seconds`` from the configured devices as the daemon opens them, playing
    ``play`` (24 kHz mono PCM16) meanwhile; raises :class:`AudioDeviceError`."""
    from .audio.player import Player
    from .audio.record import Recorder
    from .audio.streams import ResilientAudio
    from .audio.wavio import read_wav

    a = rig.settings.audio
    audio = ResilientAudio(
        a.input_device,
        a.output_device,
        rate=a.sample_rate,
        channels=a.input_channels,
        frame_ms=a.frame_ms,
    )
    audio.open()
    assert audio.output_rate is not None
    player = Player(audio.output_rate, audio.output_block_samples)
    with tempfile.TemporaryDirectory(prefix="kioskvoice-selftest-") as tmp:
        recorder = Recorder(
            Path(tmp),
            rate=a.sample_rate,
            channels=a.input_channels,
            frame_ms=a.frame_ms,
            out_rate=audio.output_rate,
        )
        recorder.record(seconds)
        if play:
            player.feed("selftest", play)
            player.finish()
        try:
            audio.start(recorder.on_block, player, recorder.on_played)
            # Devices deliver in real time; allow for a slow start, then give up.
            finished = recorder.done.wait(seconds + 5.0)
        finally:
            audio.stop()
            recorder.close()
        if not finished:
            raise AudioDeviceError(
                f"the microphone delivered {recorder.frames / a.sample_rate:.1f} s of audio "
                f"in {seconds + 5.0:.0f} s"
            )
        channels = [np.frombuffer(read_wav(p)[0], dtype=np.int16) for p in recorder.mic_paths]
        ref = np.frombuffer(read_wav(recorder.ref_path)[0], dtype=np.int16)
    return _Take(np.stack(channels, axis=1), ref, player.blocks_played, audio.duplex)


def _voice(rig: Rig, mic: np.ndarray) -> np.ndarray:
    """The configured voice channel (or the average of the configured channels)."""
    channel = rig.settings.audio.channel
    if isinstance(channel, list):
        return np.round(mic[:, channel].astype(np.float64).mean(axis=1)).astype(np.int16)
    return mic[:, channel]


def _block_levels(signal: np.ndarray, block: int) -> np.ndarray:
    """RMS level in dBFS of each ``block`` samples (digital silence: -120)."""
    count = len(signal) // block
    if count == 0:
        return np.full(1, -120.0)
    frames = signal[: count * block].astype(np.float64).reshape(count, block)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return 20.0 * np.log10(np.maximum(rms, 1e-6 * 32768.0) / 32768.0)


def _tone(seconds: float, rate: int = 24000, level: float = 0.3) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # no clicks
    tone = np.sin(2 * np.pi * TONE_HZ * t) * ramp * level * 32767
    return np.round(tone).astype(np.int16).tobytes()


def _tone_share(signal: np.ndarray, rate: int) -> float:
    """Share (0..1) of ``signal``'s energy above 100 Hz that lies within 30 Hz of
    :data:`TONE_HZ`: near 1 when the mic mostly heard the beep, small for speech or noise."""
    if len(signal) < rate // 10:
        return 0.0
    spectrum = np.abs(np.fft.rfft(signal.astype(np.float64) * np.hanning(len(signal)))) ** 2
    freqs = np.fft.rfftfreq(len(signal), 1 / rate)
    audible = freqs > 100
    band = np.abs(freqs - TONE_HZ) < 30
    return float(spectrum[band].sum() / max(spectrum[audible].sum(), 1e-9))


def speech_sample() -> bytes:
    """About 8 s of the kiosk's own spoken messages at 24 kHz mono PCM16: the echo test's
    far end (long enough for the delay search and 2 s of convergence)."""
    from .audio.player import SOURCE_RATE
    from .audio.wavio import read_wav
    from .dsp.resample import resample_all

    pcm = b""
    for name in ("error.wav", "offline.wav"):
        with resources.as_file(resources.files("kioskvoice") / "data" / name) as path:
            frames, rate, _ = read_wav(path)
        pcm += resample_all(frames, rate, SOURCE_RATE)
    return pcm


def _device_hint(rig: Rig) -> str:
    return rig.settings.audio.input_device


# --- the checks -------------------------------------------------------------------------------


def check_mic(rig: Rig) -> CheckResult:
    """The configured microphone is found by name with the channels and rate configured."""
    a = rig.settings.audio
    name = "mic"
    if a.input_device.startswith(WAV_PREFIX):
        from .audio.wavio import read_wav

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
    from .audio.devices import find_device, list_devices, open_portaudio

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


def check_echo(rig: Rig) -> CheckResult:
    """Play speech, capture, run the real capture chain: ERLE (pass at 15 dB) and delay."""
    from .audio.player import SOURCE_RATE
    from .dsp.chain import CaptureChain, DspOptions
    from .dsp.resample import resample_all
    from .dsp.scene import erle_db
    from .dsp.tool import far_masks, run_offline

    name = "echo"
    a, d = rig.settings.audio, rig.settings.dsp
    play = speech_sample()
    seconds = len(play) / 2 / SOURCE_RATE
    rate = a.sample_rate
    if rig.room is not None:
        ref = np.frombuffer(resample_all(play, SOURCE_RATE, rate), dtype=np.int16)
        echo = rig.room(ref, rate)
        mic = np.repeat(echo[:, None], a.input_channels, axis=1)
        where = "in a synthesized room (the speaker is virtual)"
    else:
        rig.prompter.say(name, f"Quiet please: the kiosk talks to itself for {seconds:.0f} s.")
        try:
            take = _capture(rig, seconds + 0.5, play)
        except AudioDeviceError as exc:
            return CheckResult(name, Status.FAIL, "-", f"cannot run the echo test: {exc}")
        finally:
            rig.prompter.join_actions()
        mic, ref = take.mic, take.ref
        where = "from the speaker to the microphone"
    options = DspOptions(
        enabled=True,
        reference_delay_ms=d.reference_delay_ms,
        tail_ms=d.tail_ms,
        denoise=d.denoise,
        noise_suppress_db=d.noise_suppress_db,
        echo_suppress_db=d.echo_suppress_db,
        echo_suppress_active_db=d.echo_suppress_active_db,
        agc="off",  # gain control would count as echo; ERLE is about the canceller
        max_delay_ms=d.max_delay_ms,
    )
    chain = CaptureChain(
        rate=rate,
        channels=a.input_channels,
        channel=a.channel,
        frame_ms=a.frame_ms,
        options=options,
        out_rate=rate,
    )
    try:
        result = run_offline(chain, np.ascontiguousarray(mic).tobytes(), ref.tobytes())
    finally:
        chain.close()
    if chain.delay_ms is None:
        return CheckResult(
            name,
            Status.FAIL,
            "no delay found",
            f"the microphone did not hear the speaker ({where}): check that the speaker plays "
            "(see the speaker check) and faces the room, not the wall",
        )
    _, far_only = far_masks(
        result.mic,
        result.clean,
        ref[: len(result.mic)],
        rate,
        chain.delay_ms,
        options.tail,
        chain.frame,
    )
    keep = np.flatnonzero(far_only)
    if len(keep) < rate // 2:
        return CheckResult(
            name,
            Status.FAIL,
            f"delay {chain.delay_ms:.0f} ms",
            "too little echo to measure: the speaker is too quiet or the room too noisy",
        )
    erle = erle_db(result.mic[keep], result.clean[keep])
    value = f"ERLE {erle:.1f} dB, delay {chain.delay_ms:.0f} ms"
    if erle < ERLE_PASS_DB:
        return CheckResult(
            name,
            Status.FAIL,
            value,
            f"echo reduction {erle:.0f} dB is below {ERLE_PASS_DB:.0f} dB: the kiosk may "
            "interrupt itself. Lower the speaker volume, keep the speaker away from the "
            "microphone, and check that nothing rattles",
        )
    return CheckResult(name, Status.PASS, value, f"echo is cancelled {where}")


async def _button(rig: Rig) -> CheckResult:
    from .events import Press, Release
    from .panel import Panel

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
    from .panel import STATUS_PATTERNS, Look, Panel

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


def _session_request(rig: Rig) -> dict[str, Any]:
    from .realtime.supervisor import Supervisor

    return Supervisor.session_request(rig.settings.realtime)


def check_broker(rig: Rig) -> CheckResult:
    """The operator's token broker mints a secret for this kiosk (when configured)."""
    from .realtime.credentials import TokenBroker

    name = "broker"
    r = rig.settings.realtime
    if r.token_url is None:
        return CheckResult(name, Status.SKIP, "-", "no token broker configured (static key)")
    token = r.device_token.get_secret_value().strip() if r.device_token else ""
    if not token:
        return CheckResult(
            name,
            Status.FAIL,
            "-",
            "no device token: provision realtime.device_token (see INSTALLER: provisioning)",
        )
    REDACTOR.add([token])
    broker = TokenBroker(r.token_url, token, _session_request(rig), timeout_s=10, give_up_s=5)

    async def fetch() -> float:
        started = time.monotonic()
        async with asyncio.timeout(20):
            secret = await broker.fetch()
        REDACTOR.add([secret.value])
        return time.monotonic() - started

    try:
        took = asyncio.run(fetch())
    except (LinkError, TimeoutError) as exc:
        code = getattr(exc, "code", "timeout")
        hints = {
            "broker_unauthorized": "the broker does not know this kiosk's device token: "
            "register it again (kioskvoice broker add-device NAME --replace) and provision it",
            "broker_unreachable": "the broker cannot be reached: check the network, DNS and "
            "realtime.token_url",
            "broker_unavailable": "the broker answered but cannot mint secrets now: ask the "
            "operator to check its log",
        }
        hint = hints.get(code, f"the broker failed ({exc})")
        return CheckResult(name, Status.FAIL, code, hint)
    return CheckResult(name, Status.PASS, f"{took * 1000:.0f} ms", "the broker minted a secret")


def check_realtime(rig: Rig) -> CheckResult:
    """A real connection and ``session.update`` with the configured credentials."""
    from .realtime.credentials import credentials_from
    from .realtime.link import Link, auth_headers, session_url
    from .realtime.protocol import SessionOptions

    name = "realtime"
    r = rig.settings.realtime
    try:
        credentials = credentials_from(r, _session_request(rig))
    except ConfigError as exc:
        return CheckResult(name, Status.FAIL, "no credentials", f"{exc}")
    REDACTOR.add(credentials.values())
    options = SessionOptions(r.instructions, r.voice, r.transcribe_input)

    async def connect() -> tuple[float, str | None]:
        async with asyncio.timeout(r.connect_timeout_s + 25):
            secret = await credentials.fetch()
            REDACTOR.add([secret.value])
            started = time.monotonic()
            link = Link(
                url=session_url(r.url, None if credentials.ephemeral else r.model),
                headers=auth_headers(r.auth, secret.value),
                options=options,
                on_event=lambda _event: None,
                setup_timeout_s=r.connect_timeout_s,
            )
            try:
                await link.open()
            finally:
                await link.close()
            return time.monotonic() - started, link.session_id

    try:
        took, _session = asyncio.run(connect())
    except LinkError as exc:
        if exc.code in ("invalid_api_key", "unauthorized", "broker_unauthorized", "http_401"):
            hint = "the service refused the kiosk's key: provision a valid key or device token"
        elif exc.code == "model_not_found":
            hint = f"the service does not know realtime.model={r.model!r}"
        else:
            hint = f"the Realtime session failed: {exc}"
        return CheckResult(name, Status.FAIL, exc.code or "error", hint)
    except (OSError, TimeoutError) as exc:
        return CheckResult(
            name,
            Status.FAIL,
            type(exc).__name__,
            f"cannot reach {r.url}: check the network (ping, DNS, a proxy?) and the clock "
            f"(TLS needs it) ({exc or 'timeout'})",
        )
    except Exception as exc:  # the server's HTTP refusal, a TLS error...
        text = str(exc)
        hint = (
            "the service refused the kiosk's credentials"
            if "401" in text or "403" in text
            else f"the Realtime connection failed: {type(exc).__name__}: {text}"
        )
        return CheckResult(name, Status.FAIL, type(exc).__name__, hint)
    return CheckResult(
        name, Status.PASS, f"session ready in {took * 1000:.0f} ms", f"connected to {r.url}"
    )


Check = Callable[[Rig], CheckResult]
CHECKS: dict[str, Check] = {
    "mic": check_mic,
    "capture": check_capture,
    "speaker": check_speaker,
    "echo": check_echo,
    "button": check_button,
    "leds": check_leds,
    "broker": check_broker,
    "realtime": check_realtime,
}
"""Every check, in the order they run (the order an installer works through a kiosk)."""


def run_check(rig: Rig, name: str) -> CheckResult:
    """Run one check; an unexpected exception is a failure naming it, not a crash."""
    try:
        result = CHECKS[name](rig)
    except Exception as exc:
        log.debug("check %s raised", name, exc_info=True)
        result = CheckResult(
            name, Status.FAIL, type(exc).__name__, f"the check failed unexpectedly: {exc}"
        )
    # No secret may reach the table, even through an exception's text.
    return CheckResult(
        result.name, result.status, REDACTOR.scrub(result.value), REDACTOR.scrub(result.message)
    )


def run_checks(rig: Rig, names: Sequence[str] | None = None) -> list[CheckResult]:
    """Run ``names`` (default: every check) in :data:`CHECKS` order."""
    wanted = list(CHECKS) if not names else [n for n in CHECKS if n in names]
    return [run_check(rig, name) for name in wanted]


def render_table(results: Sequence[CheckResult]) -> str:
    """The pass/fail table printed on stdout."""
    width = max(18, *(len(r.value) for r in results)) if results else 18
    width = min(width, 44)
    lines = [f"{'check':9} {'result':6} {'measured':{width}} what it means"]
    for r in results:
        lines.append(f"{r.name:9} {r.status.upper():6} {r.value[:width]:{width}} {r.message}")
    failed = [r.name for r in results if r.failed]
    lines.append("")
    lines.append(f"selftest FAILED: {', '.join(failed)}" if failed else "selftest PASSED")
    return "\n".join(lines)


def show_result(rig: Rig, passed: bool, hold_s: float) -> None:
    """Show the overall result on the LEDs for ``hold_s`` (idle look: pass; error: fail)."""
    from .panel import Look, Panel

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


# --- the command ------------------------------------------------------------------------------

CREDSTORE = Path("/etc/credstore")
CREDSTORE_ENCRYPTED = Path("/etc/credstore.encrypted")


def load_settings(path: Path | None) -> Settings:
    """The kiosk's settings as the unit sees them, credentials included.

    Under the unit, systemd hands the secrets over in ``$CREDENTIALS_DIRECTORY``; an
    installer's shell has none, so the same store is read here (``/etc/credstore``, and
    ``/etc/credstore.encrypted`` through ``systemd-creds decrypt``, which needs root) into a
    private directory that is removed once the config is loaded.
    """
    import os
    import shutil
    import subprocess

    from .config import secret_keys

    if os.environ.get("CREDENTIALS_DIRECTORY"):
        return load_config(path)
    with tempfile.TemporaryDirectory(prefix="kioskvoice-creds-") as tmp:
        found = False
        for section, key in secret_keys():
            name = f"{section}.{key}"
            plain, sealed = CREDSTORE / name, CREDSTORE_ENCRYPTED / name
            value: bytes | None = None
            with contextlib.suppress(OSError):
                value = plain.read_bytes()
            if not (value or b"").strip() and sealed.exists() and shutil.which("systemd-creds"):
                done = subprocess.run(
                    ["systemd-creds", "decrypt", f"--name={name}", str(sealed), "-"],
                    capture_output=True,
                    timeout=15,
                    check=False,
                )
                value = done.stdout if done.returncode == 0 else None
            if value and value.strip():
                target = Path(tmp) / name
                target.touch(mode=0o600)
                target.write_bytes(value)
                found = True
        if not found:
            return load_config(path)
        os.environ["CREDENTIALS_DIRECTORY"] = tmp
        try:
            return load_config(path)
        finally:
            del os.environ["CREDENTIALS_DIRECTORY"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``selftest`` on an argparse subparsers object (handler: :func:`run`)."""
    p = subparsers.add_parser(
        "selftest",
        help="check the kiosk's hardware and link after mounting it (pass/fail table)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="TOML config file (default /etc/kioskvoice/kioskvoice.toml, optional)",
    )
    p.add_argument("--interactive", action="store_true", help="ask the tester on this terminal")
    p.add_argument(
        "--answers",
        type=Path,
        default=None,
        metavar="FILE",
        help="answers for a rig: TOML or JSON, check name -> answer (yes/no/skip)",
    )
    p.add_argument(
        "--check",
        action="append",
        choices=list(CHECKS),
        default=None,
        metavar="NAME",
        help=f"run only this check (repeatable): {', '.join(CHECKS)}",
    )
    p.add_argument(
        "--show-s",
        type=float,
        default=5.0,
        metavar="S",
        help="show the result on the LEDs this long before exiting (default 5)",
    )
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace, *, rig_factory: Callable[..., Rig] = Rig) -> int:
    """The ``selftest`` command; returns 0 when every required check passed, else 1."""
    from .system.logging import journal_available, setup_logging

    try:
        settings = load_settings(args.config)
        if args.answers is not None:
            prompter = Prompter.from_file(args.answers, interactive=args.interactive)
        else:
            prompter = Prompter(interactive=args.interactive)
    except ConfigError as exc:
        print(f"kioskvoice selftest: {exc}", file=sys.stderr)
        return EX_CONFIG
    target = settings.logging.target
    if target == "auto":
        # Run from a shell, not the unit: the summary still belongs in the journal, where
        # remote diagnosis looks for it; the table on stdout is the installer's copy.
        target = "journal" if journal_available() else "stderr"
    setup_logging(settings.logging.level, target=target)
    rig = rig_factory(settings, prompter=prompter)
    results = run_checks(rig, args.check)
    print(render_table(results), flush=True)
    failed = [r.name for r in results if r.failed]
    counts = {s: sum(r.status is s for r in results) for s in Status}
    log_event(
        log,
        logging.ERROR if failed else logging.INFO,
        "selftest",
        f"selftest {'failed: ' + ', '.join(failed) if failed else 'passed'} "
        f"({counts[Status.PASS]} pass, {counts[Status.FAIL]} fail, {counts[Status.SKIP]} skip)",
        result="fail" if failed else "pass",
        failed=",".join(failed) or None,
        checks=" ".join(f"{r.name}={r.status.value}" for r in results),
    )
    with contextlib.suppress(Exception):  # the LEDs are a courtesy; the table is the result
        show_result(rig, not failed, max(0.0, args.show_s))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kioskvoice.selftest ...`` and tests: the command without ``kioskvoice``."""
    parser = argparse.ArgumentParser(prog="kioskvoice")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["selftest", *(argv or [])])
    return run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
