"""``kioskvoice provision``: first-boot import of the configuration an installer drops on the
boot partition (``/boot/firmware/kioskvoice.toml``), run by ``kioskvoice-provision.service``.

The file has the format of ``/etc/kioskvoice/kioskvoice.toml`` plus an optional ``[network]``
section (Wi-Fi, hostname, SSH keys; :class:`NetworkSettings`). Contract:

- The **whole** file is validated first, against the target root's current state. If anything
  is wrong nothing is applied: ``kioskvoice-status.txt`` on the boot partition names every bad
  key, ``/run/kioskvoice-provision.failed`` tells the kiosk to show its error pattern, and the
  exit code is 78.
- Otherwise it writes ``/etc/kioskvoice/kioskvoice.toml`` (0640 root:kioskvoice, no secrets),
  moves the secrets off the FAT partition (``realtime.api_key`` and ``realtime.device_token``
  into systemd's credential store, encrypted with the host key when ``systemd-creds`` can, else
  plain 0600; the Wi-Fi passphrase into a NetworkManager keyfile, 0600), sets the hostname and
  the admin user's ``authorized_keys``, rewrites the boot copy with secrets blanked as
  ``kioskvoice.toml.applied``, and writes the status file.
- In the ``.applied`` copy a secret reads ``""``: dropping that file back (renamed
  ``kioskvoice.toml``) keeps the stored secret. A secret key left out removes it. ``[network]``
  keys left out leave that part of the system as it is.
- No secret is ever printed, logged or written anywhere but its store: every text provisioning
  emits passes through a redactor that knows the file's secret values.

``--boot`` and ``--root`` re-root every path, so tests run against temporary trees; live side
effects (the running hostname, ``systemctl daemon-reload``, ``iw reg set``) happen only when
``--root`` is the real ``/`` of a booted systemd, never in a chroot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import secret_keys
from .applying import apply
from .credentials import CredentialStore, open_store
from .files import _mkdir, _shred, write_file
from .planning import plan, read_file
from .problems import ApplyError, ProvisionError
from .redaction import WIFI_SECRET, Redactor, _secret_values
from .target import APPLIED_NAME, BOOT_DIR, FAILED_MARKER, Paths

EX_OK = 0
EX_FAILURE = 1
EX_CONFIG = 78


def provision(paths: Paths, store: CredentialStore | None = None) -> tuple[int, list[str]]:
    """Run the whole provisioning: ``(exit code, status lines)``; the status file, the boot
    copy and the failure marker are written here. ``store`` None picks the best available.

    Exit codes: 0 applied (or no file), 78 invalid file (nothing applied), 1 apply failure.
    """
    if not paths.source.exists():
        return EX_OK, [f"nothing to do: no {paths.source}"]
    redact = Redactor(())
    data: dict[str, Any] = {}
    try:
        text, data = read_file(paths.source)
        redact = Redactor(_secret_values(data))
        the_plan = plan(data, paths, text)
    except ProvisionError as exc:
        lines = [
            f"kioskvoice provisioning: NOT applied. {paths.source.name} has "
            f"{len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}; "
            "nothing was changed.",
            *(f"  {p}" for p in exc.problems),
            f"Fix {paths.source.name} on the boot partition and restart the kiosk.",
            *_plaintext_warning(paths, data),
        ]
        _write_status(paths, lines, redact)
        marker = paths.at(FAILED_MARKER)
        with contextlib.suppress(OSError):
            _mkdir(marker.parent, 0o755)
            write_file(marker, redact("\n".join(str(p) for p in exc.problems) + "\n").encode())
        raise
    if store is None:
        store = open_store(paths.root)
    try:
        done = apply(the_plan, paths, store)
        try:
            write_file(paths.applied, the_plan.applied_text.encode(), None, None)
        except OSError as exc:
            raise ApplyError(f"{paths.applied}: {exc.strerror or exc}") from None
    except ApplyError as exc:
        _write_status(
            paths,
            [
                f"kioskvoice provisioning: FAILED while applying: {exc}",
                f"{paths.source.name} was left in place and is tried again at the next boot.",
            ],
            redact,
        )
        raise
    _shred(paths.source)
    lines = [
        f"kioskvoice provisioning: applied {paths.source.name} (now {APPLIED_NAME}, "
        "secrets blanked)",
        *(f"  {line}" for line in done),
    ]
    _write_status(paths, lines, redact)
    return EX_OK, [redact(line) for line in lines]


def _plaintext_warning(paths: Paths, data: Mapping[str, Any]) -> list[str]:
    """Lines saying which secrets an unapplied file leaves readable on the boot partition:
    nothing moves them into the credential store until the file is valid."""
    held = [
        f"{section}.{key}"
        for section, key in (*secret_keys(), WIFI_SECRET)
        if isinstance(data.get(section), Mapping) and data[section].get(key)
    ]
    if not held:
        return []
    return [
        f"WARNING: {paths.source.name} holds {', '.join(held)} in plain text. They stay on the",
        "boot partition, readable by anyone with the SD card, until the file is fixed (and",
        "applied) or deleted.",
    ]


def _write_status(paths: Paths, lines: Sequence[str], redact: Redactor) -> None:
    text = redact("\n".join(lines) + "\n")
    with contextlib.suppress(OSError):
        write_file(paths.status, text.encode(), None, None)


def check(paths: Paths) -> list[str]:
    """Validate only (``--check``): what would be applied; :class:`ProvisionError` if invalid.
    Writes nothing."""
    text, data = read_file(paths.source)
    the_plan = plan(data, paths, text)
    net = the_plan.network
    lines = [f"{paths.source}: valid"]
    lines += [f"  {s.name}: {s.action}" for s in the_plan.secrets]
    if net.wifi_ssid is not None:
        lines.append(f"  wifi: {json.dumps(net.wifi_ssid, ensure_ascii=False)}")
    if net.hostname is not None:
        lines.append(f"  hostname: {net.hostname}")
    if net.ssh_authorized_keys is not None:
        lines.append(f"  ssh: {len(net.ssh_authorized_keys)} keys for {net.ssh_user}")
    return [the_plan.redact(line) for line in lines]


def add_parser(subparsers: Any) -> None:
    """Register ``provision`` on the ``kioskvoice`` command's subparsers."""
    p = subparsers.add_parser(
        "provision",
        help="apply the boot partition's kioskvoice.toml (first boot, re-provisioning)",
        description="Validate /boot/firmware/kioskvoice.toml and apply it: the config, "
        "secrets into the credential store, Wi-Fi, hostname, SSH keys. Nothing is applied "
        "if anything is wrong (exit 78); kioskvoice-status.txt on the boot partition says why.",
    )
    p.add_argument(
        "--boot", type=Path, default=BOOT_DIR, metavar="DIR", help="boot partition (%(default)s)"
    )
    p.add_argument(
        "--root", type=Path, default=Path("/"), metavar="DIR", help="system root (%(default)s)"
    )
    p.add_argument(
        "--check", action="store_true", help="validate only, print what would be applied"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Provision (or ``--check``); exit 0, 78 (invalid file) or 1 (failed while applying).
    One line per outcome on stdout, one error line on stderr; never a secret."""
    paths = Paths(boot=args.boot, root=args.root)
    try:
        lines = check(paths) if args.check else provision(paths)[1]
    except ProvisionError as exc:
        redact = _redactor_for(paths)
        print(f"kioskvoice provision: {redact(str(exc))}", file=sys.stderr)
        return EX_CONFIG
    except ApplyError as exc:
        print(f"kioskvoice provision: {_redactor_for(paths)(str(exc))}", file=sys.stderr)
        return EX_FAILURE
    print("\n".join(lines))
    return EX_OK


def _redactor_for(paths: Paths) -> Redactor:
    try:
        return Redactor(_secret_values(tomllib.loads(paths.source.read_text("utf-8-sig"))))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return Redactor(())


def main(argv: Sequence[str] | None = None) -> int:
    """``kioskvoice provision`` on its own (tests, ``python -m kioskvoice.provision``)."""
    parser = argparse.ArgumentParser(prog="kioskvoice")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["provision", *(argv or [])])
    return args.handler(args)
