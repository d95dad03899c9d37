"""The hardware suite's fixtures: a real kiosk by default, virtual hardware with
``KIOSKVOICE_HW=sim``.

Real (``make hw-test`` on the Pi): the config is ``$KIOSKVOICE_HW_CONFIG`` or
``/etc/kioskvoice/kioskvoice.toml``; the tester answers on the terminal (run pytest with
``-s``), or ``$KIOSKVOICE_HW_ANSWERS`` names an answers file for a rig. A test whose hardware
is missing (no config, no mic array, no speaker, no GPIO chip, no installed unit) is skipped
with a reason naming what is missing: off-device everything skips, nothing passes silently.

Virtual (``make hw-test-sim``): ``wav:`` devices, gpiozero's MockFactory with PWM pins, the
embedded Realtime simulator and a broker stand-in (see ``virtual.py``), answers from
``answers-sim.toml``. Every selftest check must run and pass: the session fails if one was
never executed.
"""

from __future__ import annotations

import functools
import glob
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from virtual import SIM

from kioskvoice.config import DEFAULT_CONFIG_PATH, Settings
from kioskvoice.errors import ConfigError
from kioskvoice.selftest import (
    CHECKS,
    CheckResult,
    Prompter,
    Rig,
    Status,
    load_settings,
    run_check,
)

HERE = Path(__file__).parent
SIM_ANSWERS = HERE / "answers-sim.toml"

EXECUTED: set[str] = set()
"""Selftest checks that ran to a pass or fail (not skipped) in this session."""


def pytest_report_header(config: pytest.Config) -> str:
    if SIM:
        return "kioskvoice hw-tests: VIRTUAL hardware (KIOSKVOICE_HW=sim)"
    return f"kioskvoice hw-tests: REAL hardware, config {_config_path()}"


def _config_path() -> Path:
    return Path(os.environ.get("KIOSKVOICE_HW_CONFIG") or DEFAULT_CONFIG_PATH)


# --- what hardware is here (real mode) --------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What was found on this machine; each ``*_missing`` is None or the skip reason."""

    settings: Settings | None
    config_missing: str | None
    mic_missing: str | None
    speaker_missing: str | None
    gpio_missing: str | None


def _capture_devices() -> tuple[list[str], list[str]]:
    from kioskvoice.audio.devices import list_devices, open_portaudio

    try:
        pa = open_portaudio()
    except Exception:  # no PortAudio at all
        return [], []
    try:
        devices = list_devices(pa)
    finally:
        pa.terminate()
    return (
        [d.name for d in devices if d.max_input_channels],
        [d.name for d in devices if d.max_output_channels],
    )


def _find(pa_names: list[str], wanted: str) -> bool:
    wanted = wanted.casefold()
    return any(wanted == n.casefold() or wanted in n.casefold() for n in pa_names)


@functools.cache
def probe() -> Probe:
    """Look once for the config, the mic array, the speaker and a GPIO chip."""
    path = _config_path()
    settings: Settings | None = None
    config_missing = None
    if not path.exists():
        config_missing = f"no kiosk config at {path} (not a provisioned kiosk)"
    else:
        try:
            settings = load_settings(path)
        except ConfigError as exc:
            config_missing = f"the kiosk config is invalid: {exc}"
    inputs, outputs = _capture_devices()
    if settings is None:
        found = ", ".join(inputs) or "none"
        mic_missing = f"no microphone array: {config_missing}; capture devices here: {found}"
        speaker_missing = f"no speaker: {config_missing}"
    else:
        a = settings.audio
        mic_missing = speaker_missing = None
        if a.input_device.startswith("wav:") or not _find(inputs, a.input_device):
            mic_missing = (
                f"no microphone array {a.input_device!r} "
                f"(capture devices here: {', '.join(inputs) or 'none'})"
            )
        if a.output_device.startswith("wav:") or not _find(outputs, a.output_device):
            speaker_missing = (
                f"no speaker {a.output_device!r} "
                f"(playback devices here: {', '.join(outputs) or 'none'})"
            )
    gpio_missing = None if glob.glob("/dev/gpiochip*") else "no GPIO chip (/dev/gpiochip*)"
    return Probe(settings, config_missing, mic_missing, speaker_missing, gpio_missing)


# --- the rig ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sim_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """Virtual hardware (only with ``KIOSKVOICE_HW=sim``)."""
    from virtual import (
        SimThread,
        chattering_press,
        led_probe,
        mock_factory,
        speech_wav,
        virtual_settings,
    )

    tmp = tmp_path_factory.mktemp("virtual-kiosk")
    factory = mock_factory()
    with SimThread() as sim:
        settings = virtual_settings(
            tmp,
            realtime_url=sim.realtime_url,
            token_url=sim.token_url,
            device_token=sim.device_token,
            mic=speech_wav(tmp / "mic.wav"),
        )
        prompter = Prompter.from_file(SIM_ANSWERS, actions={"button": chattering_press(factory)})
        yield Rig(
            settings,
            prompter=prompter,
            pin_factory=factory,
            led_probe=led_probe(factory),
            button_timeout_s=5.0,
            confirm_timeout_s=1.0,
        )
    factory.reset()


def _real_prompter() -> Prompter:
    answers = os.environ.get("KIOSKVOICE_HW_ANSWERS")
    if answers:
        return Prompter.from_file(Path(answers))
    tty = sys.__stdin__ is not None and sys.__stdin__.isatty()
    return Prompter(interactive=tty, stdin=sys.__stdin__, out=sys.__stderr__)


@pytest.fixture(scope="session")
def rig(request: pytest.FixtureRequest) -> Rig:
    """The kiosk under test; skipped when there is no config (real mode)."""
    if SIM:
        return request.getfixturevalue("sim_rig")
    found = probe()
    if found.settings is None:
        pytest.skip(found.config_missing or "no kiosk config")
    return Rig(found.settings, prompter=_real_prompter())


@pytest.fixture
def need_mic() -> None:
    if not SIM and probe().mic_missing:
        pytest.skip(probe().mic_missing)


@pytest.fixture
def need_speaker(need_mic: None) -> None:
    if not SIM and probe().speaker_missing:
        pytest.skip(probe().speaker_missing)


@pytest.fixture
def need_gpio() -> None:
    if not SIM and probe().gpio_missing:
        pytest.skip(probe().gpio_missing)


@pytest.fixture
def need_config() -> None:
    if not SIM and probe().config_missing:
        pytest.skip(probe().config_missing)


@pytest.fixture
def need_real(request: pytest.FixtureRequest) -> None:
    """For checks only real hardware can make (a USB bus, the installed unit)."""
    if SIM:
        pytest.skip(f"{request.node.name}: needs a real kiosk (virtual hardware has none)")


@pytest.fixture
def check(request: pytest.FixtureRequest) -> Callable[[str], CheckResult]:
    """Run a selftest check by name and hold it to its result: a failure fails the test, a
    skip (nobody to answer, nothing configured) skips it with the check's reason; on virtual
    hardware every check must pass.

    The rig is taken only when the check runs, so that a test's ``need_*`` fixtures skip
    first, with the reason naming the missing hardware."""

    def run(name: str) -> CheckResult:
        rig: Rig = request.getfixturevalue("rig")
        result = run_check(rig, name)
        print(f"{name}: {result.status.value} | {result.value} | {result.message}")
        if result.status is not Status.SKIP:
            EXECUTED.add(name)
        if SIM:
            assert result.status is Status.PASS, f"{name}: {result.value}: {result.message}"
        elif result.status is Status.SKIP:
            pytest.skip(f"{name}: {result.message}")
        else:
            assert result.status is Status.PASS, f"{name}: {result.value}: {result.message}"
        return result

    return run


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """On virtual hardware, a check that never ran fails the session (so none can rot)."""
    if not SIM or session.config.option.keyword or session.config.option.markexpr:
        return
    if session.config.option.collectonly:
        return
    missing = [name for name in CHECKS if name not in EXECUTED]
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = f"hw-test-sim: selftest checks never executed: {', '.join(missing)}"
        if reporter is not None:
            reporter.write_line(text, red=True, bold=True)
        else:
            print(text, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
