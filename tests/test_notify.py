"""sd_notify: the Notifier against a real datagram socket, and the daemon's READY / WATCHDOG /
STOPPING as systemd would receive them, including a real capture stall (an ALSA file PCM whose
input is a FIFO nobody writes: PortAudio's read blocks, as on an unplugged USB device)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import test_e2e
from kioskvoice.audio.resilient import STALL_S
from kioskvoice.jobs import PROGRESS_STALL_S
from kioskvoice.system.notify import Notifier
from test_e2e import cli, start_daemon

pytestmark = pytest.mark.timeout(60)

WATCHDOG_USEC = 2_000_000
# The end-to-end tests' daemon environment (simulator, wav: devices, mock GPIO, socket path).
daemon_env = test_e2e.daemon_env


class Listener:
    """A bound ``AF_UNIX`` datagram socket recording what arrives, with monotonic times."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()

    def times(self, line: str, after: float = 0.0) -> list[float]:
        """When datagrams containing the line ``line`` arrived (after ``after``)."""
        with self._lock:
            return [t for t, m in self.messages if line in m.splitlines() and t > after]

    async def wait_for(self, line: str, timeout_s: float) -> float:
        async with asyncio.timeout(timeout_s):
            while not (found := self.times(line)):
                await asyncio.sleep(0.02)
        return found[0]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:
        pytest.skip("temporary path too long for a unix socket")
    listen = Listener(str(path))
    yield listen
    listen.close()


# --- the Notifier ---------------------------------------------------------------------------


def test_notifier_sends_the_protocol_lines(listener: Listener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "30000000"})
    assert notifier.enabled
    assert notifier.watchdog_interval_s == pytest.approx(13.5)  # a little under half of 30 s
    notifier.ready("offline, link connecting")
    notifier.status("idle, link connected")
    notifier.watchdog()
    notifier.stopping()
    deadline = time.monotonic() + 2
    while len(listener.messages) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [m for _, m in listener.messages] == [
        "READY=1\nSTATUS=offline, link connecting",
        "STATUS=idle, link connected",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"kioskvoice-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        Notifier({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"


def test_notifier_outside_systemd_is_silent() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled and notifier.watchdog_interval_s is None
    notifier.ready("idle")  # nothing to send to, nothing raised


def test_watchdog_for_another_pid_is_not_ours(listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "30000000"}
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 13.5
    assert Notifier({**env, "WATCHDOG_USEC": "0"}).watchdog_interval_s is None


def test_vanished_socket_disables_with_one_warning(tmp_path: Path, caplog) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    with caplog.at_level(logging.WARNING, logger="kioskvoice.system.notify"):
        notifier.watchdog()
        notifier.watchdog()
    assert not notifier.enabled
    assert len(caplog.records) == 1 and "sd_notify failed" in caplog.records[0].getMessage()


# --- the daemon -----------------------------------------------------------------------------


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def _terminate(proc: asyncio.subprocess.Process) -> tuple[int | None, str]:
    """SIGTERM, then wait up to 5 s (the unit's promise); kill if it does not stop."""
    proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(5):
            _, stderr = await proc.communicate()
        return proc.returncode, stderr.decode()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None, ""


async def test_daemon_ready_watchdog_and_stopping(listener, daemon_env, tmp_path) -> None:
    env = {**daemon_env, "NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    started = time.monotonic()
    proc = await start_daemon(env, tmp_path)
    try:
        ready = await listener.wait_for("READY=1", timeout_s=5)
        assert ready - started < 3.0
        await asyncio.sleep(4.0)
        pings = listener.times("WATCHDOG=1")
        assert len(pings) >= 4, pings
        # Every second at least, from READY on (systemd would kill after 2 s of silence).
        assert max(_gaps([ready, *pings, time.monotonic()])) <= 1.0, _gaps([ready, *pings])
        sigterm = time.monotonic()
        code, stderr = await _terminate(proc)
        assert code == 0, stderr
        assert time.monotonic() - sigterm < 5
        assert listener.times("STOPPING=1", after=sigterm)
        statuses = [m for _, m in listener.messages if m.startswith("STATUS=")]
        assert any("link connected" in s for s in statuses), statuses
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_config_error_exits_78_before_ready(listener, daemon_env, tmp_path) -> None:
    env = {
        **daemon_env,
        "NOTIFY_SOCKET": listener.path,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "KIOSKVOICE_AUDIO__FRAME_MS": "15",
    }
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    code, _, err = await cli("run", "--config", str(empty), env=env)
    assert code == 78
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "audio.frame_ms" in lines[0], err
    await asyncio.sleep(0.2)  # let any stray datagram arrive
    assert listener.messages == []  # no READY, nor anything else


class FifoFeeder:
    """Writes silence into a FIFO in real time while ``flowing`` is set."""

    def __init__(self, path: Path, block: bytes, period_s: float) -> None:
        self.fd = os.open(path, os.O_RDWR)  # never blocks; keeps the FIFO open for ALSA
        self.flowing = threading.Event()
        self._block = block
        self._period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic()
        while not self._stop.is_set():
            if self.flowing.is_set():
                os.write(self.fd, self._block)
            deadline += self._period_s
            self._stop.wait(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.fd)  # the reader now sees end of file: a blocked read returns


@pytest.fixture
def alsa_fifo_home(tmp_path: Path) -> Path:
    """An ALSA `file` PCM named `kiosk` whose capture data comes from the FIFO `in.raw`."""
    os.mkfifo(tmp_path / "in.raw")
    (tmp_path / ".asoundrc").write_text(
        f'pcm.kioskmic {{ type file slave.pcm "null" file "{tmp_path}/out.raw" '
        f'infile "{tmp_path}/in.raw" format "raw" }}\n'
        'pcm.kiosk { type plug slave.pcm "kioskmic" }\n'
    )
    return tmp_path


async def test_capture_stall_withholds_the_watchdog(
    listener, daemon_env, alsa_fifo_home: Path, tmp_path: Path
) -> None:
    feeder = FifoFeeder(alsa_fifo_home / "in.raw", bytes(640), 0.02)  # 16 kHz mono, 20 ms
    feeder.flowing.set()
    env = {
        **daemon_env,
        "HOME": str(alsa_fifo_home),
        "KIOSKVOICE_AUDIO__INPUT_DEVICE": "kiosk",
        "NOTIFY_SOCKET": listener.path,
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
    }
    proc = await start_daemon(env, tmp_path)
    try:
        await listener.wait_for("READY=1", timeout_s=5)
        await asyncio.sleep(2.5)
        assert len(listener.times("WATCHDOG=1")) >= 2  # capture flows: pings

        feeder.flowing.clear()  # PortAudio's read now blocks in the ALSA plugin
        stalled = time.monotonic()
        # Lost after 1.5 s without frames; the wedged read then blocks recovery too, so
        # progress stops and the watchdog is withheld after PROGRESS_STALL_S more: the
        # 6.5 s the README and the catalog promise (plus one ping interval of slack).
        assert STALL_S + PROGRESS_STALL_S == 6.5
        withheld_by = 6.5 + WATCHDOG_USEC / 2e6
        await asyncio.sleep(withheld_by + 2.0)
        late = listener.times("WATCHDOG=1", after=stalled + withheld_by)
        assert late == [], "the watchdog was petted while capture was wedged"

        feeder.flowing.set()  # the device is back: recovery completes, pings resume
        resumed = time.monotonic()
        await asyncio.sleep(4.0)
        assert listener.times("WATCHDOG=1", after=resumed)

        code, stderr = await _terminate(proc)
        assert code == 0, stderr
        assert stderr.count("event=device_lost") == 1, stderr
        assert stderr.count("capture_stalled") == 1, stderr
    finally:
        feeder.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
