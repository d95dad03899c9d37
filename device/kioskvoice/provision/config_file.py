"""The configuration step: ``/etc/kioskvoice/kioskvoice.toml`` written without secrets, and
the boot partition's ``.applied`` copy, the installer's own text with secrets blanked."""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from ..config import secret_keys
from .files import _mkdir, write_file
from .redaction import WIFI_SECRET
from .target import CONFIG_FILE, SERVICE_GROUP, Paths, lookup_group
from .toml_writer import _deep_copy, dump_toml


def write_config(paths: Paths, config_text: str) -> str:
    """Write the kiosk's configuration (0640 root:kioskvoice, in a 0750 directory); the status
    line."""
    root = paths.root
    gid = lookup_group(root, SERVICE_GROUP)
    config_dir = paths.at(CONFIG_FILE).parent
    _mkdir(config_dir, 0o750, 0, gid or 0)
    write_file(paths.at(CONFIG_FILE), config_text.encode(), 0o640, (0, gid or 0))
    if gid is None:
        return f"configuration: /{CONFIG_FILE} (0640 root:root: no group {SERVICE_GROUP})"
    return f"configuration: /{CONFIG_FILE}"


def _without_secrets(data: Mapping[str, Any], blank: bool) -> dict[str, Any]:
    """A copy with every secret value blanked (``""``) or removed."""
    out = _deep_copy(data)
    for section, key in (*secret_keys(), WIFI_SECRET):
        table = out.get(section)
        if isinstance(table, dict) and key in table:
            if blank:
                table[key] = ""
            else:
                del table[key]
    return out


def _config_text(kiosk: Mapping[str, Any], paths: Paths) -> str:
    header = (
        f"# Written by kioskvoice provision from {paths.source}.\n"
        "# Secrets are not here: they are systemd credentials (/etc/credstore*).\n"
        "# To change this kiosk, edit kioskvoice.toml.applied on the boot partition, rename it\n"
        "# kioskvoice.toml and restart; edits made here are replaced by the next provisioning.\n"
    )
    body = dump_toml(_without_secrets(kiosk, blank=False))
    return header + ("\n" + body if body.strip() else "")


_TABLE_LINE = re.compile(r"\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(#.*)?")
_STRING_VALUE = r"""(\s*=\s*)("(?:[^"\\]|\\.)*"|'[^']*')"""


def blank_secrets(text: str) -> str | None:
    """``text`` with every secret's value replaced by ``""``, comments and layout kept; None
    when the file writes a secret in a form this line editor does not handle (dotted keys,
    inline tables, multi-line strings)."""
    secret_keys_by_table: dict[str, set[str]] = {}
    for section, key in (*secret_keys(), WIFI_SECRET):
        secret_keys_by_table.setdefault(section, set()).add(key)
    out, table = [], ""
    for line in text.splitlines(keepends=True):
        header = _TABLE_LINE.fullmatch(line.rstrip("\r\n"))
        if header:
            table = header.group(1)
        for key in secret_keys_by_table.get(table, ()):
            line = re.sub(rf"^(\s*{key}){_STRING_VALUE}", r'\1\2""', line)
        out.append(line)
    return "".join(out)


def _applied_text(text: str, data: Mapping[str, Any]) -> str:
    """The boot copy to keep: the installer's own text with secrets blanked when that can be
    verified, else the data re-rendered."""
    header = (
        "# Applied by kioskvoice provision (see kioskvoice-status.txt). Secrets were moved off\n"
        '# this card and read "" here: left "" they keep the stored value, a new value\n'
        "# replaces it, a removed line deletes it. To change the kiosk, edit this file, rename\n"
        "# it kioskvoice.toml and restart the kiosk.\n\n"
    )
    expected = _without_secrets(data, blank=True)
    # A re-provisioned .applied copy carries the header already.
    edited = blank_secrets(text.removeprefix(header))
    with contextlib.suppress(tomllib.TOMLDecodeError):
        if edited is not None and tomllib.loads(edited) == expected:
            return header + edited
    return header + dump_toml(expected)
