"""The reference token broker: device tokens checked against hashes, the operator's session
minted upstream with the real key, every failure mapped so kiosks back off rather than give up,
no secret in any answer or log; the CLI's registry round trip; its systemd unit; and a kiosk
completing a turn through it, then failing clearly once revoked. Everything on loopback, with a
stand-in for OpenAI's client-secret endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import httpx
from gpiozero.pins.mock import MockFactory

from harness import BUTTON_PIN, Running, kiosk_settings
from kioskvoice.app import App
from kioskvoice.broker import PATH
from kioskvoice.broker.app import create_app
from kioskvoice.broker.cli import main as broker_main
from kioskvoice.broker.ratelimit import RateLimiter
from kioskvoice.broker.registry import Registry, parse
from kioskvoice.broker.server import bind, serving, setup_logging
from kioskvoice.broker.settings import (
    API_KEY_ENV,
    BrokerSettings,
    load_api_key,
    load_settings,
)
from kioskvoice.errors import ConfigError
from kioskvoice.events import State
from kioskvoice.sim import Simulator
from openai_standin import OpenAIStandIn

pytestmark = pytest.mark.timeout(60)

REAL_KEY = "sk-proj-REALKEY-0123456789abcdefghijklmnop"
OPERATOR_INSTRUCTIONS = "You are the museum's kiosk. OPERATOR-CONTROLLED."
REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "kioskvoice-broker.service"
KIOSKVOICE = Path(sys.executable).parent / "kioskvoice"


# --- helpers ----------------------------------------------------------------------------------


def add(registry: Path, name: str, *extra: str) -> str:
    """``broker add-device NAME`` through the CLI; the token it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = broker_main(["broker", "add-device", name, "--registry", str(registry), *extra])
    assert code == 0
    return out.getvalue().strip()


def settings_for(tmp_path: Path, upstream_url: str, **sections: dict) -> BrokerSettings:
    data: dict = {
        "registry": str(tmp_path / "devices.toml"),
        "upstream": {"url": upstream_url, "timeout_s": 2},
        "session": {
            "model": "gpt-realtime",
            "voice": "cedar",
            "instructions": OPERATOR_INSTRUCTIONS,
            "ttl_s": 120,
            "tools": [
                {
                    "type": "function",
                    "name": "opening_hours",
                    "description": "Today's opening hours",
                    "parameters": {"type": "object", "properties": {}},
                }
            ],
        },
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return BrokerSettings(**data)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[OpenAIStandIn, str]]:
    standin = OpenAIStandIn(REAL_KEY)
    async with serving(standin.app) as url:
        yield standin, url


@contextlib.asynccontextmanager
async def broker(settings: BrokerSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The broker on a free loopback port, and a client for it."""
    async with (
        serving(create_app(settings, REAL_KEY)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


KIOSK_REQUEST = {
    "session": {"type": "realtime", "model": "gpt-realtime", "instructions": "KIOSK-ASKED"}
}


# --- minting ----------------------------------------------------------------------------------


async def test_valid_device_gets_the_operators_secret(tmp_path, upstream, caplog) -> None:
    standin, url = upstream
    settings = settings_for(tmp_path, url)
    token = add(settings.registry, "lobby")
    caplog.set_level(logging.INFO)
    async with broker(settings) as client:
        before = time.time()
        reply = await client.post(PATH, headers=bearer(token), json=KIOSK_REQUEST)
        other_model = {"session": {**KIOSK_REQUEST["session"], "model": "gpt-realtime-mini"}}
        for _ in range(2):
            assert (await client.post(PATH, headers=bearer(token), json=other_model)).is_success
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["value"] == standin.minted[0] and body["value"].startswith("ek_")
    assert before + 110 <= body["expires_at"] <= time.time() + 121
    assert body["session"]["instructions"] == OPERATOR_INSTRUCTIONS
    assert reply.headers["cache-control"] == "no-store"
    assert len(reply.headers.get_list("date")) == 1
    assert abs(parsedate_to_datetime(reply.headers["date"]).timestamp() - time.time()) < 5
    # A kiosk asking for another model is told about once (it would connect to a model its
    # secret is not for); it still gets the operator's session.
    mismatch = [r for r in caplog.records if getattr(r, "KIOSKVOICE_EVENT", "") == "model_mismatch"]
    assert len(mismatch) == 1 and "gpt-realtime-mini" in mismatch[0].getMessage()
    # Upstream got the real key and the operator's session; nothing the kiosk asked for.
    seen = standin.requests[0]
    assert [r.body for r in standin.requests] == [seen.body] * 3
    assert seen.authorized
    assert seen.body == {
        "expires_after": {"anchor": "created_at", "seconds": 120},
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": OPERATOR_INSTRUCTIONS,
            "audio": {"output": {"voice": "cedar"}},
            "tools": settings.session.model_dump()["tools"],
            "tool_choice": "auto",
        },
    }
    assert "KIOSK-ASKED" not in json.dumps(seen.body)


async def test_azure_path_and_api_key_header(tmp_path, upstream) -> None:
    standin, url = upstream
    settings = settings_for(tmp_path, url, upstream={"kind": "azure"})
    token = add(settings.registry, "lobby")
    async with broker(settings) as client:
        reply = await client.post(PATH, headers=bearer(token), json=KIOSK_REQUEST)
    assert reply.status_code == 200
    assert [(r.path, r.authorized) for r in standin.requests] == [
        ("/openai/v1/realtime/client_secrets", True)
    ]


async def test_bad_tokens_get_a_bare_401(tmp_path, upstream) -> None:
    standin, url = upstream
    settings = settings_for(tmp_path, url)
    good = add(settings.registry, "lobby")
    revoked = add(settings.registry, "cafe")
    async with broker(settings) as client:
        assert (await client.post(PATH, headers=bearer(revoked), json={})).status_code == 200
        assert (
            broker_main(["broker", "revoke-device", "cafe", "--registry", str(settings.registry)])
            == 0
        )
        cases = {
            "revoked": bearer(revoked),
            "unknown": bearer("kvd_" + "A" * 43),
            "missing": {},
            "empty": {"Authorization": ""},
            "basic": {"Authorization": "Basic " + good},
            "no token": {"Authorization": "Bearer"},
            "bad chars": {"Authorization": "Bearer kvd_\xfcn\xefcode".encode("latin-1")},
            "too long": bearer("k" * 600),
            "two tokens": {"Authorization": f"Bearer {good} {good}"},
        }
        answers = {}
        for case, headers in cases.items():
            reply = await client.post(PATH, headers=headers, json=KIOSK_REQUEST)
            answers[case] = (
                reply.status_code,
                reply.content,
                reply.headers.get("www-authenticate"),
            )
        # A duplicated header is refused too (sent raw: httpx would merge it).
        reply = await client.post(
            PATH,
            headers=[("Authorization", f"Bearer {good}"), ("Authorization", f"Bearer {good}")],
            json={},
        )
        answers["duplicated"] = (
            reply.status_code,
            reply.content,
            reply.headers.get("www-authenticate"),
        )
        assert (await client.post(PATH, headers=bearer(good), json={})).status_code == 200
    assert set(answers.values()) == {(401, b'{"error":"unauthorized"}', "Bearer")}, answers
    assert len(standin.requests) == 2  # only the two valid requests reached upstream


async def test_upstream_failures_make_kiosks_back_off(tmp_path, upstream, caplog) -> None:
    standin, url = upstream
    settings = settings_for(
        tmp_path, url, upstream={"timeout_s": 0.3}, limits={"secrets_per_minute": 600, "burst": 50}
    )
    token = add(settings.registry, "lobby")
    caplog.set_level(logging.DEBUG)
    results = {}
    async with broker(settings) as client:

        async def ask() -> tuple[int, str | None, float]:
            started = time.monotonic()
            reply = await client.post(PATH, headers=bearer(token), json=KIOSK_REQUEST)
            return reply.status_code, reply.headers.get("retry-after"), time.monotonic() - started

        for status in (500, 502, 503, 429, 401, 403, 400):
            standin.fail_with = [status]
            results[status] = await ask()
        standin.delay_s = 1.0
        results["timeout"] = await ask()
        standin.delay_s = 0
        standin.malformed = True
        results["malformed"] = await ask()
        standin.malformed = False
        results["ok"] = await ask()
    codes = {case: status for case, (status, _, _) in results.items()}
    # Never 401/403 (the kiosk would take itself for revoked); 503 so that it backs off.
    assert codes == {
        500: 503, 502: 503, 503: 503, 429: 503, 401: 503, 403: 503, 400: 503,
        "timeout": 503, "malformed": 502, "ok": 200,
    }  # fmt: skip
    assert all(
        retry and int(retry) >= 1
        for case, (_, retry, _) in results.items()
        if case not in ("malformed", "ok")
    )
    assert results[401][1] == "60"
    assert 0.25 < results["timeout"][2] < 0.9
    # The operator learns about the key, at error level, with the cause and no upstream text.
    refused = [
        r
        for r in caplog.records
        if getattr(r, "KIOSKVOICE_ERROR_CODE", None) == "upstream_unauthorized"
        and getattr(r, "KIOSKVOICE_EVENT", None) == "upstream_failed"
    ]
    assert len(refused) == 2 and all(r.levelno == logging.ERROR for r in refused)
    assert "broker.openai_api_key" in refused[0].getMessage()
    assert "HTTP 401, invalid_api_key" in refused[0].getMessage()
    assert "Incorrect API key" not in caplog.text
    assert REAL_KEY not in caplog.text


async def test_rate_limit_per_device(tmp_path, upstream) -> None:
    _, url = upstream
    settings = settings_for(tmp_path, url, limits={"secrets_per_minute": 6, "burst": 2})
    lobby, cafe = add(settings.registry, "lobby"), add(settings.registry, "cafe")
    async with broker(settings) as client:
        statuses = [
            (await client.post(PATH, headers=bearer(lobby), json={})).status_code for _ in range(3)
        ]
        limited = await client.post(PATH, headers=bearer(lobby), json={})
        other = await client.post(PATH, headers=bearer(cafe), json={})
    assert statuses == [200, 200, 429]
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 10
    assert other.status_code == 200


def test_rate_limiter_refills_on_the_monotonic_clock() -> None:
    now = [100.0]
    limiter = RateLimiter(per_minute=6, burst=2, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("a") == pytest.approx(10.0)
    assert limiter.take("b") == 0.0
    now[0] += 5
    assert limiter.take("a") == pytest.approx(5.0)
    now[0] += 5
    assert limiter.take("a") == 0.0
    now[0] += 1000  # refills up to the burst, no further
    assert [limiter.take("a") for _ in range(3)][2] > 0
    limiter.retain({"b"})
    assert limiter.take("a") == 0.0  # forgotten: a full bucket again


async def test_oversize_and_bad_bodies(tmp_path, upstream) -> None:
    standin, url = upstream
    settings = settings_for(tmp_path, url, limits={"max_body_bytes": 4096, "burst": 20})
    token = add(settings.registry, "lobby")
    big = json.dumps({"session": {"instructions": "x" * 100_000}}).encode()

    async def chunks():
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    async with broker(settings) as client:
        declared = await client.post(PATH, headers=bearer(token), content=big)
        chunked = await client.post(PATH, headers=bearer(token), content=chunks())
        anonymous = await client.post(PATH, content=big)
        not_json = await client.post(PATH, headers=bearer(token), content=b"{nope")
        not_object = await client.post(PATH, headers=bearer(token), json=[1, 2])
        empty = await client.post(PATH, headers=bearer(token))
        after = await client.post(PATH, headers=bearer(token), json=KIOSK_REQUEST)
    assert (declared.status_code, chunked.status_code) == (413, 413)
    assert anonymous.status_code == 401  # the body of a stranger is never read
    assert (not_json.status_code, not_object.status_code) == (400, 400)
    assert (empty.status_code, after.status_code) == (200, 200)
    assert len(standin.requests) == 2


async def test_replies_are_not_held_back_by_nagle(tmp_path, upstream) -> None:
    """The listening socket says IPPROTO_TCP, so asyncio sets TCP_NODELAY on each connection;
    without it every reply on a kept-alive connection waited ~40 ms for a delayed ACK."""
    _, url = upstream
    with contextlib.closing(bind("127.0.0.1", 0)) as sock:
        assert sock.proto == socket.IPPROTO_TCP
    async with broker(settings_for(tmp_path, url)) as client:
        times = []
        for _ in range(10):
            started = time.monotonic()
            assert (await client.get("/healthz")).status_code == 200
            times.append(time.monotonic() - started)
    assert sorted(times)[5] < 0.030, times


async def test_healthz_and_unknown_routes(tmp_path, upstream) -> None:
    _, url = upstream
    settings = settings_for(tmp_path, url)
    async with broker(settings) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok", "registry": "ok"}
        assert (await client.get(PATH)).status_code == 405
        assert (await client.get("/v1/other")).status_code == 404
        # A broken hand edit keeps the previous devices in force and says so.
        token = add(settings.registry, "lobby")
        assert (await client.post(PATH, headers=bearer(token), json={})).status_code == 200
        settings.registry.write_text(settings.registry.read_text() + "broken = [\n")
        assert (await client.get("/healthz")).json()["registry"] == "stale"
        assert (await client.post(PATH, headers=bearer(token), json={})).status_code == 200


async def test_no_secret_in_answers_or_logs(tmp_path, upstream, caplog, capfd) -> None:
    standin, url = upstream
    settings = settings_for(tmp_path, url, limits={"burst": 20})
    caplog.set_level(logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("", "httpx", "httpcore")]
    levels = [logger.level for logger in loggers]
    handler = setup_logging("debug", [REAL_KEY])
    try:
        token = add(settings.registry, "lobby")
        answers = []
        async with broker(settings) as client:
            for fail in ([], [401], [500], [429]):
                standin.fail_with = list(fail)
                answers.append(await client.post(PATH, headers=bearer(token), json=KIOSK_REQUEST))
            answers.append(await client.post(PATH, headers=bearer(token + "x"), json={}))
            answers.append(await client.post(f"/x/{token}", json={}))
            answers.append(await client.get("/healthz"))
    finally:
        logging.getLogger().removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    out, err = capfd.readouterr()
    everything = caplog.text + out + err + "".join(a.text + str(a.headers) for a in answers)
    assert REAL_KEY not in everything
    assert token not in caplog.text + out + err
    minted = standin.minted[0]
    assert minted in answers[0].text  # handed to the kiosk, and nowhere else
    assert minted not in caplog.text + out + err
    # One access record per request, naming the device and never a token.
    access = [r for r in caplog.records if getattr(r, "KIOSKVOICE_EVENT", None) == "access"]
    assert [(r.KIOSKVOICE_STATUS, r.KIOSKVOICE_DEVICE) for r in access] == [
        (200, "lobby"), (503, "lobby"), (503, "lobby"), (503, "lobby"),
        (401, None), (404, None), (200, None),
    ]  # fmt: skip
    assert all(r.KIOSKVOICE_LATENCY_MS >= 0 for r in access)
    assert "POST other 404 device=-" in err  # a path carrying a token is not logged as is
    assert "POST /v1/realtime/client_secrets 200 device=lobby" in err


def test_log_lines_mask_anything_secret_shaped(capfd) -> None:
    """A safety net for other libraries' messages: the key and anything shaped like a secret
    are masked on the way out, tracebacks included."""
    loggers = [logging.getLogger(name) for name in ("", "httpx", "httpcore")]
    levels = [logger.level for logger in loggers]
    # Only the broker's handler may see these records: pytest's own capture would keep them
    # unmasked (and the suite's guard rightly fails a test whose captured log holds a key).
    capturing, logging.getLogger().handlers = logging.getLogger().handlers, []
    handler = setup_logging("info", [REAL_KEY])
    try:
        logging.getLogger("some.library").warning(
            "failed with %s, ek_abcdefghijkl and kvd_ABCDEFGHIJKL", REAL_KEY
        )
        try:
            raise RuntimeError(f"bad key {REAL_KEY}")
        except RuntimeError:
            logging.getLogger("other.library").exception("crashed")
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().handlers = capturing
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    err = capfd.readouterr().err
    assert "failed with ****, **** and ****" in err
    assert "RuntimeError: bad key ****" in err
    assert REAL_KEY not in err and "abcdefghijkl" not in err and "ABCDEFGHIJKL" not in err


# --- registry and CLI -------------------------------------------------------------------------


def test_registry_round_trip_keeps_only_hashes(tmp_path, capsys) -> None:
    registry = tmp_path / "state" / "devices.toml"
    reg = ["--registry", str(registry)]
    assert broker_main(["broker", "add-device", "lobby", *reg]) == 0
    token = capsys.readouterr().out.strip()
    assert re.fullmatch(r"kvd_[A-Za-z0-9_-]{43}", token)
    cafe = add(registry, "cafe.2")
    text = registry.read_text()
    assert token not in text and cafe not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text
    assert registry.stat().st_mode & 0o777 == 0o600
    assert len([line for line in text.splitlines() if line.startswith('"')]) == 2

    # Comments an operator adds survive the CLI's edits.
    registry.write_text(registry.read_text().replace("[devices]", "[devices]\n# front desk"))
    assert broker_main(["broker", "list-devices", *reg]) == 0
    listing = capsys.readouterr().out
    assert "lobby" in listing and "cafe.2" in listing and token not in listing
    assert broker_main(["broker", "list-devices", "--json", *reg]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["cafe.2", "lobby"]
    assert rows[1]["fingerprint"] == hashlib.sha256(token.encode()).hexdigest()[:12]

    assert broker_main(["broker", "add-device", "lobby", *reg]) == 1
    assert "already registered" in capsys.readouterr().err
    assert broker_main(["broker", "add-device", "bad name;", *reg]) == 1
    assert broker_main(["broker", "revoke-device", "nobody", *reg]) == 1

    reg_obj = Registry(registry)
    reg_obj.refresh(strict=True)
    assert reg_obj.lookup(token) == "lobby" and reg_obj.lookup(cafe) == "cafe.2"
    new = add(registry, "lobby", "--replace")
    assert broker_main(["broker", "revoke-device", "cafe.2", *reg]) == 0
    reg_obj.refresh()
    assert reg_obj.lookup(token) is None and reg_obj.lookup(cafe) is None
    assert reg_obj.lookup(new) == "lobby"
    assert "# front desk" in registry.read_text()
    assert set(parse(registry.read_text())) == {"lobby"}


def test_registry_rejects_bad_files(tmp_path) -> None:
    digest = "ab" * 32
    for text, problem in [
        ("[devices]\nx = 1\n", "expected"),
        (f'[devices]\nx = {{ sha256 = "{digest[:-1]}" }}\n', "64 lower-case hex"),
        (
            f'[devices]\nx = {{ sha256 = "{digest}" }}\ny = {{ sha256 = "{digest}" }}\n',
            "same token hash",
        ),
        ("[other]\n", "unknown table"),
        ("[devices\n", "registry error"),
    ]:
        with pytest.raises(ConfigError, match=problem):
            parse(text)
    path = tmp_path / "devices.toml"
    path.write_text("[devices\n")
    with pytest.raises(ConfigError):
        Registry(path).refresh(strict=True)
    empty = Registry(tmp_path / "absent.toml")
    empty.refresh(strict=True)
    assert empty.loaded and len(empty) == 0


def test_config_and_key_loading(tmp_path, monkeypatch) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[session]\nttl_s = 5\n[upstream]\nurl = "http://example.org"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    message = str(info.value)
    assert "session.ttl_s" in message and "upstream.url" in message and "\n" not in message
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")
    config.write_text('[upstream]\nkind = "azure"\nurl = "https://res.openai.azure.com/"\n')
    loaded = load_settings(config)
    assert (
        loaded.upstream.endpoint == "https://res.openai.azure.com/openai/v1/realtime/client_secrets"
    )

    with pytest.raises(ConfigError, match=r"broker\.openai_api_key: required"):
        load_api_key({})
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "broker.openai_api_key").write_text("\n")  # the unit's SetCredential default
    with pytest.raises(ConfigError):
        load_api_key({"CREDENTIALS_DIRECTORY": str(credentials)})
    (credentials / "broker.openai_api_key").write_text(REAL_KEY + "\n")
    assert load_api_key({"CREDENTIALS_DIRECTORY": str(credentials)}) == REAL_KEY
    assert load_api_key({API_KEY_ENV: " other "}) == "other"


async def test_serve_command_end_to_end(tmp_path, upstream) -> None:
    """``python -m kioskvoice.broker serve`` as a process: it serves, never prints the key,
    stops cleanly on SIGTERM; without a key it exits 78."""
    standin, url = upstream
    config = tmp_path / "broker.toml"
    config.write_text(
        f'registry = "{tmp_path / "devices.toml"}"\n[listen]\nport = 0\n[upstream]\nurl = "{url}"\n'
    )
    token = add(tmp_path / "devices.toml", "lobby")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIOSKVOICE_")}
    command = [sys.executable, "-m", "kioskvoice.broker", "serve", "--config", str(config)]

    missing = await asyncio.create_subprocess_exec(*command, env=env, stderr=subprocess.PIPE)
    async with asyncio.timeout(20):
        _, err = await missing.communicate()
    assert missing.returncode == 78, err
    assert b"broker.openai_api_key: required" in err

    proc = await asyncio.create_subprocess_exec(
        *command, env={**env, API_KEY_ENV: REAL_KEY}, stderr=subprocess.PIPE
    )
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not (match := re.search(r"on (http://127\.0\.0\.1:\d+)", "".join(lines))):
                line = await proc.stderr.readline()
                assert line, "".join(lines)
                lines.append(line.decode())
            async with httpx.AsyncClient(base_url=match.group(1), timeout=10) as client:
                reply = await client.post(PATH, headers=bearer(token), json=KIOSK_REQUEST)
                assert reply.status_code == 200
                assert (await client.get("/healthz")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            rest = await proc.stderr.read()
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = "".join(lines) + rest.decode()
    assert proc.returncode == 0, output
    assert "POST /v1/realtime/client_secrets 200 device=lobby" in output
    assert REAL_KEY not in output and token not in output and standin.minted[0] not in output


# --- systemd ----------------------------------------------------------------------------------


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=30)


def test_broker_unit_verifies_silently(tmp_path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    assert KIOSKVOICE.exists()
    copy = tmp_path / UNIT.name
    copy.write_text(re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={KIOSKVOICE}", UNIT.read_text()))
    result = _run("systemd-analyze", "verify", copy)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_broker_unit_is_hardened() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    result = _run("systemd-analyze", "security", "--offline=yes", UNIT)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    match = re.search(
        r"Overall exposure level for kioskvoice-broker\.service: (\d+\.\d)", result.stdout
    )
    assert match, result.stdout[-500:]
    assert float(match.group(1)) <= 1.5, result.stdout
    text = UNIT.read_text()
    assert "LoadCredential=broker.openai_api_key:" in text
    assert re.search(r"(?m)^StateDirectory=kioskvoice-broker$", text)
    assert re.search(r"(?m)^ExecStart=\S+ broker serve$", text)
    # The registry's default place is the StateDirectory systemd creates.
    assert BrokerSettings().registry.parent == Path("/var/lib/kioskvoice-broker")


# --- acceptance: a kiosk through the broker ---------------------------------------------------


async def test_kiosk_turn_through_the_broker_then_revoked(speech_wav, tmp_path, caplog) -> None:
    factory = MockFactory()
    pin = factory.pin(BUTTON_PIN)
    caplog.set_level(logging.INFO)
    # The simulator accepts only secrets minted for it; its own key is the organisation's,
    # which only the broker holds.
    sim = Simulator(api_key=REAL_KEY)
    standin = OpenAIStandIn(REAL_KEY, sim=sim)
    try:
        async with sim, serving(standin.app) as upstream_url:
            settings = settings_for(tmp_path, upstream_url)
            token = add(settings.registry, "lobby")
            async with serving(create_app(settings, REAL_KEY)) as broker_url:
                kiosk = kiosk_settings(
                    sim.url,
                    speech_wav,
                    tmp_path,
                    api_key=None,
                    token_url=broker_url + PATH,
                    device_token=token,
                )
                app = App(kiosk, pin_factory=factory)
                async with Running(app) as k:
                    await k.turn(pin)
                    assert app.status()["turns"] == 1
                    revoked = broker_main(
                        ["broker", "revoke-device", "lobby", "--registry", str(settings.registry)]
                    )
                    assert revoked == 0
                    sim.drop_all()
                    await k.wait(State.ERROR, 10)
                    assert app.status()["last_error"] == "broker_unauthorized"
    finally:
        factory.reset()
    # The turn ran on a secret the broker minted with the operator's session.
    assert len(sim.sessions) == 1 and sim.sessions[0].secret_ttl_s is not None
    assert sim.sessions[0].sent_of_type("response.done")
    assert [r.body["session"]["instructions"] for r in standin.requests] == [OPERATOR_INSTRUCTIONS]
    # The kiosk says clearly why it stopped, at error level; the broker logged a bare 401.
    down = [r for r in caplog.records if getattr(r, "KIOSKVOICE_EVENT", None) == "disconnect"]
    assert down[-1].levelno == logging.ERROR
    assert "token broker refused this kiosk's device token (HTTP 401)" in down[-1].getMessage()
    access = [r for r in caplog.records if getattr(r, "KIOSKVOICE_EVENT", None) == "access"]
    assert [(r.KIOSKVOICE_STATUS, r.KIOSKVOICE_DEVICE) for r in access][:2] == [
        (200, "lobby"),
        (401, None),
    ]
    assert token not in caplog.text and REAL_KEY not in caplog.text


# --- acceptance: a kiosk on Azure OpenAI --------------------------------------------------------


@pytest.mark.parametrize("auth", ["api-key", "bearer"])
async def test_kiosk_turn_on_azure(speech_wav, tmp_path, caplog, auth) -> None:
    """Azure's GA endpoint, ``/openai/v1/realtime?model=DEPLOYMENT``: with the resource's key
    in an ``api-key`` header, or with ``Authorization: Bearer`` and a secret the broker minted
    from Azure's ``/openai/v1/realtime/client_secrets``."""
    factory = MockFactory()
    pin = factory.pin(BUTTON_PIN)
    caplog.set_level(logging.INFO)
    deployment = "kiosk-voice"
    sim = Simulator(api_key=REAL_KEY, models={deployment})
    standin = OpenAIStandIn(REAL_KEY, sim=sim)
    try:
        async with sim, serving(standin.app) as upstream_url:
            settings = settings_for(
                tmp_path, upstream_url, upstream={"kind": "azure"}, session={"model": deployment}
            )
            token = add(settings.registry, "lobby")
            async with serving(create_app(settings, REAL_KEY)) as broker_url:
                if auth == "api-key":
                    credential = {"auth": "api-key", "api_key": REAL_KEY}
                else:
                    credential = {"token_url": broker_url + PATH, "device_token": token}
                kiosk = kiosk_settings(
                    sim.azure_url,
                    speech_wav,
                    tmp_path,
                    **{"api_key": None, "model": deployment, **credential},
                )
                app = App(kiosk, pin_factory=factory)
                async with Running(app) as k:
                    await k.turn(pin)
    finally:
        factory.reset()
    [session] = sim.sessions
    assert (session.path, session.model, session.auth_matched) == (
        "/openai/v1/realtime",
        deployment,
        True,
    )
    assert [e["response"]["status"] for e in session.sent_of_type("response.done")] == ["completed"]
    # Azure's cap is 30 minutes, and the session said so.
    assert session.cap_s == 1800
    header = "api-key" if auth == "api-key" else "authorization"
    assert session.headers[header] == "<redacted>"
    assert ({"api-key", "authorization"} - {header}).isdisjoint(session.headers)
    if auth == "bearer":
        assert session.secret_ttl_s is not None
        assert [r.path for r in standin.requests] == ["/openai/v1/realtime/client_secrets"]
    else:
        assert standin.requests == []
    assert REAL_KEY not in caplog.text and token not in caplog.text


# --- hostile input (issue 17) ----------------------------------------------------------------


async def test_nested_bodies_are_400_and_model_strings_are_not_hoarded(
    tmp_path, upstream, caplog
) -> None:
    _, url = upstream
    settings = settings_for(tmp_path, url, limits={"burst": 50})
    token = add(settings.registry, "lobby")
    caplog.set_level(logging.INFO)
    async with broker(settings) as client:
        deep = b"[" * 60_000  # under max_body_bytes, far over the parser's depth
        reply = await client.post(PATH, headers=bearer(token), content=deep)
        assert reply.status_code == 400 and reply.json()["error"] == "bad_request"
        for n in range(20):  # a device cycling through model names
            other = {"session": {**KIOSK_REQUEST["session"], "model": f"m-{n}-" + "x" * 1000}}
            assert (await client.post(PATH, headers=bearer(token), json=other)).is_success
    mismatch = [r for r in caplog.records if getattr(r, "KIOSKVOICE_EVENT", "") == "model_mismatch"]
    assert len(mismatch) == 1  # told once per device; nothing kept per string
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


async def test_a_connection_that_says_nothing_is_closed(tmp_path, upstream) -> None:
    _, url = upstream
    async with serving(create_app(settings_for(tmp_path, url), REAL_KEY)) as broker_url:
        host, port = broker_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            async with asyncio.timeout(10):  # uvicorn's keep-alive timeout (5 s) plus slack
                assert await reader.read() == b""  # closed by the broker, not by us
        finally:
            writer.close()
