"""Link benchmark (``make bench``): figures are printed, never asserted.

1. Reconnect time after an abrupt TCP drop: median and p95 over N drops.
2. Soak: turns every few seconds against a simulator whose session cap is scaled down
   (default 10 s cap, 1000 s run): failed turns (target 0), rollovers, failed rollovers,
   RSS at start and end (target: growth under 2 MB).

Usage: python tests/bench/bench_link.py [--drops 20] [--soak-s 1000] [--cap-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def reconnects(tmp: Path, speech: Path, drops: int) -> None:
    factory = MockFactory()
    async with Simulator(api_key=KEY) as sim:
        app = App(kiosk_settings(sim.url, speech, tmp, api_key=KEY), pin_factory=factory)
        async with Running(app) as k:
            times = []
            for n in range(1, drops + 1):
                # Past the supervisor's "healthy session" threshold, so each drop is
                # measured from a fresh backoff, as after a real session.
                await asyncio.sleep(app._supervisor.healthy_after_s + 0.2)
                started = time.monotonic()
                sim.drop_all()
                await k.until(
                    lambda n=n: (
                        app.status()["reconnects"] == n and app.status()["link"] == "connected"
                    ),
                    timeout_s=30,
                    poll_s=0.005,
                )
                times.append((time.monotonic() - started) * 1000)
    print(
        f"reconnect after TCP drop ({drops} drops): median {statistics.median(times):.0f} ms, "
        f"p95 {pct(times, 0.95):.0f} ms, max {max(times):.0f} ms"
    )


async def soak(tmp: Path, speech: Path, seconds: float, cap_s: float) -> None:
    factory = MockFactory()
    pin = factory.pin(BUTTON_PIN)
    # The simulator runs in its own process, so the RSS figures are the kiosk's alone.
    port = free_port()
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kioskvoice", "simulate", "--port", str(port),
        "--api-key", KEY, "--session-cap-s", str(cap_s),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert sim.stdout is not None
    await asyncio.wait_for(sim.stdout.readline(), 20)
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    try:
        settings = kiosk_settings(
            url,
            speech,
            tmp,
            api_key=KEY,
            session_max_s=cap_s,
            rollover_margin_s=max(1.0, cap_s * 0.3),
        )
        app = App(settings, pin_factory=factory)
        async with Running(app) as k:
            turns = failed = 0
            rss_start = rss_warm = rss_kb()
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                turns += 1
                if turns == 6:  # one-time allocations (codecs, resamplers) are done by now
                    rss_warm = rss_kb()
                try:
                    await k.turn(pin, hold_s=0.8, timeout_s=20)
                except TimeoutError:
                    failed += 1
                    print(f"turn {turns} failed: {app.status()}", flush=True)
                    try:
                        await k.until(lambda: app.kiosk.state is State.IDLE, timeout_s=30)
                    except TimeoutError:
                        print(f"  still not idle after 30 s: {app.status()}", flush=True)
                        break
                await asyncio.sleep(1.5)
            rss_end = rss_kb()
            status = app.status()
    finally:
        sim.terminate()
        await sim.wait()
    print(
        f"soak {seconds:.0f} s, cap {cap_s:g} s: {turns} turns, {failed} failed, "
        f"{status['rollovers']} rollovers, {status['failed_rollovers']} failed rollovers, "
        f"{status['reconnects']} reconnects (a session hitting the cap would be one); "
        f"RSS {rss_start / 1024:.1f} MB at start, {rss_warm / 1024:.1f} MB after 5 turns, "
        f"{rss_end / 1024:.1f} MB at the end ({(rss_end - rss_warm) / 1024:+.2f} MB since "
        "the warm-up)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drops", type=int, default=20)
    parser.add_argument("--soak-s", type=float, default=1000.0)
    parser.add_argument("--cap-s", type=float, default=10.0)
    args = parser.parse_args()
    setup_logging("error")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        speech = tmp / "speech.wav"
        write_wav(speech, synthesize("Hello, when do you open?", rate=16000), 16000)
        await reconnects(tmp, speech, args.drops)
        if args.soak_s > 0:
            await soak(tmp, speech, args.soak_s, args.cap_s)


if __name__ == "__main__":
    asyncio.run(main())
