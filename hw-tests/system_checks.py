"""Checks only a real kiosk can make (a USB bus, the installed unit), in the selftest's
:class:`~kioskvoice.selftest.CheckResult` shape. Every wait is bounded."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from kioskvoice.selftest import CheckResult, Rig, Status

UNIT = "kioskvoice"
EXPOSURE_MAX = 2.0
"""The unit scores 1.5; more means a drop-in loosened the sandbox."""
_COMMAND_TIMEOUT_S = 60.0


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S, check=False
    )


def unit_installed() -> str | None:
    """None when ``kioskvoice.service`` is installed, else why not (a skip reason)."""
    if shutil.which("systemctl") is None:
        return "no systemd here (systemctl not found)"
    shown = _run("systemctl", "show", UNIT, "-p", "LoadState", "--value")
    if shown.returncode != 0 or shown.stdout.strip() != "loaded":
        state = (shown.stdout.strip() or shown.stderr.strip() or "unknown").splitlines()[0]
        return f"kioskvoice.service is not installed here ({state})"
    return None


def exposure(output: str) -> float | None:
    """The "Overall exposure level" ``systemd-analyze security`` printed."""
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    return float(match.group(1)) if match else None


def check_sandbox(unit_file: Path | None = None) -> CheckResult:
    """The unit stays sandboxed (exposure <= 2.0) and still reaches ALSA and GPIO.

    ``unit_file``: analyse this file offline (``--offline=yes``) instead of the installed
    unit; its device rules are read from the file.
    """
    name = "sandbox"
    if unit_file is not None:
        analysed = _run("systemd-analyze", "security", "--offline=yes", str(unit_file))
        text = unit_file.read_text(encoding="utf-8")
    else:
        analysed = _run("systemd-analyze", "security", "--no-pager", UNIT)
        text = _run(
            "systemctl",
            "show",
            UNIT,
            "-p",
            "DeviceAllow",
            "-p",
            "DevicePolicy",
            "-p",
            "PrivateDevices",
            "-p",
            "SupplementaryGroups",
        ).stdout
    level = exposure(analysed.stdout + analysed.stderr)
    if level is None:
        return CheckResult(
            name,
            Status.FAIL,
            "-",
            f"systemd-analyze security printed no exposure level: {analysed.stderr.strip()}",
        )
    value = f"exposure {level:.1f}"
    missing = [
        need
        for need, pattern in (
            ("DeviceAllow=char-alsa", r"char-alsa"),
            ("DeviceAllow=char-gpiochip", r"char-gpiochip"),
            ("SupplementaryGroups audio", r"SupplementaryGroups=.*\baudio\b"),
            ("SupplementaryGroups gpio", r"SupplementaryGroups=.*\bgpio\b"),
        )
        if not re.search(pattern, text)
    ]
    if re.search(r"^PrivateDevices=(yes|true)", text, re.MULTILINE):
        missing.append("PrivateDevices=no (it hides /dev/snd and /dev/gpiochip*)")
    if missing:
        return CheckResult(
            name,
            Status.FAIL,
            value,
            f"the sandbox shuts out the hardware: the unit lacks {', '.join(missing)}",
        )
    if level > EXPOSURE_MAX:
        return CheckResult(
            name,
            Status.FAIL,
            value,
            f"the sandbox was loosened (exposure {level:.1f} > {EXPOSURE_MAX}): look for "
            "drop-ins in /etc/systemd/system/kioskvoice.service.d/",
        )
    return CheckResult(name, Status.PASS, value, "sandboxed, with ALSA and GPIO allowed")


def _unit_props(*props: str) -> dict[str, str]:
    argv = ["systemctl", "show", UNIT]
    for prop in props:
        argv += ["-p", prop]
    out = _run(*argv).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _seconds(text: str, default: float = 30.0) -> float:
    """A systemd time span as ``systemctl show`` prints it (``30s``, ``1min 30s``, or plain
    microseconds) in seconds; ``default`` when unset or unreadable."""
    text = text.strip()
    if text.isdigit():
        return int(text) / 1e6 or default
    units = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|min|h)\b", text)
    return sum(float(n) * units[u] for n, u in parts) or default


def check_unit_captures(watch_s: float | None = None) -> CheckResult:
    """The running unit captures under its sandbox: it stays up through a watchdog period
    (the watchdog is fed only while capture flows) without a ``capture_stalled`` record."""
    name = "unit_capture"
    props = _unit_props("ActiveState", "InvocationID", "WatchdogUSec", "NRestarts")
    if props.get("ActiveState") != "active":
        return CheckResult(
            name,
            Status.FAIL,
            props.get("ActiveState", "?"),
            "kioskvoice.service is not running: systemctl start kioskvoice, then "
            "journalctl -u kioskvoice -b says why it stopped",
        )
    invocation = props.get("InvocationID", "")
    wait_s = watch_s if watch_s is not None else _seconds(props.get("WatchdogUSec", "")) + 5.0
    time.sleep(wait_s)
    after = _unit_props("ActiveState", "InvocationID")
    if after.get("InvocationID") != invocation or after.get("ActiveState") != "active":
        return CheckResult(
            name,
            Status.FAIL,
            "restarted",
            "the unit restarted while watched: the watchdog fired (capture stalled under the "
            "sandbox?): journalctl -u kioskvoice -b -p warning",
        )
    stalled = _run(
        "journalctl",
        "-o",
        "json",
        "--no-pager",
        f"_SYSTEMD_INVOCATION_ID={invocation}",
        "KIOSKVOICE_EVENT=capture_stalled",
    ).stdout.strip()
    if stalled:
        first = json.loads(stalled.splitlines()[0]).get("MESSAGE", "")
        return CheckResult(
            name,
            Status.FAIL,
            "capture_stalled",
            f"the unit cannot capture: {first} (is /dev/snd allowed and the user in 'audio'?)",
        )
    return CheckResult(
        name, Status.PASS, f"up {wait_s:.0f} s", "the sandboxed unit captures (watchdog fed)"
    )


def check_usb_replug(rig: Rig, timeout_s: float = 60.0) -> CheckResult:
    """The USB microphone is unplugged and plugged back in (prompted); the kiosk's audio
    layer (:class:`~kioskvoice.audio.streams.ResilientAudio`) notices and recovers."""
    from kioskvoice.audio.player import Player
    from kioskvoice.audio.resilient import ResilientAudio

    name = "usb_replug"
    a = rig.settings.audio
    lost, back = threading.Event(), threading.Event()
    audio = ResilientAudio(
        a.input_device,
        a.output_device,
        rate=a.sample_rate,
        channels=a.input_channels,
        frame_ms=a.frame_ms,
        on_lost=lambda _reason: lost.set(),
        on_back=back.set,
    )
    audio.open()
    assert audio.output_rate is not None
    player = Player(audio.output_rate, audio.output_block_samples)
    try:
        audio.start(lambda _block: None, player)
        rig.prompter.say(name, f"Unplug the USB microphone now (within {timeout_s:.0f} s).")
        if not lost.wait(timeout_s):
            return CheckResult(
                name,
                Status.FAIL,
                "not lost",
                "unplugging the microphone went unnoticed: the kiosk would not recover",
            )
        started = time.monotonic()
        rig.prompter.say(name, f"Plug it back in (within {timeout_s:.0f} s).")
        if not back.wait(timeout_s):
            return CheckResult(
                name,
                Status.FAIL,
                "not back",
                f"the microphone did not come back within {timeout_s:.0f} s: is it found "
                "by the same name (kioskvoice devices)?",
            )
        took = time.monotonic() - started
    finally:
        audio.stop()
        rig.prompter.join_actions()
    return CheckResult(name, Status.PASS, f"back {took:.1f} s after the prompt", "recovered")
