"""The client side of the control socket, for ``kioskvoice ctl`` and ``diag``: light on purpose.

An operator runs ``ctl`` over ssh, on a Pi Zero where every imported module costs: this module
imports neither asyncio nor the config model (tests/test_cli.py checks).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from .. import paths
from ..errors import ControlError

if TYPE_CHECKING:  # typing costs an ssh'd operator 5 ms per command on a Pi
    from typing import Any

MAX_LINE = 64 * 1024
DEFAULT_SOCKET = paths.CONTROL_SOCKET
SOCKET_ENV = "KIOSKVOICE_CONTROL__SOCKET"


def socket_path(config: Path | None = None) -> Path:
    """Where the daemon's socket is, as ``run`` would place it with the same config:
    ``$KIOSKVOICE_CONTROL__SOCKET``, else ``[control] socket`` of the config file, else the
    default.

    Light on purpose: an operator's every ``ctl`` over ssh (seconds on a Pi Zero) must not pay
    for validating the whole config. An explicit ``config`` that cannot be read raises
    :class:`ControlError`; an invalid one is the daemon's business, not ``ctl``'s.
    """
    import tomllib

    from_env = os.environ.get(SOCKET_ENV)
    if from_env:
        return Path(from_env)
    path = config or paths.CONFIG
    try:
        with path.open("rb") as fh:
            value = tomllib.load(fh).get("control", {}).get("socket")
    except FileNotFoundError:
        if config is not None:
            raise ControlError(f"config {path} does not exist") from None
        return DEFAULT_SOCKET
    except (OSError, ValueError, AttributeError) as exc:
        if config is not None:
            raise ControlError(f"config {path}: cannot read [control] socket: {exc}") from None
        return DEFAULT_SOCKET
    return Path(value) if isinstance(value, str) and value else DEFAULT_SOCKET


def request(path: Path, cmd: str, /, *, timeout_s: float = 5.0, **fields: Any) -> dict[str, Any]:
    """Send one command (with ``fields``, e.g. ``path`` for ``say``) to a running daemon and
    return its reply (blocking, with a timeout)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
            sock.sendall(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(MAX_LINE)
                if not chunk:
                    break
                data += chunk
        except FileNotFoundError:
            raise ControlError(f"no daemon: control socket {path} does not exist") from None
        except PermissionError:
            raise ControlError(f"permission denied on control socket {path}") from None
        except TimeoutError:
            raise ControlError(f"control socket {path}: no answer within {timeout_s} s") from None
        except OSError as exc:
            raise ControlError(f"control socket {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(data)
    except ValueError:
        raise ControlError(f"control socket {path}: malformed reply") from None
