"""Start-up and footprint benchmark (``make bench``): figures printed, never asserted.

- cold start of ``kioskvoice ctl status`` against a running daemon and of ``kioskvoice
  check-config``: median of N runs, wall and CPU, next to a bare ``python3 -c 'import socket,
  json'`` (the target: ctl within 2x of it);
- the daemon: exec to ``READY=1`` on a real notify socket (target 1.5 s here), and its RSS
  after ten push-to-talk turns against the simulator (target 55 MB);
- where the daemon's memory goes: the biggest imported top-level packages by tracemalloc.

Everything runs on loopback: the simulator as a subprocess, ``wav:`` devices, no GPIO.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kioskvoice.sim.voice import synthesize
from kioskvoice.wavio import write_wav

PY = sys.executable
# What an operator types: the installed console script, not "python -m" (runpy costs more).
KIOSKVOICE = str(Path(PY).parent / "kioskvoice")


def timed(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``runs`` cold starts of ``argv``."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
        walls.append(time.monotonic() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def ms(figures: tuple[float, float]) -> str:
    return f"{figures[0] * 1000:6.0f} ms wall {figures[1] * 1000:5.0f} ms CPU"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ctl(env: dict[str, str], cmd: str) -> dict:
    out = subprocess.run(
        [PY, "-m", "kioskvoice", "ctl", cmd], env=env, capture_output=True, timeout=30, text=True
    )
    return json.loads(out.stdout) if out.returncode == 0 else {}


def wait_state(env: dict[str, str], state: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ctl(env, "status").get("state") == state:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the daemon never reached {state}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_by_package() -> list[tuple[str, float]]:
    """Allocation by top-level package while importing the daemon (tracemalloc)."""
    probe = (
        "import tracemalloc, collections, json; tracemalloc.start(1)\n"
        "import kioskvoice.app\n"
        "by = collections.Counter()\n"
        "for s in tracemalloc.take_snapshot().statistics('filename'):\n"
        "    f = s.traceback[0].filename\n"
        "    key = f.split('site-packages/')[-1].split('/')[0] if 'site-packages' in f else "
        "('kioskvoice' if '/kioskvoice/' in f else 'stdlib')\n"
        "    by[key] += s.size\n"
        "print(json.dumps(by.most_common(8)))\n"
    )
    out = subprocess.run([PY, "-c", probe], capture_output=True, text=True, timeout=120)
    return [(name, size / 1e6) for name, size in json.loads(out.stdout)]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python tests/bench/bench_startup.py")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kv-bench-"))
    speech = work / "speech.wav"
    write_wav(speech, synthesize("When does the museum open today?", rate=16000), 16000)
    port = free_port()
    sock = work / "control.sock"
    notify = work / "notify.sock"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KIOSKVOICE_")},
        "GPIOZERO_PIN_FACTORY": "mock",
        "KIOSKVOICE_REALTIME__URL": f"ws://127.0.0.1:{port}/v1/realtime",
        "KIOSKVOICE_REALTIME__API_KEY": "bench-key-0123456789",
        "KIOSKVOICE_AUDIO__INPUT_DEVICE": f"wav:{speech}",
        "KIOSKVOICE_AUDIO__OUTPUT_DEVICE": f"wav:{work / 'out.wav'}",
        "KIOSKVOICE_CONTROL__SOCKET": str(sock),
    }
    config = work / "empty.toml"
    config.write_text("")
    sim = subprocess.Popen(
        [PY, "-m", "kioskvoice", "simulate", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    daemon = None
    try:
        assert sim.stdout is not None
        sim.stdout.readline()  # listening
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(str(notify))
        listener.settimeout(20)
        started = time.monotonic()
        daemon = subprocess.Popen(
            [PY, "-m", "kioskvoice", "run", "--config", str(config)],
            env={**env, "NOTIFY_SOCKET": str(notify)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while b"READY=1" not in listener.recv(4096):
            pass
        ready_s = time.monotonic() - started
        wait_state(env, "idle")
        after_ready = rss_mb(daemon.pid)
        for _ in range(args.turns):
            ctl(env, "press")
            time.sleep(1.0)
            ctl(env, "release")
            wait_state(env, "idle")
        after_turns = rss_mb(daemon.pid)
        bare = timed([PY, "-c", "import socket, json"], env, args.runs)
        status = timed([KIOSKVOICE, "ctl", "status"], env, args.runs)
        check = timed([KIOSKVOICE, "check-config", "--config", str(config)], env, args.runs)
    finally:
        for proc in (daemon, sim):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
    print(f"start-up and footprint ({args.runs} runs each, medians)")
    print(f"  python -c 'import socket, json'  {ms(bare)}")
    print(
        f"  kioskvoice ctl status           {ms(status)}  "
        f"({status[0] / bare[0]:.1f}x bare; target 2x)"
    )
    print(f"  kioskvoice check-config         {ms(check)}")
    print(f"  daemon exec -> READY=1          {ready_s * 1000:6.0f} ms (target 1500)")
    print(
        f"  daemon RSS                      {after_ready:6.1f} MB at ready, {after_turns:.1f} MB "
        f"after {args.turns} turns (target 55)"
    )
    print("  memory allocated importing the daemon, by package (tracemalloc):")
    for name, size in memory_by_package():
        print(f"    {name:28} {size:6.1f} MB")


if __name__ == "__main__":
    main()
