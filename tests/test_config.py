"""Config loading: layered sources, validation errors as one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kioskvoice.config import load_config, render_toml
from kioskvoice.errors import ConfigError

SECRET = "sk-config-test-9876543210SECRET"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kioskvoice.toml"
    path.write_text(text)
    return path


def test_defaults_from_empty_file(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, ""))
    assert settings.audio.frame_ms == 20
    assert settings.realtime.url.startswith("wss://")
    assert settings.realtime.api_key is None


def test_missing_default_file_means_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr("kioskvoice.config.loading.DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert load_config().audio.sample_rate == 16000


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read"):
        load_config(tmp_path / "absent.toml")


def test_precedence_file_credentials_env(tmp_path: Path, monkeypatch) -> None:
    config = write(tmp_path, '[realtime]\nmodel = "from-file"\napi_key = "file-key"\n')
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "realtime.api_key").write_text("cred-key\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_config(config)
    assert settings.realtime.model == "from-file"
    assert settings.realtime.api_key.get_secret_value() == "cred-key"
    monkeypatch.setenv("KIOSKVOICE_REALTIME__API_KEY", "env-key")
    monkeypatch.setenv("KIOSKVOICE_AUDIO__INPUT_CHANNELS", "6")
    settings = load_config(config)
    assert settings.realtime.api_key.get_secret_value() == "env-key"
    assert settings.audio.input_channels == 6


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[audio]\nframe_ms = 15\n", "audio.frame_ms: Input should be 10 or 20"),
        ("[audio]\nbogus = 1\n", "audio.bogus: unknown key"),
        ("[nosuchsection]\nx = 1\n", "nosuchsection: unknown key"),
        ('[realtime]\nurl = "https://x"\n', "realtime.url: must start with wss://"),
        ('[realtime]\nvoice = "robot"\n', "realtime.voice: Input should be"),
        ("[audio]\ninput_channels = 2\nchannel = 3\n", "audio: channel=3 needs input_channels"),
        ("[gpio]\nbutton_pin = 40\n", "gpio.button_pin: Input should be less than or equal to 27"),
        ("[audio\n", "invalid TOML"),
        (
            "[logging]\ntranscripts = 'maybe'\n",
            "logging.transcripts: Input should be a valid boolean",
        ),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_invalid_env_value_names_the_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KIOSKVOICE_AUDIO__FRAME_MS", "30")
    with pytest.raises(
        ConfigError, match=r"audio\.frame_ms: .*\[from \$KIOSKVOICE_AUDIO__FRAME_MS\]"
    ):
        load_config(write(tmp_path, ""))


def test_unknown_env_names_are_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KIOSKVOICE_AUDIO__INPTU_DEVICE", "x")
    with pytest.raises(ConfigError, match=r"audio\.inptu_device: unknown key"):
        load_config(write(tmp_path, ""))
    monkeypatch.delenv("KIOSKVOICE_AUDIO__INPTU_DEVICE")
    monkeypatch.setenv("KIOSKVOICE_AUDIOFRAME_MS", "20")
    with pytest.raises(ConfigError, match=r"\$KIOSKVOICE_AUDIOFRAME_MS: unknown setting"):
        load_config(write(tmp_path, ""))


def test_secret_never_in_errors_or_rendering(tmp_path: Path, monkeypatch) -> None:
    # A secret of the wrong type is reported without its value.
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f'[realtime]\napi_key = ["{SECRET}"]\n'))
    assert "realtime.api_key" in str(info.value)
    assert SECRET not in str(info.value)
    monkeypatch.setenv("KIOSKVOICE_REALTIME__API_KEY", SECRET)
    settings = load_config(write(tmp_path, ""))
    assert SECRET not in render_toml(settings)
    assert SECRET not in repr(settings)
    assert 'api_key = "**********"' in render_toml(settings)


def test_rendered_config_loads_back(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, '[audio]\ninput_device = "ReSpeaker"\nframe_ms = 10\n'))
    rendered = render_toml(settings)
    again = load_config(write(tmp_path, rendered))
    assert again == settings


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kioskvoice", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_check_config_cli(tmp_path: Path) -> None:
    good = write(tmp_path, f'[realtime]\napi_key = "{SECRET}"\n')
    result = run_cli("check-config", "--config", str(good))
    assert result.returncode == 0, result.stderr
    assert "[realtime]" in result.stdout
    assert SECRET not in result.stdout + result.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text("[audio]\nframe_ms = 15\n")
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "audio.frame_ms" in lines[0]
    assert "Traceback" not in result.stderr


def test_run_with_config_error_exits_78(tmp_path: Path) -> None:
    bad = write(tmp_path, "[audio]\nframe_ms = 15\n")
    result = run_cli("run", "--config", str(bad))
    assert result.returncode == 78
    assert "audio.frame_ms" in result.stderr and "Traceback" not in result.stderr


def test_run_without_api_key_exits_78(tmp_path: Path) -> None:
    result = run_cli("run", "--config", str(write(tmp_path, "")))
    assert result.returncode == 78
    assert "realtime.api_key: required" in result.stderr


@pytest.mark.parametrize(
    ("text", "first", "second"),
    [
        ("[audio]\nmax_turn_s = 1\n[interaction]\nmin_turn_ms = 1500", "min_turn_ms", "max_turn_s"),
        (
            "[audio]\nmax_turn_s = 60\n[interaction]\nidle_reset_s = 30",
            "idle_reset_s",
            "max_turn_s",
        ),
        (
            "[audio]\nmax_turn_s = 5\n[interaction]\nidle_reset_s = 6\nreply_timeout_s = 7",
            "reply_timeout_s",
            "idle_reset_s",
        ),
        (
            "[audio]\nmax_turn_s = 5\n[interaction]\nidle_reset_s = 6\nthinking_cue_s = 6\n"
            "reply_timeout_s = 3",
            "thinking_cue_s",
            "idle_reset_s",
        ),
    ],
)
def test_contradicting_timings_exit_78_naming_both_keys(tmp_path, text, first, second) -> None:
    secret = "sk-proj-0123456789abcdefghijSECRET"
    path = write(tmp_path, f'[realtime]\napi_key = "{secret}"\n{text}\n')
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and first in lines[0] and second in lines[0], result.stderr
    assert secret not in result.stdout + result.stderr


def test_a_section_wide_check_never_echoes_the_section(tmp_path) -> None:
    secret = "sk-proj-0123456789abcdefghijSECRET"
    text = f'[realtime]\napi_key = "{secret}"\nsession_max_s = 60\nrollover_margin_s = 120\n'
    result = run_cli("check-config", "--config", str(write(tmp_path, text)))
    assert result.returncode == 78 and "rollover_margin_s" in result.stderr
    assert secret not in result.stdout + result.stderr


def test_the_removed_long_press_is_accepted_and_ignored(tmp_path) -> None:
    path = write(tmp_path, "[interaction]\nlong_press_s = 5\n")
    assert load_config(path).interaction.long_press_s == 5


def test_a_config_that_is_not_utf8_is_one_line_and_78(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[realtime]\nmodel = "caf\xe9"\n' + bytes(range(128, 256)))
    result = run_cli("check-config", "--config", str(bad))
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        f"kioskvoice: config error: {bad}: not UTF-8 text (byte 23); save it as UTF-8"
    ]


def test_a_deeply_nested_config_is_one_line_and_78(tmp_path) -> None:
    deep = write(tmp_path, "x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    result = run_cli("check-config", "--config", str(deep))
    assert result.returncode == 78 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("wss://api.openai.com/v1/realtime", True),
        ("ws://127.0.0.1:8765/v1/realtime", True),
        ("ws://localhost:8765/v1/realtime", True),
        ("ws://[::1]:8765/v1/realtime", True),
        ("ws://api.openai.com/v1/realtime", False),  # the key would travel in the clear
        ("ws://127.0.0.1.example.org/v1/realtime", False),
        ("https://api.openai.com/v1/realtime", False),
    ],
)
def test_realtime_url_is_encrypted_unless_loopback(tmp_path, url: str, ok: bool) -> None:
    path = write(tmp_path, f'[realtime]\nurl = "{url}"\n')
    if ok:
        assert load_config(path).realtime.url == url
    else:
        with pytest.raises(ConfigError, match=r"realtime.url: must start with wss://"):
            load_config(path)
