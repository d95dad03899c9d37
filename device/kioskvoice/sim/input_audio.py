"""The input audio buffer of one connection and the server VAD over it.

``input_audio_buffer.append``/``.commit``/``.clear``; a commit (the client's, or the VAD's at
the end of a turn) becomes a user item and, with transcription on, a transcript. The VAD's
speech edges become ``speech_started``/``speech_stopped`` events, interruptions of the active
response and automatic responses (see :mod:`kioskvoice.sim.vad`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Final

from kioskvoice.sim.conversation import Conversation
from kioskvoice.sim.faults import Faults
from kioskvoice.sim.outbox import Outbox
from kioskvoice.sim.responses import Responses, Spawn
from kioskvoice.sim.session import BYTES_PER_MS, SimSession, lookup, new_id
from kioskvoice.sim.vad import EnergyVad, VadEdge, VadParams
from kioskvoice.sim.validation import ClientError, decode_audio, require

__all__ = ["MIN_COMMIT_MS", "TRANSCRIPTION_DELAY_S", "InputAudio"]

log = logging.getLogger(__name__)

MIN_COMMIT_MS: Final = 100
TRANSCRIPTION_DELAY_S: Final = 1.3
"""Commit to ``...input_audio_transcription.completed``: 1.2-1.4 s on the real service
(gauravzqa/llmgw capabilities/captures-ws.md, probe 7: 1,411 ms), often after the reply's own
transcript is done."""


class InputAudio:
    """The buffer of appended audio not yet committed, and the VAD's current turn."""

    def __init__(
        self,
        session: SimSession,
        outbox: Outbox,
        conversation: Conversation,
        responses: Responses,
        spawn: Spawn,
        faults: Faults | None = None,
    ) -> None:
        self._faults = faults if faults is not None else Faults()
        self._session = session
        self._outbox = outbox
        self._conversation = conversation
        self._responses = responses
        self._spawn = spawn
        self._buffer = bytearray()
        self._buffer_start = 0  # session audio position (bytes) of self._buffer[0]
        self._vad = EnergyVad()
        self._vad_item_id: str | None = None  # the user item the current speech will become

    def vad_params(self) -> VadParams | None:
        """The session's VAD parameters now; None while ``turn_detection`` is null."""
        return VadParams.from_turn_detection(
            lookup(self._session.config, "audio", "input", "turn_detection")
        )

    def forget_speech(self) -> None:
        """Drop the VAD's current turn (the VAD was switched off, or its audio went away)."""
        self._vad.reset()
        self._vad_item_id = None

    def append(self, event: dict[str, Any]) -> None:
        """Handle ``input_audio_buffer.append``."""
        audio = decode_audio(require(event, "audio", str, ""), "audio")
        self._buffer += audio
        params = self.vad_params()
        for edge in self._vad.feed(audio, params):
            assert params is not None  # the VAD reports no edges while off
            if edge.started:
                self._on_speech_started(edge, params)
            else:
                self._on_speech_stopped(edge, params)

    def commit(self, event: dict[str, Any]) -> None:
        """Handle ``input_audio_buffer.commit``."""
        # A manual commit during speech takes the item id speech_started announced.
        item_id = self._vad_item_id or new_id("item")
        audio = bytes(self._buffer)
        buffered_ms = len(audio) / BYTES_PER_MS
        self._drop_buffer()
        if buffered_ms < MIN_COMMIT_MS:
            raise ClientError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms:.2f}ms of audio.",
            )
        self._commit(item_id, buffered_ms, audio)

    def clear(self, event: dict[str, Any]) -> None:
        """Handle ``input_audio_buffer.clear``."""
        self._drop_buffer()
        self._outbox.emit("input_audio_buffer.cleared")

    def _drop_buffer(self) -> None:
        """Empty the input buffer; the VAD's current speech (if any) goes with it."""
        self._buffer_start += len(self._buffer)
        self._buffer.clear()
        self.forget_speech()

    def _commit(self, item_id: str, spoken_ms: float, audio: bytes) -> None:
        """Turn committed ``audio`` into a user item; ``spoken_ms`` is what the reply
        reports."""
        item = {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        previous = self._conversation.append(item)
        self._conversation.keep_audio(item_id, audio)
        self._responses.reply_ms = spoken_ms
        emit = self._outbox.emit
        emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item["id"])
        emit("conversation.item.added", previous_item_id=previous, item=item)
        emit("conversation.item.done", previous_item_id=previous, item=item)
        if lookup(self._session.config, "audio", "input", "transcription") is not None:
            self._spawn(self._transcribe(item, spoken_ms))

    # --- server VAD -----------------------------------------------------------------------

    def _on_speech_started(self, edge: VadEdge, params: VadParams) -> None:
        # Prefix padding reaches back at most to the start of the current buffer.
        buffer_start_ms = self._buffer_start // BYTES_PER_MS
        audio_start_ms = max(buffer_start_ms, edge.at_ms - params.prefix_padding_ms)
        self._vad_item_id = new_id("item")
        self._outbox.emit(
            "input_audio_buffer.speech_started",
            audio_start_ms=audio_start_ms,
            item_id=self._vad_item_id,
        )
        active = self._responses.active
        # Only a response writing to the default conversation is interrupted (as documented).
        if params.interrupt_response and active is not None and active.in_conversation:
            self._responses.cancel(active, "turn_detected")

    def _on_speech_stopped(self, edge: VadEdge, params: VadParams) -> None:
        item_id = self._vad_item_id or new_id("item")
        self._vad_item_id = None
        self._outbox.emit(
            "input_audio_buffer.speech_stopped", audio_end_ms=edge.at_ms, item_id=item_id
        )
        # Commit the buffer up to audio_end_ms; audio appended after it starts the next one.
        cut = min(len(self._buffer), max(0, edge.at_ms * BYTES_PER_MS - self._buffer_start))
        audio = bytes(self._buffer[:cut])
        del self._buffer[:cut]
        self._buffer_start += cut
        self._commit(item_id, edge.speech_ms, audio)
        if not params.create_response:
            return
        active = self._responses.active
        if active is not None:
            # interrupt_response false and the model still talking: no automatic response.
            log.info("sim VAD: response %s still active, no automatic reply", active.id)
            return
        self._responses.start({})

    async def _transcribe(self, item: dict[str, Any], buffered_ms: float) -> None:
        delay = self._faults.transcription_delay_s
        await asyncio.sleep(TRANSCRIPTION_DELAY_S if delay is None else delay)
        transcript = f"({buffered_ms / 1000:.1f} seconds of speech)"
        item["content"][0]["transcript"] = transcript
        audio_tokens = math.ceil(buffered_ms / 100)
        text_tokens = math.ceil(len(transcript) / 4)
        self._outbox.emit(
            "conversation.item.input_audio_transcription.completed",
            item_id=item["id"],
            content_index=0,
            transcript=transcript,
            usage={
                "type": "tokens",
                "input_tokens": audio_tokens,
                "output_tokens": text_tokens,
                "total_tokens": audio_tokens + text_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
            },
        )
