"""Where the kiosk's files are by default: one place, read by the daemon and by the light
commands (``ctl``, ``diag``) that must not import the config model to find them."""

from __future__ import annotations

from pathlib import Path

CONFIG = Path("/etc/kioskvoice/kioskvoice.toml")
CONTROL_SOCKET = Path("/run/kioskvoice/control.sock")
