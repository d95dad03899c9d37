"""The daemon end to end: `kioskvoice run` as a subprocess, configured by environment, driven
by `kioskvoice ctl`, against the embedded simulator on loopback, with wav: devices."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import wave
from pathlib import Path

import pytest

from conftest import TEST_KEY
from realtime_schema import assert_client_event

pytestmark = pytest.mark.timeout(90)


async def cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kioskvoice",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def status(env: dict[str, str]) -> dict:
    code, out, err = await cli("ctl", "status", env=env)
    assert code == 0, err
    return json.loads(out)


async def wait_status(env: dict[str, str], timeout_s: float, **wanted: str) -> dict:
    async with asyncio.timeout(timeout_s):
        while True:
            if Path(env["KIOSKVOICE_CONTROL__SOCKET"]).exists():
                current = await status(env)
                if all(current.get(k) == v for k, v in wanted.items()):
                    return current
            await asyncio.sleep(0.1)


async def start_daemon(env: dict[str, str], tmp_path: Path) -> asyncio.subprocess.Process:
    """`kioskvoice run` with an empty config file: everything comes from ``env``."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kioskvoice", "run", "--config", str(empty),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.fixture
def daemon_env(sim, speech_wav: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "GPIOZERO_PIN_FACTORY": "mock",
        "KIOSKVOICE_REALTIME__URL": sim.url,
        "KIOSKVOICE_REALTIME__API_KEY": TEST_KEY,
        "KIOSKVOICE_AUDIO__INPUT_DEVICE": f"wav:{speech_wav}",
        "KIOSKVOICE_AUDIO__OUTPUT_DEVICE": f"wav:{tmp_path / 'out.wav'}",
        "KIOSKVOICE_AUDIO__INPUT_CHANNELS": "1",
        "KIOSKVOICE_CONTROL__SOCKET": str(tmp_path / "control.sock"),
    }


async def test_push_to_talk_turn_through_the_daemon(sim, daemon_env, tmp_path: Path) -> None:
    proc = await start_daemon(daemon_env, tmp_path)
    try:
        current = await wait_status(daemon_env, 20, state="idle", link="connected")
        assert current["reconnects"] == 0
        assert oct(os.stat(daemon_env["KIOSKVOICE_CONTROL__SOCKET"]).st_mode & 0o777) == "0o660"

        code, out, _ = await cli("ctl", "press", env=daemon_env)
        assert code == 0 and json.loads(out)["state"] == "listening"
        await asyncio.sleep(2.0)
        code, out, _ = await cli("ctl", "release", env=daemon_env)
        assert code == 0 and json.loads(out)["state"] == "thinking"

        session = sim.sessions[0]
        await sim.wait_for(lambda s: s.sessions[0].sent_of_type("response.done"), timeout=15)
        await wait_status(daemon_env, 15, state="idle")

        # The wire: session.update first, ~2 s of appends, commit, response.create, nothing after.
        types = [e["type"] for e in session.received]
        assert types[0] == "session.update"
        commit = types.index("input_audio_buffer.commit")
        assert types[commit + 1] == "response.create"
        assert "input_audio_buffer.append" not in types[commit:]
        appended = b"".join(
            base64.b64decode(e["audio"])
            for e in session.received
            if e["type"] == "input_audio_buffer.append"
        )
        seconds = len(appended) / 48000
        # 2 s held, plus 0.3 s of pre-roll, plus however long the second `ctl` process
        # took to start on a loaded machine.
        assert 1.9 <= seconds <= 3.5, seconds
        for event in session.received:
            assert_client_event(event)

        # The reply was played into out.wav (a valid WAV even before the daemon stops).
        with wave.open(str(tmp_path / "out.wav")) as wav:
            assert wav.getframerate() == 24000
            played_s = wav.getnframes() / 24000
        reply_bytes = sum(
            len(base64.b64decode(e["delta"]))
            for e in session.sent
            if e["type"] == "response.output_audio.delta"
        )
        assert played_s >= 0.9 * reply_bytes / 48000 > 0.5

        started = asyncio.get_running_loop().time()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            stdout, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()
        assert asyncio.get_running_loop().time() - started < 5
        output = stdout.decode() + stderr.decode()
        assert TEST_KEY not in output
        assert "turn_start" in output and "turn_end" in output and "reply_start" in output
        assert not Path(daemon_env["KIOSKVOICE_CONTROL__SOCKET"]).exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_ctl_without_daemon_is_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "KIOSKVOICE_CONTROL__SOCKET": str(tmp_path / "none.sock")}
    code, _, err = await cli("ctl", "status", env=env)
    assert code == 69
    assert (
        err.strip()
        == f"kioskvoice: no daemon: control socket {tmp_path / 'none.sock'} does not exist"
    )


async def test_wrong_key_is_an_error_state_without_leaking_it(sim, daemon_env, tmp_path) -> None:
    wrong = "sk-wrong-key-ABCDEFGHIJKLMNOP"
    env = {**daemon_env, "KIOSKVOICE_REALTIME__API_KEY": wrong}
    proc = await start_daemon(env, tmp_path)
    try:
        current = await wait_status(env, 20, state="error")
        # The service upgrades, then says invalid_api_key and closes 3000.
        assert current["link"] == "down" and current["last_error"] == "invalid_api_key"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            stdout, stderr = await proc.communicate()
        assert proc.returncode == 0
        output = stdout.decode() + stderr.decode()
        assert wrong not in output
        assert "Incorrect API key" not in output  # the service's text quotes part of the key
        assert "invalid_api_key" in stderr.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
