"""Transcripts: off by default (visitors' privacy); when on, one record per transcript with
its role and ids, in conversation order even though the visitor's own transcription arrives
after the reply's, as on the real service."""

from __future__ import annotations

import re

import pytest

from kioskvoice.realtime.protocol import Transcript
from kioskvoice.sim import Faults, Simulator
from kioskvoice.transcripts import TranscriptOrder
from visitor import speech_input, start

pytestmark = pytest.mark.timeout(120)


def test_a_late_user_transcript_comes_before_the_reply_it_caused() -> None:
    out: list[str] = []
    order = TranscriptOrder(lambda t: out.append(t.item_id), wait_s=5)
    order.committed("user_1", 0.0)
    order.add(Transcript("assistant", "asst_1", "answer", "resp_1"), 1.0)
    assert out == []  # held: the question's transcript is not in yet
    order.add(Transcript("user", "user_1", "question"), 1.3)
    assert out == ["user_1", "asst_1"]


def test_a_failed_or_overdue_transcription_does_not_hold_the_rest() -> None:
    out: list[str] = []
    order = TranscriptOrder(lambda t: out.append(t.item_id), wait_s=5)
    order.committed("user_1", 0.0)
    order.add(Transcript("assistant", "asst_1", "a1", "r1"), 1.0)
    order.failed("user_1")
    assert out == ["asst_1"]
    order.committed("user_2", 10.0)
    order.add(Transcript("assistant", "asst_2", "a2", "r2"), 11.0)
    order.tick(14.9)
    assert out == ["asst_1"]
    order.tick(15.0)
    assert out == ["asst_1", "asst_2"]
    order.add(Transcript("user", "user_2", "too late"), 16.0)  # not in the conversation's slot
    assert out[-1] == "user_2"


@pytest.fixture
async def slow_transcriber():
    async with Simulator(faults=Faults(transcription_delay_s=1.5)) as server:
        yield server


RECORD = re.compile(r"(user|assistant): .*\[event=transcript (.*)\]")


@pytest.mark.parametrize("enabled", [False, True])
async def test_transcript_records_follow_the_setting_in_conversation_order(
    slow_transcriber, tmp_path, enabled
) -> None:
    sim = slow_transcriber
    speech = speech_input(tmp_path / "speech.wav", 10.0)
    kiosk = await start(sim, tmp_path, speech, logging={"transcripts": enabled})
    try:
        for n in (1, 2):
            await kiosk.hold(1.5)
            await sim.wait_for(
                lambda s, n=n: len(s.sessions[0].sent_of_type("response.done")) == n, 15
            )
            await kiosk.until(state="idle")
        await sim.wait_for(
            lambda s: (
                len(
                    s.sessions[0].sent_of_type(
                        "conversation.item.input_audio_transcription.completed"
                    )
                )
                == 2
            ),
            10,
        )
    finally:
        log = await kiosk.stop()
    records = RECORD.findall(log)
    if not enabled:
        assert records == [] and "[event=transcript" not in log
        return
    sent = sim.sessions[0].sent
    # The server sent each reply's transcript before the question's (the real order).
    kinds = [
        e["type"]
        for e in sent
        if e["type"].endswith("transcription.completed")
        or e["type"] == "response.output_audio_transcript.done"
    ]
    assert kinds[0] == "response.output_audio_transcript.done"
    assert [role for role, _ in records] == ["user", "assistant", "user", "assistant"]
    users = [e["item_id"] for e in sent if e["type"].endswith("transcription.completed")]
    replies = [e for e in sent if e["type"] == "response.output_audio_transcript.done"]
    for (role, fields), item in zip(
        records, [users[0], replies[0], users[1], replies[1]], strict=True
    ):
        item_id = item if role == "user" else item["item_id"]
        assert f"item_id={item_id}" in fields
        if role == "assistant":
            assert f"response_id={item['response_id']}" in fields
