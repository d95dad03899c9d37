"""Keeping the reference in step with the echo: the reference FIFO and the delay estimator."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kioskvoice.dsp.align import DelayEstimator, ReferenceFifo
from scenes import make_room_scene

RATE = 16000


def ramp(start: int, n: int) -> bytes:
    """Samples start, start+1, ... (mod 2**15): each sample says where it came from."""
    return (np.arange(start, start + n) % 32768).astype(np.int16).tobytes()


def samples(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.int16).astype(np.int64)


# --- the FIFO -----------------------------------------------------------------------------------


def test_fifo_gives_what_was_written_delay_samples_earlier() -> None:
    fifo = ReferenceFifo(delay=100, capacity=8000)
    read = []
    for i in range(20):
        fifo.write(ramp(i * 160, 160))  # as in a duplex callback: write, then read
        read.append(samples(fifo.read(160)))
    out = np.concatenate(read)
    # The first 100 samples were never written: silence, then the ramp, 100 samples late.
    assert np.all(out[:100] == 0)
    assert np.array_equal(out[100:], np.arange(len(out) - 100))
    assert fifo.reanchors == 0


def test_fifo_reads_silence_for_what_was_never_written_or_dropped() -> None:
    fifo = ReferenceFifo(delay=0, capacity=400)
    assert samples(fifo.read(160)).tolist() == [0] * 160  # nothing written yet
    fifo.write(ramp(0, 1000))  # more than the capacity: the oldest samples are dropped
    fifo.set_delay(0)
    fifo.reset()
    got = samples(fifo.read(160))
    assert np.array_equal(got, np.arange(840, 1000))


def test_set_delay_moves_the_read_position() -> None:
    fifo = ReferenceFifo(delay=0, capacity=8000)
    for i in range(10):
        fifo.write(ramp(i * 160, 160))
        fifo.read(160)
    fifo.set_delay(320)
    fifo.write(ramp(1600, 160))
    got = samples(fifo.read(160))
    assert np.array_equal(got, np.arange(1600 - 320, 1600 - 160))
    assert fifo.delay == 320


def test_fifo_reanchors_after_the_speaker_stalls() -> None:
    fifo = ReferenceFifo(delay=0, capacity=8000, window=10, tolerance=200)
    position = 0
    for _ in range(20):
        fifo.write(ramp(position, 160))
        position += 160
        fifo.read(160)
    for _ in range(30):  # the speaker stalls for 30 blocks: the reader runs ahead into silence
        assert samples(fifo.read(160)).max() == 0
    jumps = []
    last = np.zeros(0)
    for _ in range(40):  # the speaker resumes
        fifo.write(ramp(position, 160))
        position += 160
        last = samples(fifo.read(160))
        jumps.append(fifo.jump)
    assert fifo.reanchors >= 1
    assert any(jumps)
    # In step again: the block read is the one just written.
    assert np.array_equal(last, np.arange(position - 160, position) % 32768)


def test_fifo_follows_a_faster_speaker_clock_by_skipping() -> None:
    fifo = ReferenceFifo(delay=320, capacity=16000, window=25, tolerance=240)
    position = 0
    lags = []
    for i in range(2000):
        n = 162 if i % 2 else 160  # the speaker's clock runs 0.6 % fast
        fifo.write(ramp(position, n))
        position += n
        block = samples(fifo.read(160))
        lags.append(position - 1 - int(block[-1]) if block.any() else None)
    assert fifo.reanchors >= 3
    settled = [lag for lag in lags[-200:] if lag is not None]
    # (the ramp wraps at 2**15; the lag stays bounded instead of growing without end)
    assert max(abs(lag % 32768 - 320) for lag in settled) <= 240 + 162


def test_fifo_between_two_threads_keeps_samples_in_order() -> None:
    fifo = ReferenceFifo(delay=480, capacity=16000)
    stop = threading.Event()

    def speaker() -> None:
        position = 0
        while not stop.is_set():
            fifo.write(ramp(position, 480))  # 48 kHz device's 10 ms at 16 kHz: other sizes
            position += 480
            stop.wait(0.0005)

    thread = threading.Thread(target=speaker)
    thread.start()
    blocks = []
    try:
        for _ in range(400):
            blocks.append(samples(fifo.read(160)))
    finally:
        stop.set()
        thread.join()
    # Within each block read the samples are consecutive: no torn writes.
    for block in blocks:
        if block.all():
            steps = np.diff(block) % 32768
            assert np.all(steps == 1)


@pytest.mark.parametrize("kwargs", [{"delay": -1}, {"capacity": 0}, {"window": 0}])
def test_fifo_rejects_bad_sizes(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ReferenceFifo(**kwargs)


# --- the delay estimator ------------------------------------------------------------------------


def estimate(mic: np.ndarray, ref: np.ndarray, frame: int = 320) -> list:
    estimator = DelayEstimator(RATE)
    found = []
    for i in range(min(len(mic), len(ref)) // frame):
        result = estimator.push(
            mic[i * frame : (i + 1) * frame].tobytes(), ref[i * frame : (i + 1) * frame].tobytes()
        )
        if result is not None:
            found.append(result)
    return found


@pytest.mark.parametrize("extra_ms", [0, 120, 300])
def test_estimator_finds_the_echo_delay_in_a_room(extra_ms: int) -> None:
    scene = make_room_scene(seconds=6.0, extra_delay_ms=extra_ms, double_talk=((3.0, 4.0),))
    found = estimate(scene.mic, scene.far)
    assert found, "no confident estimate"
    expected = round(scene.delay_ms * RATE / 1000)
    assert all(abs(f.lag - expected) <= 16 for f in found)  # within 1 ms
    assert found[0].confidence > 8


def test_estimator_finds_an_echo_earlier_than_the_reference() -> None:
    scene = make_room_scene(seconds=5.0, double_talk=())
    shift = 50 * RATE // 1000 + round(scene.delay_ms * RATE / 1000)  # echo 50 ms early
    mic = scene.mic[shift:]
    found = estimate(mic, scene.far)
    assert found
    assert all(abs(f.lag + 50 * RATE // 1000) <= 16 for f in found)


def test_estimator_stays_quiet_without_a_playing_reference() -> None:
    rng = np.random.default_rng(3)
    noise = (rng.standard_normal(6 * RATE) * 500).astype(np.int16)
    silent = np.zeros(6 * RATE, dtype=np.int16)
    assert estimate(noise, silent) == []  # the kiosk is not speaking
    unrelated = (rng.standard_normal(6 * RATE) * 3000).astype(np.int16)
    assert estimate(noise, unrelated) == []  # what the mic hears is not the reference
