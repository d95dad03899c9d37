"""The echo delay kept across restarts (kioskvoice.echo_memory): the file, the chain starting
aligned with it, and the daemon keeping it in its state directory."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from kioskvoice.audio.room import RoomDevice
from kioskvoice.dsp import speex
from kioskvoice.dsp.chain import CaptureChain, DspOptions
from kioskvoice.echo_memory import FILE, EchoDelayMemory
from kioskvoice.sim import Simulator
from kioskvoice.sim.voice import synthesize

SETUP = {"input_device": "hw:1", "output_device": "hw:1", "sample_rate": 16000}


def test_the_delay_is_kept_for_its_setup_only(tmp_path: Path) -> None:
    EchoDelayMemory(tmp_path, SETUP).save(84.96)
    assert EchoDelayMemory(tmp_path, SETUP).load(500) == 85.0
    assert EchoDelayMemory(tmp_path, {**SETUP, "input_device": "hw:2"}).load(500) is None
    assert EchoDelayMemory(tmp_path, SETUP).load(50) is None  # beyond what auto searches
    assert [p.name for p in tmp_path.iterdir()] == [FILE]  # no temporary file left behind


def test_nothing_is_kept_without_a_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    memory = EchoDelayMemory.from_environment(SETUP)
    memory.save(85.0)
    assert memory.path is None and memory.load(500) is None
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}:/elsewhere")  # systemd: the first
    EchoDelayMemory.from_environment(SETUP).save(85.0)
    assert (tmp_path / FILE).exists()


@pytest.mark.parametrize(
    ("content", "unreadable"),
    [
        (b"\xff\xfe not utf-8", True),
        (b"{not json", True),
        (b"[" * 100000, True),  # nesting deeper than the parser's recursion
        (b" " * 5000 + b"{}", True),  # larger than any file the kiosk writes
        (b"[1, 2]", False),
        (b'{"setup": 1}', False),
        (b"{}", False),
    ],
)
def test_a_damaged_file_means_finding_the_delay_afresh(
    tmp_path: Path, content: bytes, unreadable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE).write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert EchoDelayMemory(tmp_path, SETUP).load(500) is None
    assert ("not read" in caplog.text) == unreadable
    assert all("\n" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("delay", ["true", "NaN", "1e999", "-5", '"85"'])
def test_a_kept_value_that_is_no_delay_is_ignored(tmp_path: Path, delay: str) -> None:
    (tmp_path / FILE).write_text(f'{{"setup": {json.dumps(SETUP)}, "delay_ms": {delay}}}')
    assert EchoDelayMemory(tmp_path, SETUP).load(500) is None


def test_a_fifo_in_its_place_does_not_block_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    os.mkfifo(tmp_path / FILE)  # opening it to read would wait for a writer forever
    with caplog.at_level(logging.WARNING):
        assert EchoDelayMemory(tmp_path, SETUP).load(500) is None
    assert "not a regular file" in caplog.text


@pytest.mark.parametrize("where", ["gone", "a-file"])
def test_a_directory_that_cannot_be_written_is_a_warning(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("")  # not a directory: unwritable even for root
    with caplog.at_level(logging.WARNING):
        EchoDelayMemory(tmp_path / where, SETUP).save(85.0)
    assert "not written" in caplog.text and len(caplog.records) == 1


def realigns(hint: float | None) -> tuple[int, float | None]:
    """A reply in the acceptance room (the delay unknown to the chain), offline: how often the
    chain moved its reference, and the delay it ended with."""
    try:
        speex._library()
    except speex.SpeexUnavailable as exc:
        pytest.skip(str(exc))
    rate, block = 16000, 320
    device = RoomDevice(
        "room:echo_db=-20,distortion=0.3,delay_ms=60", rate=rate, channels=1, frame_ms=20
    )
    chain = CaptureChain(
        rate=rate, channels=1, channel=0, options=DspOptions(), out_rate=rate, delay_hint_ms=hint
    )
    reply = np.frombuffer(synthesize("The museum opens at ten every day but Monday.", rate), "<i2")
    try:
        for i in range(len(reply) // block):
            played = reply[i * block : (i + 1) * block]
            chain.far_end(played.tobytes())
            chain.process(device._hear(played / 1.0))
        return chain.realigns, chain.delay_ms
    finally:
        chain.close()


def test_the_chain_starts_aligned_at_a_remembered_delay() -> None:
    moves, found = realigns(None)
    assert moves == 1 and found is not None  # from nothing: found, and the filter reset
    assert realigns(found) == (0, pytest.approx(found, abs=2))  # kept: never reset
    for wrong in (found + 200, found - 60):  # the hardware changed: found afresh
        moves, again = realigns(wrong)
        assert moves == 1 and again == pytest.approx(found, abs=2), wrong


async def test_the_daemon_keeps_the_delay_across_a_restart(tmp_path: Path) -> None:
    from test_voice_bargein import ROOM, converse

    state = tmp_path / "state"
    state.mkdir()
    logs = []
    async with Simulator() as sim:
        sim.reply_more = "The museum opens at ten in the morning, every day except Monday."
        for _ in range(2):  # the same devices and state directory: a restart
            _kiosk, log, _out, _ = await converse(
                tmp_path, sim, ROOM, None, state_dir=state, voice_barge_in=None
            )
            logs.append(log)
            assert (state / FILE).exists(), log
    first, second = logs
    assert "voice barge-in on (the hands-free default)" in first  # said at every start
    assert "echo reference aligned at" in first and "as found in the last run" not in first
    assert "as found in the last run" in second, second
    # Started aligned: the second run's first reply never moved the reference.
    assert second.count("echo reference aligned at") == 1, second
