"""The server VAD: ``turn_detection`` config (defaults, merging, :class:`VadParams`) and
:class:`EnergyVad`, the detector itself.

While the effective ``audio.input.turn_detection`` is ``server_vad`` or ``semantic_vad`` (a
fresh session has ``server_vad`` on, as on the real server), an energy VAD (:class:`EnergyVad`)
runs over the appended audio in 20 ms windows. Speech onset emits
``input_audio_buffer.speech_started`` and, with ``interrupt_response``, cancels the running
response (``status_details.reason: "turn_detected"``); ``silence_duration_ms`` of non-speech emits
``input_audio_buffer.speech_stopped``, commits the buffer as a client commit would and, with
``create_response``, starts a response. Decisions depend only on the appended audio (never on
the wall clock), so tests are deterministic. With ``turn_detection: null`` (push-to-talk) none of
this runs. See :class:`VadParams` for which fields are honoured and how ``threshold`` is mapped.

The VAD is a pure object (PCM in, speech edges out; no clock, no socket); the connection's input
audio (:mod:`kioskvoice.sim.input_audio`) turns its edges into events, commits and responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import numpy as np

from kioskvoice.sim.session import BYTES_PER_MS

__all__ = [
    "SEMANTIC_SILENCE_MS",
    "TURN_DETECTION_DEFAULTS",
    "VAD_CEILING_DBFS",
    "VAD_FLOOR_DBFS",
    "VAD_WINDOW_MS",
    "EnergyVad",
    "VadEdge",
    "VadParams",
    "effective_turn_detection",
    "threshold_dbfs",
]

VAD_WINDOW_MS: Final = 20
VAD_FLOOR_DBFS: Final = -70.0
"""Speech level for ``threshold`` 0.0 (see :func:`threshold_dbfs`)."""
VAD_CEILING_DBFS: Final = -20.0
"""Speech level for ``threshold`` 1.0."""
SEMANTIC_SILENCE_MS: Final = 500
"""End-of-turn silence for ``semantic_vad`` (any eagerness: the simulator has no semantics)."""
_VAD_WINDOW_BYTES: Final = BYTES_PER_MS * VAD_WINDOW_MS
_FULL_SCALE: Final = 32768.0
# Effective-config defaults the server fills in, in the order it reports them.
TURN_DETECTION_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "server_vad": {
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    },
    "semantic_vad": {"eagerness": "auto", "create_response": True, "interrupt_response": True},
}


def threshold_dbfs(threshold: float) -> float:
    """The 20 ms RMS level (dBFS) above which a window counts as speech.

    ``turn_detection.threshold`` (clamped to 0..1) maps linearly onto
    [:data:`VAD_FLOOR_DBFS`, :data:`VAD_CEILING_DBFS`]: 0.0 -> -70 dBFS, 0.5 (the default)
    -> -45 dBFS, 1.0 -> -20 dBFS. At 0.5, espeak-ng speech (about -35..-12 dBFS per window)
    counts, digital silence and noise around -60 dBFS do not; a higher threshold needs louder
    audio, as on the real server.
    """
    clamped = min(1.0, max(0.0, float(threshold)))
    return VAD_FLOOR_DBFS + (VAD_CEILING_DBFS - VAD_FLOOR_DBFS) * clamped


def effective_turn_detection(current: Any, patch: Any) -> dict[str, Any] | None:
    """The ``turn_detection`` a session has after ``patch`` (already validated).

    The same type merges into the current object; another type replaces it (a semantic VAD
    never inherits ``threshold``). Absent or null fields get the server's defaults, except
    ``idle_timeout_ms``, whose null means "off".
    """
    if patch is None:
        return None
    kind = patch["type"]
    merged = dict(patch)
    if isinstance(current, dict) and current.get("type") == kind:
        merged = {**current, **patch}
    effective: dict[str, Any] = {"type": kind}
    for key, default in TURN_DETECTION_DEFAULTS[kind].items():
        found = merged.get(key)
        effective[key] = default if found is None else found
    return effective


@dataclass(frozen=True)
class VadParams:
    """What the simulator's VAD honours of a ``turn_detection`` object.

    ``server_vad``: ``threshold``, ``prefix_padding_ms``, ``silence_duration_ms``,
    ``create_response``, ``interrupt_response`` (absent or null -> the GA defaults 0.5, 300,
    500, true, true). ``idle_timeout_ms`` is accepted and reported but ignored: the simulator
    never sends ``input_audio_buffer.timeout_triggered``. ``semantic_vad``: ``create_response``
    and ``interrupt_response``; ``eagerness`` is accepted but every value behaves as ``medium``
    would here: the default threshold and padding, and :data:`SEMANTIC_SILENCE_MS` of silence.
    """

    threshold_dbfs: float
    prefix_padding_ms: int
    silence_duration_ms: int
    create_response: bool
    interrupt_response: bool

    @classmethod
    def from_turn_detection(cls, turn_detection: Any) -> VadParams | None:
        """Parameters for a session's ``audio.input.turn_detection``; None means VAD off."""
        if not isinstance(turn_detection, dict):
            return None
        kind = turn_detection.get("type")
        if kind not in TURN_DETECTION_DEFAULTS:
            return None
        server = TURN_DETECTION_DEFAULTS["server_vad"]

        def value(key: str) -> Any:
            found = turn_detection.get(key) if kind == "server_vad" else None
            return server[key] if found is None else found

        create = turn_detection.get("create_response")
        interrupt = turn_detection.get("interrupt_response")
        return cls(
            threshold_dbfs=threshold_dbfs(value("threshold")),
            prefix_padding_ms=int(value("prefix_padding_ms")),
            silence_duration_ms=(
                int(value("silence_duration_ms")) if kind == "server_vad" else SEMANTIC_SILENCE_MS
            ),
            create_response=True if create is None else bool(create),
            interrupt_response=True if interrupt is None else bool(interrupt),
        )


class VadEdge(NamedTuple):
    """A change of the VAD's state, in ms of session audio (not wall-clock time)."""

    started: bool
    """True: speech onset. False: end of turn."""
    at_ms: int
    """Onset: start of the first speech window. End: end of the window that completed the
    silence (the ``audio_end_ms`` of ``speech_stopped``)."""
    speech_ms: int = 0
    """End of turn only: from the start of the first speech window to the end of the last."""


class EnergyVad:
    """An energy VAD over PCM16 mono 24 kHz, in 20 ms windows aligned to session audio time.

    Pure: audio in, :class:`VadEdge` out; no clock, no I/O. A window is speech when its RMS
    exceeds ``params.threshold_dbfs``. The first speech window starts a turn; the turn ends once
    ``params.silence_duration_ms`` of audio has followed the last speech window with no speech
    in it. A partial window waits for the next chunk, so edges never depend on how the audio
    was split into chunks. Fed with ``params=None`` (VAD off) it only keeps time.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._position_ms = 0  # session audio time where the next window starts
        self._speech_start_ms: int | None = None
        self._speech_end_ms = 0

    @property
    def in_speech(self) -> bool:
        """True between an onset edge and its end-of-turn edge."""
        return self._speech_start_ms is not None

    def reset(self) -> None:
        """Forget the current turn (after a manual commit or clear); time keeps running."""
        self._speech_start_ms = None

    def feed(self, pcm: bytes, params: VadParams | None) -> list[VadEdge]:
        """Consume appended audio; return the edges it completes, in order."""
        self._pending += pcm
        whole = len(self._pending) // _VAD_WINDOW_BYTES * _VAD_WINDOW_BYTES
        if whole == 0:
            return []
        chunk = bytes(self._pending[:whole])
        del self._pending[:whole]
        count = whole // _VAD_WINDOW_BYTES
        if params is None:
            self._position_ms += count * VAD_WINDOW_MS
            self.reset()
            return []
        samples = np.frombuffer(chunk, dtype="<i2").astype(np.float64).reshape(count, -1)
        limit = (_FULL_SCALE * 10 ** (params.threshold_dbfs / 20)) ** 2
        loud = np.mean(samples * samples, axis=1) > limit
        edges: list[VadEdge] = []
        for is_speech in loud.tolist():
            start = self._position_ms
            end = self._position_ms = start + VAD_WINDOW_MS
            if is_speech:
                if self._speech_start_ms is None:
                    self._speech_start_ms = start
                    edges.append(VadEdge(started=True, at_ms=start))
                self._speech_end_ms = end
            elif (
                self._speech_start_ms is not None
                and end - self._speech_end_ms >= params.silence_duration_ms
            ):
                speech_ms = self._speech_end_ms - self._speech_start_ms
                edges.append(VadEdge(started=False, at_ms=end, speech_ms=speech_ms))
                self._speech_start_ms = None
        return edges
