"""The ``kioskvoice selftest`` command: the hardware checks an installer runs after mounting
a kiosk.

``kioskvoice selftest [--config PATH] [--interactive] [--answers FILE] [--check NAME ...]``
runs, in order: the mic array is found by name with the configured channels and rate
(``mic``); the capture level is above the noise floor while a person speaks (``capture``);
the speaker plays (``speaker``); a live echo test through the real capture chain, ERLE and
delay (``echo``); the button's press, release and debounce (``button``); each LED pattern
(``leds``); the token broker answers (``broker``); a Realtime session opens (``realtime``).

It prints a pass/fail table on stdout, logs one ``KIOSKVOICE_EVENT=selftest`` record, shows
the result on the LEDs (the idle look for a pass, the error look for a failure) and exits 0
when every required check passed, 1 otherwise (78 on a configuration error).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..system.logging import log_event
from .credstore import load_settings
from .gpio import show_result
from .prompter import Prompter
from .results import Status, render_table
from .rig import Rig
from .runner import CHECKS, run_checks

log = logging.getLogger("kioskvoice.selftest")

EX_CONFIG = 78


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``selftest`` on an argparse subparsers object (handler: :func:`run`)."""
    p = subparsers.add_parser(
        "selftest",
        help="check the kiosk's hardware and link after mounting it (pass/fail table)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="TOML config file (default /etc/kioskvoice/kioskvoice.toml, optional)",
    )
    p.add_argument("--interactive", action="store_true", help="ask the tester on this terminal")
    p.add_argument(
        "--answers",
        type=Path,
        default=None,
        metavar="FILE",
        help="answers for a rig: TOML or JSON, check name -> answer (yes/no/skip)",
    )
    p.add_argument(
        "--check",
        action="append",
        choices=list(CHECKS),
        default=None,
        metavar="NAME",
        help=f"run only this check (repeatable): {', '.join(CHECKS)}",
    )
    p.add_argument(
        "--show-s",
        type=float,
        default=5.0,
        metavar="S",
        help="show the result on the LEDs this long before exiting (default 5)",
    )
    p.set_defaults(handler=run)
    return p


def run(args: argparse.Namespace, *, rig_factory: Callable[..., Rig] = Rig) -> int:
    """The ``selftest`` command; returns 0 when every required check passed, else 1."""
    from ..system.logging import journal_available, setup_logging

    try:
        settings = load_settings(args.config)
        if args.answers is not None:
            prompter = Prompter.from_file(args.answers, interactive=args.interactive)
        else:
            prompter = Prompter(interactive=args.interactive)
    except ConfigError as exc:
        print(f"kioskvoice selftest: {exc}", file=sys.stderr)
        return EX_CONFIG
    target = settings.logging.target
    if target == "auto":
        # Run from a shell, not the unit: the summary still belongs in the journal, where
        # remote diagnosis looks for it; the table on stdout is the installer's copy.
        target = "journal" if journal_available() else "stderr"
    setup_logging(settings.logging.level, target=target)
    rig = rig_factory(settings, prompter=prompter)
    results = run_checks(rig, args.check)
    print(render_table(results), flush=True)
    failed = [r.name for r in results if r.failed]
    counts = {s: sum(r.status is s for r in results) for s in Status}
    log_event(
        log,
        logging.ERROR if failed else logging.INFO,
        "selftest",
        f"selftest {'failed: ' + ', '.join(failed) if failed else 'passed'} "
        f"({counts[Status.PASS]} pass, {counts[Status.FAIL]} fail, {counts[Status.SKIP]} skip)",
        result="fail" if failed else "pass",
        failed=",".join(failed) or None,
        checks=" ".join(f"{r.name}={r.status.value}" for r in results),
    )
    with contextlib.suppress(Exception):  # the LEDs are a courtesy; the table is the result
        show_result(rig, not failed, max(0.0, args.show_s))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kioskvoice.selftest ...`` and tests: the command without ``kioskvoice``."""
    parser = argparse.ArgumentParser(prog="kioskvoice")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["selftest", *(argv or [])])
    return run(args)
