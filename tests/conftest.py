"""Shared fixtures. Tests use real parts: a real WebSocket simulator on loopback, real WAV
files, gpiozero's MockFactory; the environment is cleaned of KIOSKVOICE_* settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kioskvoice.sim import Simulator
from kioskvoice.sim.voice import synthesize
from kioskvoice.wavio import write_wav

TEST_KEY = "sk-test-0123456789abcdefSECRET"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("KIOSKVOICE_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def speech_pcm() -> bytes:
    """About 2.5 s of speech at 16 kHz mono PCM16."""
    return synthesize("Hello kiosk, when does the museum open today?", rate=16000)


@pytest.fixture
def speech_wav(tmp_path: Path, speech_pcm: bytes) -> Path:
    path = tmp_path / "speech.wav"
    write_wav(path, speech_pcm, 16000)
    return path


@pytest.fixture
async def sim():
    async with Simulator(api_key=TEST_KEY) as server:
        yield server
