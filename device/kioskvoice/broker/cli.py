"""``kioskvoice broker …``: serve the broker, and manage the devices it serves.

``add_parser(subparsers)`` registers ``broker`` on the ``kioskvoice`` command; each
sub-subcommand sets ``handler`` (``args.handler(args)`` returns the exit code). Exit codes as
for the kiosk: 0 success, 1 failure (unknown device, duplicate name), 69 the port or the
broker extra is unavailable, 78 configuration error (``ConfigError``, raised to the caller).

Importing this module needs no web stack: Starlette and uvicorn are imported by ``serve``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, KioskError
from . import PATH
from .registry import Registry, RegistryError, add_device, describe, list_devices, revoke_device
from .settings import DEFAULT_CONFIG_PATH, ListenSettings, load_api_key, load_settings

EX_UNAVAILABLE = 69
EX_CONFIG = 78

log = logging.getLogger("kioskvoice.broker")


def add_parser(subparsers: Any) -> None:
    """Register ``broker`` and its sub-subcommands on the ``kioskvoice`` command's
    subparsers."""
    parser = subparsers.add_parser(
        "broker",
        help="the operator's token broker: serve short-lived secrets to registered kiosks",
        description="The reference token broker (server side; needs the broker extra to "
        "serve). Kiosks get short-lived Realtime secrets; the organisation's key stays here.",
    )
    sub = parser.add_subparsers(dest="broker_command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="serve POST /v1/realtime/client_secrets and /healthz")
    _config_arg(p)
    p.add_argument("--host", default=None, help="address to bind (default: listen.host)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: listen.port)")
    p.set_defaults(handler=serve)

    p = sub.add_parser("add-device", help="register a kiosk; prints its new token once")
    p.add_argument("name", help="the kiosk's name (letters, digits, '_', '.', '-')")
    p.add_argument("--replace", action="store_true", help="give an existing device a new token")
    _config_arg(p)
    _registry_arg(p)
    p.set_defaults(handler=add)

    p = sub.add_parser("list-devices", help="the registered kiosks (names, never tokens)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _config_arg(p)
    _registry_arg(p)
    p.set_defaults(handler=show)

    p = sub.add_parser("revoke-device", help="revoke a kiosk: its token stops working at once")
    p.add_argument("name")
    _config_arg(p)
    _registry_arg(p)
    p.set_defaults(handler=revoke)


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"broker config (default {DEFAULT_CONFIG_PATH}, optional)",
    )


def _registry_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        type=Path,
        default=None,
        metavar="PATH",
        help="device registry (default: the config's registry)",
    )


def _registry_path(args: argparse.Namespace) -> Path:
    return args.registry or load_settings(args.config).registry


def serve(args: argparse.Namespace) -> int:
    """Run the broker in the foreground until SIGTERM/SIGINT."""
    settings = load_settings(args.config)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        try:
            listen = ListenSettings(**{**settings.listen.model_dump(), **overrides})
        except ValueError as exc:
            raise ConfigError(f"config error: --host/--port: {exc}") from None
        settings = settings.model_copy(update={"listen": listen})
    api_key = load_api_key()
    registry = Registry(settings.registry)
    registry.refresh(strict=True)
    try:
        from . import app, server
    except ImportError as exc:
        print(
            f"kioskvoice: broker serve needs the broker extra ({exc.name} is missing): "
            "pip install 'kioskvoice[broker]'",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    server.setup_logging(settings.log_level, [api_key])
    listen = settings.listen
    try:
        sock = server.bind(listen.host, listen.port)
    except OSError as exc:
        print(
            f"kioskvoice: cannot listen on {listen.host}:{listen.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    log.info(
        "token broker on http://%s:%d%s: %d devices in %s; secrets from %s for model %s, "
        "valid %d s",
        listen.host,
        sock.getsockname()[1],
        PATH,
        len(registry),
        settings.registry,
        settings.upstream.endpoint,
        settings.session.model,
        settings.session.ttl_s,
    )
    started = server.run(app.create_app(settings, api_key, registry=registry), listen, sock)
    return 0 if started else 1


def add(args: argparse.Namespace) -> int:
    """Register a device: its token goes to stdout (alone, for scripts), once."""
    path = _registry_path(args)
    try:
        token = add_device(path, args.name, replace=args.replace)
    except RegistryError as exc:
        print(f"kioskvoice: {exc}", file=sys.stderr)
        return 1
    print(token, flush=True)
    print(
        f"Registered {args.name} in {path}. Its token is printed above, once: only its hash is "
        "stored. Give it to the kiosk as the credential realtime.device_token.",
        file=sys.stderr,
    )
    return 0


def show(args: argparse.Namespace) -> int:
    devices = list_devices(_registry_path(args))
    if args.json:
        print(json.dumps(describe(devices), indent=2))
        return 0
    if not devices:
        print("no devices registered")
        return 0
    print(f"{'name':32} {'added':25} fingerprint")
    for device in devices:
        added = device.added.isoformat() if device.added else "-"
        print(f"{device.name:32} {added:25} {device.fingerprint}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    path = _registry_path(args)
    try:
        revoke_device(path, args.name)
    except RegistryError as exc:
        print(f"kioskvoice: {exc}", file=sys.stderr)
        return 1
    print(f"Revoked {args.name}: a running broker refuses its token from the next request on.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``kioskvoice broker …`` on its own (``python -m kioskvoice.broker …`` prepends
    ``broker``); ``argv`` starts with ``broker``."""
    parser = argparse.ArgumentParser(prog="kioskvoice")
    add_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"kioskvoice: {exc}", file=sys.stderr)
        return EX_CONFIG
    except KioskError as exc:
        print(f"kioskvoice: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
