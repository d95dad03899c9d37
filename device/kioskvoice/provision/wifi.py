"""The Wi-Fi step: a NetworkManager keyfile for the ``[network]`` Wi-Fi (a WPA2 passphrase or
an open network, autoconnecting forever) and the radio's regulatory domain."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from .files import _mkdir, write_file
from .network import NetworkSettings
from .target import REGDOM_CONF, WIFI_KEYFILE, Paths

# A fixed connection UUID: re-provisioning replaces the same NetworkManager connection.
WIFI_UUID = uuid.uuid5(uuid.NAMESPACE_URL, "https://kioskvoice/provision/wifi")


def write_wifi(net: NetworkSettings, psk: str | None, paths: Paths, live: bool) -> str:
    """Write the keyfile (0600) for ``net.wifi_ssid`` with ``psk`` (None: an open network) and
    the regulatory domain; on a ``live`` system also set the domain now. The status line."""
    assert net.wifi_ssid is not None  # the caller applies Wi-Fi only with an SSID
    keyfile = paths.at(WIFI_KEYFILE)
    _mkdir(keyfile.parent, 0o700)
    text = wifi_keyfile(net.wifi_ssid, psk, net.wifi_hidden)
    write_file(keyfile, text.encode(), 0o600, (0, 0))
    regdom = paths.at(REGDOM_CONF)
    _mkdir(regdom.parent, 0o755)
    write_file(regdom, f"options cfg80211 ieee80211_regdom={net.wifi_country}\n".encode())
    security = "WPA2 passphrase" if psk is not None else "open network"
    line = (
        f"wifi: {json.dumps(net.wifi_ssid, ensure_ascii=False)} ({security}, country "
        f"{net.wifi_country}) in /{WIFI_KEYFILE}"
    )
    if live and shutil.which("iw"):
        subprocess.run(["iw", "reg", "set", str(net.wifi_country)], check=False, timeout=10)
    return line


def _keyfile_escape(text: str) -> str:
    # GKeyFile string escapes; spaces at either end would otherwise be trimmed.
    out = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    stripped = out.strip(" ")
    lead = len(out) - len(out.lstrip(" "))
    trail = len(out) - len(out.rstrip(" "))
    return "\\s" * lead + stripped + "\\s" * trail if stripped else "\\s" * len(out)


def _keyfile_unescape(text: str) -> str:
    table = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    return re.sub(r"\\(.)", lambda m: table.get(m.group(1), m.group(1)), text)


def _keyfile_ssid(ssid: str) -> str:
    raw = ssid.encode()
    plain = all(0x20 <= b < 0x7F for b in raw) and not any(c in ssid for c in ";\\")
    if plain and ssid == ssid.strip(" "):
        return ssid
    # The byte-list form takes any SSID (spaces, ';', non-ASCII) without escaping rules.
    return "".join(f"{b};" for b in raw)


def wifi_keyfile(ssid: str, psk: str | None, hidden: bool) -> str:
    """A NetworkManager keyfile for a WPA2-PSK (or open) network that autoconnects forever."""
    lines = [
        "# Written by kioskvoice provision ([network] in /boot/firmware/kioskvoice.toml).",
        "[connection]",
        "id=kioskvoice-wifi",
        f"uuid={WIFI_UUID}",
        "type=wifi",
        "autoconnect=true",
        # 0: retry forever (NetworkManager's default gives up after 4 failures).
        "autoconnect-retries=0",
        "",
        "[wifi]",
        "mode=infrastructure",
        f"ssid={_keyfile_ssid(ssid)}",
    ]
    if hidden:
        lines.append("hidden=true")
    if psk is not None:
        lines += ["", "[wifi-security]", "key-mgmt=wpa-psk", f"psk={_keyfile_escape(psk)}"]
    lines += ["", "[ipv4]", "method=auto", "", "[ipv6]", "addr-gen-mode=default", "method=auto"]
    return "\n".join(lines) + "\n"


def read_keyfile_psk(path: Path) -> str | None:
    """The PSK in an existing keyfile's ``[wifi-security]`` section, or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    section = ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section == "[wifi-security]" and line.startswith("psk="):
            return _keyfile_unescape(line[4:])
    return None
