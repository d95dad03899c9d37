"""The ``kioskvoice`` command.

Each subcommand imports only what it runs: the parser registers just the command named on the
command line (all of them only for ``--help`` or a mistake), so ``ctl``, ``diag`` and
``check-config`` start without the daemon, numpy, the DSP, the broker or the simulator, and
``ctl`` without even the config model (tests/test_cli.py holds that in place).

Exit codes: 0 success, 1 runtime failure, 2 usage, 69 a device or service is unavailable,
78 configuration error (systemd's ``RestartPreventExitStatus=78`` stops restart loops on it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import AudioDeviceError, ConfigError, ControlError, KioskError

if TYPE_CHECKING:  # typing costs an ssh'd operator 5 ms per command on a Pi
    from typing import Any

EX_UNAVAILABLE = 69
EX_CONFIG = 78


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="TOML config file (default /etc/kioskvoice/kioskvoice.toml, optional)",
    )


def _add_run(sub: Any) -> None:
    _config_arg(sub.add_parser("run", help="run the kiosk daemon in the foreground"))


def _add_check_config(sub: Any) -> None:
    p = sub.add_parser("check-config", help="validate the config and print it, secrets masked")
    _config_arg(p)


def _add_ctl(sub: Any) -> None:
    p = sub.add_parser("ctl", help="talk to a running daemon over its control socket")
    _config_arg(p)
    p.add_argument("--socket", type=Path, default=None, help="control socket path")
    p.add_argument("cmd", choices=["status", "press", "release", "reset", "say"])
    p.add_argument("path", nargs="?", type=Path, help="say: the WAV the room's visitor speaks")


def _add_simulate(sub: Any) -> None:
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


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole kiosk against the simulator, no hardware")
    p.add_argument("--out", type=Path, default=None, help="directory for the demo's WAV files")


def _add_panel(sub: Any) -> None:
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


def _add_devices(sub: Any) -> None:
    sub.add_parser("devices", help="list audio devices")


# Commands whose parsers live in their own modules: imported only when named (or for --help).
def _add_diag(sub: Any) -> None:
    from . import diag

    diag.add_parser(sub)


def _add_provision(sub: Any) -> None:
    from . import provision

    provision.add_parser(sub)


def _add_selftest(sub: Any) -> None:
    from . import selftest

    selftest.add_parser(sub)


def _add_record_dsp(sub: Any) -> None:
    from .audio import record

    record.add_parsers(sub)  # record, dsp


def _add_broker(sub: Any) -> None:
    from .broker import cli as broker

    broker.add_parser(sub)  # broker serve|add-device|list-devices|revoke-device


_REGISTER: dict[str, Callable[[Any], None]] = {
    "run": _add_run,
    "check-config": _add_check_config,
    "ctl": _add_ctl,
    "simulate": _add_simulate,
    "demo": _add_demo,
    "panel": _add_panel,
    "devices": _add_devices,
    "diag": _add_diag,
    "provision": _add_provision,
    "selftest": _add_selftest,
    "record": _add_record_dsp,
    "dsp": _add_record_dsp,
    "broker": _add_broker,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with ``command`` alone registered, or every command for None."""
    parser = argparse.ArgumentParser(
        prog="kioskvoice", description="Voice kiosk firmware for the Realtime API."
    )
    parser.add_argument("--version", action="version", version=f"kioskvoice {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    registered = set()
    for name, register in _REGISTER.items():
        if (command is None or name == command) and register not in registered:
            registered.add(register)
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    named = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(named if named in _REGISTER else None).parse_args(argv)
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
    import asyncio
    import logging

    from .app import App
    from .config import load_config
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
        logging.getLogger("kioskvoice").critical("kioskvoice failed", exc_info=True)
        return 1
    return 0


async def _serve(app) -> None:
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.stop)
    await app.run()


def _check_config(args: argparse.Namespace) -> int:
    from .config import load_config, render_toml

    settings = load_config(args.config)
    print(render_toml(settings), end="")
    return 0


def _ctl(args: argparse.Namespace) -> int:
    from .system.control_client import request, socket_path

    path = args.socket or socket_path(args.config)
    fields = {}
    if args.cmd == "say":
        if args.path is None:
            print("kioskvoice: ctl say needs the WAV file to speak", file=sys.stderr)
            return 2
        fields["path"] = str(args.path.resolve())
    reply = request(path, args.cmd, **fields)
    if not reply.get("ok"):
        print(f"kioskvoice: {reply.get('error', 'refused')}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("ok") else 1


def _simulate(args: argparse.Namespace) -> int:
    import asyncio
    import signal

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
    import asyncio
    import contextlib
    import signal

    from .config import load_config
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
