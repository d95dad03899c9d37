"""What a new session is told of the conversation: pure, events in, (role, text) out."""

from __future__ import annotations

from kioskvoice.events import ReplyAudio, ResponseDone
from kioskvoice.realtime.history import History, heard_part
from kioskvoice.realtime.protocol import ItemAdded, Transcript

REPLY = "You spoke for 2.0 seconds."


def turn(history: History, n: int, *, previous: str | None, audio_ms: int = 2000) -> str:
    """One question and its spoken answer, the user's transcript arriving *after* the
    answer's (as the real service's 1.2-1.4 s transcription latency makes it)."""
    user, reply, response = f"u{n}", f"a{n}", f"r{n}"
    history.observe(ItemAdded(user, previous, "user"))
    history.observe(ItemAdded(reply, user, "assistant"))
    history.observe(ReplyAudio(response, reply, b"\0" * (48 * audio_ms)))
    history.observe(Transcript("assistant", reply, f"{REPLY} ({n})", response))
    history.observe(ResponseDone(response, "completed"))
    history.observe(Transcript("user", user, f"question {n}"))
    return reply


def test_replay_is_in_conversation_order_not_arrival_order() -> None:
    history = History(max_turns=12)
    previous = None
    for n in (1, 2, 3):
        previous = turn(history, n, previous=previous)
    assert history.replay() == [
        ("user", "question 1"),
        ("assistant", f"{REPLY} (1)"),
        ("user", "question 2"),
        ("assistant", f"{REPLY} (2)"),
        ("user", "question 3"),
        ("assistant", f"{REPLY} (3)"),
    ]
    assert History(max_turns=4).replay() == []
    history.max_turns = 2
    assert [role for role, _ in history.replay()] == ["user", "assistant"]


def test_a_cut_answer_holds_only_what_was_heard() -> None:
    history = History(max_turns=12)
    reply = turn(history, 1, previous=None, audio_ms=2600)
    history.truncated(reply, 1000)  # the visitor pressed after 1 s of 2.6 s
    [_, (role, text)] = history.replay()
    assert role == "assistant"
    assert text == "You spoke"
    assert f"{REPLY} (1)".startswith(text)
    history.truncated(reply, 0)  # heard nothing: left out
    assert [r for r, _ in history.replay()] == ["user"]


def test_unheard_answers_are_left_out() -> None:
    history = History(max_turns=12)
    history.observe(ItemAdded("u1", None, "user"))
    history.observe(ItemAdded("a1", "u1", "assistant"))
    history.observe(Transcript("assistant", "a1", "Cancelled before a word.", "r1"))
    history.observe(ResponseDone("r1", "cancelled", "client_cancelled"))
    history.observe(ItemAdded("a2", "a1", "assistant"))
    history.observe(Transcript("assistant", "a2", "Failed.", "r2"))
    history.observe(ResponseDone("r2", "failed", "server_error"))
    history.observe(Transcript("user", "u1", "a question"))
    assert history.replay() == [("user", "a question")]


def test_new_items_after_a_rollover_follow_the_old_ones() -> None:
    history = History(max_turns=12)
    turn(history, 1, previous=None)
    # In the new session the replayed items have new ids; new turns come after them.
    turn(history, 2, previous="item_replayed_in_new_session")
    assert [text for _, text in history.replay()][-2:] == ["question 2", f"{REPLY} (2)"]
    history.clear()
    assert history.replay() == []


def test_heard_part_never_includes_a_word_not_begun() -> None:
    assert heard_part("one two three", 0, 1000) == ""
    assert heard_part("one two three", 1000, 1000) == "one two three"
    assert heard_part("one two three", 500, 1000) == "one"  # "two" was cut mid-word
    assert heard_part("one two three", 600, 1000) == "one two"
    assert heard_part("text", 10, 0) == ""
