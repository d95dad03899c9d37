"""The ``[network]`` section of the provisioning file (:class:`NetworkSettings`): Wi-Fi,
hostname and SSH keys, each value checked before anything is applied."""

from __future__ import annotations

import base64
import binascii
import re

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_HEX_PSK = re.compile(r"[0-9a-fA-F]{64}")
_SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


class NetworkSettings(BaseModel):
    """The ``[network]`` section: one-time system setup, only in the provisioning file."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    hostname: str | None = None
    """The kiosk's host name (letters, digits, hyphens; at most 63)."""
    wifi_ssid: str | None = None
    """Name of the Wi-Fi network to join (1 to 32 bytes)."""
    wifi_passphrase: SecretStr | None = None
    """WPA2 passphrase: 8 to 63 printable ASCII characters or 64 hex digits. Leave it out for
    an open network; ``""`` keeps the passphrase stored on the kiosk."""
    wifi_country: str | None = None
    """ISO 3166-1 country code (``GB``, ``DE``, ``US``): which radio channels are legal."""
    wifi_hidden: bool = False
    """True when the network does not broadcast its name."""
    ssh_user: str = "admin"
    """The account whose ``authorized_keys`` is written (the image's admin user)."""
    ssh_authorized_keys: list[str] | None = None
    """OpenSSH public keys allowed to log in as ``ssh_user``; replaces the current list."""

    @field_validator("hostname")
    @classmethod
    def _check_hostname(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.lower()
        if not _HOSTNAME.fullmatch(name):
            raise ValueError(
                "must be 1 to 63 letters, digits or hyphens, not starting or ending with a hyphen"
            )
        return name

    @field_validator("wifi_ssid")
    @classmethod
    def _check_ssid(cls, value: str | None) -> str | None:
        if value is not None and not 1 <= len(value.encode()) <= 32:
            raise ValueError("must be 1 to 32 bytes long")
        return value

    @field_validator("wifi_passphrase")
    @classmethod
    def _check_passphrase(cls, value: SecretStr | None) -> SecretStr | None:
        # Messages name the rule, never the value.
        if value is None:
            return None
        text = value.get_secret_value()
        if text == "" or _HEX_PSK.fullmatch(text):
            return value
        if not 8 <= len(text) <= 63:
            raise ValueError("must be 8 to 63 characters (or 64 hex digits)")
        if not all(" " <= ch <= "~" for ch in text):
            raise ValueError("must be printable ASCII characters only")
        return value

    @field_validator("wifi_country")
    @classmethod
    def _check_country(cls, value: str | None) -> str | None:
        if value is None:
            return None
        code = value.upper()
        if not _COUNTRY.fullmatch(code):
            raise ValueError("must be a two-letter ISO 3166-1 country code such as GB or US")
        return code

    @field_validator("ssh_user")
    @classmethod
    def _check_user(cls, value: str) -> str:
        if not _USER.fullmatch(value):
            raise ValueError("must be a user name (lower-case letters, digits, _ and -)")
        return value

    @field_validator("ssh_authorized_keys")
    @classmethod
    def _check_keys(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        bad = [str(i) for i, key in enumerate(value) if not is_ssh_public_key(key)]
        if bad:
            raise ValueError(
                f"entries {', '.join(bad)} (counting from 0) are not OpenSSH public keys "
                "(type, base64 key, optional comment: the line of an id_*.pub file)"
            )
        return [key.strip() for key in value]


def is_ssh_public_key(line: str) -> bool:
    """Whether ``line`` is one OpenSSH public key line (``TYPE BASE64 [COMMENT]``, no options)
    whose encoded blob names the same key type."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2 or parts[0] not in _SSH_KEY_TYPES or "\n" in line.strip():
        return False
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(blob) < 4:
        return False
    length = int.from_bytes(blob[:4], "big")
    return blob[4 : 4 + length] == parts[0].encode()
