"""``kioskvoice provision`` against temporary boot and root trees: a valid file is applied with
the right owners and modes and leaves no secret on the boot tree; an invalid one applies
nothing, exits 78 and names every bad key; re-provisioning keeps, replaces or removes secrets."""

from __future__ import annotations

import base64
import configparser
import os
import re
import shutil
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

from kioskvoice import provision
from kioskvoice.config import Settings, load_config
from kioskvoice.provision import (
    Paths,
    PlainStore,
    blank_secrets,
    dump_toml,
    is_ssh_public_key,
    read_keyfile_psk,
    wifi_keyfile,
)
from test_systemd import runnable_units

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "image" / "kioskvoice.toml.example"
UNIT = REPO / "systemd" / "kioskvoice.service"
KIOSKVOICE = Path(sys.executable).parent / "kioskvoice"

API_KEY = "sk-provision-test-4f9a8c7e6d5b3a21SECRET"
API_KEY_2 = "sk-provision-second-key-77d1e0c9SECRET"
DEVICE_TOKEN = "dt-provision-test-0a1b2c3d4e5fSECRET"
PASSPHRASE = "correct horse battery staple 42"
GROUP_GID = 4242
ADMIN_UID = 4243

pytestmark = pytest.mark.timeout(60)


def ssh_key(seed: int, comment: str = "alice@laptop") -> str:
    """A well-formed ed25519 public key line (nobody holds a matching private key)."""
    name = b"ssh-ed25519"
    blob = len(name).to_bytes(4, "big") + name + (32).to_bytes(4, "big") + bytes([seed]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


VALID = f"""\
# The installer's comment survives in the .applied copy.
[realtime]
api_key = "{API_KEY}"   # the organisation's key
voice = "coral"
instructions = "Answer like a museum guide."

[audio]
input_device = "ReSpeaker"
input_channels = 6
channel = 0

[gpio]
status_led_pin = 27

[network]
hostname = "Kiosk-Lobby"
wifi_ssid = "Museum Staff"
wifi_passphrase = "{PASSPHRASE}"
wifi_country = "gb"
ssh_authorized_keys = ["{ssh_key(1)}", "{ssh_key(2, "bob@desk")}"]
"""


@pytest.fixture
def tree(tmp_path: Path) -> Paths:
    """A boot partition and a root with the kiosk's group, an admin user and /etc/hosts."""
    boot, root = tmp_path / "boot", tmp_path / "root"
    boot.mkdir()
    (root / "etc").mkdir(parents=True)
    (root / "etc/group").write_text(f"root:x:0:\naudio:x:29:\nkioskvoice:x:{GROUP_GID}:\n")
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\n"
        f"admin:x:{ADMIN_UID}:{ADMIN_UID}:Admin:/home/admin:/bin/bash\n"
    )
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n")
    return Paths(boot=boot, root=root)


def run(paths: Paths, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "kioskvoice.provision", "--boot", str(paths.boot),
         "--root", str(paths.root), *args],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def mode(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mode & 0o7777, st.st_uid, st.st_gid


def files_under(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def assert_nowhere(tree_root: Path, *secrets: str) -> None:
    """No file below ``tree_root`` contains any of ``secrets`` (grep -r, in bytes)."""
    for name, data in files_under(tree_root).items():
        for secret in secrets:
            assert secret.encode() not in data, f"a secret is in {name}"


def decrypt(paths: Paths, name: str) -> str:
    env = dict(os.environ, SYSTEMD_CREDENTIAL_SECRET=str(paths.root / provision.HOST_KEY))
    stored = paths.credential(name, encrypted=True)
    out = subprocess.run(
        ["systemd-creds", "decrypt", f"--name={name}", str(stored), "-"],
        capture_output=True, env=env, timeout=30, check=True,
    )  # fmt: skip
    return out.stdout.decode()


def stored_secret(paths: Paths, name: str) -> str | None:
    """The value of credential ``name`` wherever it is stored, decrypted."""
    if paths.credential(name, encrypted=True).exists():
        return decrypt(paths, name)
    plain = paths.credential(name, encrypted=False)
    return plain.read_text() if plain.exists() else None


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("ownership checks need root")


# --- a valid file -----------------------------------------------------------------------------


def test_a_valid_file_is_applied_with_the_right_owners_and_modes(tree: Paths) -> None:
    tree.source.write_text(VALID)
    result = run(tree)
    assert result.returncode == 0, result.stderr
    for secret in (API_KEY, PASSPHRASE):
        assert secret not in result.stdout + result.stderr
    assert "applied" in result.stdout

    # The config: root:kioskvoice 0640, no secret, the values asked for.
    config = tree.at(provision.CONFIG_FILE)
    if os.geteuid() == 0:
        assert mode(config) == (0o640, 0, GROUP_GID)
        assert mode(config.parent) == (0o750, 0, GROUP_GID)
    settings = load_config(config)
    assert settings.realtime.voice == "coral"
    assert settings.realtime.api_key is None
    assert settings.audio.input_channels == 6 and settings.gpio.status_led_pin == 27

    # The API key: in the encrypted store when systemd-creds works here, else plain.
    encrypted = tree.credential("realtime.api_key", encrypted=True)
    plain = tree.credential("realtime.api_key", encrypted=False)
    if shutil.which("systemd-creds"):
        assert encrypted.exists() and not plain.exists()
        assert API_KEY.encode() not in encrypted.read_bytes()
        assert decrypt(tree, "realtime.api_key") == API_KEY
        stored = encrypted
    else:
        assert plain.read_text() == API_KEY
        stored = plain
    if os.geteuid() == 0:
        assert mode(stored) == (0o600, 0, 0)
        assert mode(stored.parent)[0] == 0o700

    # Wi-Fi: a root-only NetworkManager keyfile, and the regulatory domain.
    keyfile = tree.at(provision.WIFI_KEYFILE)
    if os.geteuid() == 0:
        assert mode(keyfile) == (0o600, 0, 0)
    nm = configparser.ConfigParser(interpolation=None)
    nm.read_string(keyfile.read_text())
    assert nm["connection"]["type"] == "wifi" and nm["connection"]["autoconnect-retries"] == "0"
    assert nm["wifi"]["ssid"] == "Museum Staff"
    assert nm["wifi-security"]["key-mgmt"] == "wpa-psk"
    assert nm["wifi-security"]["psk"] == PASSPHRASE
    assert tree.at(provision.REGDOM_CONF).read_text() == "options cfg80211 ieee80211_regdom=GB\n"

    # Hostname (lower-cased), /etc/hosts, SSH keys for the admin user.
    assert tree.at(provision.HOSTNAME_FILE).read_text() == "kiosk-lobby\n"
    hosts = tree.at(provision.HOSTS_FILE).read_text().splitlines()
    assert "127.0.1.1\tkiosk-lobby" in hosts and "127.0.1.1\tdebian" not in hosts
    keys = tree.root / "home/admin/.ssh/authorized_keys"
    assert [k for k in keys.read_text().splitlines() if not k.startswith("#")] == [
        ssh_key(1),
        ssh_key(2, "bob@desk"),
    ]
    if os.geteuid() == 0:
        assert mode(keys) == (0o600, ADMIN_UID, ADMIN_UID)
        assert mode(keys.parent) == (0o700, ADMIN_UID, ADMIN_UID)

    # The boot tree: renamed, secrets blanked but comments kept, a status file, no secret.
    assert not tree.source.exists()
    applied = tree.applied.read_text()
    assert "# the organisation's key" in applied and "The installer's comment" in applied
    data = tomllib.loads(applied)
    assert data["realtime"]["api_key"] == "" and data["network"]["wifi_passphrase"] == ""
    assert data["realtime"]["voice"] == "coral"
    status = tree.status.read_text()
    assert status.startswith("kioskvoice provisioning: applied")
    for what in ("realtime.api_key: stored", "Museum Staff", "kiosk-lobby", "2 authorized keys"):
        assert what in status
    assert_nowhere(tree.boot, API_KEY, PASSPHRASE)
    assert_nowhere(tree.at(Path("etc/kioskvoice")), API_KEY, PASSPHRASE)
    assert not tree.at(provision.FAILED_MARKER).exists()


def test_the_credentials_drop_in_matches_the_stores_and_verifies(tree: Paths, tmp_path) -> None:
    tree.source.write_text(VALID)
    assert run(tree).returncode == 0
    dropin = tree.at(provision.CREDENTIALS_DROPIN).read_text()
    kind = "LoadCredentialEncrypted" if shutil.which("systemd-creds") else "LoadCredential"
    store = "credstore.encrypted" if kind.endswith("Encrypted") else "credstore"
    assert "LoadCredential=\n" in dropin  # resets the unit's own list first
    assert f"{kind}=realtime.api_key:/etc/{store}/realtime.api_key" in dropin
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    units = tmp_path / "units"
    runnable_units(units)
    (units / "kioskvoice.service.d").mkdir(parents=True)
    shutil.copy(tree.at(provision.CREDENTIALS_DROPIN), units / "kioskvoice.service.d")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(units / "kioskvoice.service")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_without_systemd_creds_secrets_go_to_the_plain_store(tree: Paths) -> None:
    tree.source.write_text(VALID)
    code, lines = provision.provision(tree, store=PlainStore())
    assert code == 0
    plain = tree.credential("realtime.api_key", encrypted=False)
    assert plain.read_text() == API_KEY
    if os.geteuid() == 0:
        assert mode(plain) == (0o600, 0, 0)
    assert not tree.credential("realtime.api_key", encrypted=True).exists()
    dropin = tree.at(provision.CREDENTIALS_DROPIN).read_text()
    assert "LoadCredential=realtime.api_key:/etc/credstore/realtime.api_key" in dropin
    assert all(API_KEY not in line for line in lines)


def test_the_environment_does_not_take_part_in_validation(tree: Paths) -> None:
    tree.source.write_text(VALID)
    env = dict(os.environ, KIOSKVOICE_AUDIO__FRAME_MS="15")
    result = run(tree, env=env)
    assert result.returncode == 0, result.stderr
    assert "frame_ms" not in tree.at(provision.CONFIG_FILE).read_text()


def test_no_file_means_nothing_to_do(tree: Paths) -> None:
    result = run(tree)
    assert result.returncode == 0 and "nothing to do" in result.stdout
    assert list(tree.boot.iterdir()) == []


# --- an invalid file --------------------------------------------------------------------------

INVALID = f"""\
colour = "blue"

[realtime]
api_key = "{API_KEY}"
voice = "marvin"
replay_turns = 99

[audio]
frame_ms = 15
bogus = "{API_KEY}"

[speaker]
volume = 3

[network]
wifi_ssid = "Museum Staff"
wifi_passphrase = "short"
wifi_country = "Britain"
ssh_authorized_keys = ["{ssh_key(1)}", "not a key"]
ssh_user = "nobody-here"
"""
BAD_KEYS = [
    "colour",
    "realtime.voice",
    "realtime.replay_turns",
    "audio.frame_ms",
    "audio.bogus",
    "speaker",
    "network.wifi_passphrase",
    "network.wifi_country",
    "network.ssh_authorized_keys",
]


def test_an_invalid_file_applies_nothing_exits_78_and_names_every_bad_key(tree: Paths) -> None:
    tree.source.write_text(INVALID)
    before = files_under(tree.root)
    result = run(tree)
    assert result.returncode == 78
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    status = tree.status.read_text()
    assert "NOT applied" in status and "nothing was changed" in status
    for key in BAD_KEYS:
        assert re.search(rf"(?m)^  {re.escape(key)}: ", status), (key, status)
        assert f"{key}: " in result.stderr
    assert "(got 15)" in status and "(got 99)" in status
    # Nothing applied: the root is as it was but for the marker the kiosk shows its LED by.
    after = files_under(tree.root)
    marker = str(provision.FAILED_MARKER)
    assert after.pop(marker).decode().count("\n") == len(BAD_KEYS)
    assert after == before
    # The file stays for the installer to fix; no secret is echoed anywhere.
    assert tree.source.read_text() == INVALID
    assert not tree.applied.exists()
    for text in (status, result.stderr, (tree.root / marker).read_text()):
        assert API_KEY not in text and "short" not in text.replace("shorter", "")


def test_an_invalid_file_says_loudly_which_secrets_stay_in_plain_text(tree: Paths) -> None:
    tree.source.write_text(INVALID)
    assert run(tree).returncode == 78
    status = tree.status.read_text()
    assert (
        "WARNING: kioskvoice.toml holds realtime.api_key, network.wifi_passphrase in plain text"
        in status
    )
    assert "readable by anyone with the SD card" in status and API_KEY not in status


def test_a_symlinked_ssh_directory_is_refused(tree: Paths, tmp_path: Path) -> None:
    # The admin owns their home: a .ssh pointing elsewhere must not make root write there.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tree.root / "home/admin").mkdir(parents=True)
    (tree.root / "home/admin/.ssh").symlink_to(elsewhere)
    tree.source.write_text(VALID)
    result = run(tree)
    assert result.returncode == 1
    assert "is not a plain directory (a symbolic link?)" in tree.status.read_text()
    assert list(elsewhere.iterdir()) == []
    assert tree.source.exists()  # tried again at the next boot


def test_a_plain_tools_header_may_not_carry_a_credential(tree: Paths) -> None:
    tree.source.write_text(
        VALID
        + '[[tools]]\nname = "hours"\ndescription = "Opening hours"\n'
        + 'url = "https://example.org/hours"\nheaders = { Authorization = "Bearer abc123secret" }\n'
    )
    result = run(tree)
    assert result.returncode == 78
    assert "tools.0.headers: Authorization carries a credential" in tree.status.read_text()
    assert "abc123secret" not in tree.status.read_text() + result.stderr


def test_a_file_that_is_not_toml_is_named_as_such(tree: Paths) -> None:
    tree.source.write_text('[realtime]\napi_key = "unterminated\n')
    result = run(tree)
    assert result.returncode == 78
    assert "(file): invalid TOML" in tree.status.read_text()
    assert "unterminated" not in tree.status.read_text() + result.stderr


def test_a_kiosk_without_any_credential_is_refused(tree: Paths) -> None:
    tree.source.write_text('[realtime]\nvoice = "coral"\n')
    result = run(tree)
    assert result.returncode == 78
    assert "realtime.api_key: required" in tree.status.read_text()


def test_a_network_key_without_its_ssid_is_refused(tree: Paths) -> None:
    tree.source.write_text(f'[realtime]\napi_key = "{API_KEY}"\n[network]\nwifi_country = "DE"\n')
    assert run(tree).returncode == 78
    assert "network.wifi_country: needs network.wifi_ssid" in tree.status.read_text()


# --- re-provisioning --------------------------------------------------------------------------


def test_reprovisioning_keeps_replaces_and_removes_secrets(tree: Paths) -> None:
    tree.source.write_text(VALID)
    assert run(tree).returncode == 0
    psk_before = read_keyfile_psk(tree.at(provision.WIFI_KEYFILE))

    # The .applied copy, edited and dropped back: blanked secrets keep the stored ones.
    edited = tree.applied.read_text().replace('voice = "coral"', 'voice = "sage"')
    tree.applied.unlink()
    tree.source.write_text(edited)
    result = run(tree)
    assert result.returncode == 0, result.stderr
    assert load_config(tree.at(provision.CONFIG_FILE)).realtime.voice == "sage"
    assert stored_secret(tree, "realtime.api_key") == API_KEY
    assert read_keyfile_psk(tree.at(provision.WIFI_KEYFILE)) == psk_before == PASSPHRASE
    assert "realtime.api_key: kept" in tree.status.read_text()
    assert tree.applied.read_text().count("# Applied by kioskvoice provision") == 1

    # A new key replaces the stored one.
    tree.source.write_text(f'[realtime]\napi_key = "{API_KEY_2}"\n')
    assert run(tree).returncode == 0
    assert stored_secret(tree, "realtime.api_key") == API_KEY_2

    # Switching to the token broker: the API key line is gone, so the key is removed.
    tree.source.write_text(
        "[realtime]\n"
        'token_url = "https://broker.example.org/v1/realtime/client_secrets"\n'
        f'device_token = "{DEVICE_TOKEN}"\n'
    )
    result = run(tree)
    assert result.returncode == 0, result.stderr
    assert stored_secret(tree, "realtime.api_key") is None
    assert stored_secret(tree, "realtime.device_token") == DEVICE_TOKEN
    assert "realtime.api_key: removed" in tree.status.read_text()
    # [network] was left out: Wi-Fi, hostname and SSH keys stay as they were.
    assert read_keyfile_psk(tree.at(provision.WIFI_KEYFILE)) == PASSPHRASE
    assert tree.at(provision.HOSTNAME_FILE).read_text() == "kiosk-lobby\n"
    assert_nowhere(tree.boot, API_KEY, API_KEY_2, DEVICE_TOKEN, PASSPHRASE)


def test_a_blank_passphrase_needs_a_stored_one(tree: Paths) -> None:
    tree.source.write_text(
        f'[realtime]\napi_key = "{API_KEY}"\n'
        '[network]\nwifi_ssid = "Cafe"\nwifi_passphrase = ""\nwifi_country = "FR"\n'
    )
    assert run(tree).returncode == 78
    assert "network.wifi_passphrase" in tree.status.read_text()


def test_an_invalid_reprovisioning_leaves_the_previous_one_in_place(tree: Paths) -> None:
    tree.source.write_text(VALID)
    assert run(tree).returncode == 0
    before = files_under(tree.root)
    tree.source.write_text(INVALID)
    assert run(tree).returncode == 78
    after = files_under(tree.root)
    after.pop(str(provision.FAILED_MARKER))
    assert after == before
    # Fixed, it applies and the marker goes.
    tree.source.write_text(VALID)
    assert run(tree).returncode == 0
    assert not tree.at(provision.FAILED_MARKER).exists()


# --- the pieces -------------------------------------------------------------------------------


def test_secrets_in_a_form_the_line_editor_does_not_know_are_still_blanked(tree: Paths) -> None:
    # Dotted keys and an inline table: the .applied copy is re-rendered instead.
    text = (
        f'realtime.api_key = "{API_KEY}"\n'
        f'network = {{ wifi_ssid = "Cafe", wifi_passphrase = "{PASSPHRASE}", '
        'wifi_country = "FR" }\n'
    )
    tree.source.write_text(text)
    result = run(tree)
    assert result.returncode == 0, result.stderr
    assert_nowhere(tree.boot, API_KEY, PASSPHRASE)
    data = tomllib.loads(tree.applied.read_text())
    assert data["realtime"]["api_key"] == "" and data["network"]["wifi_ssid"] == "Cafe"


def test_blank_secrets_keeps_layout() -> None:
    text = f'[realtime]\n  api_key = "{API_KEY}"  # key\nmodel = "m"\n[audio]\napi_key = "x"\n'
    assert blank_secrets(text) == (
        '[realtime]\n  api_key = ""  # key\nmodel = "m"\n[audio]\napi_key = "x"\n'
    )


@pytest.mark.parametrize(
    "data",
    [
        {"a": 1, "b": 2.5, "c": True, "d": 'text "quoted" \\ and \x7f\n', "e": [1, 2]},
        {"realtime": {"voice": "coral"}, "empty": {}, "x y": {"ü": "é"}},
        {"tools": [{"name": "a", "args": {"k": [1, "2"]}}, {"name": "b"}], "top": -0.0},
        {"nested": {"deeper": {"leaf": float("inf")}}},
    ],
)
def test_dump_toml_round_trips(data: dict) -> None:
    assert tomllib.loads(dump_toml(data)) == data


@pytest.mark.parametrize(
    "psk", ["plain-passphrase", " leading and trailing ", "back\\slash;semi", "a" * 63, "f" * 64]
)
def test_the_keyfile_passphrase_round_trips(tmp_path: Path, psk: str) -> None:
    path = tmp_path / "wifi.nmconnection"
    path.write_text(wifi_keyfile("Café; Wi-Fi ", psk, hidden=True))
    assert read_keyfile_psk(path) == psk
    nm = configparser.ConfigParser(interpolation=None)
    nm.read_string(path.read_text())
    ssid = bytes(int(b) for b in nm["wifi"]["ssid"].split(";") if b).decode()
    assert ssid == "Café; Wi-Fi " and nm["wifi"]["hidden"] == "true"


def test_ssh_public_keys_are_checked() -> None:
    assert is_ssh_public_key(ssh_key(3))
    assert is_ssh_public_key(ssh_key(3).rsplit(" ", 1)[0])  # no comment
    good = ssh_key(3).split()[1]
    assert not is_ssh_public_key(f"ssh-rsa {good}")  # the blob names another type
    assert not is_ssh_public_key("ssh-ed25519 not-base64!")
    assert not is_ssh_public_key(f'command="x" ssh-ed25519 {good}')
    assert not is_ssh_public_key("")


# --- the example file -------------------------------------------------------------------------


def test_the_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if typing.get_origin(model) is list:  # [[tools]]: an array of tables, commented out
            (model,) = typing.get_args(model)
            assert re.search(rf"(?m)^#? ?\[\[{section}\]\]", text), section
        else:
            assert re.search(rf"(?m)^\[{section}\]", text), section
        for key in model.model_fields:  # type: ignore[union-attr]
            assert re.search(rf"(?m)^#? ?{key} = ", text), f"{section}.{key}"
    assert re.search(r"(?m)^\[network\]", text)
    for key in provision.NetworkSettings.model_fields:
        assert re.search(rf"(?m)^#? ?{key} = ", text), f"network.{key}"


def test_the_example_provisions(tree: Paths) -> None:
    shutil.copy(EXAMPLE, tree.source)
    result = run(tree)
    assert result.returncode == 0, tree.status.read_text() if tree.status.exists() else ""
    applied = tree.applied.read_text()
    assert "REPLACE-WITH-YOUR-API-KEY" not in applied
    assert "Copy this file to the card's boot partition" in applied
