"""Voice barge-in's pure parts: the state machine's talk-over, the gated stream, the gate."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kioskvoice.dsp.gate import CLEAR, ECHO, UNSURE, VISITOR, EchoGate
from kioskvoice.dsp.level import BlockLevel
from kioskvoice.events import (
    CloseMic,
    CommitTurn,
    Interrupt,
    LinkUp,
    OpenMic,
    Press,
    Release,
    ReplyAudio,
    ResponseDone,
    ResponseStarted,
    SpeechStarted,
    SpeechStopped,
    State,
    StateChanged,
    TalkOver,
    Tick,
    VoiceEnded,
    VoiceHeard,
)
from kioskvoice.kiosk import Kiosk
from kioskvoice.turn_audio import VOICE_END_S, GatedStream, TurnAudio


def speaking(voice: bool, *, hands_free: bool = True) -> Kiosk:
    """A kiosk speaking its first reply, the visitor's turn ended by the server's VAD
    (hands-free) or by a release (push-to-talk)."""
    kiosk = Kiosk(hands_free=hands_free, voice_barge_in=voice)
    kiosk.handle(LinkUp("s"), 0.0)
    kiosk.handle(Press(), 1.0)
    if hands_free:
        stopped = kiosk.handle(SpeechStopped(), 3.0)
        # With voice barge-in the mic stays open while the kiosk thinks and speaks.
        assert (CloseMic() in stopped) is not voice
    else:
        kiosk.handle(VoiceHeard(), 1.2)
        assert CommitTurn() in kiosk.handle(Release(), 3.0)
    kiosk.handle(ResponseStarted("r1"), 3.1)
    kiosk.handle(ReplyAudio("r1", "i1", b"\0\0"), 3.2)
    assert kiosk.state is State.SPEAKING
    return kiosk


def test_talking_over_the_reply_interrupts_it_and_keeps_the_buffer() -> None:
    kiosk = speaking(voice=True)
    actions = kiosk.handle(TalkOver(), 4.0)
    assert actions == [
        Interrupt("r1", "i1", cancel=True, clear=False, by_voice=True),
        StateChanged(State.SPEAKING, State.LISTENING),
        OpenMic(),
    ]
    # The server's VAD then hears the same visitor: nothing more to do.
    assert kiosk.handle(SpeechStarted(), 4.3) == []
    assert kiosk.handle(SpeechStopped(), 6.0) == [StateChanged(State.LISTENING, State.THINKING)]


def test_the_server_vad_alone_also_interrupts() -> None:
    kiosk = speaking(voice=True)
    assert isinstance(kiosk.handle(SpeechStarted(), 4.0)[0], Interrupt)


def test_without_voice_barge_in_talk_over_is_ignored() -> None:
    kiosk = speaking(voice=False)
    assert kiosk.handle(TalkOver(), 4.0) == []
    assert kiosk.handle(SpeechStarted(), 4.0) == []
    kiosk.handle(ResponseDone("r1", "completed"), 4.5)
    assert kiosk.handle(Tick(playback_idle=True), 5.0)[-1] == OpenMic()


def test_push_to_talk_talking_over_the_reply_opens_a_turn_that_ends_when_they_fall_quiet() -> None:
    kiosk = speaking(voice=True, hands_free=False)
    actions = kiosk.handle(TalkOver(), 4.0)
    assert actions == [
        Interrupt("r1", "i1", cancel=True, clear=True, by_voice=True),
        StateChanged(State.SPEAKING, State.LISTENING),
        OpenMic(by_voice=True),
    ]
    kiosk.handle(VoiceHeard(), 4.0)
    assert kiosk.handle(Tick(playback_idle=True), 5.0) == []  # no button to wait for: listening
    ended = kiosk.handle(VoiceEnded(), 6.5)
    assert CommitTurn() in ended and ended[-1] == StateChanged(State.LISTENING, State.THINKING)


def test_push_to_talk_ignores_talk_over_unless_asked_and_while_idle() -> None:
    assert speaking(voice=False, hands_free=False).handle(TalkOver(), 4.0) == []
    kiosk = Kiosk(voice_barge_in=True)
    kiosk.handle(LinkUp("s"), 0.0)
    assert kiosk.handle(TalkOver(), 1.0) == []


def test_a_pressed_turn_is_not_ended_by_falling_quiet() -> None:
    kiosk = Kiosk(voice_barge_in=True)
    kiosk.handle(LinkUp("s"), 0.0)
    kiosk.handle(Press(), 1.0)
    kiosk.handle(VoiceHeard(), 1.2)
    assert kiosk.handle(VoiceEnded(), 3.0) == []  # the button rules a pressed turn
    assert kiosk.state is State.LISTENING


class _Link:
    session_id = "s"


class _Supervisor:
    """The two things TurnAudio asks of the link's supervisor (the wire is tested elsewhere:
    tests/test_voice_bargein.py runs the daemon)."""

    link = _Link()

    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, build: object, *args: object, droppable: bool = False) -> bool:
        self.sent.append((build, *args))
        return True


FRAME = bytes(960)  # 20 ms at 24 kHz


def test_a_turn_opened_by_voice_ends_after_their_silence_and_keeps_the_claimed_onset() -> None:
    posted: list[object] = []
    turn = TurnAudio(
        _Supervisor(), posted.append, preroll_frames=15, floor_dbfs=-50.0, voice_barge_in=True
    )
    loud = BlockLevel(-30.0, 0, 480, True, ECHO)
    for _ in range(50):  # the kiosk speaks: the gate holds these back, the mic is closed
        turn.frame(FRAME, loud)
    turn.frame(FRAME, BlockLevel(-30.0, 0, 480, True, VISITOR))
    assert TalkOver() in posted
    assert len(turn.preroll) == 51  # the whole look-back waits for the turn, not 300 ms of it
    turn.open(streaming=False, by_voice=True)
    assert turn.seconds == 51 * 0.02 and VoiceHeard() in posted
    quiet = BlockLevel(-80.0, 0, 480, False, VISITOR)
    frames = 0
    while VoiceEnded() not in posted:
        turn.frame(FRAME, quiet)
        frames += 1
        assert frames < 100
    assert frames == round(VOICE_END_S / 0.02)
    assert turn.preroll.maxlen == 15  # a later press gets the usual pre-roll again


def test_a_pressed_turn_never_posts_voice_ended() -> None:
    posted: list[object] = []
    turn = TurnAudio(_Supervisor(), posted.append, preroll_frames=15, floor_dbfs=-50.0)
    turn.open(streaming=False)
    turn.frame(FRAME, BlockLevel(-30.0, 0, 480, True))
    for _ in range(100):
        turn.frame(FRAME, BlockLevel(-80.0, 0, 480, False))
    assert VoiceHeard() in posted and VoiceEnded() not in posted


def level(gate: int) -> BlockLevel:
    return BlockLevel(-30.0, 0, 480, True, gate)


def test_the_gated_stream_sends_silence_for_echo_and_the_onset_for_a_visitor() -> None:
    stream = GatedStream(lookback=3)
    frames = [bytes([i + 1]) * 4 for i in range(8)]
    assert stream.push(frames[0], level(CLEAR)) == [(frames[0], level(CLEAR))]
    out = [stream.push(f, level(ECHO)) for f in frames[1:5]]
    assert out[:3] == [[], [], []]
    assert out[3] == [(bytes(4), level(ECHO))]  # the oldest left unclaimed: silence
    # The visitor claims what waits: their first word is in it.
    claimed = stream.push(frames[5], level(VISITOR))
    assert [p for p, _ in claimed] == frames[2:6]
    stream.push(frames[6], level(ECHO))
    # The echo is over: what waited was the kiosk's own.
    assert [p for p, _ in stream.push(frames[7], level(CLEAR))] == [bytes(4), frames[7]]


def test_the_gated_stream_holds_what_it_cannot_judge_only_while_the_kiosk_replies() -> None:
    """UNSURE (a fresh gate): held like echo while the kiosk speaks (its own voice must not
    reach the server's VAD); let through while it listens (only its cue sounds play, and the
    visitor's first words must not be lost)."""
    frames = [bytes([i + 1]) * 4 for i in range(4)]
    replying = GatedStream(lookback=3)
    assert [replying.push(f, level(UNSURE)) for f in frames[:2]] == [[], []]
    listening = GatedStream(lookback=3)
    out = listening.push(frames[0], level(UNSURE), listening=True)  # after the listening cue
    assert out == [(frames[0], level(UNSURE))]
    # A reply just ended: its echo, held, is never let through by an UNSURE while listening.
    replying.push(frames[2], level(UNSURE), listening=True)
    assert [p for p, _ in replying.push(frames[3], level(CLEAR))] == [bytes(4)] * 3 + frames[3:]


def noise_of(seed: int) -> Callable[[float], bytes]:
    """Blocks of white noise at a given RMS (one 20 ms block at 16 kHz each), seeded."""
    rng = np.random.default_rng(seed)
    return lambda rms: rng.normal(0, rms, 320).astype(np.int16).tobytes()


def test_the_gate_holds_echo_and_finds_a_louder_voice() -> None:
    noise = noise_of(1)
    gate = EchoGate(echo_blocks=5)
    ref = noise(3000)

    silence = bytes(640)
    assert gate.judge(silence, noise(100), noise(100)) == CLEAR  # nothing played: nothing held
    # Converged: the canceller leaves -20 dB of the echo, the preprocessor -40 dB.
    verdicts = [gate.judge(ref, noise(300), noise(3)) for _ in range(300)]
    assert verdicts[:50] == [UNSURE] * 50  # learning what the canceller leaves: a second
    assert set(verdicts[50:]) == {ECHO} and gate.residual_db < -35
    # A residual burst the preprocessor let through, but the canceller's output holds no more
    # than usual: not a voice (a voice stands out in both).
    burst = [gate.judge(ref, noise(300), noise(300)) for _ in range(10)]
    assert VISITOR not in burst
    talk = [gate.judge(ref, noise(3000), noise(3000)) for _ in range(10)]
    assert VISITOR in talk and talk.index(VISITOR) <= 7
    gate.reset()  # the filter starts afresh: an unconverged canceller never opens the gate
    assert gate.judge(ref, noise(3000), noise(3000)) == UNSURE  # nor can it tell echo


def test_the_gate_forgets_what_an_unconverged_filter_left() -> None:
    """A fresh echo filter passes the echo almost whole for a second or two; once it has
    converged, a visitor 10 dB under what it left then must stand out within a few seconds
    (a running tracker that fell 0.1 dB a block kept them hidden for many)."""
    noise = noise_of(3)
    gate = EchoGate(echo_blocks=5)
    ref = noise(3000)

    for _ in range(100):  # converging: most of the echo left in both signals
        gate.judge(ref, noise(2000), noise(1000))
    for _ in range(150):  # converged (3 s): -20 dB after the canceller, -40 after the chain
        gate.judge(ref, noise(300), noise(30))
    talk = [gate.judge(ref, noise(1000), noise(300)) for _ in range(10)]
    assert VISITOR in talk


def test_voice_barge_in_is_on_in_hands_free_unless_refused_and_needs_the_dsp() -> None:
    from types import SimpleNamespace

    from kioskvoice.app import voice_barge_in

    def settings(mode: str, wanted: bool | None, dsp: bool = True) -> object:
        interaction = SimpleNamespace(mode=mode, voice_barge_in=wanted)
        return SimpleNamespace(interaction=interaction, dsp=SimpleNamespace(enabled=dsp))

    assert voice_barge_in(settings("push_to_talk", True))  # type: ignore[arg-type]
    assert voice_barge_in(settings("hands_free", True))  # type: ignore[arg-type]
    assert voice_barge_in(settings("hands_free", None))  # type: ignore[arg-type]
    assert not voice_barge_in(settings("push_to_talk", None))  # type: ignore[arg-type]
    for mode in ("push_to_talk", "hands_free"):
        assert not voice_barge_in(settings(mode, False))  # type: ignore[arg-type]
        assert not voice_barge_in(settings(mode, True, dsp=False))  # type: ignore[arg-type]


def test_the_chain_judges_talk_over_only_when_asked() -> None:
    from kioskvoice.dsp.chain import CaptureChain, DspOptions

    def chain(talk_over: bool) -> CaptureChain:
        return CaptureChain(
            rate=16000, channels=1, channel=0, options=DspOptions(), talk_over=talk_over
        )

    plain, judged = chain(False), chain(True)
    try:
        assert plain.gate is None and judged.gate is not None
        loud = (np.random.default_rng(2).normal(0, 3000, 320)).astype(np.int16).tobytes()
        for c in (plain, judged):
            c.far_end(loud)
            c.process(loud)
        assert plain.verdict == CLEAR and judged.verdict == UNSURE  # fresh: it cannot tell yet
    finally:
        plain.close()
        judged.close()
