"""Live echo figures (issue 16, item 4): the capture chain measures its own echo reduction on
far-end-only blocks, the loop turns it into one ``echo_stats`` record per reply, and diag and the
metrics show the last values."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from kioskvoice import diag
from kioskvoice.diag import Record, project, summarise
from kioskvoice.dsp import speex
from kioskvoice.dsp.chain import CaptureChain, DspOptions
from kioskvoice.dsp.echo_stats import EchoMeter, EchoTally, figures
from kioskvoice.dsp.measures import erle_over
from kioskvoice.dsp.tool import run_offline
from kioskvoice.echo_report import EchoReport
from kioskvoice.events import State
from kioskvoice.system.metrics import Metrics
from scenes import make_room_scene

RATE = 16000


def block(value: float, n: int = 320) -> bytes:
    return np.full(n, value, dtype=np.int16).tobytes()


def test_the_meter_counts_far_end_only_blocks() -> None:
    meter = EchoMeter()
    meter.add(block(1000), block(0), block(10), 0.0)  # the far end is silent
    meter.add(block(1000), block(3000), block(900), 0.9)  # double talk: passed nearly whole
    assert meter.tally == EchoTally()
    before = meter.tally
    meter.add(block(1000), block(3000), block(10), 0.1)
    assert meter.tally.samples == 320 and before.samples == 0  # a new tuple, the old kept
    measured = figures(before, meter.tally, RATE)
    assert measured is not None
    assert measured.erle_db == pytest.approx(40.0)
    assert measured.residual_dbfs == pytest.approx(20 * np.log10(10 / 32768), abs=0.01)
    assert measured.seconds == pytest.approx(0.02)
    assert figures(meter.tally, meter.tally, RATE) is None


@pytest.mark.parametrize("double_talk", [False, True])
def test_the_chain_measures_what_the_offline_measure_finds(double_talk: bool) -> None:
    try:
        speex._library()
    except speex.SpeexUnavailable as exc:
        pytest.skip(str(exc))
    stretches = ((12.0, 13.5),) if double_talk else ()
    scene = make_room_scene(seconds=16.0, double_talk=stretches)
    chain = CaptureChain(rate=RATE, channels=1, channel=0, options=DspOptions())
    settle = 8 * RATE // chain.frame  # blocks
    mic, far = scene.blocks(chain.frame)
    first = run_offline(chain, b"".join(mic[:settle]), b"".join(far[:settle]))
    start = chain.echo.tally
    rest = run_offline(chain, b"".join(mic[settle:]), b"".join(far[settle:]))
    chain.close()
    live = figures(start, chain.echo.tally, RATE)
    assert live is not None and live.seconds > 2.0
    clean = np.concatenate([first.clean, rest.clean])
    offline = erle_over(scene.mic, clean, scene.far_only(settle_s=8.0))
    if not double_talk:
        # Measured: live 41.7 dB, offline 35.8 dB. The live figure counts only blocks in
        # which the far end plays (the offline mask also counts its pauses, where the room's
        # reverberant tail is what is left: 4 dB) and not the blocks that look like double
        # talk (2 dB).
        assert offline - 1.0 < live.erle_db < offline + 8.0 and live.residual_dbfs < -55.0
    else:
        # Double-talk blocks the detector lets through count the visitor as residual: the
        # live figure errs low (measured 29.4 dB against 36.4 offline), never flatters.
        assert 20.0 < live.erle_db < offline


def test_one_record_per_reply(caplog: pytest.LogCaptureFixture) -> None:
    tally = [EchoTally()]
    report = EchoReport(lambda: tally[0], RATE)
    metrics = Metrics()
    logger = logging.getLogger("kioskvoice")
    logger.addHandler(metrics)
    try:
        with caplog.at_level(logging.INFO, logger="kioskvoice"):
            report.on_state(State.THINKING)
            report.on_state(State.SPEAKING)
            tally[0] = EchoTally(1e12, 1e9, 3 * RATE)
            report.on_state(State.THINKING)  # tools mid-reply: the same reply
            report.on_state(State.SPEAKING)
            tally[0] = EchoTally(2e12, 2e9, 4 * RATE)
            report.on_state(State.IDLE)
            report.on_state(State.SPEAKING)  # a short reply: no record
            tally[0] = EchoTally(2e12, 2e9, 4 * RATE + 100)
            report.on_state(State.LISTENING)
    finally:
        logger.removeHandler(metrics)
    records = [r for r in caplog.records if getattr(r, "KIOSKVOICE_EVENT", None) == "echo_stats"]
    assert len(records) == 1
    r = records[0]
    assert (r.KIOSKVOICE_ERLE_DB, r.KIOSKVOICE_SECONDS) == (30.0, 4.0)
    assert report.last is not None and report.last.erle_db == pytest.approx(30.0)
    assert "kioskvoice_echo_reduction_db 30" in metrics.render({"state": "idle"})


def test_metrics_gauge_is_nan_until_measured() -> None:
    assert "kioskvoice_echo_reduction_db NaN" in Metrics().render({"state": "idle"})


def test_diag_shows_the_last_echo_figures() -> None:
    entry = {"KIOSKVOICE_EVENT": "echo_stats", "KIOSKVOICE_ERLE_DB": "31.5"}
    assert project({**entry, "KIOSKVOICE_RESIDUAL_DBFS": "-70.2"}) == Record(
        event="echo_stats", erle_db=31.5, residual_dbfs=-70.2
    )
    assert project({**entry, "KIOSKVOICE_RESIDUAL_DBFS": "secret"}).residual_dbfs is None
    records = [
        Record(event="echo_stats", erle_db=20.0, residual_dbfs=-60.0),
        Record(event="echo_stats", erle_db=31.5, residual_dbfs=-70.2),
    ]
    counts = summarise(records).to_dict(running=False)
    assert counts["echo"] == {
        "replies_measured": 2,
        "erle_db": 31.5,
        "residual_dbfs": -70.2,
        "start": None,
    }
    text = diag.render_text({"since": None, "running": False, "state": None, **counts})
    assert "echo:           last reply 31.5 dB reduction, residual -70 dBFS (2 replies" in text
    empty = summarise([]).to_dict(running=False)
    text = diag.render_text({"since": None, "running": False, "state": None, **empty})
    assert "echo:           not measured yet" in text


def test_the_demo_prints_the_echo_reduction_it_measured(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kioskvoice.demo import run_demo

    assert run_demo(tmp_path) == 0
    out = capsys.readouterr().out
    assert "kiosk:   You spoke for" in out
    line = next(x for x in out.splitlines() if x.startswith("echo reduction measured"))
    erle = float(line.split("): ")[1].split(" dB")[0])
    assert erle >= 15.0, line  # measured 28 dB in the demo's room
