"""The link never strands a visitor: reconnects, rollover before the cap, short-lived secrets
from a token broker, keepalive, fatal errors, turns recorded during an outage. Each test runs
the whole kiosk in-process against the simulator's fault injection on loopback."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from gpiozero.pins.mock import MockFactory

from conftest import TEST_KEY, register_secret
from harness import BUTTON_PIN, Running, kiosk_settings
from kioskvoice.app import App
from kioskvoice.events import LinkState, State
from kioskvoice.sim import Faults, Simulator
from kioskvoice.sim.broker import BrokerStub
from kioskvoice.system.logging import REDACTOR
from realtime_schema import assert_client_event

pytestmark = pytest.mark.timeout(90)
DEVICE_TOKEN = "dev-token-kiosk-42-SECRETVALUE"


@pytest.fixture
def button():
    factory = MockFactory()
    yield factory, factory.pin(BUTTON_PIN)
    factory.reset()


def answered(sim: Simulator) -> int:
    return sum(
        1
        for session in sim.sessions
        for event in session.sent_of_type("response.done")
        if event["response"]["status"] == "completed"
    )


async def test_reconnects_within_1_5_s_after_a_tcp_drop(speech_wav, tmp_path, button) -> None:
    factory, pin = button
    async with Simulator(api_key=TEST_KEY, faults=Faults(drop_after_response=True)) as sim:
        app = App(
            kiosk_settings(sim.url, speech_wav, tmp_path, api_key=TEST_KEY), pin_factory=factory
        )
        async with Running(app) as k:
            await k.turn(pin)
            await sim.wait_for(lambda s: s.sessions[0].closed, timeout=5)
            dropped_at = time.monotonic()
            sim.faults.drop_after_response = False
            await k.until(
                lambda: app.status()["reconnects"] == 1 and app.status()["link"] == "connected"
            )
            assert time.monotonic() - dropped_at < 1.5
            await k.turn(pin)
    assert answered(sim) == 2
    assert sim.sessions[1].sent_of_type("response.done")


async def test_rollover_beats_the_session_cap(speech_wav, tmp_path, button) -> None:
    factory, pin = button
    async with Simulator(api_key=TEST_KEY, faults=Faults(session_cap_s=8)) as sim:
        settings = kiosk_settings(
            sim.url, speech_wav, tmp_path, api_key=TEST_KEY, session_max_s=8, rollover_margin_s=3
        )
        app = App(settings, pin_factory=factory)
        async with Running(app) as k:
            started = time.monotonic()
            turns = 0
            while time.monotonic() - started < 20:
                await k.turn(pin, hold_s=0.6)
                turns += 1
                await asyncio.sleep(0.5)
            status = app.status()
        assert sim.capped == 0, f"a session reached the server's cap: {status}"
        assert status["rollovers"] >= 2 and status["failed_rollovers"] == 0, status
        assert status["reconnects"] == 0, status
        # Each k.turn() saw its reply played. The server may count one more answer when a
        # swap forced mid-reply resent a turn the old session then finished too.
        assert turns >= 4 and answered(sim) >= turns, (turns, answered(sim), status)
        # The earlier turns were replayed into later sessions as text items.
        later = sim.sessions[-1]
        replayed = [
            item
            for item in later.items
            if item.get("type") == "message"
            and item["content"][0]["type"] in ("input_text", "output_text")
        ]
        assert any(i["role"] == "user" for i in replayed)
        assert any(
            i["role"] == "assistant" and "You spoke for" in i["content"][0]["text"]
            for i in replayed
        )
        for session in sim.sessions:
            for event in session.received:
                assert_client_event(event)


async def test_token_broker_secrets(speech_wav, tmp_path, button, caplog) -> None:
    factory, pin = button
    # The kiosk's own records at debug; websockets' debug lines print the Authorization
    # header, which only the daemon's redacting handlers (not pytest's capture) would mask.
    caplog.set_level(logging.DEBUG, logger="kioskvoice")
    # The simulator accepts only secrets its broker minted (its own key is never used).
    sim = Simulator(api_key="sk-not-on-the-kiosk-0000000000")
    broker = BrokerStub(sim, DEVICE_TOKEN, ttl_s=6, fail_with=[503])
    minted: list[str] = []
    mint = sim.mint_secret

    def recording_mint(ttl_s: float) -> dict:
        secret = mint(ttl_s)
        minted.append(register_secret(secret["value"]))  # no test output may show it
        return secret

    sim.mint_secret = recording_mint  # type: ignore[method-assign]
    async with sim, broker:
        settings = kiosk_settings(
            sim.url,
            speech_wav,
            tmp_path,
            api_key=None,
            token_url=broker.url,
            device_token=DEVICE_TOKEN,
        )
        app = App(settings, pin_factory=factory)
        async with Running(app) as k:
            await k.turn(pin)
            # Reconnect three times, past the 6 s lifetime of the first secret.
            for n in (2, 3, 4):
                await asyncio.sleep(2.5)
                sim.drop_all()
                await k.until(
                    lambda n=n: len(sim.sessions) == n and app.status()["link"] == "connected"
                )
            await k.turn(pin)
        # The first request got the 503 and was retried; then one fresh secret per connection.
        assert all(r.authorized for r in broker.requests)
        assert len(broker.requests) == 5
        assert broker.minted == len(sim.sessions) == 4
        assert all(s.secret_ttl_s is not None and 0 < s.secret_ttl_s <= 6 for s in sim.sessions)
        assert len({s.auth_fingerprint for s in sim.sessions}) == 4
        body = broker.requests[-1].body
        assert body["session"]["model"] == "gpt-realtime"
        assert body["session"]["type"] == "realtime"
    assert DEVICE_TOKEN not in caplog.text
    for session in sim.sessions:
        assert DEVICE_TOKEN not in str(session.headers)
    # Every short-lived secret the kiosk received is masked in its logs (issue 17).
    assert len(minted) == 4 and all(value.startswith("ek_") for value in minted)
    assert all(REDACTOR.scrub(f"key={value}") == "key=****" for value in minted)


async def test_unanswered_pings_replace_the_link(speech_wav, tmp_path, button) -> None:
    factory, _ = button
    async with Simulator(api_key=TEST_KEY) as sim:
        settings = kiosk_settings(
            sim.url, speech_wav, tmp_path, api_key=TEST_KEY, ping_interval_s=1, ping_timeout_s=1
        )
        app = App(settings, pin_factory=factory)
        async with Running(app) as k:
            sim.stall_all()
            stalled_at = time.monotonic()
            await k.until(
                lambda: app.status()["reconnects"] == 1 and app.status()["link"] == "connected"
            )
            replaced_after = time.monotonic() - stalled_at
    # Detection takes at most ping_interval + ping_timeout; the new session follows at once.
    assert replaced_after < 1 + 1 + 1.0


async def test_fatal_auth_error_is_slow_and_visible(speech_wav, tmp_path, button, caplog) -> None:
    """A bad key: the service upgrades, says invalid_api_key and closes 3000 (after the
    upgrade, so a send can race the close). The kiosk shows the error state, logs the cause
    once and retries only every fatal_retry_s."""
    factory, pin = button
    wrong = "sk-wrong-key-ABCDEFGHIJKLMNOPQ"
    caplog.set_level(logging.INFO)
    async with Simulator(api_key=TEST_KEY) as sim:
        settings = kiosk_settings(sim.url, speech_wav, tmp_path, api_key=wrong, fatal_retry_s=2)
        app = App(settings, pin_factory=factory)
        async with Running(app, ready=State.ERROR) as k:
            await asyncio.sleep(5)
            assert app.kiosk.state is State.ERROR
            assert app.status()["link"] in (LinkState.DOWN, LinkState.CONNECTING)
            assert app.status()["last_error"] == "invalid_api_key"
            pin.drive_low()  # a press cannot be served: nothing is recorded or sent
            await asyncio.sleep(0.3)
            pin.drive_high()
            assert k.app.turns == 0
    attempts = sim.refused
    assert 2 <= attempts <= 4  # one at start, then one per fatal_retry_s
    assert [s.close_code for s in sim.sessions] == [3000] * attempts
    causes = [r for r in caplog.records if getattr(r, "KIOSKVOICE_EVENT", None) == "disconnect"]
    logged = [r for r in causes if r.levelno >= logging.INFO]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert "invalid_api_key" in logged[0].getMessage()
    assert wrong not in caplog.text
    assert "Incorrect API key" not in caplog.text  # the service's text quotes part of the key


async def test_a_transient_error_before_setup_is_retried_at_once(
    speech_wav, tmp_path, button
) -> None:
    """server_error answering session.update is not a config problem: retried within 2 s."""
    factory, _ = button
    async with Simulator(api_key=TEST_KEY) as sim:
        sim.faults.error_on["session.update"] = "server_error"
        app = App(
            kiosk_settings(sim.url, speech_wav, tmp_path, api_key=TEST_KEY), pin_factory=factory
        )
        async with Running(app, ready=None) as k:
            await sim.wait_for(lambda s: s.sessions and s.sessions[0].sent_of_type("error"), 10)
            refused_at = time.monotonic()
            del sim.faults.error_on["session.update"]
            await k.until(lambda: app.status()["link"] == "connected", timeout_s=10)
            assert time.monotonic() - refused_at < 2.0
            assert app.kiosk.state is State.IDLE
        assert sim.sessions[0].sent_of_type("error")[0]["error"]["code"] == "server_error"


async def test_turn_during_an_outage_is_answered_after_it(speech_wav, tmp_path, button) -> None:
    factory, pin = button
    async with Simulator(api_key=TEST_KEY) as sim:
        app = App(
            kiosk_settings(sim.url, speech_wav, tmp_path, api_key=TEST_KEY), pin_factory=factory
        )
        async with Running(app) as k:
            sim.faults.refuse_connections = True
            sim.drop_all()
            await k.wait(State.OFFLINE, 5)
            pin.drive_low()
            await k.wait(State.LISTENING, 2)
            await asyncio.sleep(1.0)
            pin.drive_high()
            await k.wait(State.THINKING, 2)
            await asyncio.sleep(2.0)
            sim.faults.refuse_connections = False
            await k.wait(State.SPEAKING, 15)
            await k.wait(State.IDLE, 15)
        session = sim.sessions[-1]
        appended = sum(
            len(e["audio"]) * 3 // 4
            for e in session.received
            if e["type"] == "input_audio_buffer.append"
        )
        assert 0.9 <= appended / 48000 <= 1.4
        assert answered(sim) == 1


async def test_turn_is_dropped_visibly_when_the_link_stays_down(
    speech_wav, tmp_path, button, caplog
) -> None:
    factory, pin = button
    caplog.set_level(logging.INFO)
    async with Simulator(api_key=TEST_KEY) as sim:
        settings = kiosk_settings(
            sim.url, speech_wav, tmp_path, api_key=TEST_KEY, deliver_within_s=1
        )
        app = App(settings, pin_factory=factory)
        async with Running(app) as k:
            sim.faults.refuse_connections = True
            sim.drop_all()
            await k.wait(State.OFFLINE, 5)
            pin.drive_low()
            await asyncio.sleep(0.6)
            pin.drive_high()
            await k.wait(State.ERROR, 3)
    dropped = [r for r in caplog.records if getattr(r, "KIOSKVOICE_EVENT", None) == "turn_dropped"]
    assert len(dropped) == 1 and "link down" in dropped[0].getMessage()


@pytest.mark.parametrize(
    ("press_at", "hold_s", "reply_delay_s"), [(4.5, 2.5, 0.0), (3.5, 1.0, 3.0)]
)
async def test_rollover_forced_mid_turn_still_answers(
    speech_wav, tmp_path, button, press_at, hold_s, reply_delay_s
) -> None:
    """The swap is forced 2 s before the cap even mid-turn (listening, or thinking while the
    reply is slow): the turn is sent again on the new session and answered there."""
    factory, pin = button
    faults = Faults(session_cap_s=8, reply_delay_s=reply_delay_s)
    async with Simulator(api_key=TEST_KEY, faults=faults) as sim:
        settings = kiosk_settings(
            sim.url, speech_wav, tmp_path, api_key=TEST_KEY, session_max_s=8, rollover_margin_s=3
        )
        app = App(settings, pin_factory=factory)
        async with Running(app) as k:
            await k.until(lambda: (app.status()["session_age_s"] or 0) >= press_at)
            await k.turn(pin, hold_s=hold_s, timeout_s=20)
            status = app.status()
    assert sim.capped == 0
    assert status["rollovers"] >= 1 and status["reconnects"] == 0
    assert answered(sim) == 1
    assert sim.sessions[1].sent_of_type("response.done")
