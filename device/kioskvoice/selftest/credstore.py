"""The kiosk's settings as its unit sees them, read from an installer's shell: the
credentials come from systemd's credential store (:func:`load_settings`)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from ..config import Settings, load_config

CREDSTORE = Path("/etc/credstore")
CREDSTORE_ENCRYPTED = Path("/etc/credstore.encrypted")


def load_settings(path: Path | None) -> Settings:
    """The kiosk's settings as the unit sees them, credentials included.

    Under the unit, systemd hands the secrets over in ``$CREDENTIALS_DIRECTORY``; an
    installer's shell has none, so the same store is read here (``/etc/credstore``, and
    ``/etc/credstore.encrypted`` through ``systemd-creds decrypt``, which needs root) into a
    private directory that is removed once the config is loaded.
    """
    import os
    import shutil
    import subprocess

    from ..config import secret_keys

    if os.environ.get("CREDENTIALS_DIRECTORY"):
        return load_config(path)
    with tempfile.TemporaryDirectory(prefix="kioskvoice-creds-") as tmp:
        found = False
        for section, key in secret_keys():
            name = f"{section}.{key}"
            plain, sealed = CREDSTORE / name, CREDSTORE_ENCRYPTED / name
            value: bytes | None = None
            with contextlib.suppress(OSError):
                value = plain.read_bytes()
            if not (value or b"").strip() and sealed.exists() and shutil.which("systemd-creds"):
                done = subprocess.run(
                    ["systemd-creds", "decrypt", f"--name={name}", str(sealed), "-"],
                    capture_output=True,
                    timeout=15,
                    check=False,
                )
                value = done.stdout if done.returncode == 0 else None
            if value and value.strip():
                target = Path(tmp) / name
                target.touch(mode=0o600)
                target.write_bytes(value)
                found = True
        if not found:
            return load_config(path)
        os.environ["CREDENTIALS_DIRECTORY"] = tmp
        try:
            return load_config(path)
        finally:
            del os.environ["CREDENTIALS_DIRECTORY"]
