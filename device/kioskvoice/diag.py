"""``kioskvoice diag``: what the kiosk has been doing, from the journal. Made for
``ssh kiosk kioskvoice diag``.

Reads kioskvoice's records (``SYSLOG_IDENTIFIER=kioskvoice``) with systemd-python's
``journal.Reader`` and summarises starts and unclean exits, sessions and rollovers, reconnects
by cause, turns, reply latency percentiles, barge-ins, dropped turns, errors by code and device
trouble; the current state comes from the control socket when the daemon runs.

Redacted by construction: each journal entry is first projected onto :class:`Record`, which
holds only whitelisted structured fields (event name, error code, latency, process ids); codes
must look like codes (:data:`_CODE`) or are counted as ``other``. ``MESSAGE`` and every other
free-text field are never read, so no secret, transcript or stray text can reach the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .system.logging import FIELD_PREFIX, SYSLOG_IDENTIFIER

UNIT = "kioskvoice.service"
# What an error code may look like to be shown as is: lower-case words. A value that looks
# like anything else (a key, a URL, a sentence) is counted under "other".
_CODE = re.compile(r"[a-z][a-z0-9_.]{0,63}")
_STATUS_KEYS = ("state", "link", "reconnects", "session", "last_error", "turns", "dropped_frames")
_SESSION = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_PRIORITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True, slots=True)
class Record:
    """The whitelisted part of one journal entry; nothing else is ever read."""

    event: str
    boot: str = ""
    pid: int = 0
    priority: int = 6
    error_code: str | None = None
    latency_ms: int | None = None
    session: str | None = None
    dropped_frames: int | None = None
    erle_db: float | None = None
    residual_dbfs: float | None = None
    remembered: bool | None = None
    primed: bool | None = None


def _flag(value: Any) -> bool | None:
    return {"true": True, "false": False}.get(str(value)) if value is not None else None


def _code(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    return text if _CODE.fullmatch(text) else "other"


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def project(entry: Mapping[str, Any]) -> Record | None:
    """The :class:`Record` of a journal entry, or None when it carries no kioskvoice event
    (stderr lines, foreign records)."""
    event = _code(entry.get(f"{FIELD_PREFIX}EVENT"))
    if event is None:
        return None
    session = entry.get(f"{FIELD_PREFIX}SESSION")
    priority = _int(entry.get("PRIORITY"))
    return Record(
        event=event,
        boot=str(entry.get("_BOOT_ID", "")),
        pid=_int(entry.get("_PID")) or 0,
        priority=priority if priority is not None and 0 <= priority <= 7 else 6,
        error_code=_code(entry.get(f"{FIELD_PREFIX}ERROR_CODE")),
        latency_ms=_int(entry.get(f"{FIELD_PREFIX}LATENCY_MS")),
        session=str(session) if session and _SESSION.fullmatch(str(session)) else None,
        dropped_frames=_int(entry.get(f"{FIELD_PREFIX}DROPPED_FRAMES")),
        erle_db=_float(entry.get(f"{FIELD_PREFIX}ERLE_DB")),
        residual_dbfs=_float(entry.get(f"{FIELD_PREFIX}RESIDUAL_DBFS")),
        remembered=_flag(entry.get(f"{FIELD_PREFIX}REMEMBERED")),
        primed=_flag(entry.get(f"{FIELD_PREFIX}PRIMED")),
    )


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile of an ascending, non-empty sequence (an observed value)."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class Summary:
    """Counts over a sequence of records, in journal order."""

    records: int = 0
    events: Counter[str] = field(default_factory=Counter)
    disconnect_causes: Counter[str] = field(default_factory=Counter)
    error_codes: Counter[str] = field(default_factory=Counter)
    priorities: Counter[str] = field(default_factory=Counter)
    latencies: list[int] = field(default_factory=list)
    starts: list[tuple[str, int]] = field(default_factory=list)
    stopped: set[tuple[str, int]] = field(default_factory=set)
    dropped_frames: dict[tuple[str, int], int] = field(default_factory=dict)
    mic_suspect: bool = False  # the newest mic_suspect has no mic_ok (or restart) after it
    echo: tuple[float, float] | None = None  # the newest echo_stats: (erle_db, residual_dbfs)
    # How the newest process aligned its echo canceller: "primed" (the last run's delay and
    # filter), "remembered" (its delay only), "found" (in a reply), None (not yet).
    echo_start: str | None = None
    echo_process: tuple[str, int] | None = None  # the process that said so

    def add(self, record: Record) -> None:
        self.records += 1
        self.events[record.event] += 1
        self.priorities[_PRIORITIES[record.priority]] += 1
        process = (record.boot, record.pid)
        match record.event:
            case "config_loaded":
                self.starts.append(process)
                self.mic_suspect = False  # a new process counts silent turns afresh
                if self.echo_process != process:  # (a remembered delay is logged before)
                    self.echo_start = None
            case "dsp_delay":
                found = "primed" if record.primed else "remembered" if record.remembered else None
                if found is None and self.echo_process == process and self.echo_start:
                    found = self.echo_start  # a realign later in a run: it started as it did
                self.echo_start, self.echo_process = found or "found", process
            case "mic_suspect" | "mic_ok":
                self.mic_suspect = record.event == "mic_suspect"
            case "stopped":
                self.stopped.add(process)
            case "disconnect":
                self.disconnect_causes[record.error_code or "unknown"] += 1
            case "error":
                self.error_codes[record.error_code or "unknown"] += 1
            case "echo_stats" if record.erle_db is not None and record.residual_dbfs is not None:
                self.echo = (record.erle_db, record.residual_dbfs)
            case "reply_start" if record.latency_ms is not None and record.latency_ms >= 0:
                self.latencies.append(record.latency_ms)
        if record.dropped_frames is not None:
            # A per-process running total (periodic counters): keep each process's latest.
            self.dropped_frames[process] = record.dropped_frames

    def to_dict(self, *, running: bool) -> dict[str, Any]:
        """The summary as JSON-ready data. ``running``: the daemon answers on its socket, so
        the newest start without a stop is the live process, not an unclean exit."""
        e = self.events
        unclean = [p for p in self.starts if p not in self.stopped]
        if running and unclean and unclean[-1] == self.starts[-1]:
            unclean.pop()
        latencies = sorted(self.latencies)
        latency: dict[str, Any] = {"count": len(latencies)}
        if latencies:
            latency.update({f"p{p}": percentile(latencies, p) for p in PERCENTILES})
            latency["max"] = latencies[-1]
        return {
            "records": self.records,
            "starts": len(self.starts),
            "restarts": max(0, len(self.starts) - 1),
            "unclean_exits": len(unclean),
            "sessions": e["connect"] + e["reconnect"] + e["rollover"],
            "rollovers": e["rollover"],
            "rollover_failures": e["rollover_failed"],
            "reconnects": {
                "total": e["reconnect"],
                "by_cause": dict(self.disconnect_causes.most_common()),
            },
            "disconnects": e["disconnect"],
            "turns": {
                "started": e["turn_start"],
                "committed": e["turn_end"],
                "replies": e["reply_start"],
                "barge_ins": e["barge_in"],
                "dropped": e["turn_dropped"],
                "too_short": e["too_short"],
                "max_length": e["max_turn"],
                "no_reply": e["no_reply"],
                "replies_cut": e["reply_cut"],
                "replies_failed": e["reply_failed"],
                "presses_while_unavailable": e["unavailable"],
                "silent": e["no_speech"],
            },
            "mic": {
                "suspect": self.mic_suspect,
                "suspect_records": e["mic_suspect"],
                "clipping_turns": e["mic_clipping"],
            },
            "latency_ms": latency,
            "echo": {
                "replies_measured": e["echo_stats"],
                "erle_db": self.echo[0] if self.echo else None,
                "residual_dbfs": self.echo[1] if self.echo else None,
                "start": self.echo_start,
            },
            "errors": {
                "total": sum(self.error_codes.values()),
                "by_code": dict(self.error_codes.most_common()),
            },
            "devices": {
                "lost": e["device_lost"],
                "back": e["device_back"],
                "capture_stalls": e["capture_stalled"],
                "dropped_frames": sum(self.dropped_frames.values()),
            },
            "priorities": {p: self.priorities[p] for p in _PRIORITIES if self.priorities[p]},
        }


def summarise(records: Iterable[Record]) -> Summary:
    summary = Summary()
    for record in records:
        summary.add(record)
    return summary


# --- reading the journal ------------------------------------------------------------------

_RELATIVE = re.compile(r"(\d+)\s*(weeks|week|days|day|min|sec|us|ms|hr|w|d|h|m|s)")
_UNIT_S = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "hr": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """A time in journalctl's forms: ``-1h``, ``-2d12h``, ``30min ago``, ``@EPOCH``, ``now``,
    ``today``, ``yesterday``, ``YYYY-MM-DD[ HH:MM[:SS]]`` (local time). Raises ValueError."""
    now = now or dt.datetime.now().astimezone()
    spec = text.strip()
    if spec == "now":
        return now
    if spec in ("today", "yesterday"):
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight - dt.timedelta(days=1 if spec == "yesterday" else 0)
    if spec.startswith("@"):
        return dt.datetime.fromtimestamp(float(spec[1:]), dt.UTC)
    relative = spec.removeprefix("-").removesuffix("ago").strip()
    if relative != spec and relative:
        seconds, pos = 0.0, 0
        for match in _RELATIVE.finditer(relative):
            if relative[pos : match.start()].strip():
                break
            seconds += int(match.group(1)) * _UNIT_S[match.group(2)]
            pos = match.end()
        if pos == len(relative):
            return now - dt.timedelta(seconds=seconds)
    try:
        when = dt.datetime.fromisoformat(spec)
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r} (try -1h, '30min ago', today, 2025-01-31 08:00)"
        ) from None
    return when if when.tzinfo else when.astimezone()


def read_records(
    *, since: dt.datetime | None = None, directory: Path | None = None, unit: str | None = None
) -> Iterator[Record]:
    """kioskvoice's records from the local journal (or ``directory``), oldest first, from
    ``since`` on; only those of ``unit`` when given."""
    from systemd import journal

    # Timestamps stay integers (microseconds): the default converter makes naive datetimes.
    reader = journal.Reader(
        path=str(directory) if directory else None, converters={"__REALTIME_TIMESTAMP": int}
    )
    start_us = int(since.timestamp() * 1_000_000) if since is not None else 0
    try:
        reader.add_match(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
        if unit:
            reader.add_match(_SYSTEMD_UNIT=unit)
        if since is not None:
            reader.seek_realtime(since.timestamp())
        else:
            reader.seek_head()
        for entry in reader:
            if entry.get("__REALTIME_TIMESTAMP", 0) < start_us:
                continue
            record = project(entry)
            if record is not None:
                yield record
    finally:
        reader.close()


def current_state(socket_path: Path | None, config: Path | None) -> dict[str, Any] | None:
    """The running daemon's status (whitelisted keys), or None when it does not answer."""
    from .errors import ControlError
    from .system.control_client import DEFAULT_SOCKET, request
    from .system.control_client import socket_path as configured_socket

    if socket_path is None:
        try:
            socket_path = configured_socket(config)
        except ControlError:
            socket_path = DEFAULT_SOCKET  # an unreadable config: the default place
    try:
        reply = request(socket_path, "status", timeout_s=3.0)
    except ControlError:
        return None
    if not reply.get("ok"):
        return None
    state: dict[str, Any] = {}
    for key in _STATUS_KEYS:
        value = reply.get(key)
        if value is None or isinstance(value, bool | int | float):
            state[key] = value
        elif key == "session":
            state[key] = value if _SESSION.fullmatch(str(value)) else "other"
        else:
            state[key] = _code(value)
    return state


# --- the command --------------------------------------------------------------------------


def add_parser(subparsers: Any) -> None:
    """Register ``diag`` on the ``kioskvoice`` command's subparsers."""
    p = subparsers.add_parser(
        "diag",
        help="summarise the kiosk's journal: restarts, reconnects, turns, latency, errors",
        description="Summarise kioskvoice's journal records. Prints counts and codes only, "
        "never message text, so the output is safe to share.",
    )
    p.add_argument(
        "--since",
        default=None,
        metavar="TIME",
        help="only records from TIME on (-1h, '2d ago', today, 2025-01-31 08:00, @EPOCH)",
    )
    # Let "--since -1h" work as with journalctl: argparse takes "-1h" for an option unless it
    # looks like a negative number to this parser, which has no options starting with a digit.
    if hasattr(p, "_negative_number_matcher"):
        p._negative_number_matcher = re.compile(r"^-\d")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--unit",
        nargs="?",
        const=UNIT,
        default=None,
        metavar="UNIT",
        help=f"only records of the systemd unit (default {UNIT})",
    )
    p.add_argument(
        "--directory", type=Path, default=None, metavar="DIR", help="read journal files in DIR"
    )
    p.add_argument("--socket", type=Path, default=None, help="control socket path")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="config file naming the control socket (default /etc/kioskvoice/kioskvoice.toml)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the summary; 0 on success, 2 for an unreadable ``--since``, 1 when the journal
    cannot be read."""
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"kioskvoice diag: --since: {exc}", file=sys.stderr)
        return 2
    try:
        summary = summarise(read_records(since=since, directory=args.directory, unit=args.unit))
    except OSError as exc:
        print(f"kioskvoice diag: cannot read the journal: {exc.strerror or exc}", file=sys.stderr)
        return 1
    state = current_state(args.socket, args.config)
    report = {
        "since": since.isoformat() if since else None,
        "running": state is not None,
        "state": state,
        **summary.to_dict(running=state is not None),
    }
    try:
        print(json.dumps(report, indent=2) if args.json else render_text(report), flush=True)
    except BrokenPipeError:  # "kioskvoice diag | head": the reader left; not worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in counts.items()) or "none"


def render_text(report: Mapping[str, Any]) -> str:
    """The report for a terminal."""
    state = report["state"]
    if state is None:
        now = "not running (no answer on the control socket)"
    else:
        now = (
            f"{state['state']}, link {state['link']}, {state['reconnects']} reconnects, "
            f"last error {state['last_error'] or 'none'}"
        )
    t, lat, r = report["turns"], report["latency_ms"], report["reconnects"]
    latency = "no replies"
    if lat["count"]:
        latency = ", ".join(f"p{p} {lat[f'p{p}']} ms" for p in PERCENTILES)
        latency += f", max {lat['max']} ms (of {lat['count']})"
    d, mic = report["devices"], report["mic"]
    health = (
        "SUSPECT: silent turns in a row (muted, dead or unplugged? run kioskvoice selftest)"
        if mic["suspect"]
        else "ok"
    )
    echo = report["echo"]
    echo_line = "not measured yet (no reply long enough)"
    if echo["erle_db"] is not None:
        echo_line = (
            f"last reply {echo['erle_db']:.1f} dB reduction, residual "
            f"{echo['residual_dbfs']:.0f} dBFS ({echo['replies_measured']} replies measured)"
        )
    echo_line += {
        "primed": "; started with the last run's delay and echo filter",
        "remembered": "; started with the last run's delay (no filter kept)",
        "found": "; delay found in a reply (nothing kept from a last run)",
    }.get(echo.get("start") or "", "")
    lines = [
        f"kioskvoice diag: {report['records']} records since "
        f"{report['since'] or 'the start of the journal'}",
        f"now:            {now}",
        f"starts:         {report['starts']} ({report['restarts']} restarts, "
        f"{report['unclean_exits']} unclean exits)",
        f"sessions:       {report['sessions']} ({report['rollovers']} rollovers, "
        f"{report['rollover_failures']} failed)",
        f"reconnects:     {r['total']} (disconnect causes: {_counts(r['by_cause'])})",
        f"turns:          {t['started']} started, {t['committed']} sent, {t['replies']} replies, "
        f"{t['barge_ins']} barge-ins, {t['dropped']} dropped, {t['too_short']} too short, "
        f"{t['silent']} silent (not sent)",
        f"failed replies: {t['no_reply']} never came, {t['replies_cut']} cut off, "
        f"{t['replies_failed']} failed; {t['presses_while_unavailable']} presses while "
        "unavailable",
        f"reply latency:  {latency}",
        f"mic:            {health}; {mic['suspect_records']} suspect records, "
        f"{mic['clipping_turns']} clipping turns",
        f"echo:           {echo_line}",
        f"errors:         {_counts(report['errors']['by_code'])}",
        f"devices:        {d['lost']} lost, {d['back']} back, {d['capture_stalls']} capture "
        f"stalls, {d['dropped_frames']} frames dropped",
    ]
    if report["records"] == 0:
        lines.append(
            "(no records: is the daemon logging to the journal, and may you read it? "
            "root or the systemd-journal group can)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``kioskvoice diag`` on its own (tests, ``python -m kioskvoice.diag``)."""
    parser = argparse.ArgumentParser(prog="kioskvoice")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["diag", *(argv or [])])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
