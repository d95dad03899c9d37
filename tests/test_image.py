"""The image tooling, fast: every shell script in image/ passes shellcheck, image/install-into
really installs into a (non-emulated) temporary root without apt and the virtualenv, the
provisioning unit verifies, the rpi-image-gen layer installs the packages install-into
expects, and the lock files of the image's Python layer are hashed, fresh and used with
--require-hashes. The full run, arm64 and armhf under emulation, is ``make image-check``."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "image"
INSTALL_INTO = IMAGE / "install-into"
PROVISION_UNIT = REPO / "systemd" / "kioskvoice-provision.service"
KIOSKVOICE = Path(sys.executable).parent / "kioskvoice"

pytestmark = pytest.mark.timeout(60)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def shell_scripts() -> list[Path]:
    return sorted(
        p
        for p in IMAGE.rglob("*")
        if p.is_file() and p.read_bytes()[:2] == b"#!" and b"sh" in p.read_bytes().split(b"\n")[0]
    )


def test_there_are_scripts_and_they_are_executable() -> None:
    names = {p.name for p in shell_scripts()}
    assert {"install-into", "check", "build"} <= names
    for script in shell_scripts():
        assert script.stat().st_mode & 0o111, script
        assert "set -euo pipefail" in script.read_text(), script


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    _need("shellcheck")
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root file system that image/install-into filled, without apt and the venv."""
    for tool in ("systemd-sysusers", "systemd-tmpfiles", "systemctl", "journalctl"):
        _need(tool)
    root = tmp_path_factory.mktemp("rootfs")
    (root / "boot/firmware").mkdir(parents=True)
    started = time.monotonic()
    result = subprocess.run(
        [str(INSTALL_INTO), "--no-packages", str(root)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20
    return root


def test_install_into_installs_units_users_directories_and_rules(rootfs: Path) -> None:
    units = rootfs / "usr/lib/systemd/system"
    for source in (REPO / "systemd").glob("*.service"):
        assert (units / source.name).read_bytes() == source.read_bytes()
    for unit in ("kioskvoice.service", "kioskvoice-provision.service"):
        link = rootfs / "etc/systemd/system/multi-user.target.wants" / unit
        assert link.is_symlink() and str(link.readlink()) == f"/usr/lib/systemd/system/{unit}"
    for path, source in {
        "usr/lib/sysusers.d/kioskvoice.conf": "systemd/kioskvoice.sysusers",
        "usr/lib/tmpfiles.d/kioskvoice.conf": "systemd/kioskvoice.tmpfiles",
        "etc/systemd/journald.conf.d/kioskvoice.conf": "systemd/journald-kioskvoice.conf",
        "usr/lib/systemd/catalog/kioskvoice.catalog": "systemd/kioskvoice.catalog",
        "boot/firmware/kioskvoice.toml.example": "image/kioskvoice.toml.example",
    }.items():
        assert (rootfs / path).read_bytes() == (REPO / source).read_bytes(), path
        assert (rootfs / path).stat().st_mode & 0o777 == 0o644, path
    # sysusers: the service user, in audio and gpio; tmpfiles: its directories.
    passwd = (rootfs / "etc/passwd").read_text()
    assert re.search(
        r"(?m)^kioskvoice:x:\d+:\d+:[^:]*:/var/lib/kioskvoice:/usr/sbin/nologin$", passwd
    )
    groups = {
        line.split(":")[0]: line.split(":")
        for line in (rootfs / "etc/group").read_text().splitlines()
    }
    assert "kioskvoice" in groups["audio"][3].split(",")
    assert "kioskvoice" in groups["gpio"][3].split(",")
    st = (rootfs / "etc/kioskvoice").stat()
    assert (st.st_mode & 0o777, st.st_gid) == (0o750, int(groups["kioskvoice"][2]))
    for store in ("etc/credstore", "etc/credstore.encrypted"):
        assert (rootfs / store).stat().st_mode & 0o777 == 0o700
    # The catalog is compiled; the udev rule names the ReSpeaker's card.
    assert (rootfs / "var/lib/systemd/catalog/database").stat().st_size > 0
    rules = (rootfs / "usr/lib/udev/rules.d/70-kioskvoice-respeaker.rules").read_text()
    assert 'ATTRS{idVendor}=="2886", ATTRS{idProduct}=="0018", ATTR{id}="ReSpeaker"' in rules
    # No credential host key ships in an image: every kiosk makes its own.
    assert not (rootfs / "var/lib/systemd/credential.secret").exists()


def test_install_into_is_repeatable(rootfs: Path) -> None:
    passwd = (rootfs / "etc/passwd").read_text()
    result = subprocess.run(
        [str(INSTALL_INTO), "--no-packages", str(rootfs)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (rootfs / "etc/passwd").read_text() == passwd


def test_the_installed_provisioning_unit_verifies(rootfs: Path, tmp_path: Path) -> None:
    _need("systemd-analyze")
    installed = rootfs / "usr/lib/systemd/system/kioskvoice-provision.service"
    copy = tmp_path / installed.name
    copy.write_text(re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={KIOSKVOICE}", installed.read_text()))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_provisioning_unit_runs_once_per_file_before_network_and_kiosk() -> None:
    settings: dict[str, list[str]] = {}
    for line in PROVISION_UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).extend(value.split())
    assert settings["Type"] == ["oneshot"]
    assert settings["ConditionPathExists"] == ["/boot/firmware/kioskvoice.toml"]
    assert settings["RequiresMountsFor"] == ["/boot/firmware"]
    assert {"NetworkManager.service", "network-pre.target", "kioskvoice.service"} <= set(
        settings["Before"]
    )
    assert settings["ExecStart"] == ["/opt/kioskvoice/bin/kioskvoice", "provision"]
    # The same venv path as the kiosk's own unit.
    kiosk = (REPO / "systemd/kioskvoice.service").read_text()
    assert "ExecStart=/opt/kioskvoice/bin/kioskvoice run" in kiosk


def test_the_layer_installs_the_packages_install_into_expects() -> None:
    listed = subprocess.run(
        [str(INSTALL_INTO), "--print-packages"], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0
    layer = (IMAGE / "layer/kioskvoice.yaml").read_text()
    block = re.search(r"(?ms)^  packages:\n((?:    - \S+\n)+)", layer)
    assert block, "no packages list in the layer"
    declared = re.findall(r"- (\S+)", block.group(1))
    assert sorted(declared) == sorted(listed.stdout.split())
    assert "install-into" in layer
    config = (IMAGE / "config/kioskvoice.yaml").read_text()
    assert re.search(r"(?m)^\s+app: kioskvoice$", config)


def test_image_check_knows_every_example_secret() -> None:
    # image/check greps the boot tree for the example's secret values after provisioning.
    example = (IMAGE / "kioskvoice.toml.example").read_text()
    check = (IMAGE / "check").read_text()
    for key in ("api_key", "wifi_passphrase"):
        value = re.search(rf'(?m)^{key} = "([^"]+)"', example)
        assert value and value.group(1) in check, key


# --- the hash-locked Python layer (image/lock/) ---------------------------------------------

LOCK = IMAGE / "lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")


def _refresh_module():
    spec = importlib.util.spec_from_file_location("image_lock_refresh", LOCK / "refresh.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up by name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


refresh = _refresh_module()
LOCKS = [lock.name for lock in refresh.lock_inputs()]


def pins(name: str) -> dict[str, str]:
    """The lock's pins, {normalised name: version}; asserts every one carries a hash."""
    lines = (LOCK / f"{name}.txt").read_text().splitlines()
    found: dict[str, str] = {}
    for index, line in enumerate(lines):
        if not line or line.startswith("#") or line.startswith("    "):
            continue
        match = PIN.match(line)
        assert match, f"{name}.txt: not a pinned requirement: {line!r}"
        assert lines[index + 1].strip().startswith("--hash=sha256:"), f"{name}.txt: {line}"
        found[refresh.canonical(match.group(1))] = match.group(2)
    return found


def test_there_is_a_lock_per_architecture_and_for_the_tools() -> None:
    assert set(LOCKS) == {"arm64", "armhf", "build", "check"}
    for name in LOCKS:
        assert (LOCK / f"{name}.txt").is_file(), name


@pytest.mark.parametrize("name", LOCKS)
def test_every_lock_pins_every_package_with_hashes(name: str) -> None:
    text = (LOCK / f"{name}.txt").read_text()
    assert len(pins(name)) >= 5
    hashes = re.findall(r"--hash=sha256:([0-9a-f]*)", text)
    assert hashes and all(len(h) == 64 for h in hashes)
    # No direct URL, editable or index option can slip past --require-hashes.
    assert not re.search(r"(?m)^\s*(-e|--index-url|--extra-index-url|--find-links|\S+ @ )", text)


@pytest.mark.parametrize("name", LOCKS)
def test_every_lock_was_resolved_from_the_current_pyproject(name: str) -> None:
    (lock,) = [lock for lock in refresh.lock_inputs() if lock.name == name]
    recorded = re.search(
        r"(?m)^# input-sha256: ([0-9a-f]{64})$", (LOCK / f"{name}.txt").read_text()
    )
    assert recorded, f"{name}.txt has no input-sha256 header"
    assert recorded.group(1) == lock.digest(), (
        f"image/lock/{name}.txt is stale (pyproject.toml or image/lock/refresh.py changed): "
        "run make image-lock"
    )


@pytest.mark.parametrize("arch", ["arm64", "armhf"])
def test_each_architecture_locks_every_dependency_debian_does_not_provide(arch: str) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    locked = pins(arch)
    debian = refresh.DEBIAN[arch]
    for requirement in project["dependencies"]:
        name = refresh.requirement_name(requirement)
        assert (name in locked) != (name in debian), f"{arch}: {name}"
    assert "lgpio" in locked
    # What the lock leaves to Debian, install-into installs from Debian.
    listed = subprocess.run(
        [str(INSTALL_INTO), "--print-packages", "--arch", arch],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert listed.returncode == 0, listed.stderr
    assert {package for package, _ in debian.values()} <= set(listed.stdout.split())


def test_a_package_has_one_version_across_all_locks() -> None:
    versions: dict[str, set[str]] = {}
    for name in LOCKS:
        for package, version in pins(name).items():
            versions.setdefault(package, set()).add(version)
    assert {p: v for p, v in versions.items() if len(v) > 1} == {}
    # The 32-bit lock leaves numpy to Debian; otherwise the two architectures agree.
    assert set(pins("arm64")) - set(pins("armhf")) == {"numpy"}


def _pip_installs(script: Path) -> list[str]:
    """Every pip install command of a shell script, continuation lines joined."""
    text = script.read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if re.search(r"pip\S*\"? .*\binstall\b", line)]


def test_install_into_and_check_install_python_packages_only_with_hashes() -> None:
    install_into = INSTALL_INTO.read_text()
    assert re.search(r"(?m)^\s+local opts=\(.*--require-hashes.*\)$", install_into)
    commands = _pip_installs(INSTALL_INTO) + _pip_installs(IMAGE / "check")
    assert len(commands) >= 3
    for command in commands:
        assert "--require-hashes" in command or '"${opts[@]}"' in command, command
    # The wheel itself is hashed into the requirements pip reads, next to the lock.
    assert "--hash=sha256:" in install_into
    assert 'lock="$here/lock/$arch.txt"' in install_into


def test_image_check_runs_both_architectures_a_turn_and_the_speex_oracle() -> None:
    check = (IMAGE / "check").read_text()
    assert "arches=(arm64 armhf)" in check
    assert re.search(r"(?m)^\s+arm64\) qemu=aarch64 ;;$", check)
    assert re.search(r"(?m)^\s+armhf\) qemu=arm ;;$", check)
    # Two installs, their freezes compared; a whole turn; the binding's oracle, none skipped.
    assert 'diff -u "$out/freeze-1.txt" "$out/freeze-2.txt"' in check
    assert "kioskvoice demo" in check
    assert "tests/test_speex.py" in check
    assert "test_cancel_is_bit_identical_to_speexdsp_python.*PASSED" in check
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"(?m)^IMAGE_ARCH \?= arm64 armhf$", makefile)
    assert re.search(r"(?m)^image-lock: ", makefile)
