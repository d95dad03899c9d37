"""Token-broker benchmark (``make bench``): figures are printed, never asserted.

Three processes on loopback: a stand-in for OpenAI's client-secret endpoint, the broker as
``python -m kioskvoice.broker serve`` (the real command, its own process), and this client.
Every request is a valid device asking for a secret, so each one is a registry lookup (over
all ``--devices``), a rate-limit check and an upstream round trip. Two phases, each bounded by
``--requests`` and ``--max-s``:

1. keep-alive: ``--concurrency`` clients on pooled connections (a proxy in front of the broker);
2. a new connection per request, as kiosks ask (one secret per Realtime connection).

Then the registry lookup alone, in-process, for a few fleet sizes.

Usage: python tests/bench/bench_broker.py [--requests 1000] [--concurrency 16] [--devices 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from kioskvoice.broker import PATH
from kioskvoice.broker.registry import Registry, new_token, parse, token_digest
from kioskvoice.broker.settings import API_KEY_ENV

KEY = "sk-bench-000000000000000000"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def write_registry(path: Path, devices: int) -> list[str]:
    """A registry of ``devices`` devices in the CLI's format (written at once: add-device
    rewrites the file each time); their tokens."""
    tokens = [new_token() for _ in range(devices)]
    lines = [
        f'"kiosk-{n}" = {{ sha256 = "{token_digest(t).hex()}", added = 2025-01-01T00:00:00Z }}\n'
        for n, t in enumerate(tokens)
    ]
    text = "[devices]\n" + "".join(lines)
    assert len(parse(text)) == devices
    path.write_text(text)
    return tokens


def _serve_upstream(port_out: multiprocessing.Queue) -> None:
    """The stand-in upstream, in its own process (spawned)."""
    from kioskvoice.broker.server import serving
    from openai_standin import OpenAIStandIn

    async def main() -> None:
        standin = OpenAIStandIn(KEY, record=False)
        async with serving(standin.app) as url:
            port_out.put(url)
            await asyncio.Event().wait()

    asyncio.run(main())


async def start_broker(config: Path) -> tuple[asyncio.subprocess.Process, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKVOICE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kioskvoice.broker", "serve", "--config", str(config),
        env={**env, API_KEY_ENV: KEY}, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = ""
    async with asyncio.timeout(20):
        while not (match := re.search(r"on (http://127\.0\.0\.1:\d+)", seen)):
            line = await proc.stderr.readline()
            if not line:
                raise RuntimeError(f"the broker did not start:\n{seen}")
            seen += line.decode()
    return proc, match.group(1)


async def drain(stream: asyncio.StreamReader) -> None:
    """Read the broker's access log so that its pipe never fills."""
    while await stream.readline():
        pass


def cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def phase(
    name: str,
    url: str,
    tokens: list[str],
    requests: int,
    concurrency: int,
    max_s: float,
    broker_pid: int,
) -> None:
    keepalive = name != "new connection each"
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency if keepalive else 0
    )
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    remaining = requests
    deadline = time.monotonic() + max_s
    body = {"session": {"type": "realtime", "model": "gpt-realtime"}}

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                token = random.choice(tokens)
                started = time.monotonic()
                reply = await client.post(
                    PATH, headers={"Authorization": f"Bearer {token}"}, json=body
                )
                latencies.append((time.monotonic() - started) * 1000)
                statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1

        started, cpu_before = time.monotonic(), cpu_s(broker_pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
        cpu_ms = (cpu_s(broker_pid) - cpu_before) * 1000 / len(latencies)
    others = {s: n for s, n in statuses.items() if s != 200}
    print(
        f"broker, {name:19} {len(latencies):5d} requests, concurrency {concurrency:2d}: "
        f"{len(latencies) / elapsed:5.0f} req/s, latency p50 {statistics.median(latencies):5.1f} "
        f"ms, p95 {pct(latencies, 0.95):5.1f} ms, p99 {pct(latencies, 0.99):5.1f} ms, "
        f"broker CPU {cpu_ms:.1f} ms/request" + (f", non-200: {others}" if others else ", all 200")
    )


def lookup_cost(tmp: Path) -> None:
    for devices in (100, 1000, 10000):
        path = tmp / f"lookup-{devices}.toml"
        tokens = write_registry(path, devices)
        registry = Registry(path)
        registry.refresh(strict=True)
        n = 200
        started = time.perf_counter()
        for token in tokens[:n]:
            assert registry.lookup(token) is not None
        per_us = (time.perf_counter() - started) / n * 1e6
        print(f"registry lookup (constant-time scan), {devices:5d} devices: {per_us:7.0f} µs")


async def main(args: argparse.Namespace) -> None:
    ctx = multiprocessing.get_context("spawn")
    urls: multiprocessing.Queue = ctx.Queue()
    upstream = ctx.Process(target=_serve_upstream, args=(urls,), daemon=True)
    upstream.start()
    try:
        upstream_url = await asyncio.to_thread(urls.get, True, 30)
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            tokens = write_registry(tmp / "devices.toml", args.devices)
            config = tmp / "broker.toml"
            config.write_text(
                f'registry = "{tmp / "devices.toml"}"\nlog_level = "info"\n'
                f'[listen]\nport = 0\n[upstream]\nurl = "{upstream_url}"\n'
                "[limits]\nsecrets_per_minute = 6000\nburst = 1000\n"
            )
            proc, url = await start_broker(config)
            assert proc.stderr is not None
            drainer = asyncio.create_task(drain(proc.stderr))
            try:
                for name, concurrency in (
                    ("one at a time", 1),
                    ("keep-alive", args.concurrency),
                    ("new connection each", 4),
                ):
                    await phase(name, url, tokens, args.requests, concurrency, args.max_s, proc.pid)
            finally:
                proc.terminate()
                async with asyncio.timeout(10):
                    await proc.wait()
                drainer.cancel()
            lookup_cost(tmp)
    finally:
        upstream.terminate()
        upstream.join(5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="per phase")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--devices", type=int, default=1000, help="size of the registry")
    parser.add_argument("--max-s", type=float, default=10.0, help="time bound per phase")
    asyncio.run(main(parser.parse_args()))
