"""journald MESSAGE_IDs for kioskvoice's key events, and the catalog that explains them.

Each key event (a start, a lost link, a stalled microphone, ...) carries a stable 128-bit
``MESSAGE_ID`` so that ``journalctl MESSAGE_ID=...`` finds it whatever the wording of the
message, and ``journalctl -x`` shows the explanation below. The ids were generated once with
``journalctl --new-id128`` and must never change: fleets filter on them. Per-turn events
(turn_start, reply_start, ...) carry no id; ``KIOSKVOICE_EVENT`` finds them.

``systemd/kioskvoice.catalog`` is :func:`render_catalog` written to a file (a test keeps the
two identical); it is installed in ``/usr/lib/systemd/catalog/`` and compiled with
``journalctl --update-catalog``. ``python -m kioskvoice.system.catalog`` prints it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One key event: its ``KIOSKVOICE_EVENT`` name, id, and the text ``journalctl -x`` shows.

    ``subject`` and ``body`` may name journal fields as ``@FIELD@``, which journalctl replaces
    with the record's value: name only fields that every record of the event carries.
    """

    event: str
    message_id: uuid.UUID
    subject: str
    body: str


def _entry(event: str, message_id: str, subject: str, body: str) -> CatalogEntry:
    return CatalogEntry(event, uuid.UUID(message_id), subject, body.strip())


ENTRIES: tuple[CatalogEntry, ...] = (
    _entry(
        "config_loaded",
        "465cb1328937403082cf41a04820a0b9",
        "kioskvoice started",
        """
The kiosk daemon loaded its configuration, opened its audio devices and told systemd it is
ready. The Realtime link may still be connecting: until it is up the kiosk is offline (status
LED: a short flash every 2 s).

Each of these records is one start of the daemon. Several within a few minutes mean systemd
is restarting it: the records just before each start say why (journalctl -u kioskvoice
-p warning), and "kioskvoice diag" counts starts and unclean exits.
""",
    ),
    _entry(
        "stopped",
        "75b95c75f252496f8a7f4af115221ca2",
        "kioskvoice stopped",
        """
The kiosk daemon closed its audio devices, its Realtime session and its control socket, and
exited. A start without a matching stop means the process was killed: by the watchdog (see
capture_stalled), by a crash, or by a power cut.
""",
    ),
    _entry(
        "connect",
        "2371883258fb436b8af0cd7417bb4340",
        "Realtime session @KIOSKVOICE_SESSION@ established",
        """
The kiosk opened and configured its first Realtime session since it started. It now answers
visitors (status LED steady on).
""",
    ),
    _entry(
        "reconnect",
        "9fba1d506b5d4810ad3cd2bbf2f1eb1e",
        "Realtime session @KIOSKVOICE_SESSION@ re-established",
        """
After losing its Realtime link the kiosk connected again. The disconnect record before this
one names the cause in KIOSKVOICE_ERROR_CODE. Many reconnects point at the network or the
Wi-Fi signal:

    journalctl -u kioskvoice -o json KIOSKVOICE_EVENT=disconnect --since -1d
""",
    ),
    _entry(
        "disconnect",
        "e1a4c568ce824dee98410f52d197cb6d",
        "Realtime link lost: @KIOSKVOICE_ERROR_CODE@",
        """
The kiosk's Realtime session ended; KIOSKVOICE_ERROR_CODE says why. Network failures, server
errors and session caps are retried at once and then with capped exponential backoff, and the
kiosk is offline meanwhile. Fatal causes (a refused key, an exhausted quota, an unknown model)
put the kiosk in the error state (status LED 1 s on, 1 s off) and are retried only every few
minutes, so that a corrected key is picked up without a restart.
""",
    ),
    _entry(
        "rollover",
        "469c8dad931a4a7094391c8c3a194a42",
        "Realtime session rolled over to @KIOSKVOICE_SESSION@",
        """
Realtime sessions have a maximum age. Before reaching it the kiosk opened the next session,
replayed the recent conversation into it and switched over between two turns. Nothing is
wrong: this is routine, roughly every half hour.
""",
    ),
    _entry(
        "rollover_failed",
        "1c2d21d441e24232a284ac2b46af280f",
        "Realtime session rollover failed",
        """
The server ended the Realtime session at its cap before the kiosk had switched to the next
one. The kiosk reconnects as after any disconnect; a visitor may have been cut off. Repeated
failures point at a slow network, or at a server cap shorter than realtime.session_max_s plus
realtime.rollover_margin_s allow for.
""",
    ),
    _entry(
        "turn_dropped",
        "59343e7ecfd04d4ebfa23fcacaaa5f35",
        "A visitor's turn was dropped",
        """
A visitor spoke while the Realtime link was down, and the link did not come back in time to
deliver the recording. The visitor saw the error pattern on the status LED. The records
before this one say why the link was down.
""",
    ),
    _entry(
        "error",
        "55117d1383654baa86af628a64b9153c",
        "kioskvoice error: @KIOSKVOICE_ERROR_CODE@",
        """
The Realtime service reported an error, or the kiosk met one it could not handle.
KIOSKVOICE_ERROR_CODE names it. Errors that end the session are followed by a disconnect
record and a reconnect.
""",
    ),
    _entry(
        "device_lost",
        "b2c51e0867964f9992b940d9c26e2530",
        "Audio device lost",
        """
The microphone or the speaker stopped working, usually because its USB cable was pulled or
the USB bus reset (an undersized power supply is the usual suspect: see dmesg). The kiosk is
in the error state and looks for the device again by name until it is back.
""",
    ),
    _entry(
        "device_back",
        "d0c85e0f322f4fd694d52c60db5a27e8",
        "Audio device back",
        """
An audio device that was lost is working again; the kiosk resumes.
""",
    ),
    _entry(
        "capture_stalled",
        "60a2e7d37ed244908ba54a142a0e4e72",
        "Audio capture stalled; the watchdog is withheld",
        """
Audio made no progress for 5 s: no block came from the microphone and no attempt to re-open
it completed, at most 6.5 s after the last block (1.5 s to call the device lost, then 5 s).
The capture stream is wedged (PortAudio can hang instead of failing when a USB device goes
away). The kiosk stops answering systemd's
watchdog, so systemd kills and restarts it once WatchdogSec (30 s) has passed. If this repeats,
check the USB cable, the hub and the power supply (dmesg).
""",
    ),
    _entry(
        "reply_failed",
        "4017b8707b314292837d03f6389e17ef",
        "A reply failed: @KIOSKVOICE_ERROR_CODE@",
        """
The Realtime service ended a reply with status failed or incomplete; KIOSKVOICE_ERROR_CODE is
the reason it gave (server_error, rate or quota limits, content_filter, max_output_tokens).
The visitor heard a short spoken apology and saw the error pattern for a few seconds; the
next press works as usual. Many of these point at the account (quota, rate limits) or at the
instructions (content_filter, max_output_tokens):

    journalctl -u kioskvoice KIOSKVOICE_EVENT=reply_failed -o json --since -1d
""",
    ),
    _entry(
        "no_reply",
        "c3a60ace4d9a44cf93cddcfef1d8b9d7",
        "A reply never started: @KIOSKVOICE_ERROR_CODE@",
        """
A visitor's turn was sent, but no reply started within interaction.reply_timeout_s (or a
started reply stopped making progress). The visitor heard a short spoken apology instead of
silence; a reply that starts later is cancelled. Occasional ones are service hiccups; many
point at an overloaded service or a network that stalls (see the disconnect records).
""",
    ),
    _entry(
        "reply_cut",
        "f9cae6354d664c439c0666d50d056ba8",
        "A reply was cut off: @KIOSKVOICE_ERROR_CODE@",
        """
A reply stopped in the middle: the Realtime link failed, the audio device was lost, or the
server stopped sending. The visitor heard what had arrived, then a short spoken apology. The
records before this one say why the link or the device went away.
""",
    ),
    _entry(
        "no_speech",
        "8d0409a60c6b4bfea0889a2f58e34704",
        "A visitor's turn held no speech and was not sent",
        """
The button was held, but nothing above audio.silence_floor_dbfs (after echo cancellation and
noise suppression) reached the microphone and the speech detector never fired. Nothing was
sent to the model; the visitor was asked to speak closer. KIOSKVOICE_PEAK_DBFS in the
turn_end record before this one is the loudest the turn got. One now and then is a visitor
who pressed and said nothing; several in a row raise mic_suspect.
""",
    ),
    _entry(
        "mic_suspect",
        "8d61ad96df5845128eef74cc0d285eaa",
        "The microphone may be muted, dead or disconnected",
        """
Several push-to-talk turns in a row (interaction.mic_suspect_turns) held no speech at all.
Either visitors press without talking, or the microphone is muted, turned all the way down,
unplugged inside a USB hub, or delivering a constant value (a dead channel: check
audio.channel). The status LED shows the error pattern while the kiosk is idle, until a turn
with speech arrives (a mic_ok record). Check with:

    kioskvoice selftest
""",
    ),
    _entry(
        "mic_clipping",
        "77c8653e83c648e5a5eb15f25a89b3cb",
        "The microphone clipped during a turn",
        """
Part of a turn's samples reached full scale: the capture gain is too high (or the visitor
shouted into the microphone). Clipped speech is harder for the model to understand and is
not removed by the echo canceller. Lower the capture gain (alsamixer, or the array's own
settings); the turn was still sent and answered.
""",
    ),
)

MESSAGE_IDS: MappingProxyType[str, uuid.UUID] = MappingProxyType(
    {entry.event: entry.message_id for entry in ENTRIES}
)


def message_id(event: str) -> uuid.UUID | None:
    """The MESSAGE_ID of a key event, or None for events without one."""
    return MESSAGE_IDS.get(event)


def render_catalog() -> str:
    """The catalog file, in the format of ``systemd.catalog(7)``."""
    parts = [
        "# kioskvoice's journal message catalog: install in /usr/lib/systemd/catalog/, then run\n"
        "# journalctl --update-catalog. Generated by python -m kioskvoice.system.catalog.\n"
    ]
    for entry in ENTRIES:
        parts.append(
            f"-- {entry.message_id.hex}\n"
            f"Subject: {entry.subject}\n"
            "Defined-By: kioskvoice\n"
            f"KIOSKVOICE_EVENT: {entry.event}\n"
            "\n"
            f"{entry.body}\n"
        )
    return "\n".join(parts)


if __name__ == "__main__":
    print(render_catalog(), end="")
