"""Recorded shapes: event streams of the real service, as published, through the pure protocol
core (and, for the failures, the retry policy and the kiosk).

Each fixture in ``fixtures/realtime/`` names its public source in its ``source`` field. The
test feeds its server events to :class:`Protocol` and asserts the kiosk events that come out;
for a stream that ends in a close, the verdict the link's policy gives on it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from kioskvoice.events import (
    LinkUp,
    Notice,
    Press,
    Release,
    ServerError,
    State,
    VoiceHeard,
)
from kioskvoice.kiosk import Kiosk
from kioskvoice.realtime.link import LinkClosed
from kioskvoice.realtime.policy import classify, code_from_reason
from kioskvoice.realtime.protocol import (
    FatalError,
    Ignored,
    Incoming,
    Protocol,
    SessionOptions,
)

FIXTURES = Path(__file__).parent / "fixtures" / "realtime"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def summary(event: Incoming) -> dict[str, Any]:
    """A kiosk event as the fixtures write it: its class and fields, audio as a length."""
    fields = dataclasses.asdict(event)  # type: ignore[call-overload]
    if "pcm" in fields:
        fields["pcm_bytes"] = len(fields.pop("pcm"))
    return {"event": type(event).__name__, **fields}


def consume(fixture: dict[str, Any]) -> list[Incoming]:
    proto = Protocol(SessionOptions(instructions="x", voice="marin"))
    out: list[Incoming] = []
    for event in fixture["events"]:
        out += proto.receive(json.dumps(event))
    return out


def test_every_fixture_names_its_source() -> None:
    assert {"audio_reply", "bad_key", "bad_model", "expiry", "failed_response"} <= set(NAMES)
    for name in NAMES:
        source = load(name)["source"]
        assert any(s in source for s in ("github", "community.openai.com", "gauravzqa", "/")), name


@pytest.mark.parametrize("name", NAMES)
def test_the_core_turns_the_stream_into_kiosk_events(name: str) -> None:
    fixture = load(name)
    out = consume(fixture)
    assert [summary(e) for e in out if not isinstance(e, Ignored)] == fixture["expect"]
    ignored = {e.type for e in out if isinstance(e, Ignored)}
    assert ignored == set(fixture.get("ignored", ())), name


@pytest.mark.parametrize("name", [n for n in NAMES if "close" in load(n)])
def test_the_close_gets_the_policys_verdict(name: str) -> None:
    fixture = load(name)
    errors = [e for e in consume(fixture) if isinstance(e, FatalError | ServerError)]
    close = fixture["close"]
    # What the link raises: the close, with the last error's code (or the reason's).
    error_code = errors[-1].code if errors else code_from_reason(close["reason"])
    failure = classify(LinkClosed(close["code"], close["reason"], error_code))
    assert {"code": failure.code, "fatal": failure.fatal} == fixture["verdict"]
    assert failure.close_code == close["code"]
    assert "Incorrect API key" not in failure.detail  # the message may quote the key


def test_a_recorded_quota_failure_is_an_apology_and_the_error_state() -> None:
    kiosk = Kiosk()
    kiosk.handle(LinkUp("sess"), 0.0)
    kiosk.handle(Press(), 1.0)
    kiosk.handle(VoiceHeard(), 1.1)
    kiosk.handle(Release(), 2.0)
    actions = []
    for event in consume(load("failed_response")):
        if kiosk.accepts(event):
            actions += kiosk.handle(event, 2.5)
    assert Notice("reply_failed", "failed: insufficient_quota") in actions
    assert kiosk.state is State.ERROR
