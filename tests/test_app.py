"""The app in-process against the simulator: the GPIO button through gpiozero's MockFactory,
barge-in, taps, and the wire sequence each produces."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from conftest import TEST_KEY
from harness import BUTTON_PIN as PIN
from harness import Running, kiosk_settings
from kioskvoice.app import App
from kioskvoice.events import State
from kioskvoice.sim import Simulator
from realtime_schema import assert_client_event

pytestmark = pytest.mark.timeout(60)


def settings_for(sim: Simulator, speech_wav: Path, tmp_path: Path):
    return kiosk_settings(sim.url, speech_wav, tmp_path, api_key=TEST_KEY)


@pytest.fixture
def factory():
    factory = MockFactory()
    yield factory
    factory.reset()


def types(session) -> list[str]:
    return [e["type"] for e in session.received]


async def test_gpio_button_turn(sim, speech_wav, tmp_path, factory) -> None:
    async with Running(App(settings_for(sim, speech_wav, tmp_path), pin_factory=factory)) as k:
        pin = factory.pin(PIN)
        pin.drive_low()
        await k.wait(State.LISTENING, 2)
        await asyncio.sleep(1.0)
        pin.drive_high()
        await k.wait(State.THINKING, 2)
        await k.wait(State.SPEAKING)
        await k.wait(State.IDLE)
    session = sim.sessions[0]
    sent = types(session)
    commit = sent.index("input_audio_buffer.commit")
    assert sent[commit + 1] == "response.create"
    assert sent[1:commit] == ["input_audio_buffer.append"] * (commit - 1)
    assert 0.8 <= (commit - 1) * 0.02 <= 1.4
    for event in session.received:
        assert_client_event(event)


async def test_tap_sends_nothing(sim, speech_wav, tmp_path, factory) -> None:
    async with Running(App(settings_for(sim, speech_wav, tmp_path), pin_factory=factory)) as k:
        pin = factory.pin(PIN)
        pin.drive_low()
        await asyncio.sleep(0.1)
        pin.drive_high()
        await k.wait(State.IDLE, 2)
        await asyncio.sleep(0.2)
    sent = types(sim.sessions[0])
    assert "input_audio_buffer.commit" not in sent
    assert "response.create" not in sent


async def test_barge_in_cancels_truncates_and_listens(speech_wav, tmp_path, factory) -> None:
    # Deltas slower than real time, so the response is still running at the barge-in.
    async with Simulator(api_key=TEST_KEY, burst_ms=100, burst_interval_s=0.2) as sim:
        app = App(settings_for(sim, speech_wav, tmp_path), pin_factory=factory)
        async with Running(app) as k:
            pin = factory.pin(PIN)
            pin.drive_low()
            await asyncio.sleep(0.6)
            pin.drive_high()
            await k.wait(State.SPEAKING)
            await asyncio.sleep(0.3)
            pin.drive_low()  # barge-in
            await k.wait(State.LISTENING, 1)
            assert app._player.idle  # flushed at once, not drained
            session = sim.sessions[0]
            await sim.wait_for(lambda s: s.sessions[0].truncations, timeout=5)
            await asyncio.sleep(0.5)  # hold longer than a tap
            pin.drive_high()
            await k.wait(State.THINKING, 2)
        sent = types(session)
        barge = sent.index("response.cancel")
        assert sent[barge : barge + 3] == [
            "response.cancel",
            "conversation.item.truncate",
            "input_audio_buffer.clear",
        ]
        truncate = session.received[barge + 1]
        assert 0 < truncate["audio_end_ms"] <= 600
        [done] = [e for e in session.sent_of_type("response.done")][:1]
        assert done["response"]["status"] == "cancelled"
        for event in session.received:
            assert_client_event(event)
