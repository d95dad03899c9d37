"""Response streaming: the output of one response as the GA server streams it, between its
``response.created`` and ``response.done`` (which :mod:`kioskvoice.sim.responses` sends):
speech (audio deltas with the transcript interleaved), text, or a function call.

Content deltas carry ``obfuscation``, random padding the real service adds so that frame sizes
do not reveal the content (gauravzqa/llmgw capabilities/captures-ws.md, probes 7 and 8).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import re
import string
from dataclasses import dataclass
from typing import Any, Final, Protocol

from kioskvoice.sim.conversation import Conversation
from kioskvoice.sim.outbox import Outbox
from kioskvoice.sim.session import BYTES_PER_MS, SAMPLE_RATE, new_id
from kioskvoice.sim.voice import synthesize

__all__ = ["Response", "StreamSettings", "Streamer", "obfuscation"]

_WORD_RE: Final = re.compile(r"\s*\S+")
_PADDING: Final = string.ascii_letters + string.digits


def obfuscation() -> str:
    """Random padding of random length, as the real service sends with each content delta."""
    return "".join(random.choices(_PADDING, k=random.randint(4, 16)))


class StreamSettings(Protocol):
    """The pacing streaming reads of the simulator, live: tests change it while sessions run."""

    burst_ms: int
    burst_interval_s: float


@dataclass
class Response:
    """State of one response, owned by its connection's ``Responses``."""

    id: str
    item_id: str
    modalities: list[str]
    in_conversation: bool
    metadata: Any
    text: str
    instructions: str
    input_audio_ms: float
    task: asyncio.Task[None] | None = None
    created_sent: bool = False
    item: dict[str, Any] | None = None
    audio_bytes_sent: int = 0
    text_sent: str = ""
    tool_call: tuple[str, dict[str, Any]] | None = None
    """Answer with this function call (name, arguments) instead of speech."""

    @property
    def audio_mode(self) -> bool:
        return "audio" in self.modalities

    def final_part(self) -> dict[str, Any]:
        """The content part of the finished item: what was sent so far."""
        if self.audio_mode:
            return {"type": "output_audio", "transcript": self.text_sent}
        return {"type": "output_text", "text": self.text_sent}


class Streamer:
    """Streams the output item of a response into the outbox and the conversation."""

    def __init__(self, sim: StreamSettings, outbox: Outbox, conversation: Conversation) -> None:
        self._sim = sim
        self._outbox = outbox
        self._conversation = conversation

    async def function_call(self, response: Response, name: str, arguments: dict[str, Any]) -> None:
        """A response that calls a function, as the GA server streams one."""
        emit = self._outbox.emit
        call_id = new_id("call")
        args = json.dumps(arguments)
        item: dict[str, Any] = {
            "id": response.item_id,
            "type": "function_call",
            "object": "realtime.item",
            "status": "in_progress",
            "name": name,
            "call_id": call_id,
            "arguments": "",
        }
        response.item = item
        emit("response.output_item.added", response_id=response.id, output_index=0, item=item)
        previous = self._conversation.append(item)
        emit("conversation.item.added", previous_item_id=previous, item=item)
        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": 0}
        for start in range(0, len(args), 16):
            emit(
                "response.function_call_arguments.delta",
                **ids,
                call_id=call_id,
                delta=args[start : start + 16],
            )
            await asyncio.sleep(self._sim.burst_interval_s / 4)
        emit(
            "response.function_call_arguments.done",
            **ids,
            call_id=call_id,
            name=name,
            arguments=args,
        )
        item["status"] = "completed"
        item["arguments"] = args
        emit("response.output_item.done", response_id=response.id, output_index=0, item=item)
        emit("conversation.item.done", previous_item_id=previous, item=item)

    async def message(self, response: Response) -> None:
        """An assistant message: speech with its transcript, or text."""
        emit = self._outbox.emit
        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": 0}
        item: dict[str, Any] = {
            "id": response.item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        response.item = item
        emit("response.output_item.added", response_id=response.id, output_index=0, item=item)
        previous: str | None = None
        if response.in_conversation:
            previous = self._conversation.append(item)
            emit("conversation.item.added", previous_item_id=previous, item=item)

        audio_mode = response.audio_mode
        part = {"type": "audio", "transcript": ""} if audio_mode else {"type": "text", "text": ""}
        emit("response.content_part.added", **ids, content_index=0, part=part)
        if audio_mode:
            await self._audio(response, ids)
            emit("response.output_audio.done", **ids, content_index=0)
            emit(
                "response.output_audio_transcript.done",
                **ids,
                content_index=0,
                transcript=response.text,
            )
            done_part = {"type": "audio", "transcript": response.text}
        else:
            await self._text(response, ids)
            emit("response.output_text.done", **ids, content_index=0, text=response.text)
            done_part = {"type": "text", "text": response.text}
        emit("response.content_part.done", **ids, content_index=0, part=done_part)

        item["status"] = "completed"
        item["content"] = [response.final_part()]
        emit("response.output_item.done", response_id=response.id, output_index=0, item=item)
        if response.in_conversation:
            emit("conversation.item.done", previous_item_id=previous, item=item)

    async def _audio(self, response: Response, ids: dict[str, Any]) -> None:
        """Audio in ``burst_ms`` deltas, one per ``burst_interval_s``, words interleaved."""
        audio = await asyncio.to_thread(synthesize, response.text, SAMPLE_RATE)
        burst = max(2, BYTES_PER_MS * self._sim.burst_ms)
        chunks = [audio[i : i + burst] for i in range(0, len(audio), burst)]
        words = _WORD_RE.findall(response.text)
        words_sent = 0
        for index, chunk in enumerate(chunks):
            if index:
                await asyncio.sleep(self._sim.burst_interval_s)
            self._outbox.emit(
                "response.output_audio.delta",
                **ids,
                content_index=0,
                delta=base64.b64encode(chunk).decode("ascii"),
                obfuscation=obfuscation(),
            )
            response.audio_bytes_sent += len(chunk)
            if response.in_conversation:
                self._conversation.keep_audio(response.item_id, chunk)
            self._conversation.audio_ms[response.item_id] = response.audio_bytes_sent / BYTES_PER_MS
            due = math.ceil((index + 1) * len(words) / len(chunks))
            while words_sent < due:
                self._transcript_delta(response, ids, words[words_sent])
                words_sent += 1
        for word in words[words_sent:]:  # only when there was no audio at all
            self._transcript_delta(response, ids, word)

    def _transcript_delta(self, response: Response, ids: dict[str, Any], word: str) -> None:
        response.text_sent += word
        self._outbox.emit(
            "response.output_audio_transcript.delta",
            **ids,
            content_index=0,
            delta=word,
            obfuscation=obfuscation(),
        )

    async def _text(self, response: Response, ids: dict[str, Any]) -> None:
        for index, word in enumerate(_WORD_RE.findall(response.text)):
            if index:
                await asyncio.sleep(self._sim.burst_interval_s)
            response.text_sent += word
            self._outbox.emit(
                "response.output_text.delta",
                **ids,
                content_index=0,
                delta=word,
                obfuscation=obfuscation(),
            )
