"""Shared fixtures. Tests use real parts: a real WebSocket simulator on loopback, real WAV
files, gpiozero's MockFactory; the environment is cleaned of KIOSKVOICE_* settings."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from kioskvoice.sim import Simulator
from kioskvoice.sim.voice import synthesize
from kioskvoice.wavio import write_wav

TEST_KEY = "sk-test-0123456789abcdefSECRET"

# make test: a few hundred examples per property; make fuzz: many more. No deadline: this
# machine (and CI) may be busy, and a slow example is not a failure.
settings.register_profile(
    "default", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# --- no secret in any test's output --------------------------------------------------------

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSPHRASE|PASSWORD)")
_REGISTERED: set[str] = set()
LEAK_MASK = "<secret>"


def register_secret(value: str) -> str:
    """A secret a test makes up at run time (a minted ``ek_`` secret, a tool's header):
    from now on it must not appear in any test's captured output either. Returns ``value``."""
    if len(value) >= 8:
        _REGISTERED.add(value)
    return value


def _secrets_of(item: pytest.Item) -> set[str]:
    """The module's secret-looking constants (``*KEY*``, ``*TOKEN*``, ...: strings of at least
    eight characters) and every registered one."""
    found = {TEST_KEY, *_REGISTERED}
    module = getattr(item, "module", None)
    for name, value in vars(module).items() if module else ():
        if _SECRET_NAME.search(name) and isinstance(value, str) and len(value) >= 8:
            found.add(value)
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Fail a test whose captured output (stdout, stderr, logs) holds a secret it used, and
    mask secrets in every report, so that neither a leak nor a failing assertion's diff puts
    one into CI's log."""
    outcome = yield
    report = outcome.get_result()
    secrets = _secrets_of(item)
    # Sections accumulate over setup, call and teardown: judge each in its own phase.
    leaked = sorted(
        name
        for name, text in report.sections
        if name.endswith(f" {report.when}") and _mask(text, secrets) != text
    )
    report.sections = [(name, _mask(text, secrets)) for name, text in report.sections]
    longrepr = str(report.longrepr) if report.longrepr else ""
    if _mask(longrepr, secrets) != longrepr:
        report.longrepr = _mask(longrepr, secrets)
    if leaked and report.outcome != "skipped":
        report.outcome = "failed"
        report.longrepr = (
            f"{report.longrepr}\n" if report.longrepr else ""
        ) + f"a secret the test used appeared in: {', '.join(leaked)}"


def _mask(text: str, secrets: set[str]) -> str:
    """``text`` with each secret masked, whole or as pytest shortens it in a diff (its first
    or last eight characters and whatever joins them)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, LEAK_MASK)
        head, tail = re.escape(secret[:8]), re.escape(secret[-8:])
        text = re.sub(rf"{head}[^\s'\"]*|[^\s'\"]*{tail}", LEAK_MASK, text)
    return text


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("KIOSKVOICE_") or name in (
            "CREDENTIALS_DIRECTORY",
            "STATE_DIRECTORY",  # the daemon's memory (echo.json) must not leak between tests
        ):
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
