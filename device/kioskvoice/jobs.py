"""The daemon's periodic jobs that only observe: systemd's watchdog and the stats records."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .audio.resilient import ResilientAudio
from .audio.streams import FrameQueue
from .realtime.supervisor import Supervisor
from .system.logging import log_event
from .system.metrics import Metrics, write_textfile
from .system.notify import Notifier

log = logging.getLogger(__name__)

COUNTERS_S = 60.0  # overflow counters are checked this often, never logged per frame
STATS_EVERY = 10  # a stats record every STATS_EVERY * COUNTERS_S, even when all is well
# Audio making no progress this long (no capture block, and no recovery attempt either) means
# a PortAudio call is wedged: withhold the watchdog so systemd restarts us. It allows the
# 1.5 s stall detection plus a PortAudio re-initialisation, which can take a second.
PROGRESS_STALL_S = 5.0


async def watchdog(audio: ResilientAudio, notifier: Notifier, interval_s: float) -> None:
    """Pet systemd's watchdog only while the loop runs (this task) and audio makes progress
    (capture flows, or recovery from a lost device keeps trying)."""
    stalled = False
    while True:
        await asyncio.sleep(interval_s)
        if time.monotonic() - audio.last_progress_at < PROGRESS_STALL_S:
            notifier.watchdog()
            stalled = False
        elif not stalled:
            stalled = True
            log_event(
                log,
                logging.ERROR,
                "capture_stalled",
                "no audio from the capture device; withholding the watchdog",
            )


async def stats(
    frames: FrameQueue, supervisor: Supervisor, status: Callable[[], dict[str, Any]]
) -> None:
    """Counters that would be per-frame noise, logged as ``stats`` records: at once (as a
    warning) when audio was dropped — capture frames (the loop fell behind) or appends (the
    outbox was full: the network stalls) — and every ``STATS_EVERY`` checks anyway."""
    last = (0, 0)
    dropped_appends = 0
    for check in itertools.count(1):
        await asyncio.sleep(COUNTERS_S)
        link = supervisor.link
        if link is not None:
            dropped_appends += link.dropped
            link.dropped = 0
        now = (frames.dropped, dropped_appends)
        if now != last or check % STATS_EVERY == 0:
            current = status()
            log_event(
                log,
                logging.WARNING if now != last else logging.INFO,
                "stats",
                f"{current['turns']} turns, {now[0]} capture frames and {now[1]} appends "
                "dropped so far",
                turns=current["turns"],
                reconnects=current["reconnects"],
                rollovers=current["rollovers"],
                dropped_frames=now[0],
                dropped_appends=now[1],
            )
            last = now


async def metrics(
    collector: Metrics, directory: Path, interval_s: float, status: Callable[[], dict[str, Any]]
) -> None:
    """Write the metrics file every ``interval_s``; off (one record) when ``directory`` does
    not exist, and one warning (not one per write) while it cannot be written."""
    if not await asyncio.to_thread(directory.is_dir):
        log.info("metrics off: %s does not exist (metrics.textfile_dir)", directory)
        return
    failing = False
    while True:
        try:
            await asyncio.to_thread(write_textfile, directory, collector.render(status()))
            failing = False
        except OSError as exc:
            if not failing:
                log.warning("cannot write metrics into %s: %s", directory, exc.strerror or exc)
            failing = True
        await asyncio.sleep(interval_s)
