"""The tester's side of a selftest: the instructions and questions, and the words that answer
them (:data:`YES`, :data:`NO`, :data:`SKIP_WORDS`).

Questions for the tester go through a :class:`Prompter`: on a terminal with
``--interactive``, or from an answers file (TOML or JSON, check name -> answer) so that a rig
runs the same checks unattended. Without either, checks that need a person are skipped.
"""

from __future__ import annotations

import json
import select
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from ..errors import ConfigError

YES = frozenset({"y", "yes", "true", "1", "ok", "pass"})
NO = frozenset({"n", "no", "false", "0", "fail"})
SKIP_WORDS = frozenset({"s", "skip"})


class Prompter:
    """Asks the tester: on a terminal (``interactive``), or from ``answers``.

    ``answers`` maps a question's name (``"speaker"``, ``"leds.idle"``) to an answer; a name
    with a dot falls back to its prefix (``"leds"`` answers every LED question). ``actions``
    maps a name to a callable run (on a thread) when that instruction is shown: a rig's
    robot finger, or a virtual tester driving mock pins. Every name asked is recorded in
    :attr:`asked`.
    """

    def __init__(
        self,
        answers: Mapping[str, Any] | None = None,
        *,
        interactive: bool = False,
        actions: Mapping[str, Callable[[], None]] | None = None,
        stdin: TextIO | None = None,
        out: TextIO | None = None,
    ) -> None:
        self.answers = {str(k): str(v).strip().lower() for k, v in (answers or {}).items()}
        self.interactive = interactive
        self.actions = dict(actions or {})
        self._stdin = stdin
        self._out = out
        self.asked: list[str] = []
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> Prompter:
        """Answers from a TOML or JSON file (a flat table; nested tables become dotted
        names). Raises :class:`ConfigError` when the file cannot be read."""
        try:
            text = Path(path).read_text(encoding="utf-8")
            data = json.loads(text) if Path(path).suffix == ".json" else tomllib.loads(text)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"selftest: answers file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"selftest: answers file {path}: not a table of answers")
        return cls(_flatten(data), **kwargs)

    @property
    def attended(self) -> bool:
        """True when someone (or an answers file) can answer."""
        return self.interactive or bool(self.answers)

    def _print(self, text: str) -> None:
        out = self._out or sys.stderr
        print(text, file=out, flush=True)

    def _answer(self, name: str) -> str | None:
        if name in self.answers:
            return self.answers[name]
        prefix = name.split(".", 1)[0]
        return self.answers.get(prefix)

    def declined(self, name: str) -> bool:
        """True when the answers file says ``skip`` for ``name`` (a rig without that part)."""
        return self._answer(name) in SKIP_WORDS

    def say(self, name: str, instruction: str) -> None:
        """Show an instruction (``"Speak now"``); start ``name``'s action if there is one."""
        self.asked.append(name)
        self._print(f"[{name}] {instruction}")
        action = self.actions.get(name)
        if action is not None:
            thread = threading.Thread(target=action, name=f"selftest-action-{name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def join_actions(self, timeout_s: float = 5.0) -> None:
        """Wait (bounded) for actions started by :meth:`say`."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def confirm(self, name: str, question: str, *, timeout_s: float = 60.0) -> bool | None:
        """Ask a yes/no question. True/False, or None when nobody answered (unattended, no
        answer in the file, a timeout, or the tester said ``skip``)."""
        self.asked.append(name)
        answer = self._answer(name)
        if answer is None and self.interactive:
            answer = self._read_tty(f"[{name}] {question} [y/n/skip] ", timeout_s)
        elif answer is not None:
            self._print(f"[{name}] {question} -> {answer} (answers file)")
        if answer is None or answer in SKIP_WORDS:
            return None
        if answer in YES:
            return True
        if answer in NO:
            return False
        self._print(f"[{name}] not understood: {answer!r}; counted as no")
        return False

    def _read_tty(self, prompt: str, timeout_s: float) -> str | None:
        stdin = self._stdin or sys.stdin
        out = self._out or sys.stderr
        print(prompt, end="", file=out, flush=True)
        try:
            ready, _, _ = select.select([stdin], [], [], timeout_s)
        except (OSError, ValueError, TypeError):
            ready = [stdin]  # not selectable (a test's StringIO): read at once
        if not ready:
            print("(no answer)", file=out, flush=True)
            return None
        line = stdin.readline()
        return line.strip().lower() or None


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out
