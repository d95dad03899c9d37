"""Structured logging to journald: the handler's fields, the choice of target, the fallback,
and the daemon's records in a real systemd-journald after a push-to-talk turn (with
``kioskvoice diag`` reading them back)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

import journald
import test_e2e
from conftest import TEST_KEY
from kioskvoice.system import logging as klogging
from kioskvoice.system.catalog import ENTRIES, MESSAGE_IDS
from kioskvoice.system.logging import (
    REDACTOR,
    JournalHandler,
    log_event,
    setup_logging,
    stream_is_journal,
)
from kioskvoice.wavio import write_wav
from test_e2e import cli, wait_status

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
daemon_env = test_e2e.daemon_env  # the end-to-end tests' daemon environment (a fixture)


@pytest.fixture(scope="session")
def journal() -> Iterator[None]:
    reason = journald.acquire()
    if reason:
        pytest.skip(reason)
    yield
    journald.release()


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _record(event: str, message: str, level: int = logging.INFO, **fields) -> logging.LogRecord:
    extra = {"KIOSKVOICE_EVENT": event, **{f"KIOSKVOICE_{k.upper()}": v for k, v in fields.items()}}
    record = logging.getLogger("kioskvoice.test").makeRecord(
        "kioskvoice.test", level, __file__, 10, message, None, None, extra=extra
    )
    return record


# --- the handler, without journald ------------------------------------------------------------


def test_entry_carries_identifier_priority_fields_and_message_id() -> None:
    sent: list[tuple[str, ...]] = []
    handler = JournalHandler(send=lambda *fields: sent.append(fields))
    handler.addFilter(REDACTOR)
    secret = "sk-journal-0123456789abcdef"
    REDACTOR.add([secret])
    logger = logging.getLogger("kioskvoice.test.entry")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        log_event(
            logger,
            logging.WARNING,
            "disconnect",
            f"link down with Bearer {secret}",
            error_code="closed",
            session="sess_abc",
        )
        logger.info("plain line, no event")
    finally:
        logger.removeHandler(handler)
    fields = dict(line.split("=", 1) for line in sent[0])
    assert fields["SYSLOG_IDENTIFIER"] == "kioskvoice"
    assert fields["PRIORITY"] == "4"
    assert fields["KIOSKVOICE_EVENT"] == "disconnect"
    assert fields["KIOSKVOICE_ERROR_CODE"] == "closed"
    assert fields["KIOSKVOICE_SESSION"] == "sess_abc"
    assert fields["MESSAGE_ID"] == MESSAGE_IDS["disconnect"].hex
    assert fields["MESSAGE"] == "link down with Bearer ****"
    assert fields["CODE_FUNC"] == "test_entry_carries_identifier_priority_fields_and_message_id"
    # Only upper-case journal fields: nothing of the LogRecord's own attributes leaks.
    assert all(name.isupper() for name in fields), fields
    assert secret not in repr(sent)
    plain = dict(line.split("=", 1) for line in sent[1])
    assert "MESSAGE_ID" not in plain and "KIOSKVOICE_EVENT" not in plain
    assert plain["PRIORITY"] == "6"


def test_traceback_goes_into_the_message() -> None:
    handler = JournalHandler(send=lambda *f: None)
    try:
        raise ValueError("bad frame")
    except ValueError:
        record = logging.getLogger("kioskvoice.test").makeRecord(
            "kioskvoice.test", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    message = handler.entry(record)[0]
    assert message.startswith("MESSAGE=failed\nTraceback") and "ValueError: bad frame" in message


def test_journald_outage_falls_back_to_stderr_with_one_warning() -> None:
    stream = io.StringIO()
    up = False

    def send(*fields: str) -> None:
        if not up:
            raise ConnectionRefusedError(111, "Connection refused")

    handler = JournalHandler(send=send, fallback=stream)
    handler.handle(_record("turn_start", "listening", turn=1))
    handler.handle(_record("turn_end", "committed", turn=1))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and "journald unavailable (Connection refused)" in lines[0]
    assert "[event=turn_start turn=1]" in lines[1] and "[event=turn_end turn=1]" in lines[2]
    up = True
    handler.handle(_record("reply_start", "reply", latency_ms=5))
    up = False
    handler.handle(_record("reply_end", "done"))  # a new outage: warned again
    assert stream.getvalue().count("journald unavailable") == 2


def test_catalog_file_is_generated_from_the_catalog_module() -> None:
    from kioskvoice.system.catalog import render_catalog

    assert (REPO / "systemd" / "kioskvoice.catalog").read_text() == render_catalog()
    ids = [e.message_id for e in ENTRIES]
    assert len(set(ids)) == len(ids) and all(i.version == 4 for i in ids)
    wanted = {"connect", "disconnect", "reconnect", "rollover", "rollover_failed"}
    wanted |= {"turn_dropped", "error", "device_lost", "device_back", "capture_stalled"}
    wanted |= {"config_loaded", "stopped"}
    assert wanted <= set(MESSAGE_IDS)


# --- choosing the target ------------------------------------------------------------------


def test_stream_is_journal_compares_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w") as err, open(tmp_path / "other", "w") as other:
        st = os.fstat(err.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journal(err, env)
        assert not stream_is_journal(other, env)  # a redirected stderr is not the journal
        assert not stream_is_journal(err, {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journal(io.StringIO(), env)


def test_targets(tmp_path: Path, monkeypatch, restore_root_logger) -> None:
    fake = tmp_path / "journal.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listening.bind(str(fake))
    monkeypatch.setattr(klogging, "JOURNAL_SOCKET", fake)
    with listening, open(tmp_path / "stderr", "w+") as err:
        st = os.fstat(err.fileno())
        systemd_env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert setup_logging(stream=err, target="auto", env=systemd_env) == "journal"
        assert isinstance(logging.getLogger().handlers[0], JournalHandler)
        assert setup_logging(stream=err, target="auto", env={}) == "stderr"
        assert setup_logging(stream=err, target="stderr", env=systemd_env) == "stderr"
        assert setup_logging(stream=err, target="journal", env={}) == "journal"
        assert len(logging.getLogger().handlers) == 1
        assert all(REDACTOR in h.filters for h in logging.getLogger().handlers)


def test_journal_target_without_journald_warns_once(tmp_path, monkeypatch, restore_root_logger):
    monkeypatch.setattr(klogging, "JOURNAL_SOCKET", tmp_path / "absent.sock")
    stream = io.StringIO()
    assert setup_logging(stream=stream, target="journal") == "stderr"
    log_event(logging.getLogger("kioskvoice.test"), logging.INFO, "turn_start", "listening")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "no journald listens on" in lines[0] and "event=turn_start" in lines[1]


# --- a real journald ----------------------------------------------------------------------


def test_records_in_journald_and_explained_by_the_catalog(
    journal, tmp_path, restore_root_logger
) -> None:
    marker = uuid.uuid4().hex
    assert setup_logging("debug", target="journal") == "journal"
    log = logging.getLogger("kioskvoice.test.journal")
    log_event(log, logging.ERROR, "capture_stalled", "no audio", test_marker=marker)
    log_event(log, logging.DEBUG, "turn_start", "listening", turn=3, test_marker=marker)
    entries = journald.wait_for_entries(f"KIOSKVOICE_TEST_MARKER={marker}", count=2)
    assert [e["KIOSKVOICE_EVENT"] for e in entries] == ["capture_stalled", "turn_start"]
    stalled, turn = entries
    assert stalled["PRIORITY"] == "3" and turn["PRIORITY"] == "7"
    assert stalled["MESSAGE_ID"] == MESSAGE_IDS["capture_stalled"].hex
    assert turn["KIOSKVOICE_TURN"] == "3" and "MESSAGE_ID" not in turn
    assert {e["SYSLOG_IDENTIFIER"] for e in entries} == {"kioskvoice"}
    assert {e["_TRANSPORT"] for e in entries} == {"journal"}

    # journalctl -x explains it once the catalog is installed: done in a private mount
    # namespace over copies of the catalog directories, so the host stays untouched.
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("explaining with journalctl -x needs root and unshare")
    source, database = tmp_path / "catalog", tmp_path / "database"
    shutil.copytree("/usr/lib/systemd/catalog", source)
    shutil.copy(REPO / "systemd" / "kioskvoice.catalog", source)
    database.mkdir()
    script = (
        f"mount --bind {source} /usr/lib/systemd/catalog && "
        f"mount --bind {database} /var/lib/systemd/catalog && "
        "journalctl --update-catalog && "
        f"journalctl --no-pager -x KIOSKVOICE_TEST_MARKER={marker} KIOSKVOICE_EVENT=capture_stalled"
    )
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert "Subject: Audio capture stalled; the watchdog is withheld" in out.stdout
    assert "WatchdogSec" in out.stdout


@pytest.fixture
def journal_stderr(tmp_path: Path) -> Iterator[tuple[IO[bytes], dict[str, str]]]:
    """A file for the daemon's stderr, and the ``$JOURNAL_STREAM`` systemd would set for it."""
    with open(tmp_path / "stderr.log", "wb") as err:
        st = os.fstat(err.fileno())
        yield err, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


async def journal_daemon(env, journal_stderr, tmp_path):
    """``kioskvoice run`` configured by ``env``, logging to journald as under systemd; the
    process and the environment it got."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    err, stream_env = journal_stderr
    env = {**env, **stream_env, "KIOSKVOICE_LOGGING__TARGET": "journal"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kioskvoice", "run", "--config", str(empty),
        env=env, stdout=err, stderr=err,
    )  # fmt: skip
    return proc, env


async def test_a_turn_in_the_journal_and_in_diag(
    journal, sim, daemon_env, journal_stderr, tmp_path
) -> None:
    since = journald.now_us()
    env = {**daemon_env, "KIOSKVOICE_LOGGING__TARGET": "journal"}
    proc, env = await journal_daemon(env, journal_stderr, tmp_path)
    try:
        await wait_status(env, 20, state="idle", link="connected")
        code, _, _ = await cli("ctl", "press", env=env)
        assert code == 0
        await asyncio.sleep(1.5)
        code, _, _ = await cli("ctl", "release", env=env)
        assert code == 0
        await sim.wait_for(lambda s: s.sessions[0].sent_of_type("response.done"), timeout=15)
        await wait_status(env, 15, state="idle")
        mine = f"_PID={proc.pid}"
        await asyncio.to_thread(journald.wait_for_entries, mine, "KIOSKVOICE_EVENT=reply_end")

        # diag while the daemon runs: counts from the journal, state from the control socket.
        diag = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kioskvoice.diag", "--json", "--since", f"@{since / 1e6:.6f}",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(20):
            out, errout = await diag.communicate()
        assert diag.returncode == 0, errout.decode()
        report = json.loads(out)

        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            await proc.wait()
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    entries = await asyncio.to_thread(
        journald.wait_for_entries, mine, "KIOSKVOICE_EVENT=stopped", since_us=since
    )
    entries = await asyncio.to_thread(journald.journal_json, "SYSLOG_IDENTIFIER=kioskvoice", mine)
    by_event = {e.get("KIOSKVOICE_EVENT"): e for e in entries}
    for event in ("config_loaded", "connect", "turn_start", "turn_end", "reply_start", "stopped"):
        assert event in by_event, sorted(by_event, key=str)
    connect = by_event["connect"]
    session = connect["KIOSKVOICE_SESSION"]
    assert session == sim.sessions[0].id
    assert connect["MESSAGE_ID"] == MESSAGE_IDS["connect"].hex
    assert by_event["config_loaded"]["MESSAGE_ID"] == MESSAGE_IDS["config_loaded"].hex
    assert by_event["turn_start"]["KIOSKVOICE_TURN"] == "1"
    assert by_event["turn_end"]["KIOSKVOICE_TURN"] == "1"
    assert int(by_event["turn_end"]["KIOSKVOICE_AUDIO_MS"]) > 1000  # held ~1.5 s
    latency = int(by_event["reply_start"]["KIOSKVOICE_LATENCY_MS"])
    assert 0 < latency < 10_000
    assert all(e["PRIORITY"] in "01234567" for e in entries)
    assert len(entries) < 40, "per-frame logging?"
    everything = json.dumps(journald.journal_json(since_us=since))
    assert TEST_KEY not in everything
    assert "turn_start" not in (tmp_path / "stderr.log").read_text()  # records went to journald

    assert TEST_KEY not in out.decode()
    assert report["running"] is True
    assert report["state"]["state"] == "idle" and report["state"]["link"] == "connected"
    assert report["starts"] == 1 and report["restarts"] == 0 and report["unclean_exits"] == 0
    assert report["sessions"] == 1 and report["reconnects"] == {"total": 0, "by_cause": {}}
    assert report["turns"]["started"] == 1
    assert report["turns"]["committed"] == 1 and report["turns"]["replies"] == 1
    assert report["latency_ms"] == {
        "count": 1, "p50": latency, "p90": latency, "p99": latency, "max": latency
    }  # fmt: skip
    assert report["errors"] == {"total": 0, "by_code": {}}


async def test_three_silent_turns_are_mic_suspect_in_the_journal_and_in_diag(
    journal, sim, daemon_env, journal_stderr, tmp_path
) -> None:
    since = journald.now_us()
    dead = tmp_path / "dead.wav"
    write_wav(dead, bytes(2 * 16000), 16000)  # a muted microphone: digital silence
    env = {
        **daemon_env,
        "KIOSKVOICE_AUDIO__INPUT_DEVICE": f"wav:{dead}",
        "KIOSKVOICE_INTERACTION__EARCONS": "false",
    }
    proc, env = await journal_daemon(env, journal_stderr, tmp_path)
    try:
        await wait_status(env, 20, state="idle", link="connected")
        for _ in range(3):
            assert (await cli("ctl", "press", env=env))[0] == 0
            await asyncio.sleep(0.5)
            assert (await cli("ctl", "release", env=env))[0] == 0
        mine = f"_PID={proc.pid}"
        await asyncio.to_thread(journald.wait_for_entries, mine, "KIOSKVOICE_EVENT=mic_suspect")
        entries = await asyncio.to_thread(journald.journal_json, mine)
        diag = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kioskvoice.diag", "--since", f"@{since / 1e6:.6f}",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(20):
            out, errout = await diag.communicate()
        assert diag.returncode == 0, errout.decode()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                await proc.wait()
    suspect = [e for e in entries if e.get("KIOSKVOICE_EVENT") == "mic_suspect"]
    assert len(suspect) == 1 and suspect[0]["MESSAGE_ID"] == MESSAGE_IDS["mic_suspect"].hex
    assert [e["MESSAGE_ID"] for e in entries if e.get("KIOSKVOICE_EVENT") == "no_speech"] == [
        MESSAGE_IDS["no_speech"].hex
    ] * 3
    text = out.decode()
    assert "mic:            SUSPECT" in text and "3 silent (not sent)" in text, text
    assert not any(e["type"] == "input_audio_buffer.append" for e in sim.sessions[0].received)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _make_certificates(directory: Path) -> None:
    """A fleet CA, and certificates it signed for the collector and the kiosk (localhost)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=fleet-ca")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    for name in ("collector", "kiosk"):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                "-extfile", "san.ext")  # fmt: skip


def test_fleet_shipping_with_the_upload_example(journal, tmp_path: Path, capsys) -> None:
    """systemd-journal-upload, configured by the example (only its URL changed), ships the
    kiosk's records over TLS to a systemd-journal-remote, where diag reads them."""
    upload = Path("/lib/systemd/systemd-journal-upload")
    remote = Path("/lib/systemd/systemd-journal-remote")
    if not (upload.exists() and remote.exists()):
        pytest.skip("systemd-journal-remote (the Debian package) is not installed")
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("openssl"):
        pytest.skip("needs root, unshare and openssl")
    from systemd import journal as sd_journal

    from kioskvoice import diag

    since = journald.now_us()
    marker = uuid.uuid4().hex
    for event, fields in (
        ("config_loaded", {"MESSAGE_ID": MESSAGE_IDS["config_loaded"].hex}),
        ("connect", {"KIOSKVOICE_SESSION": "sess_fleet", "MESSAGE_ID": MESSAGE_IDS["connect"].hex}),
        ("reply_start", {"KIOSKVOICE_LATENCY_MS": "420"}),
    ):
        sd_journal.send(
            event,
            SYSLOG_IDENTIFIER="kioskvoice",
            KIOSKVOICE_EVENT=event,
            KIOSKVOICE_TEST_MARKER=marker,
            **fields,
        )
    sent = journald.wait_for_entries(f"KIOSKVOICE_TEST_MARKER={marker}", count=3)
    assert len(sent) == 3

    _make_certificates(tmp_path)
    port = _free_port()
    received = tmp_path / "remote"
    received.mkdir()
    collector = subprocess.Popen(
        [remote, f"--listen-https={port}", f"--key={tmp_path}/collector.key",
         f"--cert={tmp_path}/collector.pem", f"--output={received}/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        config = (REPO / "systemd" / "journal-upload.conf.example").read_text()
        (tmp_path / "upload.conf").write_text(
            re.sub(r"(?m)^URL=.*$", f"URL=https://localhost:{port}", config)
        )
        # The example's key, certificate and CA paths, filled in a private mount namespace.
        script = f"""
            set -e
            mount -t tmpfs tmpfs /etc/systemd
            mkdir -p /etc/systemd/journal-upload.conf.d
            cp {tmp_path}/upload.conf /etc/systemd/journal-upload.conf.d/kioskvoice.conf
            mount -t tmpfs tmpfs /etc/ssl
            mkdir -p /etc/ssl/private /etc/ssl/certs
            cp {tmp_path}/kiosk.key /etc/ssl/private/journal-upload.pem
            cp {tmp_path}/kiosk.pem /etc/ssl/certs/journal-upload.pem
            cp {tmp_path}/ca.pem /etc/ssl/certs/fleet-ca.pem
            for i in $(seq 50); do
                {upload} --follow=no --cursor='{sent[0]["__CURSOR"]}' \\
                    --save-state={tmp_path}/state && exit 0
                sleep 0.1  # the collector may still be starting
            done
            exit 1
        """
        result = subprocess.run(
            ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr[-2000:]
    finally:
        collector.terminate()
        collector.wait(5)

    shipped = journald.journal_json("-D", str(received), f"KIOSKVOICE_TEST_MARKER={marker}")
    assert [e["KIOSKVOICE_EVENT"] for e in shipped] == ["config_loaded", "connect", "reply_start"]
    assert shipped[1]["MESSAGE_ID"] == MESSAGE_IDS["connect"].hex
    assert shipped[1]["SYSLOG_IDENTIFIER"] == "kioskvoice"
    # On the collector, diag reads the kiosk's records from the received files.
    argv = ["--directory", str(received), "--since", f"@{since / 1e6:.6f}", "--json"]
    assert diag.main([*argv, "--socket", str(tmp_path / "none.sock")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["starts"] == 1 and report["sessions"] == 1
    assert report["latency_ms"]["p50"] == 420
