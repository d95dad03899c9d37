"""A visitor at a running kiosk: ``kioskvoice run`` as a subprocess against the simulator,
with ``wav:`` devices, driven through its control socket as the button would be.

What the visitor *hears* is read from the output device's WAV file as it grows (the ``wav:``
output is paced in real time, so when a sound appears there is when it was played); what they
*see* is the look the panel shows, sampled every 50 ms from ``ctl status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conftest import TEST_KEY
from kioskvoice.audio.earcons import Earcons
from kioskvoice.config import InteractionSettings
from kioskvoice.sim.voice import synthesize
from kioskvoice.wavio import write_wav

WAV_HEADER = 44
OUT_RATE = 24000


def earcon(name: str) -> bytes:
    """A default local sound exactly as the player writes it (24 kHz PCM16)."""
    sounds = Earcons(InteractionSettings())
    sounds.load()
    pcm = sounds.get(name)
    assert pcm is not None
    return pcm


def speech_input(path: Path, seconds: float, *, gain: float = 1.0, then_silence_s: float = 0.0):
    """A 16 kHz mono WAV of continuous speech (optionally amplified and clipped) followed by
    silence; the kiosk's ``wav:`` input loops it."""
    one = np.frombuffer(
        synthesize("Hello kiosk when does the museum open today and where is the cafe", 16000),
        np.int16,
    )
    voiced = np.nonzero(np.abs(one) > 200)[0]
    one = one[voiced[0] : voiced[-1]]  # no leading or trailing silence: one long utterance
    reps = int(np.ceil(seconds * 16000 / len(one)))
    speech = np.tile(one, reps)[: int(seconds * 16000)].astype(np.float32) * gain
    pcm = np.clip(speech, -32768, 32767).astype(np.int16)
    pcm = np.concatenate([pcm, np.zeros(int(then_silence_s * 16000), np.int16)])
    write_wav(path, pcm.tobytes(), 16000)
    return path


def silent_input(path: Path, *, dc: int = 0) -> Path:
    """Three seconds of a dead (``dc=0``) or stuck (constant ``dc``) microphone."""
    write_wav(path, np.full(48000, dc, np.int16).tobytes(), 16000)
    return path


@dataclass
class Kiosk:
    """One running daemon and what a visitor perceives of it."""

    proc: asyncio.subprocess.Process
    socket: Path
    out: Path
    looks: list[tuple[float, str, str]] = field(default_factory=list)
    """(monotonic time, state, look), one entry per change."""
    started_at: float = 0.0
    """When the control socket appeared (monotonic): the wav: input starts then, so a test
    can press during a known stretch of a looped input."""
    _watcher: asyncio.Task[None] | None = None

    async def ctl(self, cmd: str) -> dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(str(self.socket))
        try:
            writer.write(json.dumps({"cmd": cmd}).encode() + b"\n")
            async with asyncio.timeout(5):
                reply = json.loads(await reader.readline())
        finally:
            writer.close()
        assert reply["ok"], reply
        return reply

    async def hold(self, seconds: float) -> dict[str, Any]:
        """Press, hold for ``seconds``, release; the status after the release."""
        await self.ctl("press")
        await asyncio.sleep(seconds)
        return await self.ctl("release")

    async def until(self, timeout_s: float = 20, **wanted: Any) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    status = await self.ctl("status")
                except ConnectionRefusedError:
                    # The socket file appears a moment before the daemon listens on it.
                    await asyncio.sleep(0.05)
                    continue
                if all(status.get(k) == v for k, v in wanted.items()):
                    return status
                await asyncio.sleep(0.05)

    async def _watch(self) -> None:
        last = None
        while True:
            with contextlib.suppress(OSError, ValueError, AssertionError, TimeoutError):
                status = await self.ctl("status")
                now = (status["state"], status["look"])
                if now != last:
                    self.looks.append((time.monotonic(), *now))
                    last = now
            await asyncio.sleep(0.05)

    def saw(self, look: str, since: float = 0.0) -> bool:
        return any(t >= since and shown == look for t, _, shown in self.looks)

    # --- what was heard -----------------------------------------------------------------------

    def played(self) -> bytes:
        data = self.out.read_bytes()[WAV_HEADER:] if self.out.exists() else b""
        return data[: len(data) - len(data) % 2]

    def heard(self, pcm: bytes) -> bool:
        """``pcm`` (24 kHz PCM16) was played, sample for sample."""
        return _find(self.played(), pcm) >= 0

    async def hears(self, pcm: bytes, timeout_s: float) -> float:
        """Wait until ``pcm`` has been played in full; the monotonic time it was."""
        async with asyncio.timeout(timeout_s):
            while not self.heard(pcm):
                await asyncio.sleep(0.05)
        return time.monotonic()

    def log(self) -> str:
        return self._stderr

    _stderr: str = ""

    async def stop(self) -> str:
        """SIGTERM, wait, and return everything the daemon logged."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            out, err = await self.proc.communicate()
        self._stderr = out.decode() + err.decode()
        assert TEST_KEY not in self._stderr
        return self._stderr


def _find(haystack: bytes, needle: bytes) -> int:
    """Sample-aligned search of PCM16 ``needle`` in ``haystack``."""
    start = haystack.find(needle)
    while start >= 0 and start % 2:
        start = haystack.find(needle, start + 1)
    return start


async def start(
    sim, tmp_path: Path, input_wav: Path, *, state_dir: Path | None = None, **sections: Any
) -> Kiosk:
    """``kioskvoice run`` on ``sim`` with a config file: the devices and socket below plus
    ``sections`` (``audio={"max_turn_s": 4}``, ``tools=[{...}]``); ready and watched.
    ``state_dir``: the service's state directory (``$STATE_DIRECTORY``; None: none)."""
    sock = tmp_path / "control.sock"
    out = tmp_path / "out.wav"
    config: dict[str, Any] = {
        "realtime": {"url": sim.url, "api_key": TEST_KEY},
        "audio": {"input_device": f"wav:{input_wav}", "output_device": f"wav:{out}"},
        "control": {"socket": str(sock)},
    }
    for name, values in sections.items():
        config[name] = values if isinstance(values, list) else {**config.get(name, {}), **values}
    toml = tmp_path / "kiosk.toml"
    toml.write_text(_toml(config))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKVOICE_")}
    environ["GPIOZERO_PIN_FACTORY"] = "mock"
    environ.pop("STATE_DIRECTORY", None)
    if state_dir is not None:
        environ["STATE_DIRECTORY"] = str(state_dir)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kioskvoice", "run", "--config", str(toml),
        env=environ, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    kiosk = Kiosk(proc, sock, out)
    async with asyncio.timeout(20):
        while not sock.exists():
            if proc.returncode is not None:
                raise AssertionError((await proc.communicate())[1].decode())
            await asyncio.sleep(0.02)
    kiosk.started_at = time.monotonic()
    await kiosk.until(state="idle", link="connected")
    kiosk._watcher = asyncio.create_task(kiosk._watch())
    return kiosk


def _toml(config: dict[str, Any]) -> str:
    lines = []
    for name, values in config.items():
        for table in values if isinstance(values, list) else [values]:
            lines.append(f"[[{name}]]" if isinstance(values, list) else f"[{name}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"
