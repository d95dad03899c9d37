"""Control socket and logging: real unix sockets, real logging handlers."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import stat
from pathlib import Path

import pytest

from kioskvoice.errors import ControlError
from kioskvoice.system.control import MAX_CLIENTS, ControlServer
from kioskvoice.system.control_client import request
from kioskvoice.system.logging import REDACTOR, log_event, setup_logging


async def test_control_socket_round_trip(tmp_path: Path) -> None:
    calls: list[str] = []

    def handler(cmd: str, request: dict) -> dict:
        calls.append(cmd)
        return {"state": "idle"}

    path = tmp_path / "run" / "control.sock"
    server = ControlServer(path, handler)
    await server.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        reply = await asyncio.to_thread(request, path, "press")
        assert reply == {"ok": True, "state": "idle"}
        reply = await asyncio.to_thread(request, path, "reboot")
        assert reply["ok"] is False and "unknown command" in reply["error"]
        # A second daemon must not steal a live socket.
        with pytest.raises(ControlError, match="in use"):
            await ControlServer(path, handler).start()
    finally:
        await server.close()
    assert calls == ["press"]
    assert not path.exists()


async def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    first = ControlServer(path, lambda cmd, request: {})
    await first.start()
    first._server.close()  # simulate a crashed daemon: the file stays, nobody listens
    await first._server.wait_closed()
    assert path.exists()
    second = ControlServer(path, lambda cmd, request: {"state": "idle"})
    await second.start()
    try:
        assert (await asyncio.to_thread(request, path, "status"))["ok"]
    finally:
        await second.close()


async def test_malformed_requests_get_an_error_reply(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    server = ControlServer(path, lambda cmd, request: {})
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"this is not json\n")
        line = await asyncio.wait_for(reader.readline(), 5)
        assert b'"ok": false' in line
        writer.close()
    finally:
        await server.close()


async def test_nested_json_and_a_crowd_of_clients_are_refused_cleanly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "control.sock"
    server = ControlServer(path, lambda cmd, request: {"state": "idle"})
    await server.start()
    clients = []
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=2**20)
        writer.write(b"[" * 60_000 + b"\n")  # under MAX_LINE, far over the parser's depth
        line = await asyncio.wait_for(reader.readline(), 5)
        assert b'"ok": false' in line
        writer.write(b'{"cmd": "status"}\n')  # the same connection still works
        assert b'"ok": true' in await asyncio.wait_for(reader.readline(), 5)
        clients.append(writer)
        for _ in range(MAX_CLIENTS - 1):
            clients.append((await asyncio.open_unix_connection(str(path)))[1])
        late_reader, late_writer = await asyncio.open_unix_connection(str(path))
        clients.append(late_writer)
        busy = await asyncio.wait_for(late_reader.readline(), 5)
        assert b"busy" in busy and await late_reader.read() == b""
        clients.pop(1).close()  # one of the eight leaves: room again
        await asyncio.sleep(0.1)
        assert (await asyncio.to_thread(request, path, "status"))["ok"]
    finally:
        for writer in clients:
            writer.close()
        await server.close()
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_request_without_daemon(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="does not exist"):
        request(tmp_path / "absent.sock", "status")


def test_secrets_are_redacted_everywhere() -> None:
    secret = "sk-redact-me-0123456789"
    stream = io.StringIO()
    setup_logging("debug", stream=stream)
    REDACTOR.add([secret])
    log = logging.getLogger("kioskvoice.test")
    log.info("url has %s inside", secret)
    log_event(log, logging.WARNING, "error", f"header Bearer {secret}", error_code=secret)
    try:
        raise RuntimeError(f"connect failed with {secret}")
    except RuntimeError:
        log.exception("boom")
    logging.getLogger("websockets.client").debug("> Authorization: Bearer %s", secret)
    output = stream.getvalue()
    assert secret not in output
    assert output.count("****") >= 4
    assert "event=error" in output


def test_short_lived_secrets_are_masked_while_they_are_among_the_newest() -> None:
    from kioskvoice.system.logging import EPHEMERAL_KEPT, Redactor

    redactor = Redactor()
    secrets = [f"ek_minted_{n:04d}_abcdef" for n in range(EPHEMERAL_KEPT + 3)]
    for secret in secrets:
        redactor.add_ephemeral(secret)
    assert redactor.scrub(f"using {secrets[-1]}") == "using ****"
    assert redactor.scrub(secrets[-EPHEMERAL_KEPT]) == "****"
    assert redactor.scrub(secrets[0]) == secrets[0]  # long expired: no longer scanned for
