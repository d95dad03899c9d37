"""``kioskvoice selftest``: the hardware checks an installer runs after mounting a kiosk.

One module per check family, each named after what it owns; this package keeps every public
name importable from ``kioskvoice.selftest``:

- :mod:`.command`: the command (arguments, the table, the journal record, the exit code) and
  its contract;
- :mod:`.runner`: every check by name, in order (:data:`CHECKS`), and running one safely;
- :mod:`.audio` (``mic``, ``capture``, ``speaker``), :mod:`.echo` (``echo``), :mod:`.gpio`
  (``button``, ``leds``, the result on the LEDs), :mod:`.link` (``broker``, ``realtime``): the
  check families;
- :mod:`.results`, :mod:`.prompter`, :mod:`.rig`, :mod:`.sound`, :mod:`.credstore`: what the
  checks share (a result and the table, questions for the tester, the hardware, audio takes and
  measurements, the settings with the unit's credentials).
"""

from .audio import DYNAMICS_MIN_DB, SPEECH_MIN_DBFS, check_capture, check_mic, check_speaker
from .command import EX_CONFIG, add_parser, main, run
from .credstore import load_settings
from .echo import ERLE_PASS_DB, check_echo
from .gpio import LED_LOOKS, check_button, check_leds, show_result
from .link import check_broker, check_realtime
from .prompter import NO, SKIP_WORDS, YES, Prompter
from .results import CheckResult, Status, render_table
from .rig import Rig, Room, synthetic_room
from .runner import CHECKS, Check, run_check, run_checks
from .sound import TONE_HZ, speech_sample

__all__ = [
    "CHECKS",
    "DYNAMICS_MIN_DB",
    "ERLE_PASS_DB",
    "EX_CONFIG",
    "LED_LOOKS",
    "NO",
    "SKIP_WORDS",
    "SPEECH_MIN_DBFS",
    "TONE_HZ",
    "YES",
    "Check",
    "CheckResult",
    "Prompter",
    "Rig",
    "Room",
    "Status",
    "add_parser",
    "check_broker",
    "check_button",
    "check_capture",
    "check_echo",
    "check_leds",
    "check_mic",
    "check_realtime",
    "check_speaker",
    "load_settings",
    "main",
    "render_table",
    "run",
    "run_check",
    "run_checks",
    "show_result",
    "speech_sample",
    "synthetic_room",
]
