"""The ``echo`` check: the kiosk talks to itself through the real capture chain, which must
cancel its own voice (ERLE) at a delay it finds.

On virtual hardware (``wav:`` devices) there is no acoustic path from the speaker to the
microphone: the echo check then plays the sample into a room synthesised with
:mod:`kioskvoice.dsp.room` and says so in its result.
"""

from __future__ import annotations

import numpy as np

from ..errors import AudioDeviceError
from .results import CheckResult, Status
from .rig import Rig
from .sound import _capture, speech_sample

ERLE_PASS_DB = 15.0


def check_echo(rig: Rig) -> CheckResult:
    """Play speech, capture, run the real capture chain: ERLE (pass at 15 dB) and delay."""
    from ..audio.player import SOURCE_RATE
    from ..dsp.chain import CaptureChain, DspOptions
    from ..dsp.measures import erle_db
    from ..dsp.resample import resample_all
    from ..dsp.tool import far_masks, run_offline

    name = "echo"
    a, d = rig.settings.audio, rig.settings.dsp
    play = speech_sample()
    seconds = len(play) / 2 / SOURCE_RATE
    rate = a.sample_rate
    if rig.room is not None:
        ref = np.frombuffer(resample_all(play, SOURCE_RATE, rate), dtype=np.int16)
        echo = rig.room(ref, rate)
        mic = np.repeat(echo[:, None], a.input_channels, axis=1)
        where = "in a synthesized room (the speaker is virtual)"
    else:
        rig.prompter.say(name, f"Quiet please: the kiosk talks to itself for {seconds:.0f} s.")
        try:
            take = _capture(rig, seconds + 0.5, play)
        except AudioDeviceError as exc:
            return CheckResult(name, Status.FAIL, "-", f"cannot run the echo test: {exc}")
        finally:
            rig.prompter.join_actions()
        mic, ref = take.mic, take.ref
        where = "from the speaker to the microphone"
    options = DspOptions(
        enabled=True,
        reference_delay_ms=d.reference_delay_ms,
        tail_ms=d.tail_ms,
        denoise=d.denoise,
        noise_suppress_db=d.noise_suppress_db,
        echo_suppress_db=d.echo_suppress_db,
        echo_suppress_active_db=d.echo_suppress_active_db,
        agc="off",  # gain control would count as echo; ERLE is about the canceller
        max_delay_ms=d.max_delay_ms,
    )
    chain = CaptureChain(
        rate=rate,
        channels=a.input_channels,
        channel=a.channel,
        frame_ms=a.frame_ms,
        options=options,
        out_rate=rate,
    )
    try:
        result = run_offline(chain, np.ascontiguousarray(mic).tobytes(), ref.tobytes())
    finally:
        chain.close()
    if chain.delay_ms is None:
        return CheckResult(
            name,
            Status.FAIL,
            "no delay found",
            f"the microphone did not hear the speaker ({where}): check that the speaker plays "
            "(see the speaker check) and faces the room, not the wall",
        )
    _, far_only = far_masks(
        result.mic,
        result.clean,
        ref[: len(result.mic)],
        rate,
        chain.delay_ms,
        options.tail,
        chain.frame,
    )
    keep = np.flatnonzero(far_only)
    if len(keep) < rate // 2:
        return CheckResult(
            name,
            Status.FAIL,
            f"delay {chain.delay_ms:.0f} ms",
            "too little echo to measure: the speaker is too quiet or the room too noisy",
        )
    erle = erle_db(result.mic[keep], result.clean[keep])
    value = f"ERLE {erle:.1f} dB, delay {chain.delay_ms:.0f} ms"
    if erle < ERLE_PASS_DB:
        return CheckResult(
            name,
            Status.FAIL,
            value,
            f"echo reduction {erle:.0f} dB is below {ERLE_PASS_DB:.0f} dB: the kiosk may "
            "interrupt itself. Lower the speaker volume, keep the speaker away from the "
            "microphone, and check that nothing rattles",
        )
    return CheckResult(name, Status.PASS, value, f"echo is cancelled {where}")
