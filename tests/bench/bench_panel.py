"""Button latencies (``make bench``), through gpiozero's mock pins and the simulator in one
process, so every time is read on the same monotonic clock. Printed, never asserted.

press -> first append on the wire; release -> commit on the wire; barge-in press -> the
player flushed (the speaker is silent from its next block on); barge-in press -> cancel on
the wire. Target: each within one audio block (20 ms) plus 5 ms.

Usage: python tests/bench/bench_panel.py [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpiozero.pins.mock import MockFactory

from harness import BUTTON_PIN, Running, kiosk_settings
from kioskvoice.app import App
from kioskvoice.events import State
from kioskvoice.sim import Simulator
from kioskvoice.sim.voice import synthesize
from kioskvoice.system.logging import setup_logging
from kioskvoice.wavio import write_wav

KEY = "bench-key-000000"


def count(session, kind: str) -> int:
    return sum(1 for e in session.received if e["type"] == kind)


async def until_received(sim: Simulator, kind: str, n: int) -> float:
    await sim.wait_for(lambda s: count(s.sessions[-1], kind) >= n, timeout=5)
    return time.monotonic()


async def run(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        speech = tmp / "speech.wav"
        write_wav(speech, synthesize("Hello, when do you open?", rate=16000), 16000)
        factory = MockFactory()
        pin = factory.pin(BUTTON_PIN)
        # Replies at twice real time: at each barge-in the response still runs and the
        # player holds queued audio that must be dropped.
        async with Simulator(api_key=KEY, burst_ms=200, burst_interval_s=0.1) as sim:
            app = App(kiosk_settings(sim.url, speech, tmp, api_key=KEY), pin_factory=factory)
            figures: dict[str, list[float]] = {
                "press -> first append": [],
                "release -> commit": [],
                "barge-in -> speaker silent": [],
                "barge-in -> cancel": [],
            }
            async with Running(app) as k:
                for _ in range(runs):
                    session = sim.sessions[-1]
                    appends = count(session, "input_audio_buffer.append")
                    t0 = time.monotonic()
                    pin.drive_low()
                    t1 = await until_received(sim, "input_audio_buffer.append", appends + 1)
                    figures["press -> first append"].append(t1 - t0)
                    await asyncio.sleep(0.5)
                    commits = count(session, "input_audio_buffer.commit")
                    t0 = time.monotonic()
                    pin.drive_high()
                    t1 = await until_received(sim, "input_audio_buffer.commit", commits + 1)
                    figures["release -> commit"].append(t1 - t0)
                    await k.wait(State.SPEAKING)
                    await asyncio.sleep(0.2)
                    cancels = count(session, "response.cancel")
                    t0 = time.monotonic()
                    pin.drive_low()
                    while not app._player.idle:
                        await asyncio.sleep(0.001)
                    figures["barge-in -> speaker silent"].append(time.monotonic() - t0)
                    t1 = await until_received(sim, "response.cancel", cancels + 1)
                    figures["barge-in -> cancel"].append(t1 - t0)
                    await asyncio.sleep(0.1)
                    pin.drive_high()  # a tap: discarded, back to idle
                    await k.until(lambda: app.kiosk.state is State.IDLE, timeout_s=5)
                    await asyncio.sleep(0.3)
    for name, values in figures.items():
        ms = sorted(v * 1000 for v in values)
        p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
        print(
            f"{name:28} median {statistics.median(ms):6.1f} ms   p95 {p95:6.1f} ms  ({runs} runs)"
        )
    print("(the speaker is silent from the block after the flush: add at most one block, 20 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    setup_logging("error")
    asyncio.run(run(args.runs))
