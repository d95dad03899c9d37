"""Carrying out the model's function calls for the running kiosk.

A completed response's calls run concurrently; every call ends in an output for the model
(errors included, see :mod:`kioskvoice.tools`), then one ``response.create`` asks for the
spoken answer. Results that no longer fit the conversation are dropped: :meth:`ToolCalls.moved_on`
is called on a barge-in, a reset or a lost session, and bumps a generation the running calls
compare against. The HTTP client is created at the first real call, so a kiosk without tools
never loads it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .config import ToolSettings
from .events import FunctionCall, ToolsDone
from .realtime.protocol import Protocol
from .system.logging import log_event
from .tools import END_CONVERSATION, ToolRunner

log = logging.getLogger(__name__)


class ToolCalls:
    """Loop thread only. ``send`` goes to the supervisor, ``post`` to the app's event loop."""

    def __init__(
        self,
        tools: list[ToolSettings],
        *,
        transcripts: bool,
        send: Callable[..., bool],
        post: Callable[[Any], None],
    ) -> None:
        self.runner = ToolRunner(tools, transcripts=transcripts)
        self._send = send
        self._post = post
        self._http: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.generation = 0
        self.end_after_reply = False
        """The model called ``end_conversation``: reset once the kiosk is idle again."""

    def secrets(self) -> list[str]:
        return self.runner.secrets()

    def moved_on(self) -> None:
        """The conversation moved on: results of calls running now are dropped."""
        self.generation += 1

    def start(self, calls: tuple[FunctionCall, ...]) -> None:
        task = asyncio.create_task(self._run(calls, self.generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, calls: tuple[FunctionCall, ...], generation: int) -> None:
        """Run the calls, then send every output and one ``response.create``. Never raises."""

        async def one(call: FunctionCall) -> str:
            if call.name == END_CONVERSATION:
                self.end_after_reply = True
                log_event(
                    log,
                    logging.INFO,
                    "tool_call",
                    "the model ended the conversation",
                    tool=call.name,
                    outcome="ok",
                )
                return '{"ok": true}'
            if self._http is None:
                import httpx

                self._http = httpx.AsyncClient()
            return await self.runner.call(call.name, call.arguments, self._http)

        try:
            outputs = await asyncio.gather(*(one(call) for call in calls))
            if generation != self.generation:
                log.info("dropped the results of %d tool call(s): the turn moved on", len(calls))
                return
            for call, output in zip(calls, outputs, strict=True):
                self._send(Protocol.function_output, call.call_id, output)
            self._send(Protocol.response_create)
        finally:
            if generation == self.generation:
                self._post(ToolsDone())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._http is not None:
            await self._http.aclose()
