"""Applying a :class:`~.planning.Plan`: the steps in order (configuration, secrets, Wi-Fi,
hostname, SSH keys), every secret sealed before the first write."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping

from .config_file import write_config
from .credentials import CredentialStore, store_secrets, write_dropin
from .host import set_hostname, write_authorized_keys
from .planning import Plan
from .problems import ApplyError
from .target import FAILED_MARKER, Paths, is_live
from .wifi import write_wifi


def apply(the_plan: Plan, paths: Paths, store: CredentialStore) -> list[str]:
    """Write everything ``the_plan`` asks for; the status lines (no secrets).

    Secrets are sealed before the first write, so a failing ``systemd-creds`` changes nothing.
    Raises :class:`ApplyError` on failure; the boot file then stays for the next boot.
    """
    sealed: dict[str, bytes] = {}
    for secret in the_plan.secrets:
        if secret.action == "store":
            sealed[secret.name] = store.seal(secret.name, secret.value)
    done: list[str] = []
    try:
        done += _apply_files(the_plan, paths, store, sealed)
    except OSError as exc:
        raise ApplyError(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")) from None
    return done


def _apply_files(
    the_plan: Plan, paths: Paths, store: CredentialStore, sealed: Mapping[str, bytes]
) -> list[str]:
    """The steps in order; then a live system reloads its units (when the drop-in changed) and
    the failure marker goes."""
    done = [write_config(paths, the_plan.config_text)]
    done += store_secrets(the_plan.secrets, paths, store, sealed)
    dropin_changed = write_dropin(paths, store)

    net = the_plan.network
    live = is_live(paths.root)
    if net.wifi_ssid is not None:
        done.append(write_wifi(net, the_plan.wifi_psk, paths, live))
    if net.hostname is not None:
        done.append(set_hostname(net.hostname, paths, live))
    if net.ssh_authorized_keys is not None:
        done.append(write_authorized_keys(net, paths))

    if live and dropin_changed and shutil.which("systemctl"):
        # kioskvoice.service is still waiting for this unit: the reload makes it see the drop-in.
        subprocess.run(["systemctl", "daemon-reload"], check=False, timeout=60)
    paths.at(FAILED_MARKER).unlink(missing_ok=True)
    return done
