"""``kioskvoice diag``: time parsing, the whitelist projection, the counting, and the whole
command over records in a real systemd-journald with a live control socket."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import journald
from kioskvoice import diag
from kioskvoice.diag import Record, parse_since, percentile, project, summarise
from kioskvoice.system.control import ControlServer

pytestmark = pytest.mark.timeout(60)

SECRET = "sk-diag-secret-0123456789ABCDEF"
NOW = dt.datetime(2025, 3, 10, 15, 30, tzinfo=dt.UTC)


@pytest.fixture(scope="session")
def journal() -> Iterator[None]:
    reason = journald.acquire()
    if reason:
        pytest.skip(reason)
    yield
    journald.release()


# --- pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("-1h", NOW - dt.timedelta(hours=1)),
        ("-2d12h", NOW - dt.timedelta(days=2, hours=12)),
        ("30min ago", NOW - dt.timedelta(minutes=30)),
        ("-90s", NOW - dt.timedelta(seconds=90)),
        ("now", NOW),
        ("today", dt.datetime(2025, 3, 10, tzinfo=dt.UTC)),
        ("yesterday", dt.datetime(2025, 3, 9, tzinfo=dt.UTC)),
        ("@1741620600", dt.datetime(2025, 3, 10, 15, 30, tzinfo=dt.UTC)),
        ("2025-03-01 08:00+00:00", dt.datetime(2025, 3, 1, 8, tzinfo=dt.UTC)),
    ],
)
def test_since_forms(spec: str, expected: dt.datetime) -> None:
    assert parse_since(spec, NOW) == expected


def test_since_local_time_and_errors() -> None:
    local = parse_since("2025-03-01 08:00", NOW)
    assert local.tzinfo is not None and (local.hour, local.minute) == (8, 0)
    for bad in ("-1x", "last week", "-", "1h"):
        with pytest.raises(ValueError, match="cannot read time"):
            parse_since(bad, NOW)


def test_projection_keeps_only_whitelisted_fields() -> None:
    entry = {
        "MESSAGE": f"header Bearer {SECRET}",
        "KIOSKVOICE_EVENT": "disconnect",
        "KIOSKVOICE_ERROR_CODE": SECRET,  # not code-shaped: counted as "other"
        "KIOSKVOICE_SESSION": f"sess 1 {SECRET}",
        "KIOSKVOICE_TRANSCRIPT": "my card number is 4111",
        "KIOSKVOICE_LATENCY_MS": "12",
        "KIOSKVOICE_DROPPED_FRAMES": "not a number",
        "PRIORITY": 4,
        "_PID": 42,
        "_BOOT_ID": uuid.UUID(int=1),
    }
    record = project(entry)
    assert record == Record(
        event="disconnect",
        boot=str(uuid.UUID(int=1)),
        pid=42,
        priority=4,
        error_code="other",
        latency_ms=12,
        session=None,
    )
    assert project({"MESSAGE": "PortAudio noise on stderr"}) is None
    assert project({"KIOSKVOICE_EVENT": "Not An Event!"}).event == "other"


def test_percentiles_are_observed_values() -> None:
    values = list(range(10, 110, 10))  # 10..100
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 100, 100]
    assert percentile([7], 99) == 7


def _process(pid: int, *events: str | tuple[str, dict]) -> list[Record]:
    out = [Record(event="config_loaded", boot="b", pid=pid)]
    for event in events:
        name, fields = (event, {}) if isinstance(event, str) else event
        out.append(Record(event=name, boot="b", pid=pid, **fields))
    return out


def test_summary_counts() -> None:
    records = [
        *_process(
            1,
            ("connect", {"session": "sess_a"}),
            ("disconnect", {"error_code": "closed", "priority": 4}),
            ("reconnect", {"session": "sess_b"}),
            ("disconnect", {"error_code": "network"}),
            ("disconnect", {"error_code": "network"}),
            ("reconnect", {"session": "sess_c"}),
            ("rollover", {"session": "sess_d"}),
            "turn_start",
            "turn_end",
            ("reply_start", {"latency_ms": 400}),
            "barge_in",
            "turn_start",
            "too_short",
            "stopped",
        ),
        *_process(
            2,
            ("connect", {"session": "sess_e"}),
            ("stats", {"dropped_frames": 3}),
            ("stats", {"dropped_frames": 5}),  # a running total: the latest counts
            "capture_stalled",
        ),  # killed
        *_process(
            3,
            ("connect", {"session": "sess_f"}),
            ("error", {"error_code": "rate_limit_exceeded", "priority": 3}),
            "rollover_failed",
            "reply_cut",
            "turn_dropped",
            "device_lost",
            "device_back",
        ),  # still running
    ]
    running = summarise(records).to_dict(running=True)
    assert running["starts"] == 3 and running["restarts"] == 2
    assert running["unclean_exits"] == 1  # pid 2; pid 3 is the live process
    assert summarise(records).to_dict(running=False)["unclean_exits"] == 2
    assert running["sessions"] == 6 and running["rollovers"] == 1
    assert running["rollover_failures"] == 1
    assert running["reconnects"] == {"total": 2, "by_cause": {"network": 2, "closed": 1}}
    assert running["disconnects"] == 3
    assert running["turns"] == {
        "started": 2,
        "committed": 1,
        "replies": 1,
        "barge_ins": 1,
        "dropped": 1,
        "too_short": 1,
        "max_length": 0,
        "no_reply": 0,
        "replies_cut": 1,
        "replies_failed": 0,
        "presses_while_unavailable": 0,
        "silent": 0,
    }
    assert running["latency_ms"] == {"count": 1, "p50": 400, "p90": 400, "p99": 400, "max": 400}
    assert running["errors"] == {"total": 1, "by_code": {"rate_limit_exceeded": 1}}
    assert running["devices"] == {"lost": 1, "back": 1, "capture_stalls": 1, "dropped_frames": 5}
    assert running["priorities"] == {"err": 1, "warning": 1, "info": len(records) - 2}


def test_mic_suspect_shows_until_mic_ok_or_a_restart() -> None:
    silent = ["turn_start", "no_speech"] * 3

    def mic(records) -> dict:
        return summarise(records).to_dict(running=True)["mic"]

    suspect = [*_process(1, "config_loaded", *silent, "mic_suspect", "mic_clipping")]
    assert mic(suspect) == {"suspect": True, "suspect_records": 1, "clipping_turns": 1}
    counts = summarise(suspect).to_dict(running=True)
    assert counts["turns"]["silent"] == 3
    text = diag.render_text({"since": None, "running": True, "state": None, **counts})
    assert "mic:            SUSPECT" in text and "3 silent (not sent)" in text
    assert mic([*suspect, *_process(1, "mic_ok")])["suspect"] is False
    assert mic([*suspect, *_process(2, "config_loaded")])["suspect"] is False


def test_echo_shows_how_the_newest_run_started() -> None:
    """Whether the kiosk started with what its last run learnt of the room (the first reply's
    talk-over depends on it): from the dsp_delay record, which a remembered start logs just
    before config_loaded."""

    def start(records: list[Record]) -> str | None:
        return summarise(records).to_dict(running=True)["echo"]["start"]

    def rec(event: str, pid: int, **fields: object) -> Record:
        return Record(event=event, boot="b", pid=pid, **fields)  # type: ignore[arg-type]

    fresh = [rec("config_loaded", 1), rec("dsp_delay", 1), rec("dsp_delay", 1)]
    assert start(fresh) == "found"
    primed = [rec("dsp_delay", 2, remembered=True, primed=True), rec("config_loaded", 2)]
    assert start([*fresh, *primed]) == "primed"
    assert start([*fresh, *primed, rec("dsp_delay", 2)]) == "primed"  # a realign later on
    delay_only = [rec("dsp_delay", 3, remembered=True, primed=False), rec("config_loaded", 3)]
    assert start([*primed, *delay_only]) == "remembered"
    assert start([*primed, rec("config_loaded", 4)]) is None  # not from this run
    counts = summarise([*fresh, *primed]).to_dict(running=True)
    text = diag.render_text({"since": None, "running": True, "state": None, **counts})
    assert "started with the last run's delay and echo filter" in text
    entry = {"KIOSKVOICE_EVENT": "dsp_delay", "KIOSKVOICE_REMEMBERED": "true"}
    assert project({**entry, "KIOSKVOICE_PRIMED": "false"}) == Record(
        event="dsp_delay", remembered=True, primed=False
    )
    assert project({**entry, "KIOSKVOICE_PRIMED": "maybe"}).primed is None


def test_empty_summary_renders() -> None:
    counts = summarise([]).to_dict(running=False)
    report = {"since": None, "running": False, "state": None, **counts}
    text = diag.render_text(report)
    assert "not running" in text and "no replies" in text and "(no records:" in text


# --- against journald ---------------------------------------------------------------------


def _send(**fields: str | int) -> None:
    from systemd import journal

    message = str(fields.pop("MESSAGE", "x"))
    journal.send(message, **{"SYSLOG_IDENTIFIER": "kioskvoice", **fields})


def _event(event: str, **fields: str | int) -> None:
    _send(KIOSKVOICE_EVENT=event, **{f"KIOSKVOICE_{k.upper()}": v for k, v in fields.items()})


async def test_diag_over_the_journal_with_a_live_daemon(journal, tmp_path: Path, capsys) -> None:
    since = journald.now_us()
    marker = uuid.uuid4().hex
    _event("config_loaded", MESSAGE=f"kiosk started with key {SECRET}")
    _event("connect", session="sess_1")
    _event("disconnect", error_code="closed", PRIORITY=4)
    _event("reconnect", session="sess_2")
    _event("rollover", session="sess_3")
    for latency in (120, 340, 900):
        _event("turn_start", turn=1)
        _event("turn_end", turn=1)
        _event("reply_start", turn=1, latency_ms=latency)
    _event("barge_in")
    _event("transcript", MESSAGE=f"user: my key is {SECRET}", transcript=SECRET)
    _event("error", error_code="rate_limit_exceeded", PRIORITY=3)
    _event("error", error_code=SECRET, PRIORITY=3)
    _event("device_lost")
    _send(MESSAGE=f"a stderr line with {SECRET}")  # no event field: not counted
    _send(MESSAGE="someone else", SYSLOG_IDENTIFIER="other", KIOSKVOICE_EVENT="turn_start")
    _event("stopped", test_marker=marker)
    assert journald.wait_for_entries(f"KIOSKVOICE_TEST_MARKER={marker}", since_us=since)

    # A daemon answering on its control socket (with a secret where it should not be).
    socket_path = tmp_path / "control.sock"
    status = {
        "state": "idle",
        "link": "connected",
        "reconnects": 1,
        "session": "sess_3",
        "last_error": SECRET,
        "turns": 3,
        "dropped_frames": 0,
        "api_key": SECRET,
    }
    server = ControlServer(socket_path, lambda cmd, request: status)
    await server.start()
    try:
        args = ["--since", f"@{since / 1e6:.6f}", "--socket", str(socket_path)]
        code = await asyncio.to_thread(diag.main, [*args, "--json"])
        out = capsys.readouterr().out
        assert code == 0
        text_code = await asyncio.to_thread(diag.main, args)
        text = capsys.readouterr().out
        assert text_code == 0
    finally:
        await server.close()

    assert SECRET not in out and SECRET not in text
    report = json.loads(out)
    assert report["running"] is True
    assert report["state"] == {
        "state": "idle",
        "link": "connected",
        "reconnects": 1,
        "session": "sess_3",
        "last_error": "other",
        "turns": 3,
        "dropped_frames": 0,
    }
    assert report["records"] == 20
    assert report["starts"] == 1 and report["unclean_exits"] == 0
    assert report["sessions"] == 3 and report["rollovers"] == 1
    assert report["reconnects"] == {"total": 1, "by_cause": {"closed": 1}}
    assert report["turns"]["started"] == 3 and report["turns"]["replies"] == 3
    assert report["turns"]["barge_ins"] == 1
    assert report["latency_ms"] == {"count": 3, "p50": 340, "p90": 900, "p99": 900, "max": 900}
    assert report["errors"] == {"total": 2, "by_code": {"rate_limit_exceeded": 1, "other": 1}}
    assert report["devices"]["lost"] == 1
    assert "reply latency:  p50 340 ms, p90 900 ms, p99 900 ms, max 900 ms (of 3)" in text
    assert "now:            idle, link connected" in text

    # Only the unit's own records with --unit (these came from pytest, not from systemd).
    assert await asyncio.to_thread(diag.main, [*args, "--json", "--unit"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 0


def test_diag_reports_a_stopped_daemon_and_bad_times(journal, tmp_path: Path, capsys) -> None:
    env_free = ["--socket", str(tmp_path / "none.sock"), "--json", "--since", "-1s"]
    assert diag.main(env_free) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["running"] is False and report["state"] is None
    assert diag.main(["--since", "whenever"]) == 2
    assert "--since: cannot read time 'whenever'" in capsys.readouterr().err


def test_diag_reads_a_journal_directory(tmp_path: Path, capsys) -> None:
    assert diag.main(["--directory", str(tmp_path), "--json", "--socket", "/nonexistent"]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 0
