"""The checks of the kiosk's way out: the operator's token broker mints a secret
(``broker``) and a Realtime session opens with the configured credentials (``realtime``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..errors import ConfigError, LinkError
from ..system.logging import REDACTOR
from .results import CheckResult, Status
from .rig import Rig


def _session_request(rig: Rig) -> dict[str, Any]:
    from ..realtime.supervisor import Supervisor

    return Supervisor.session_request(rig.settings.realtime)


def check_broker(rig: Rig) -> CheckResult:
    """The operator's token broker mints a secret for this kiosk (when configured)."""
    from ..realtime.credentials import TokenBroker

    name = "broker"
    r = rig.settings.realtime
    if r.token_url is None:
        return CheckResult(name, Status.SKIP, "-", "no token broker configured (static key)")
    token = r.device_token.get_secret_value().strip() if r.device_token else ""
    if not token:
        return CheckResult(
            name,
            Status.FAIL,
            "-",
            "no device token: provision realtime.device_token (see INSTALLER: provisioning)",
        )
    REDACTOR.add([token])
    broker = TokenBroker(r.token_url, token, _session_request(rig), timeout_s=10, give_up_s=5)

    async def fetch() -> float:
        started = time.monotonic()
        async with asyncio.timeout(20):
            secret = await broker.fetch()
        REDACTOR.add([secret.value])
        return time.monotonic() - started

    try:
        took = asyncio.run(fetch())
    except (LinkError, TimeoutError) as exc:
        code = getattr(exc, "code", "timeout")
        hints = {
            "broker_unauthorized": "the broker does not know this kiosk's device token: "
            "register it again (kioskvoice broker add-device NAME --replace) and provision it",
            "broker_unreachable": "the broker cannot be reached: check the network, DNS and "
            "realtime.token_url",
            "broker_unavailable": "the broker answered but cannot mint secrets now: ask the "
            "operator to check its log",
        }
        hint = hints.get(code, f"the broker failed ({exc})")
        return CheckResult(name, Status.FAIL, code, hint)
    return CheckResult(name, Status.PASS, f"{took * 1000:.0f} ms", "the broker minted a secret")


def check_realtime(rig: Rig) -> CheckResult:
    """A real connection and ``session.update`` with the configured credentials."""
    from ..realtime.credentials import credentials_from
    from ..realtime.link import Link, auth_headers, session_url
    from ..realtime.protocol import SessionOptions

    name = "realtime"
    r = rig.settings.realtime
    try:
        credentials = credentials_from(r, _session_request(rig))
    except ConfigError as exc:
        return CheckResult(name, Status.FAIL, "no credentials", f"{exc}")
    REDACTOR.add(credentials.values())
    options = SessionOptions(r.instructions, r.voice, r.transcribe_input)

    async def connect() -> tuple[float, str | None]:
        async with asyncio.timeout(r.connect_timeout_s + 25):
            secret = await credentials.fetch()
            REDACTOR.add([secret.value])
            started = time.monotonic()
            link = Link(
                url=session_url(r.url, None if credentials.ephemeral else r.model),
                headers=auth_headers(r.auth, secret.value),
                options=options,
                on_event=lambda _event: None,
                setup_timeout_s=r.connect_timeout_s,
            )
            try:
                await link.open()
            finally:
                await link.close()
            return time.monotonic() - started, link.session_id

    try:
        took, _session = asyncio.run(connect())
    except LinkError as exc:
        # The real service refuses after the upgrade: an error code, then close 3000 (key)
        # or 4000 (model, beta shape); either may be all the kiosk saw.
        if exc.code in (
            "invalid_api_key", "unauthorized", "broker_unauthorized", "http_401", "close_3000"
        ):  # fmt: skip
            hint = "the service refused the kiosk's key: provision a valid key or device token"
        elif exc.code in ("model_not_found", "invalid_model", "missing_model", "close_4000"):
            hint = f"the service does not know realtime.model={r.model!r}"
        else:
            hint = f"the Realtime session failed: {exc}"
        return CheckResult(name, Status.FAIL, exc.code or "error", hint)
    except (OSError, TimeoutError) as exc:
        return CheckResult(
            name,
            Status.FAIL,
            type(exc).__name__,
            f"cannot reach {r.url}: check the network (ping, DNS, a proxy?) and the clock "
            f"(TLS needs it) ({exc or 'timeout'})",
        )
    except Exception as exc:  # the server's HTTP refusal, a TLS error...
        text = str(exc)
        hint = (
            "the service refused the kiosk's credentials"
            if "401" in text or "403" in text
            else f"the Realtime connection failed: {type(exc).__name__}: {text}"
        )
        return CheckResult(name, Status.FAIL, type(exc).__name__, hint)
    return CheckResult(
        name, Status.PASS, f"session ready in {took * 1000:.0f} ms", f"connected to {r.url}"
    )
