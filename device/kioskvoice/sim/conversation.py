"""The conversation of one connection: its items in server order, ``conversation.item.create``
and ``conversation.item.truncate`` (checked against the audio actually sent).
"""

from __future__ import annotations

import math
from typing import Any

from kioskvoice.sim.outbox import Outbox
from kioskvoice.sim.session import SimSession, Truncation
from kioskvoice.sim.validation import ClientError, normalize_item, require

__all__ = ["Conversation"]


class Conversation:
    """The items of ``session.items``, and what may be truncated of them."""

    def __init__(self, session: SimSession, outbox: Outbox) -> None:
        self._session = session
        self._outbox = outbox
        self.audio_ms: dict[str, float] = {}
        """Assistant item id -> ms of audio sent so far, the limit of a truncation."""

    def insert(self, item: dict[str, Any], index: int) -> str | None:
        """Insert ``item`` at ``index``; return the id of the item before it (or None)."""
        self._session.items.insert(index, item)
        return self._session.items[index - 1]["id"] if index > 0 else None

    def append(self, item: dict[str, Any]) -> str | None:
        """Add ``item`` at the end; return the id of the item before it (or None)."""
        return self.insert(item, len(self._session.items))

    def find(self, item_id: str) -> dict[str, Any] | None:
        return next((i for i in self._session.items if i.get("id") == item_id), None)

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
        item_id = require(event, "item_id", str, "")
        content_index = require(event, "content_index", int, "")
        audio_end_ms = require(event, "audio_end_ms", int, "")
        if audio_end_ms < 0:
            raise ClientError(
                "invalid_value", "'audio_end_ms' must not be negative.", "audio_end_ms"
            )
        item = self.find(item_id)
        if item is None:
            raise ClientError("invalid_value", f"Item with item_id not found: {item_id}", "item_id")
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
        self._session.truncations.append(Truncation(item_id, content_index, audio_end_ms))
        self._outbox.emit(
            "conversation.item.truncated",
            item_id=item_id,
            content_index=content_index,
            audio_end_ms=audio_end_ms,
        )
