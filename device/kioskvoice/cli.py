"""The ``kioskvoice`` command.

Exit codes: 0 success, 1 runtime failure, 2 usage, 69 a device or service is unavailable,
78 configuration error (systemd's ``RestartPreventExitStatus=78`` stops restart loops on it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .config import load_config, render_toml
from .errors import AudioDeviceError, ConfigError, ControlError, KioskError

EX_UNAVAILABLE = 69
EX_CONFIG = 78

log = logging.getLogger("kioskvoice")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="TOML config file (default /etc/kioskvoice/kioskvoice.toml, optional)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kioskvoice", description="Voice kiosk firmware for the Realtime API."
    )
    parser.add_argument("--version", action="version", version=f"kioskvoice {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the kiosk daemon in the foreground")
    _config_arg(p)
    p = sub.add_parser("check-config", help="validate the config and print it, secrets masked")
    _config_arg(p)
    p = sub.add_parser("ctl", help="talk to a running daemon over its control socket")
    _config_arg(p)
    p.add_argument("--socket", type=Path, default=None, help="control socket path")
    p.add_argument("cmd", choices=["status", "press", "release", "reset"])
    p = sub.add_parser("simulate", help="run the embedded Realtime simulator on loopback")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--api-key", default=None, help="accept only this key (default: any)")
    p.add_argument(
        "--session-cap-s", type=float, default=None, help="end sessions at this age (1001)"
    )
    p.add_argument("--reply-delay-s", type=float, default=0.0, help="delay every response")
    p.add_argument("--drop-after-response", action="store_true", help="drop TCP after every reply")
    p.add_argument(
        "--broker-port",
        type=int,
        default=None,
        help="also serve a token-broker stand-in on this port (needs --device-token)",
    )
    p.add_argument("--device-token", default=None, help="the device token the broker accepts")
    p.add_argument("--secret-ttl-s", type=float, default=600.0, help="lifetime of minted secrets")
    p = sub.add_parser("demo", help="the whole kiosk against the simulator, no hardware")
    p.add_argument("--out", type=Path, default=None, help="directory for the demo's WAV files")
    p = sub.add_parser(
        "panel", help="hold an LED pattern (the alert unit shows why the kiosk is not running)"
    )
    _config_arg(p)
    p.add_argument(
        "--look",
        default="auto",
        help="a pattern name (idle, error, config_error, ...) or auto: config_error when the "
        "config is invalid, else error",
    )
    p.add_argument("--seconds", type=float, default=None, help="stop after this long")
    sub.add_parser("devices", help="list audio devices")
    # Their own modules register these (and import numpy/soxr only when they run).
    from . import diag, provision, selftest
    from .audio import record
    from .broker import cli as broker

    diag.add_parser(sub)
    provision.add_parser(sub)
    selftest.add_parser(sub)
    record.add_parsers(sub)  # record, dsp
    broker.add_parser(sub)  # broker serve|add-device|list-devices|revoke-device
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "run": _run,
        "check-config": _check_config,
        "ctl": _ctl,
        "simulate": _simulate,
        "demo": _demo,
        "devices": _devices,
        "panel": _panel,
    }
    handler = handlers.get(args.command) or args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"kioskvoice: {exc}", file=sys.stderr)
        return EX_CONFIG
    except (AudioDeviceError, ControlError) as exc:
        print(f"kioskvoice: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except KioskError as exc:
        print(f"kioskvoice: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    from .app import App
    from .system.logging import setup_logging

    settings = load_config(args.config)
    setup_logging(settings.logging.level, target=settings.logging.target)
    app = App(settings)
    try:
        asyncio.run(_serve(app))
    except KioskError:
        raise
    except Exception:
        # Logged through the redacting handler: no secret reaches the journal or stderr.
        log.critical("kioskvoice failed", exc_info=True)
        return 1
    return 0


async def _serve(app) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.stop)
    await app.run()


def _check_config(args: argparse.Namespace) -> int:
    settings = load_config(args.config)
    print(render_toml(settings), end="")
    return 0


def _ctl(args: argparse.Namespace) -> int:
    from .system.control import request

    path = args.socket or load_config(args.config).control.socket
    reply = request(path, args.cmd)
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1


def _simulate(args: argparse.Namespace) -> int:
    from .sim import Faults, Simulator
    from .sim.broker import BrokerStub

    if (args.broker_port is None) != (args.device_token is None):
        print("kioskvoice: --broker-port and --device-token go together", file=sys.stderr)
        return 2
    faults = Faults(
        reply_delay_s=args.reply_delay_s,
        session_cap_s=args.session_cap_s,
        drop_after_response=args.drop_after_response,
    )

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with Simulator(port=args.port, api_key=args.api_key, faults=faults) as sim:
            print(f"Realtime simulator listening on {sim.url}", flush=True)
            if args.broker_port is None:
                await stop.wait()
                return
            broker = BrokerStub(
                sim, args.device_token, ttl_s=args.secret_ttl_s, port=args.broker_port
            )
            async with broker:
                print(f"token broker listening on {broker.url}", flush=True)
                await stop.wait()

    try:
        asyncio.run(serve())
    except OSError as exc:
        print(f"kioskvoice: cannot listen: {exc.strerror}", file=sys.stderr)
        return EX_UNAVAILABLE
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out)


def _lenient_gpio(path: Path | None):
    """The [gpio] section of a config that may be invalid elsewhere, else the defaults: the
    LEDs must be able to say "config error" when nothing else can."""
    import tomllib

    from .config import DEFAULT_CONFIG_PATH, GpioSettings

    try:
        with (path or DEFAULT_CONFIG_PATH).open("rb") as fh:
            return GpioSettings(**tomllib.load(fh).get("gpio", {}))
    except Exception:
        return GpioSettings()


def _panel(args: argparse.Namespace) -> int:
    from .panel import Look, Panel
    from .provision import FAILED_MARKER

    look = args.look
    try:
        gpio = load_config(args.config).gpio
        if look == "auto":
            # A provisioning file that was refused keeps the kiosk down: a config error too.
            look = "config_error" if (Path("/") / FAILED_MARKER).exists() else "error"
    except ConfigError:
        gpio = _lenient_gpio(args.config)
        if look == "auto":
            look = "config_error"
    try:
        shown = Look(look)
    except ValueError:
        print(f"kioskvoice: --look: unknown pattern {look!r}", file=sys.stderr)
        return 2

    async def hold() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        panel = Panel(gpio, lambda event: None)
        panel.open(loop)
        try:
            panel.show(shown)
            print(f"showing {shown.value} on the LEDs", flush=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.seconds):
                    await stop.wait()
        finally:
            panel.close()

    asyncio.run(hold())
    return 0


def _devices(args: argparse.Namespace) -> int:
    from .audio.devices import list_devices, open_portaudio

    pa = open_portaudio()
    try:
        devices = list_devices(pa)
    finally:
        pa.terminate()
    if not devices:
        print("no audio devices found (is the USB sound card plugged in?)")
        return EX_UNAVAILABLE
    print(f"{'name':40} {'in':>3} {'out':>3} {'rate':>6}")
    for dev in devices:
        print(
            f"{dev.name[:40]:40} {dev.max_input_channels:>3} "
            f"{dev.max_output_channels:>3} {dev.default_rate:>6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
