"""Kiosk metrics for Prometheus, through node_exporter's textfile collector.

The metrics listen to the daemon's own journal records (a logging handler): every count a
fleet dashboard shows is a count of records an operator can also read with journalctl, so the
two never disagree. Gauges (state, link) come from the daemon's status when the file is
written. The file is written atomically (a temporary file renamed over it) every
``metrics.interval_s`` into ``metrics.textfile_dir``; a kiosk opens no port for it.

Names follow Prometheus' conventions (``kioskvoice_..._total`` counters, base units,
``_seconds``); labels take only values from fixed sets, never ids, transcripts or secrets.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..promtext import Histogram, family, number
from .logging import FIELD_PREFIX

FILE_NAME = "kioskvoice.prom"
STATES = ("idle", "listening", "thinking", "speaking", "offline", "error")
APOLOGIES = ("reply_failed", "no_reply", "reply_cut")
OUTCOMES = ("answered", "apology", "dropped", "silent", "too_short")
REPLY_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)
PLAYBACK_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

# Counters fed by one record each: event -> (metric, help).
_COUNTED = {
    "barge_in": ("kioskvoice_barge_ins_total", "Replies interrupted by the visitor."),
    "reconnect": (
        "kioskvoice_reconnects_total",
        "Realtime sessions re-established after a failure.",
    ),
    "rollover": ("kioskvoice_rollovers_total", "Sessions rolled over before their cap."),
    "device_lost": ("kioskvoice_device_losses_total", "Audio devices lost (unplugged, stalled)."),
    "mic_clipping": ("kioskvoice_mic_clipping_turns_total", "Turns in which the mic clipped."),
}
_OUTCOME_OF = {
    "reply_start": "answered",
    "turn_dropped": "dropped",
    "no_speech": "silent",
    "too_short": "too_short",
    **dict.fromkeys(APOLOGIES, "apology"),
}


class Metrics(logging.Handler):
    """Counts the daemon's records. Thread-safe (records come from the loop and from the
    audio supervisor's thread); :meth:`render` gives the exposition text."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self._lock_ = threading.Lock()
        self.counters: dict[str, int] = dict.fromkeys((m for m, _ in _COUNTED.values()), 0)
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.apologies = dict.fromkeys(APOLOGIES, 0)
        self.fatal_errors = 0
        self.capture_overruns = 0
        self.mic_suspect = False
        self.echo_reduction_db = math.nan  # the last echo_stats record's; NaN until one
        self.reply_latency = Histogram(REPLY_BUCKETS)
        self.playback_latency = Histogram(PLAYBACK_BUCKETS)

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, f"{FIELD_PREFIX}EVENT", None)
        if not isinstance(event, str):
            return
        with self._lock_:
            self._count(event, record)

    def _count(self, event: str, record: logging.LogRecord) -> None:
        field = lambda name: getattr(record, f"{FIELD_PREFIX}{name}", None)  # noqa: E731
        if event in _COUNTED:
            self.counters[_COUNTED[event][0]] += 1
        if event in _OUTCOME_OF:
            self.outcomes[_OUTCOME_OF[event]] += 1
        if event in APOLOGIES:
            self.apologies[event] += 1
        if event == "reply_start" and isinstance(latency := field("LATENCY_MS"), int | float):
            self.reply_latency.observe(latency / 1000)
        elif event == "playback_start" and isinstance(latency := field("LATENCY_MS"), int | float):
            self.playback_latency.observe(latency / 1000)
        elif event == "disconnect" and record.levelno >= logging.ERROR:
            self.fatal_errors += 1  # the fatal causes: key, quota, model (see the catalog)
        elif event == "stats" and isinstance(dropped := field("DROPPED_FRAMES"), int):
            self.capture_overruns = dropped  # a running total already
        elif event == "echo_stats" and isinstance(erle := field("ERLE_DB"), int | float):
            self.echo_reduction_db = float(erle)
        elif event in ("mic_suspect", "mic_ok"):
            self.mic_suspect = event == "mic_suspect"

    def render(self, status: Mapping[str, Any]) -> str:
        """The exposition text, with ``status`` (``ctl status``'s) for the gauges."""
        with self._lock_:
            return "\n".join(self._lines(status)) + "\n"

    def _lines(self, status: Mapping[str, Any]) -> list[str]:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[str]) -> None:
            out.extend(family(name, kind, help_, samples))

        metric("kioskvoice_up", "gauge", "1 while the kiosk daemon runs.", ["kioskvoice_up 1"])
        state = status.get("state")
        metric(
            "kioskvoice_state",
            "gauge",
            "The kiosk's state: 1 for the current one.",
            [f'kioskvoice_state{{state="{s}"}} {int(s == state)}' for s in STATES],
        )
        metric(
            "kioskvoice_link_up",
            "gauge",
            "1 while a configured Realtime session is connected.",
            [f"kioskvoice_link_up {int(status.get('link') == 'connected')}"],
        )
        metric(
            "kioskvoice_turns_total",
            "counter",
            "Visitor turns by how they ended for the visitor.",
            [f'kioskvoice_turns_total{{outcome="{o}"}} {n}' for o, n in self.outcomes.items()],
        )
        metric(
            "kioskvoice_apologies_total",
            "counter",
            "Spoken apologies by why: the reply failed, never started, or was cut off.",
            [f'kioskvoice_apologies_total{{reason="{r}"}} {n}' for r, n in self.apologies.items()],
        )
        for name, help_ in _COUNTED.values():
            metric(name, "counter", help_, [f"{name} {self.counters[name]}"])
        metric(
            "kioskvoice_fatal_errors_total",
            "counter",
            "Link failures only an operator can fix (key, quota, model).",
            [f"kioskvoice_fatal_errors_total {self.fatal_errors}"],
        )
        metric(
            "kioskvoice_capture_overruns_total",
            "counter",
            "Captured audio frames dropped because the loop fell behind.",
            [f"kioskvoice_capture_overruns_total {self.capture_overruns}"],
        )
        metric(
            "kioskvoice_mic_suspect",
            "gauge",
            "1 while the microphone looks muted, dead or unplugged.",
            [f"kioskvoice_mic_suspect {int(self.mic_suspect)}"],
        )
        metric(
            "kioskvoice_echo_reduction_db",
            "gauge",
            "Echo reduction the kiosk measured on itself during its last reply, dB (NaN: none).",
            [f"kioskvoice_echo_reduction_db {number(self.echo_reduction_db)}"],
        )
        metric(
            "kioskvoice_reply_latency_seconds",
            "histogram",
            "From the end of the visitor's turn to the first audio of the reply.",
            self.reply_latency.lines("kioskvoice_reply_latency_seconds"),
        )
        metric(
            "kioskvoice_playback_latency_seconds",
            "histogram",
            "From the first audio of a reply to its first sample handed to the speaker.",
            self.playback_latency.lines("kioskvoice_playback_latency_seconds"),
        )
        return out


def write_textfile(directory: Path, text: str) -> None:
    """Replace ``directory/kioskvoice.prom`` atomically: node_exporter never reads half."""
    tmp = directory / f".{FILE_NAME}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)  # node_exporter reads it as another user; the unit's UMask is 0077
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, directory / FILE_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
