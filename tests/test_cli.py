"""The command line: simulate, devices, usage errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import websockets

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_simulate_serves_a_ga_session_until_sigterm() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kioskvoice", "simulate", "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(20):
            line = await proc.stdout.readline()
        assert f"ws://127.0.0.1:{port}/v1/realtime" in line.decode()
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime",
            additional_headers={"Authorization": "Bearer anything"},
        ) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert first["type"] == "session.created"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            await proc.wait()
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def run(*args: str, env: dict | None = None):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "kioskvoice", *args],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip


def test_devices_lists_alsa_pcms(tmp_path: Path) -> None:
    (tmp_path / "in.raw").write_bytes(bytes(3200))
    (tmp_path / ".asoundrc").write_text(
        f'pcm.kioskmic {{ type file slave.pcm "null" file "{tmp_path}/out.raw" '
        f'infile "{tmp_path}/in.raw" format "raw" }}\n'
    )
    result = run("devices", env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "kioskmic" in result.stdout
    assert result.stderr == ""  # ALSA's probe noise is kept off stderr


def test_devices_without_any(tmp_path: Path) -> None:
    result = run("devices", env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 69
    assert "no audio devices found" in result.stdout


def test_usage_error() -> None:
    result = run("ctl", "explode")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


# Modules a light command must never load: the daemon, the audio and DSP stack, the broker,
# the simulator and their native or network libraries.
HEAVY = (
    "kioskvoice.app", "kioskvoice.dsp", "kioskvoice.audio", "kioskvoice.broker",
    "kioskvoice.sim", "kioskvoice.realtime", "numpy", "soxr", "pyaudio", "gpiozero",
    "websockets", "httpx", "starlette", "uvicorn",
)  # fmt: skip
PROBE = """
import json, sys
from kioskvoice.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def loaded_by(*argv: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``kioskvoice ARGV``."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60, env=env
    )
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_light_commands_import_only_what_they_run(tmp_path) -> None:
    config = tmp_path / "kiosk.toml"
    config.write_text(f'[control]\nsocket = "{tmp_path / "none.sock"}"\n')
    ctl = loaded_by("ctl", "--config", str(config), "status")
    assert heavy(ctl) == []
    assert not any(m.startswith(("pydantic", "kioskvoice.config")) for m in ctl), sorted(ctl)
    diag = loaded_by("diag", "--config", str(config), "--since", "-1s", "--json")
    assert heavy(diag) == []
    assert not any(m.startswith(("pydantic", "kioskvoice.config")) for m in diag)
    assert heavy(loaded_by("check-config", "--config", str(config))) == []
    # The probe can fail: the full parser does load them.
    assert "kioskvoice.broker" in loaded_by("--help")


def test_ctl_finds_the_socket_as_the_daemon_would(tmp_path) -> None:
    config = tmp_path / "kiosk.toml"
    config.write_text(f'[control]\nsocket = "{tmp_path / "from-file.sock"}"\n')
    result = run("ctl", "--config", str(config), "status")
    assert result.returncode == 69 and "from-file.sock does not exist" in result.stderr
    env = {**os.environ, "KIOSKVOICE_CONTROL__SOCKET": str(tmp_path / "from-env.sock")}
    result = run("ctl", "--config", str(config), "status", env=env)
    assert "from-env.sock does not exist" in result.stderr
    result = run("ctl", "--config", str(tmp_path / "missing.toml"), "status")
    assert result.returncode == 69 and "missing.toml does not exist" in result.stderr
