"""The files in systemd/, checked by systemd's own tools: the unit verifies silently and is
hardened, the user and directories are created as intended, journald takes the drop-in's
limits, and the catalog compiles."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TEST_KEY
from kioskvoice.config import ControlSettings, load_config
from kioskvoice.system.catalog import MESSAGE_IDS

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "kioskvoice.service"
KIOSKVOICE = Path(sys.executable).parent / "kioskvoice"

pytestmark = pytest.mark.timeout(60)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def _run(*args: str | Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=30, **kwargs
    )


def unit_settings(path: Path) -> list[tuple[str, str, str]]:
    """``(section, key, value)`` for every assignment, repeated keys included, in order."""
    out, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(path: Path, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in unit_settings(path) if s == section and k == key]


def runnable_units(directory: Path) -> Path:
    """Every unit of systemd/ copied into ``directory`` with ExecStart pointing at this venv's
    kioskvoice (verify checks it exists), as they are installed together; returns the kiosk's
    unit (it requires the provisioning unit, which must stand beside it)."""
    assert KIOSKVOICE.exists()
    directory.mkdir(parents=True, exist_ok=True)
    for unit in SYSTEMD.glob("*.service"):
        text = re.sub(r"(?m)^ExecStart=(\S+)", f"ExecStart={KIOSKVOICE}", unit.read_text())
        (directory / unit.name).write_text(text)
    return directory / UNIT.name


@pytest.fixture
def runnable_unit(tmp_path: Path) -> Path:
    return runnable_units(tmp_path)


def test_unit_verifies_without_a_word(runnable_unit: Path) -> None:
    _need("systemd-analyze")
    result = _run("systemd-analyze", "verify", runnable_unit)
    # Unknown keys and bad values only warn (exit 0) on systemd 252: any output is a failure.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_every_unit_verifies(tmp_path: Path) -> None:
    _need("systemd-analyze")
    units = sorted(SYSTEMD.glob("*.service")) + sorted(SYSTEMD.glob("*.socket"))
    assert units
    for unit in units:
        copy = tmp_path / unit.name
        copy.write_text(re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={KIOSKVOICE}", unit.read_text()))
        result = _run("systemd-analyze", "verify", copy)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), unit.name


def test_security_exposure_is_at_most_2() -> None:
    _need("systemd-analyze")
    result = _run("systemd-analyze", "security", "--offline=yes", UNIT)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    match = re.search(r"Overall exposure level for kioskvoice\.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout[-500:]
    assert float(match.group(1)) <= 2.0, result.stdout


def test_the_provisioning_unit_is_sandboxed() -> None:
    _need("systemd-analyze")
    unit = SYSTEMD / "kioskvoice-provision.service"
    result = _run("systemd-analyze", "security", "--offline=yes", unit)
    match = re.search(r"exposure level for kioskvoice-provision\.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout[-500:]
    assert float(match.group(1)) < 5.0, result.stdout


def test_unit_has_what_the_issue_asks_for() -> None:
    def one(key: str, section: str = "Service") -> str:
        found = values(UNIT, key, section)
        assert len(found) == 1, (key, found)
        return found[0]

    assert one("Type") == "notify"
    assert one("WatchdogSec") == "30"
    assert one("Restart") == "on-failure"
    assert one("RestartPreventExitStatus") == "78"
    assert int(one("StartLimitBurst", "Unit")) > 0
    assert one("StartLimitIntervalSec", "Unit")
    assert one("User") == "kioskvoice"
    assert set(one("SupplementaryGroups").split()) == {"audio", "gpio"}
    for key in ("RuntimeDirectory", "StateDirectory", "ConfigurationDirectory"):
        assert one(key) == "kioskvoice"
    assert one("WorkingDirectory") == "/run/kioskvoice"
    assert "LG_WD=/run/kioskvoice" in values(UNIT, "Environment")
    assert one("DevicePolicy") == "closed"
    assert set(values(UNIT, "DeviceAllow")) == {"char-alsa rw", "char-gpiochip rw"}
    assert one("ProtectSystem") == "strict"
    assert one("NoNewPrivileges") == "yes"
    assert one("CapabilityBoundingSet") == ""
    assert "@system-service" in values(UNIT, "SystemCallFilter")
    assert one("ExecStart").endswith("kioskvoice run")  # default config path, optional file
    # The control socket's default place is inside the RuntimeDirectory systemd creates.
    assert ControlSettings().socket.parent == Path("/run") / one("RuntimeDirectory")


def test_credentials_are_optional() -> None:
    loaded = [v.split(":")[0] for v in values(UNIT, "LoadCredential")]
    loaded += [v.split(":")[0] for v in values(UNIT, "LoadCredentialEncrypted")]
    assert set(loaded) == {"realtime.api_key", "realtime.device_token"}
    defaults = {v.split(":")[0]: v.split(":", 1)[1] for v in values(UNIT, "SetCredential")}
    # systemd 252 fails the start (243/CREDENTIALS) on a missing LoadCredential= source unless
    # SetCredential= gives the same id a default; the default is a lone newline (an empty
    # value is rejected), which the config reads as "not set".
    assert defaults == dict.fromkeys(loaded, r"\n")


def test_a_default_credential_means_unset(tmp_path: Path, monkeypatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name in ("realtime.api_key", "realtime.device_token"):
        (credentials / name).write_text("\n")  # what SetCredential=...:\n leaves there
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert load_config(empty).realtime.api_key is None


@pytest.mark.parametrize("existing_groups", [False, True])
def test_sysusers_creates_the_user_and_groups(tmp_path: Path, existing_groups: bool) -> None:
    _need("systemd-sysusers")
    etc = tmp_path / "etc"
    etc.mkdir()
    if existing_groups:  # Raspberry Pi OS: audio and gpio exist already
        (etc / "group").write_text("root:x:0:\naudio:x:29:\ngpio:x:993:\n")
        (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    source = (SYSTEMD / "kioskvoice.sysusers").read_text()
    result = _run("systemd-sysusers", f"--root={tmp_path}", "-", input=source)
    assert result.returncode == 0, result.stderr

    def table(name: str) -> dict[str, list[str]]:
        rows = (etc / name).read_text().splitlines()
        return {row.split(":")[0]: row.split(":") for row in rows if row}

    passwd, groups = table("passwd"), table("group")
    user = passwd["kioskvoice"]
    assert user[5] == "/var/lib/kioskvoice" and user[6] == "/usr/sbin/nologin"
    assert int(user[2]) < 1000  # a system user
    assert "kioskvoice" in groups["audio"][3].split(",")
    assert "kioskvoice" in groups["gpio"][3].split(",")
    if existing_groups:
        assert groups["audio"][2] == "29" and groups["gpio"][2] == "993"


def test_tmpfiles_creates_the_config_dir_and_private_credential_stores(tmp_path: Path) -> None:
    _need("systemd-sysusers")
    _need("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    sysusers = (SYSTEMD / "kioskvoice.sysusers").read_text()
    assert _run("systemd-sysusers", f"--root={tmp_path}", "-", input=sysusers).returncode == 0
    source = (SYSTEMD / "kioskvoice.tmpfiles").read_text()
    result = _run("systemd-tmpfiles", f"--root={tmp_path}", "--create", "-", input=source)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    for name in ("credstore", "credstore.encrypted"):
        st = (tmp_path / "etc" / name).stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o700, 0)
    group = next(
        line.split(":")
        for line in (tmp_path / "etc/group").read_text().splitlines()
        if line.startswith("kioskvoice:")
    )
    st = (tmp_path / "etc/kioskvoice").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o750, 0, int(group[2]))
    # systemd leaves an existing ConfigurationDirectory= alone, and warns if modes differ.
    assert values(UNIT, "ConfigurationDirectoryMode") == ["0750"]
    # The unit loads its credentials from exactly these stores.
    sources = [v.split(":", 1)[1] for v in values(UNIT, "LoadCredential")]
    sources += [v.split(":", 1)[1] for v in values(UNIT, "LoadCredentialEncrypted")]
    assert {str(Path(s).parent) for s in sources} == {"/etc/credstore", "/etc/credstore.encrypted"}


def test_catalog_compiles_with_every_message_id(tmp_path: Path) -> None:
    _need("journalctl")
    catalog_dir = tmp_path / "usr/lib/systemd/catalog"
    catalog_dir.mkdir(parents=True)
    shutil.copy(SYSTEMD / "kioskvoice.catalog", catalog_dir)
    result = _run("journalctl", f"--root={tmp_path}", "--update-catalog")
    assert (result.returncode, result.stderr) == (0, "")
    listed = _run("journalctl", f"--root={tmp_path}", "--list-catalog").stdout
    ids = {line.split()[0] for line in listed.splitlines()}
    assert ids == {mid.hex for mid in MESSAGE_IDS.values()}
    assert "kioskvoice: Audio capture stalled" in listed


def test_journald_takes_the_drop_in_limits(tmp_path: Path) -> None:
    """A journald in a private mount namespace (tmpfs over its directories and /etc/systemd)
    reads the drop-in and reports the limits it computed from it."""
    if os.geteuid() != 0:
        pytest.skip("running journald in a mount namespace needs root")
    _need("unshare")
    journald = Path("/lib/systemd/systemd-journald")
    if not journald.exists():
        pytest.skip(f"{journald} is not installed")
    conf = tmp_path / "etc-systemd"
    (conf / "journald.conf.d").mkdir(parents=True)
    shutil.copy(SYSTEMD / "journald-kioskvoice.conf", conf / "journald.conf.d" / "kioskvoice.conf")
    script = f"""
        set -e
        for dir in /run/systemd/journal /run/log /var/log/journal /etc/systemd; do
            mkdir -p $dir && mount -t tmpfs tmpfs $dir
        done
        cp -r {conf}/. /etc/systemd/
        SYSTEMD_LOG_LEVEL=debug SYSTEMD_LOG_TARGET=console {journald} &
        pid=$!
        sleep 0.5; kill -USR1 $pid   # flush to /var/log/journal: the persistent limits apply
        sleep 0.5; kill $pid; wait $pid
        ls /var/log/journal/*/system.journal
    """
    result = _run("unshare", "-m", "sh", "-c", script)
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stdout + result.stderr
    # Every complaint about a config file starts with its path and line number.
    complaints = re.findall(r"(?m)^.*journald\.conf(?:\.d/\S+)?:\d+:.*$", log)
    assert complaints == []
    # Runtime (RAM) limits, then the persistent ones after the flush.
    assert re.search(r"max_use=16\.0M max_size=4\.0M .*keep_free=", log), log[-3000:]
    assert re.search(r"max_use=64\.0M max_size=8\.0M .*keep_free=256\.0M", log), log[-3000:]


def test_journal_upload_example_uses_known_keys() -> None:
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(SYSTEMD / "journal-upload.conf.example")
    assert parser.sections() == ["Upload"]
    known = {
        "URL",
        "ServerKeyFile",
        "ServerCertificateFile",
        "TrustedCertificateFile",
        "NetworkTimeoutSec",
    }  # journal-upload.conf(5), systemd 252
    assert set(parser["Upload"]) <= known
    assert parser["Upload"]["URL"].startswith("https://")


# --- the unit under a real systemd ------------------------------------------------------------

_BOOT_SCRIPT = """
set -e
# Mounts below propagate into the service's namespaces (systemd does this itself on a host).
mount --make-rshared /
mount -t tmpfs tmpfs /run
mkdir -p /run/lock /run/kvtest
cp -r {work}/stage/. /run/kvtest/
chmod -R a+rX /run/kvtest
# This checkout's package and the venv's site-packages, wherever they live (a clone under
# /tmp would vanish under the tmpfs below, and /root is hidden from the service).
mkdir -p /run/kvtest/device /run/kvtest/site
mount --bind {device} /run/kvtest/device
mount --bind {site} /run/kvtest/site
# Whatever is written to /etc and /var/lib lands in layers under the test's directory.
mount -t overlay overlay -o lowerdir=/etc,upperdir={work}/etc-up,workdir={work}/etc-wk /etc
mount -t overlay overlay -o lowerdir=/var/lib,upperdir={work}/lib-up,workdir={work}/lib-wk /var/lib
for dir in /tmp /var/tmp /var/log/journal; do [ -d $dir ] && mount -t tmpfs tmpfs $dir; done
# The installation steps of README.md ("Installing the service"), with this repository's files.
systemd-sysusers /run/kvtest/kioskvoice.sysusers
systemd-tmpfiles --create /run/kvtest/kioskvoice.tmpfiles
printf '%s\\n' "$KIOSKVOICE_TEST_KEY" > /etc/credstore/realtime.api_key
chmod 0600 /etc/credstore/realtime.api_key
mkdir -p /run/systemd/system/kioskvoice.service.d
cp /run/kvtest/kioskvoice.service /run/kvtest/kioskvoice-provision.service \\
   /run/kvtest/kioskvoice-alert.service /run/kvtest/kv-test.target /run/systemd/system/
cp /run/kvtest/test.conf /run/systemd/system/kioskvoice.service.d/
unset KIOSKVOICE_TEST_KEY
exec env container=kioskvoice-test /lib/systemd/systemd --system --unit=kv-test.target
"""

_TEST_TARGET = """[Unit]
Description=kioskvoice unit test
DefaultDependencies=no
Wants=systemd-journald.socket
"""


# kioskvoice inside the namespace: the system's Python with the bind-mounted package and
# site-packages (the checkout itself may be hidden there, under /tmp or /root).
KV_IN_NS = (
    "env",
    "PYTHONPATH=/run/kvtest/device:/run/kvtest/site",
    f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}",
    "-m",
    "kioskvoice",
)


def _site_packages() -> Path:
    return (
        Path(sys.prefix)
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / ("site-packages")
    )


def _service_command() -> tuple[str, str]:
    """How the kioskvoice user can start this checkout: (ExecStart, extra Environment line).

    The system's Python of the venv's version runs this checkout's package and the venv's
    packages, both bind-mounted under /run/kvtest by the boot script: the venv's interpreter
    may be private (pyenv under /root) and the checkout may sit anywhere, /tmp included.
    """
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists() or not _site_packages().is_dir():
        pytest.skip(f"no {system} for the kioskvoice user to run the venv's packages with")
    return f"{system} -m kioskvoice run", "PYTHONPATH=/run/kvtest/device:/run/kvtest/site"


def _cgroup_dirs() -> set[Path]:
    out = set()
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if hierarchy.is_dir():
            out.update(p for p in hierarchy.rglob("*") if p.is_dir() and ".s" in p.name)
    return out


class NamespacedSystemd:
    """systemd 252 as PID 1 of private PID, mount, UTS, IPC and cgroup namespaces, with tmpfs
    and overlays over everything it writes, so that the host is left as it was."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self._env = env
        self._unshare: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self._cgroups_before: set[Path] = set()

    def start(self, timeout_s: float = 15.0) -> None:
        for name in ("etc-up", "etc-wk", "lib-up", "lib-wk"):
            (self.work / name).mkdir()
        script = self.work / "boot.sh"
        script.write_text(
            _BOOT_SCRIPT.format(work=self.work, device=REPO / "device", site=_site_packages())
        )
        self._cgroups_before = _cgroup_dirs()
        self._unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--uts", "--ipc",
             "--cgroup", "--mount-proc", "sh", str(script)],
            env=self._env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        children = Path(f"/proc/{self._unshare.pid}/task/{self._unshare.pid}/children")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._unshare.poll() is not None:
                stderr = self._unshare.stderr.read().decode() if self._unshare.stderr else ""
                pytest.skip(f"cannot boot systemd in namespaces here: {stderr[-300:]}")
            if not self.pid:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    self.pid = int(children.read_text().split()[0])
            elif self.run("systemctl", "is-active", "kv-test.target").stdout.strip() == "active":
                return
            time.sleep(0.1)
        self.stop()
        pytest.skip("systemd in namespaces did not reach its target in time")

    def run(self, *args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespaces (as root)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", *args],
            capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def stop(self) -> None:
        if self._unshare is None:
            return
        # unshare --kill-child takes the namespace's init, hence everything in it, along.
        self._unshare.kill()
        self._unshare.wait(10)
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self._unshare = None
        # Remove the cgroups it created, deepest first, once the killed processes are gone.
        leftover = sorted(_cgroup_dirs() - self._cgroups_before, key=lambda p: -len(p.parts))
        deadline = time.monotonic() + 5
        while leftover and time.monotonic() < deadline:
            for path in list(leftover):
                with contextlib.suppress(FileNotFoundError):
                    try:
                        path.rmdir()
                    except OSError:  # still busy: try again
                        continue
                leftover.remove(path)
            if leftover:
                time.sleep(0.05)


@pytest.fixture
def booted(tmp_path: Path, sim, speech_wav: Path) -> Iterator[NamespacedSystemd]:
    """The repository's unit installed as the README says, under a real systemd, configured
    by a drop-in for the simulator and wav: devices (and an interpreter the user can run)."""
    if os.geteuid() != 0:
        pytest.skip("booting systemd in namespaces needs root")
    if Path("/run/systemd/system").exists():
        pytest.skip("the host runs systemd itself; this test boots one only where none runs")
    for tool in ("unshare", "nsenter", "systemd-sysusers", "systemd-tmpfiles"):
        _need(tool)
    if not Path("/lib/systemd/systemd").exists():
        pytest.skip("systemd is not installed")
    exec_start, pythonpath = _service_command()
    stage = tmp_path / "stage"
    stage.mkdir()
    for name in (
        "kioskvoice.service",
        "kioskvoice-provision.service",
        "kioskvoice-alert.service",
        "kioskvoice.sysusers",
        "kioskvoice.tmpfiles",
    ):
        shutil.copy(SYSTEMD / name, stage)
    shutil.copy(speech_wav, stage / "speech.wav")
    (stage / "kv-test.target").write_text(_TEST_TARGET)
    (stage / "test.conf").write_text(
        "[Unit]\n"
        "# Keep the test's systemd from starting the host's sysinit.target and friends.\n"
        "DefaultDependencies=no\n"
        "After=systemd-journald.socket\n"
        "[Service]\n"
        "ExecStart=\n"
        f"ExecStart={exec_start}\n"
        + (f"Environment={pythonpath}\n" if pythonpath else "")
        + "Environment=GPIOZERO_PIN_FACTORY=mock\n"
        f"Environment=KIOSKVOICE_REALTIME__URL={sim.url}\n"
        "Environment=KIOSKVOICE_AUDIO__INPUT_DEVICE=wav:/run/kvtest/speech.wav\n"
        "Environment=KIOSKVOICE_AUDIO__OUTPUT_DEVICE=wav:/run/kioskvoice/out.wav\n"
    )
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "KIOSKVOICE_TEST_KEY": TEST_KEY}
    system = NamespacedSystemd(tmp_path, env)
    try:
        system.start()
        yield system
    finally:
        system.stop()


PROVISION_FILE = """\
[realtime]
api_key = "sk-provision-under-systemd-0123456789SECRET"
[audio]
input_device = "wav:/run/kvtest/speech.wav"
[network]
hostname = "kiosk-sandboxed"
wifi_ssid = "Museum Staff"
wifi_passphrase = "correct horse battery staple 42"
wifi_country = "GB"
"""


async def test_the_sandboxed_provisioning_unit_applies_a_file(booted: NamespacedSystemd) -> None:
    async def ns(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(booted.run, *args)

    key = "sk-provision-under-systemd-0123456789SECRET"
    # A boot partition of the namespace's own (the host's /boot is left alone).
    setup = (
        "mount -t tmpfs tmpfs /boot && mkdir -p /boot/firmware && "
        f"printf '%s' '{PROVISION_FILE}' > /boot/firmware/kioskvoice.toml && "
        "mkdir -p /run/systemd/system/kioskvoice-provision.service.d && "
        "printf '%s\\n' '[Unit]' 'DefaultDependencies=no' 'After=systemd-journald.socket' "
        "'[Service]' 'ExecStart=' "
        f"'ExecStart={' '.join(KV_IN_NS[2:])} provision' "
        f"'Environment={KV_IN_NS[1]}' "
        "> /run/systemd/system/kioskvoice-provision.service.d/test.conf && "
        "systemctl daemon-reload"
    )
    assert (await ns("sh", "-c", setup)).returncode == 0
    started = await ns("systemctl", "start", "kioskvoice-provision")
    journal = (await ns("journalctl", "-u", "kioskvoice-provision", "--no-pager")).stdout
    assert started.returncode == 0, journal
    assert booted.show("kioskvoice-provision", "Result")["Result"] == "success"
    status = (await ns("cat", "/boot/firmware/kioskvoice-status.txt")).stdout
    assert "applied kioskvoice.toml" in status, status
    assert (await ns("test", "-e", "/boot/firmware/kioskvoice.toml")).returncode != 0
    config = (await ns("cat", "/etc/kioskvoice/kioskvoice.toml")).stdout
    assert "ReSpeaker" not in config and "speech.wav" in config
    stored = await ns("sh", "-c", "ls /etc/credstore*/realtime.api_key")
    assert stored.returncode == 0, stored.stderr
    wifi = await ns("ls", "/etc/NetworkManager/system-connections")
    assert "kioskvoice-wifi.nmconnection" in wifi.stdout
    assert (await ns("cat", "/etc/hostname")).stdout == "kiosk-sandboxed\n"
    everything = (await ns("journalctl", "-o", "json", "--no-pager")).stdout + status + config
    assert key not in everything


async def test_the_hardened_unit_runs_under_systemd(booted: NamespacedSystemd, sim) -> None:
    async def ns(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(booted.run, *args)

    async def ctl(cmd: str) -> dict:
        result = await ns(*KV_IN_NS, "ctl", cmd)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    async def journal_tail() -> str:
        return (await ns("journalctl", "-u", "kioskvoice", "--no-pager", "-n", "40")).stdout

    # Type=notify: "systemctl start" returns once the daemon has sent READY=1.
    started = await ns("systemctl", "start", "kioskvoice")
    assert started.returncode == 0, await journal_tail()
    pid = booted.show("kioskvoice", "MainPID")["MainPID"]

    # The process: its user and groups, no privileges, a seccomp filter, its directories.
    owner = (await ns("ps", "-o", "user:20=,group:20=,supgrp:80=", "-p", pid)).stdout.split()
    assert owner[:2] == ["kioskvoice", "kioskvoice"]
    assert {"audio", "gpio"} <= set(owner[2].split(","))
    status = (await ns("cat", f"/proc/{pid}/status")).stdout
    for line in ("NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t0000000000000000"):
        assert line in status
    assert "CapBnd:\t0000000000000000" in status
    environ = (await ns("cat", f"/proc/{pid}/environ")).stdout.split("\0")
    assert "LG_WD=/run/kioskvoice" in environ
    assert "CREDENTIALS_DIRECTORY=/run/credentials/kioskvoice.service" in environ
    assert (await ns("readlink", f"/proc/{pid}/cwd")).stdout.strip() == "/run/kioskvoice"
    assert TEST_KEY not in "\n".join(environ)

    # The simulator accepts only TEST_KEY: a connected link proves the credential arrived,
    # although realtime.device_token's source file is missing (SetCredential= default).
    async with asyncio.timeout(15):
        while (await ctl("status"))["link"] != "connected":
            await asyncio.sleep(0.2)
    assert "link connected" in booted.show("kioskvoice", "StatusText")["StatusText"]
    sock = (await ns("stat", "-c", "%A %U %G", "/run/kioskvoice/control.sock")).stdout.split()
    assert sock == ["srw-rw----", "kioskvoice", "kioskvoice"]

    # One push-to-talk turn.
    assert (await ctl("press"))["state"] == "listening"
    await asyncio.sleep(1.5)
    assert (await ctl("release"))["state"] == "thinking"
    async with asyncio.timeout(15):
        while (reply := await ctl("status"))["state"] != "idle":
            await asyncio.sleep(0.2)
    assert reply["turns"] == 1

    # journald got native records, attributed to the unit, without the key.
    out = await ns("journalctl", "-o", "json", "-u", "kioskvoice", "SYSLOG_IDENTIFIER=kioskvoice")
    entries = [json.loads(line) for line in out.stdout.splitlines()]
    events = [e.get("KIOSKVOICE_EVENT") for e in entries]
    for event in ("config_loaded", "connect", "turn_start", "turn_end", "reply_start"):
        assert event in events, events
    assert {e["_TRANSPORT"] for e in entries} == {"journal"}
    assert {e["_SYSTEMD_UNIT"] for e in entries} == {"kioskvoice.service"}
    everything = (await ns("journalctl", "-o", "json", "--no-pager")).stdout
    assert TEST_KEY not in everything

    report = await ns(*KV_IN_NS[:-1], "kioskvoice.diag", "--json", "--unit")
    summary = json.loads(report.stdout)
    assert summary["running"] and summary["starts"] == 1 and summary["turns"]["replies"] == 1

    # SIGTERM: STOPPING=1 and exit 0 well within the unit's TimeoutStopSec.
    before = time.monotonic()
    assert (await ns("systemctl", "stop", "kioskvoice")).returncode == 0
    assert time.monotonic() - before < 5
    stopped = booted.show("kioskvoice", "Result", "ExecMainStatus")
    assert stopped == {"Result": "success", "ExecMainStatus": "0"}

    # A configuration error: exit 78, and systemd does not restart it.
    bad = "[Service]\nEnvironment=KIOSKVOICE_AUDIO__FRAME_MS=15\n"
    await ns("sh", "-c", f"printf '{bad}' > /run/systemd/system/kioskvoice.service.d/zz-bad.conf")
    await ns("systemctl", "daemon-reload")
    assert (await ns("systemctl", "start", "kioskvoice")).returncode != 0
    await asyncio.sleep(2.5)  # longer than RestartSec=: a restart would have happened by now
    failed = booted.show("kioskvoice", "Result", "ExecMainStatus", "NRestarts", "ActiveState")
    assert failed == {
        "Result": "exit-code", "ExecMainStatus": "78", "NRestarts": "0", "ActiveState": "failed"
    }  # fmt: skip
    assert "audio.frame_ms" in await journal_tail()
