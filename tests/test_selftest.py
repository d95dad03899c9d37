"""``kioskvoice selftest`` on virtual hardware: ``wav:`` devices, gpiozero's MockFactory with
PWM pins, the simulator and a broker stand-in on the test's loop (the command runs in a
thread, as it runs its own event loops)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from kioskvoice import selftest
from kioskvoice.config import GpioSettings, Settings
from kioskvoice.selftest import CHECKS, Prompter, Rig, Status, run_check
from kioskvoice.sim.broker import BrokerStub
from kioskvoice.wavio import read_wav, write_wav

DEVICE_TOKEN = "kvd_selftest-device-token-SECRET-0123456789"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """selftest routes the root logger like the daemon does; put pytest's handlers back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _no_credstore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never the machine's own /etc/credstore."""
    monkeypatch.setattr(selftest.credstore, "CREDSTORE", tmp_path / "no-credstore")
    monkeypatch.setattr(
        selftest.credstore, "CREDSTORE_ENCRYPTED", tmp_path / "no-credstore.encrypted"
    )


@pytest.fixture
def mock_gpio(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setenv("GPIOZERO_MOCK_PIN_CLASS", "mockpwmpin")
    from gpiozero import Device

    yield
    if Device.pin_factory is not None:  # the command made gpiozero's default factory
        Device.pin_factory.reset()
        Device.pin_factory.close()
        Device.pin_factory = None


def _speech(path: Path) -> Path:
    with resources.as_file(resources.files("kioskvoice") / "data" / "error.wav") as src:
        frames, rate, _ = read_wav(src)
    write_wav(path, frames, rate)
    return path


def _config(tmp_path: Path, mic: Path, realtime_url: str, token_url: str) -> Path:
    path = tmp_path / "kioskvoice.toml"
    path.write_text(
        f"""
[realtime]
url = "{realtime_url}"
token_url = "{token_url}"
device_token = "{DEVICE_TOKEN}"
connect_timeout_s = 5

[audio]
input_device = "wav:{mic}"
output_device = "wav:{tmp_path / "out.wav"}"

[gpio]
button_pin = 17
status_led_pin = 27
ring_led_pin = 12

[control]
socket = "{tmp_path / "control.sock"}"

[logging]
target = "stderr"
""",
        encoding="utf-8",
    )
    return path


def _answers(tmp_path: Path) -> Path:
    path = tmp_path / "answers.toml"
    # No finger on the mock button here (hw-tests/ has one): the tester skips it.
    path.write_text('speaker = "yes"\nbutton = "skip"\nleds = "yes"\n', encoding="utf-8")
    return path


async def _selftest(*argv: str) -> int:
    return await asyncio.to_thread(selftest.main, [*argv, "--show-s", "0"])


async def test_selftest_on_virtual_hardware_passes_prints_table_and_logs(
    sim, tmp_path: Path, capsys: pytest.CaptureFixture[str], mock_gpio: None
) -> None:
    async with BrokerStub(sim, DEVICE_TOKEN) as broker:
        config = _config(tmp_path, _speech(tmp_path / "mic.wav"), sim.url, broker.url)
        code = await _selftest("--config", str(config), "--answers", str(_answers(tmp_path)))
    out, err = capsys.readouterr()
    print(out)  # the table, for -s
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["check", "result", "measured"]
    for name in CHECKS:
        row = next(line for line in lines if line.startswith(f"{name} "))
        expected = "SKIP" if name == "button" else "PASS"
        assert row.split()[1] == expected, row
    assert "ERLE" in out and "selftest PASSED" in out
    assert "event=selftest" in err and "result=pass" in err
    assert DEVICE_TOKEN not in out + err  # secrets never printed
    assert sim.sessions, "the realtime check opened a real session"
    assert broker.minted >= 1


async def test_selftest_silent_mic_fails_capture_for_the_installer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mock_gpio: None
) -> None:
    silent = tmp_path / "silent.wav"
    write_wav(silent, bytes(2 * 16000), 16000)
    config = _config(tmp_path, silent, "ws://127.0.0.1:9/v1/realtime", "http://127.0.0.1:9/")
    code = await _selftest("--config", str(config), "--check", "mic", "--check", "capture")
    out, err = capsys.readouterr()
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith("capture "))
    assert row.split()[1] == "FAIL"
    assert "microphone is silent" in row and "plugged in" in row and "muted" in row
    assert "selftest FAILED: capture" in out
    assert "event=selftest" in err and "result=fail" in err and "failed=capture" in err


async def test_selftest_config_error_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[audio]\nsample_rate = 11025\n", encoding="utf-8")
    assert await _selftest("--config", str(bad)) == 78
    assert "audio.sample_rate" in capsys.readouterr().err


def test_prompter_answers_file_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "a.toml"
    toml.write_text('speaker = "yes"\nleds = "no"\n"leds.idle" = "y"\n', encoding="utf-8")
    out = io.StringIO()
    p = Prompter.from_file(toml, out=out)
    assert p.attended
    assert p.confirm("speaker", "heard?") is True
    assert p.confirm("leds.idle", "idle?") is True  # the exact name wins
    assert p.confirm("leds.error", "error?") is False  # falls back to "leds"
    assert p.confirm("other", "?") is None  # unanswered: not a pass
    assert p.asked == ["speaker", "leds.idle", "leds.error", "other"]
    assert "answers file" in out.getvalue()

    js = tmp_path / "a.json"
    js.write_text(json.dumps({"speaker": "skip", "button": "skip", "leds": "maybe"}))
    p = Prompter.from_file(js, out=io.StringIO())
    assert p.confirm("speaker", "heard?") is None
    assert p.declined("button") and not p.declined("speaker2")
    assert p.confirm("leds.idle", "?") is False  # not understood counts as no

    with pytest.raises(ValueError, match="answers file"):
        Prompter.from_file(tmp_path / "absent.toml")


def test_prompter_on_a_terminal_and_unattended() -> None:
    p = Prompter(interactive=True, stdin=io.StringIO("Yes\n"), out=io.StringIO())
    assert p.confirm("speaker", "heard?", timeout_s=1) is True
    p = Prompter(out=io.StringIO())
    assert not p.attended and p.confirm("speaker", "heard?") is None


def _chatter(pin, hold_s: float = 0.3) -> None:
    time.sleep(0.1)
    for level in (0, 1, 0, 1, 0):
        (pin.drive_low if level == 0 else pin.drive_high)()
        time.sleep(0.003)
    time.sleep(hold_s)
    pin.drive_high()


@pytest.mark.parametrize(("debounce_ms", "status"), [(30, Status.PASS), (0, Status.FAIL)])
def test_button_check_sees_chatter_the_debounce_does_not_cover(
    debounce_ms: int, status: Status
) -> None:
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    factory = MockFactory(pin_class=MockPWMPin)
    try:
        settings = Settings.model_construct(
            **{
                **Settings().__dict__,
                "gpio": GpioSettings(button_pin=17, debounce_ms=debounce_ms),
            }
        )
        pin = factory.pin(17)
        prompter = Prompter(
            {"speaker": "yes"},
            actions={"button": lambda: _chatter(pin)},
            out=io.StringIO(),
        )
        rig = Rig(settings, prompter=prompter, pin_factory=factory, button_timeout_s=3)
        result = run_check(rig, "button")
    finally:
        factory.reset()
    assert result.status is status, result
    if status is Status.FAIL:
        assert "chatter" in result.message and "debounce_ms" in result.message


def test_failures_name_no_secret(tmp_path: Path) -> None:
    """A refused key fails the realtime check without showing it."""
    secret = "sk-selftest-SECRET-abcdef0123456789"
    settings = Settings.model_construct(
        **{
            **Settings().__dict__,
            "realtime": Settings().realtime.model_copy(
                update={"url": "ws://127.0.0.1:9/v1/realtime", "connect_timeout_s": 2}
            ),
        }
    )
    from pydantic import SecretStr

    settings = Settings.model_construct(
        **{
            **settings.__dict__,
            "realtime": settings.realtime.model_copy(update={"api_key": SecretStr(secret)}),
        }
    )
    result = run_check(Rig(settings, prompter=Prompter(out=io.StringIO())), "realtime")
    assert result.status is Status.FAIL
    assert "network" in result.message
    assert secret not in result.message + result.value


def test_threads_left_behind_are_daemons() -> None:
    """Prompter actions never keep the process alive after a timeout."""
    p = Prompter({"x": "y"}, actions={"x": lambda: time.sleep(0.2)}, out=io.StringIO())
    p.say("x", "go")
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("selftest-action"))
    p.join_actions(1.0)


def test_credentials_come_from_the_units_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installer's shell has no $CREDENTIALS_DIRECTORY: the unit's store is read."""
    store = tmp_path / "credstore"
    store.mkdir()
    (store / "realtime.api_key").write_text("sk-from-the-credstore-0123456789\n")
    monkeypatch.setattr(selftest.credstore, "CREDSTORE", store)
    monkeypatch.setattr(selftest.credstore, "CREDSTORE_ENCRYPTED", tmp_path / "absent")
    config = tmp_path / "k.toml"
    config.write_text("", encoding="utf-8")
    settings = selftest.load_settings(config)
    assert settings.realtime.api_key is not None
    assert settings.realtime.api_key.get_secret_value() == "sk-from-the-credstore-0123456789"
    import os

    assert "CREDENTIALS_DIRECTORY" not in os.environ


@pytest.fixture(scope="module")
def journal() -> Iterator[None]:
    import journald

    reason = journald.acquire()
    if reason:
        pytest.skip(reason)
    yield
    journald.release()


async def test_selftest_summary_lands_in_the_journal(
    tmp_path: Path, journal: None, mock_gpio: None
) -> None:
    """Run from a shell (logging.target auto, no $JOURNAL_STREAM) the summary still goes to
    journald, as one KIOSKVOICE_EVENT=selftest record."""
    import journald

    config = _config(
        tmp_path, _speech(tmp_path / "mic.wav"), "ws://127.0.0.1:9/x", "http://127.0.0.1:9/"
    )
    config.write_text(config.read_text().replace('target = "stderr"', 'target = "auto"'))
    since = journald.now_us()
    assert await _selftest("--config", str(config), "--check", "mic") == 0
    entries = journald.wait_for_entries("KIOSKVOICE_EVENT=selftest", since_us=since)
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["KIOSKVOICE_RESULT"] == "pass" and entry["KIOSKVOICE_CHECKS"] == "mic=pass"
    assert entry["SYSLOG_IDENTIFIER"] == "kioskvoice" and entry["PRIORITY"] == "6"
