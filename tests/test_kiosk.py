"""The pure state machine: events in, actions out, time passed in."""

from __future__ import annotations

from kioskvoice.events import (
    CancelResponse,
    CommitTurn,
    DiscardTurn,
    Interrupt,
    LinkDown,
    LinkFatal,
    LinkUp,
    Notice,
    OpenMic,
    PlayAudio,
    Press,
    Release,
    ReplyAudio,
    Reset,
    ResponseDone,
    ResponseStarted,
    ServerError,
    SpeechStarted,
    SpeechStopped,
    State,
    StateChanged,
    Tick,
    VoiceHeard,
)
from kioskvoice.kiosk import Kiosk


def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


def press(kiosk: Kiosk, t: float) -> list:
    """A press by a visitor who then speaks (the app posts VoiceHeard once the turn's audio
    holds speech); returns the press's actions."""
    actions = kiosk.handle(Press(), t)
    kiosk.handle(VoiceHeard(), t)
    return actions


def online() -> Kiosk:
    kiosk = Kiosk(min_turn_s=0.25, max_turn_s=30, reply_timeout_s=20)
    assert kiosk.handle(LinkUp("sess_1"), 0.0) == [StateChanged(State.OFFLINE, State.IDLE)]
    return kiosk


def speaking(kiosk: Kiosk, t: float = 1.0) -> Kiosk:
    press(kiosk, t)
    kiosk.handle(Release(), t + 2)
    kiosk.handle(ResponseStarted("resp_1"), t + 2.1)
    kiosk.handle(ReplyAudio("resp_1", "item_1", b"\0\0" * 240), t + 2.2)
    assert kiosk.state is State.SPEAKING
    return kiosk


def test_starts_offline_and_a_press_records() -> None:
    kiosk = Kiosk()
    assert kiosk.state is State.OFFLINE
    assert press(kiosk, 0.0) == [StateChanged(State.OFFLINE, State.LISTENING), OpenMic()]


def test_full_turn() -> None:
    kiosk = online()
    assert press(kiosk, 1.0) == [StateChanged(State.IDLE, State.LISTENING), OpenMic()]
    assert kiosk.handle(Release(), 3.0) == [
        CommitTurn(),
        StateChanged(State.LISTENING, State.THINKING),
    ]
    assert kiosk.handle(ResponseStarted("resp_1"), 3.1) == []
    audio = ReplyAudio("resp_1", "item_1", b"\1\0")
    assert kiosk.handle(audio, 3.2) == [
        StateChanged(State.THINKING, State.SPEAKING),
        PlayAudio("item_1", b"\1\0"),
    ]
    assert kiosk.handle(audio, 3.3) == [PlayAudio("item_1", b"\1\0")]
    assert kiosk.handle(ResponseDone("resp_1", "completed"), 3.4) == []
    # Still speaking while the player has audio queued.
    assert kiosk.handle(Tick(playback_idle=False), 3.5) == []
    assert kiosk.handle(Tick(playback_idle=True), 4.0) == [StateChanged(State.SPEAKING, State.IDLE)]


def test_playback_idle_before_response_done_keeps_speaking() -> None:
    kiosk = speaking(online())
    assert kiosk.handle(Tick(playback_idle=True), 3.5) == []  # a gap between bursts
    assert kiosk.state is State.SPEAKING


def test_short_tap_sends_nothing() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    actions = kiosk.handle(Release(), 1.1)
    assert kinds(actions) == ["DiscardTurn", "Notice", "StateChanged"]
    assert actions[1] == Notice("too_short")
    assert kiosk.state is State.IDLE


def test_max_turn_ends_the_turn_itself() -> None:
    kiosk = Kiosk(max_turn_s=5)
    kiosk.handle(LinkUp(), 0)
    press(kiosk, 1.0)
    assert kiosk.handle(Tick(), 5.9) == []
    actions = kiosk.handle(Tick(), 6.0)
    assert kinds(actions) == ["Notice", "CommitTurn", "StateChanged"]
    assert kiosk.state is State.THINKING
    assert kiosk.handle(Release(), 6.5) == []  # the late release is ignored


def test_barge_in_while_speaking() -> None:
    kiosk = speaking(online())
    actions = press(kiosk, 5.0)
    assert actions[0] == Interrupt(response_id="resp_1", item_id="item_1", cancel=True)
    assert kinds(actions[1:]) == ["StateChanged", "OpenMic"]
    assert kiosk.state is State.LISTENING
    # A late delta of the cancelled response is never played.
    assert kiosk.handle(ReplyAudio("resp_1", "item_1", b"\0\0"), 5.1) == []
    assert kiosk.handle(ResponseDone("resp_1", "cancelled"), 5.2) == []
    assert kiosk.state is State.LISTENING


def test_barge_in_after_response_done_does_not_cancel() -> None:
    kiosk = speaking(online())
    kiosk.handle(ResponseDone("resp_1", "completed"), 4.0)
    actions = press(kiosk, 4.5)
    assert actions[0] == Interrupt(response_id="resp_1", item_id="item_1", cancel=False)


def test_barge_in_while_thinking_ignores_the_old_response() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    kiosk.handle(Release(), 2.0)
    actions = press(kiosk, 2.1)
    assert actions[0] == Interrupt(response_id=None, item_id=None, cancel=True)
    # The response created for the abandoned turn arrives late and is ignored.
    assert kiosk.handle(ResponseStarted("resp_old"), 2.2) == []
    assert kiosk.handle(ReplyAudio("resp_old", "item_old", b"\0\0"), 2.3) == []
    kiosk.handle(Release(), 4.0)
    kiosk.handle(ResponseStarted("resp_new"), 4.1)
    assert kinds(kiosk.handle(ReplyAudio("resp_new", "item_new", b"\0\0"), 4.2)) == [
        "StateChanged",
        "PlayAudio",
    ]


def test_commit_rejected_returns_to_idle() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    kiosk.handle(Release(), 2.0)
    actions = kiosk.handle(ServerError("input_audio_buffer_commit_empty", "too small"), 2.1)
    assert Notice("too_short", "input_audio_buffer_commit_empty") in actions
    assert kiosk.state is State.IDLE


def test_other_server_errors_do_not_change_state() -> None:
    kiosk = speaking(online())
    assert kiosk.handle(ServerError("response_cancel_not_active", "x"), 4.0) == []
    assert kiosk.state is State.SPEAKING


def test_no_reply_times_out() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    kiosk.handle(Release(), 2.0)
    assert kiosk.handle(Tick(), 21.9) == []
    actions = kiosk.handle(Tick(), 22.0)
    assert Notice("no_reply", "the reply did not start") in actions
    assert kiosk.state is State.IDLE
    # The reply starts after the visitor was told it failed: it is cancelled, never played.
    assert kiosk.handle(ResponseStarted("late"), 23.0) == [CancelResponse("late")]
    assert kiosk.handle(ReplyAudio("late", "item_late", b"\0\0"), 23.1) == []
    assert kiosk.state is State.IDLE


def test_a_started_response_that_stalls_times_out() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    kiosk.handle(Release(), 2.0)
    kiosk.handle(ResponseStarted("r"), 10.0)  # progress restarts the clock
    assert kiosk.handle(Tick(), 29.9) == []
    actions = kiosk.handle(Tick(), 30.0)
    assert Notice("no_reply", "no progress") in actions and CancelResponse("r") in actions


def test_a_reply_that_stops_midway_times_out_once_played() -> None:
    kiosk = speaking(online())  # last audio at 3.2
    assert kiosk.handle(Tick(playback_idle=False), 30.0) == []  # still playing: wait
    actions = kiosk.handle(Tick(playback_idle=True), 30.1)
    assert Notice("reply_cut", "no progress") in actions and kiosk.state is State.IDLE


def test_response_without_audio_returns_to_idle_and_failure_is_noticed() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    kiosk.handle(Release(), 2.0)
    kiosk.handle(ResponseStarted("resp_1"), 2.1)
    actions = kiosk.handle(ResponseDone("resp_1", "failed", "server_error"), 2.2)
    assert Notice("reply_failed", "failed: server_error") in actions
    assert kiosk.state is State.IDLE


def test_a_reply_failing_for_quota_is_an_apology_and_the_error_state() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    kiosk.handle(Release(), 2.0)
    kiosk.handle(ResponseStarted("resp_1"), 2.1)
    done = ResponseDone("resp_1", "failed", "insufficient_quota", fatal=True)
    actions = kiosk.handle(done, 2.2)
    assert actions == [
        Notice("reply_failed", "failed: insufficient_quota"),
        StateChanged(State.THINKING, State.ERROR),
    ]
    # No turn can be served until the link is back (the supervisor ends the session and
    # retries only every fatal_retry_s); the LinkFatal that follows changes nothing more.
    assert press(kiosk, 3.0) == [Notice("unavailable", "error")]
    assert kiosk.handle(LinkFatal("insufficient_quota", "x"), 3.1) == []
    kiosk.handle(LinkUp("sess_2"), 300.0)
    assert kiosk.state is State.IDLE


def test_a_reply_failing_for_a_server_error_lets_the_next_turn_be_answered() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    kiosk.handle(Release(), 2.0)
    kiosk.handle(ResponseDone("resp_1", "failed", "server_error"), 2.2)
    assert kiosk.state is State.IDLE
    speaking(kiosk, 3.0)


def test_offline_turn_is_delivered_when_the_link_returns() -> None:
    kiosk = Kiosk(deliver_within_s=10)
    press(kiosk, 1.0)
    assert kiosk.handle(Release(), 3.0) == [StateChanged(State.LISTENING, State.THINKING)]
    assert kiosk.handle(Tick(), 12.9) == []
    assert kiosk.handle(LinkUp("s"), 12.95) == [CommitTurn()]
    kiosk.handle(ResponseStarted("r"), 13.0)
    assert kinds(kiosk.handle(ReplyAudio("r", "i", b"\0\0"), 13.1)) == [
        "StateChanged",
        "PlayAudio",
    ]


def test_offline_turn_is_dropped_visibly_after_deliver_within() -> None:
    kiosk = Kiosk(deliver_within_s=10)
    press(kiosk, 1.0)
    kiosk.handle(Release(), 3.0)
    actions = kiosk.handle(Tick(), 13.0)
    assert actions[0].kind == "turn_dropped"
    assert kiosk.state is State.ERROR
    assert kiosk.handle(LinkUp(), 20.0) == [StateChanged(State.ERROR, State.IDLE)]


def test_link_down_while_listening_keeps_recording() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    assert kiosk.handle(LinkDown("close_1006"), 1.5) == []
    assert kiosk.state is State.LISTENING
    assert kiosk.handle(Release(), 3.0) == [StateChanged(State.LISTENING, State.THINKING)]
    assert kiosk.handle(LinkUp("s2"), 4.0) == [CommitTurn()]


def test_link_down_before_the_reply_sends_the_turn_again() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    kiosk.handle(Release(), 3.0)
    kiosk.handle(ResponseStarted("r1"), 3.1)
    assert kiosk.handle(LinkDown("close_1006"), 3.2) == []
    assert kiosk.state is State.THINKING
    assert kiosk.handle(LinkUp("s2"), 4.0) == [CommitTurn()]
    # The old response's audio is not played; the new one's is.
    assert kiosk.handle(ReplyAudio("r1", "i1", b"\0\0"), 4.1) == []
    kiosk.handle(ResponseStarted("r2"), 4.2)
    assert kinds(kiosk.handle(ReplyAudio("r2", "i2", b"\0\0"), 4.3)) == [
        "StateChanged",
        "PlayAudio",
    ]


def test_link_down_after_the_whole_reply_arrived_lets_it_play() -> None:
    kiosk = speaking(online())
    kiosk.handle(ResponseDone("resp_1", "completed"), 3.5)
    assert not kiosk.busy
    assert kiosk.handle(LinkDown("close_1006"), 4.0) == []
    assert kiosk.state is State.SPEAKING
    assert kiosk.handle(Tick(playback_idle=True), 5.0) == [
        StateChanged(State.SPEAKING, State.OFFLINE)
    ]


def test_link_down_while_speaking_cuts_the_reply() -> None:
    kiosk = speaking(online())
    actions = kiosk.handle(LinkDown("close_1006"), 4.0)
    assert Notice("reply_cut", "close_1006") in actions
    assert kiosk.state is State.OFFLINE


def test_fatal_mid_turn_drops_it_visibly() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    actions = kiosk.handle(LinkFatal("unauthorized", "401"), 1.5)
    assert Notice("turn_dropped", "unauthorized") in actions
    assert kiosk.state is State.ERROR


def test_barge_in_on_a_waiting_turn_replaces_it() -> None:
    kiosk = online()
    kiosk.handle(LinkDown("x"), 0.5)
    press(kiosk, 1.0)
    kiosk.handle(Release(), 2.0)
    actions = press(kiosk, 2.5)
    assert actions[0] == Interrupt(response_id=None, item_id=None, cancel=False)
    assert kiosk.state is State.LISTENING
    # The abandoned turn is not dropped later with an error; the new one runs its course.
    assert kiosk.handle(Tick(), 13.0) == []
    assert kiosk.handle(Tick(), 32.5)[0] == Notice("max_turn")


def test_link_down_when_idle_is_not_a_dropped_turn() -> None:
    kiosk = online()
    assert kiosk.handle(LinkDown("x"), 1.0) == [StateChanged(State.IDLE, State.OFFLINE)]


def test_fatal_is_error_state_until_link_up() -> None:
    kiosk = online()
    kiosk.handle(LinkFatal("unauthorized", "401"), 1.0)
    assert kiosk.state is State.ERROR
    assert press(kiosk, 2.0) == [Notice("unavailable", "error")]
    kiosk.handle(LinkUp(), 3.0)
    assert kiosk.state is State.IDLE


def test_double_press_and_stray_release_are_ignored() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    assert press(kiosk, 1.1) == []
    kiosk.handle(Release(), 2.0)
    assert kiosk.handle(Release(), 2.1) == []
    assert not any(isinstance(a, DiscardTurn) for a in kiosk.handle(Tick(), 2.2))


def test_hands_free_conversation() -> None:
    from kioskvoice.events import CloseConversation, CloseMic, OpenConversation, SpeechStopped

    kiosk = Kiosk(hands_free=True, conversation_idle_s=60)
    kiosk.handle(LinkUp("s"), 0.0)
    actions = press(kiosk, 1.0)
    assert actions[0] == OpenConversation() and OpenMic() in actions
    assert kiosk.handle(Release(), 1.1) == []  # the button does not end turns
    assert kiosk.handle(SpeechStopped(), 4.0) == [
        CloseMic(),
        StateChanged(State.LISTENING, State.THINKING),
    ]
    kiosk.handle(ResponseStarted("r1"), 4.1)
    kiosk.handle(ReplyAudio("r1", "i1", b"\0\0"), 4.2)
    kiosk.handle(ResponseDone("r1", "completed"), 4.3)
    assert kiosk.handle(Tick(playback_idle=True), 5.0) == [
        StateChanged(State.SPEAKING, State.LISTENING),
        OpenMic(),
    ]
    # A new session (reconnect) is switched to server VAD again.
    assert kiosk.handle(LinkUp("s2"), 6.0) == [OpenConversation()]
    # Quiet for conversation_idle_s: the conversation closes.
    assert kiosk.handle(Tick(), 64.9) == []
    assert kiosk.handle(Tick(), 65.0) == [
        CloseMic(),
        CloseConversation(),
        StateChanged(State.LISTENING, State.IDLE),
    ]
    assert not kiosk.conversation


def test_hands_free_press_while_listening_closes_and_needs_the_link() -> None:
    kiosk = Kiosk(hands_free=True)
    assert press(kiosk, 0.5) == [Notice("unavailable", "offline")]
    kiosk.handle(LinkUp("s"), 1.0)
    press(kiosk, 2.0)
    assert kinds(press(kiosk, 3.0)) == ["CloseMic", "CloseConversation", "StateChanged"]
    assert kiosk.state is State.IDLE


# --- questions are never eaten, silence is never sent ----------------------------------------


def test_a_long_hold_is_a_question_not_a_reset() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    for t in range(2, 30):  # 28 s of holding: no gesture fires on the way
        assert kiosk.handle(Tick(), float(t)) == []
    assert kinds(kiosk.handle(Release(), 29.5)) == ["CommitTurn", "StateChanged"]


def test_max_turn_is_sent_with_a_cue_and_the_late_release_is_ignored() -> None:
    kiosk = online()
    press(kiosk, 1.0)
    actions = kiosk.handle(Tick(), 31.0)
    assert actions == [
        Notice("max_turn"),
        CommitTurn(),
        StateChanged(State.LISTENING, State.THINKING),
    ]
    assert kiosk.handle(Release(), 33.0) == []


def test_a_silent_turn_is_not_sent_and_three_raise_mic_suspect_until_speech() -> None:
    kiosk = Kiosk(mic_suspect_turns=3)
    kiosk.handle(LinkUp(), 0.0)
    for n in (1, 2, 3):
        kiosk.handle(Press(), 10.0 * n)  # no VoiceHeard: nothing above the floor
        actions = kiosk.handle(Release(), 10.0 * n + 2)
        assert actions[:2] == [DiscardTurn(), Notice("no_speech", f"{n} in a row")]
        assert ("mic_suspect" in [a.kind for a in actions if isinstance(a, Notice)]) == (n == 3)
        assert CommitTurn() not in actions and kiosk.state is State.IDLE
    kiosk.handle(Press(), 40.0)  # a fourth silent turn does not raise it again
    assert [a.kind for a in kiosk.handle(Release(), 42.0) if isinstance(a, Notice)] == ["no_speech"]
    press(kiosk, 50.0)
    actions = kiosk.handle(Release(), 52.0)
    assert actions[0] == Notice("mic_ok", "a turn with speech arrived")
    assert CommitTurn() in actions and kiosk.silent_turns == 0


def test_a_silent_hold_to_the_limit_is_not_sent_either() -> None:
    kiosk = online()
    kiosk.handle(Press(), 1.0)
    actions = kiosk.handle(Tick(), 31.0)
    assert kinds(actions) == ["DiscardTurn", "Notice", "StateChanged"]
    assert actions[1].kind == "no_speech"


def test_voice_heard_outside_a_turn_changes_nothing() -> None:
    kiosk = online()
    assert kiosk.handle(VoiceHeard(), 1.0) == []
    kiosk.handle(Press(), 2.0)
    assert kinds(kiosk.handle(Release(), 4.0))[0] == "DiscardTurn"


def test_hands_free_talking_longer_than_the_idle_close_keeps_the_conversation() -> None:
    kiosk = Kiosk(hands_free=True, conversation_idle_s=5)
    kiosk.handle(LinkUp(), 0.0)
    kiosk.handle(Press(), 1.0)
    kiosk.handle(Release(), 1.1)  # a tap opens the conversation
    kiosk.handle(SpeechStarted(), 2.0)
    assert kiosk.handle(Tick(), 9.0) == []  # still talking, 7 s in
    assert kinds(kiosk.handle(SpeechStopped(), 10.0)) == ["CloseMic", "StateChanged"]
    assert kiosk.conversation and kiosk.state is State.THINKING


def test_reset_is_a_new_visitor_from_any_state() -> None:
    kiosk = speaking(online())
    actions = kiosk.handle(Reset("reset_button"), 5.0)
    assert kinds(actions) == ["Interrupt", "Notice", "StateChanged"]
    assert actions[1] == Notice("new_visitor", "reset_button")
