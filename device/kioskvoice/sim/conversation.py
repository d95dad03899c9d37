"""The conversation of one connection: its items in server order, ``conversation.item.create``,
``.truncate`` (checked against the audio actually sent), ``.delete`` and ``.retrieve`` (which,
as on the real service, returns the item with its audio).
"""

from __future__ import annotations

import base64
import collections
import copy
import math
from typing import Any, Final

from kioskvoice.sim.outbox import Outbox
from kioskvoice.sim.session import BYTES_PER_MS, SimSession, Truncation
from kioskvoice.sim.validation import ClientError, normalize_item, require

__all__ = ["AUDIO_KEPT_ITEMS", "Conversation"]

AUDIO_KEPT_ITEMS: Final = 8
"""Audio is kept for ``conversation.item.retrieve`` for this many of the latest items (a
soak must not hold every reply in memory); older items are retrieved without it."""


class Conversation:
    """The items of ``session.items``, and what may be truncated of them."""

    def __init__(self, session: SimSession, outbox: Outbox) -> None:
        self._session = session
        self._outbox = outbox
        self.audio_ms: dict[str, float] = {}
        """Assistant item id -> ms of audio sent so far, the limit of a truncation."""
        self._audio: collections.OrderedDict[str, bytearray] = collections.OrderedDict()

    def keep_audio(self, item_id: str, pcm: bytes) -> None:
        """Remember ``pcm`` as (more of) the audio of ``item_id``, for a later retrieve."""
        kept = self._audio.get(item_id)
        if kept is None:
            kept = self._audio[item_id] = bytearray()
            while len(self._audio) > AUDIO_KEPT_ITEMS:
                self._audio.popitem(last=False)
        kept += pcm

    def insert(self, item: dict[str, Any], index: int) -> str | None:
        """Insert ``item`` at ``index``; return the id of the item before it (or None)."""
        self._session.items.insert(index, item)
        return self._session.items[index - 1]["id"] if index > 0 else None

    def append(self, item: dict[str, Any]) -> str | None:
        """Add ``item`` at the end; return the id of the item before it (or None)."""
        return self.insert(item, len(self._session.items))

    def find(self, item_id: str) -> dict[str, Any] | None:
        return next((i for i in self._session.items if i.get("id") == item_id), None)

    def _existing(self, event: dict[str, Any]) -> dict[str, Any]:
        item_id = require(event, "item_id", str, "")
        item = self.find(item_id)
        if item is None:
            raise ClientError("invalid_value", f"Item with item_id not found: {item_id}", "item_id")
        return item

    def delete(self, event: dict[str, Any]) -> None:
        """Handle ``conversation.item.delete``."""
        item = self._existing(event)
        self._session.items.remove(item)
        self._audio.pop(item["id"], None)
        self._outbox.emit("conversation.item.deleted", item_id=item["id"])

    def retrieve(self, event: dict[str, Any]) -> None:
        """Handle ``conversation.item.retrieve``: the item as the server holds it now, with
        the audio of its audio parts (what a truncation left of it)."""
        item = copy.deepcopy(self._existing(event))
        audio = self._audio.get(item["id"])
        for part in item.get("content") or []:
            if audio is not None and part.get("type") in ("input_audio", "output_audio"):
                part["audio"] = base64.b64encode(audio).decode("ascii")
        self._outbox.emit("conversation.item.retrieved", item=item)

    def create(self, event: dict[str, Any]) -> dict[str, Any]:
        """Handle ``conversation.item.create``; return the item as stored."""
        item = normalize_item(event.get("item"))
        if self.find(item["id"]) is not None:
            raise ClientError(
                "invalid_value", f"Item with id '{item['id']}' already exists.", "item.id"
            )
        previous_id = event.get("previous_item_id")
        if previous_id is None:
            index = len(self._session.items)
        elif previous_id == "root":
            index = 0
        else:
            ids = [i.get("id") for i in self._session.items]
            if previous_id not in ids:
                raise ClientError(
                    "invalid_value",
                    f"Item with item_id not found: {previous_id}",
                    "previous_item_id",
                )
            index = ids.index(previous_id) + 1
        previous = self.insert(item, index)
        self._outbox.emit("conversation.item.added", previous_item_id=previous, item=item)
        self._outbox.emit("conversation.item.done", previous_item_id=previous, item=item)
        return item

    def truncate(self, event: dict[str, Any]) -> None:
        """Handle ``conversation.item.truncate`` of an assistant audio item."""
        item = self._existing(event)
        item_id = item["id"]
        content_index = require(event, "content_index", int, "")
        audio_end_ms = require(event, "audio_end_ms", int, "")
        if audio_end_ms < 0:
            raise ClientError(
                "invalid_value", "'audio_end_ms' must not be negative.", "audio_end_ms"
            )
        content = item.get("content") or []
        if (
            item.get("role") != "assistant"
            or not 0 <= content_index < len(content)
            or content[content_index].get("type") != "output_audio"
        ):
            raise ClientError(
                "unsupported_content_type",
                "Only model output audio messages can be truncated",
                "item_id",
            )
        # ceil: any rounding of the exact played duration is accepted, anything beyond is not.
        audio_ms = math.ceil(self.audio_ms.get(item_id, 0.0))
        if audio_end_ms > audio_ms:
            raise ClientError(
                "invalid_value",
                f"Audio content of {audio_ms}ms is already shorter than {audio_end_ms}ms",
                "audio_end_ms",
            )
        # As the real server does: drop the transcript so no unheard text stays in context.
        content[content_index]["transcript"] = None
        kept = self._audio.get(item_id)
        if kept is not None:
            del kept[audio_end_ms * BYTES_PER_MS :]
        self._session.truncations.append(Truncation(item_id, content_index, audio_end_ms))
        self._outbox.emit(
            "conversation.item.truncated",
            item_id=item_id,
            content_index=content_index,
            audio_end_ms=audio_end_ms,
        )
