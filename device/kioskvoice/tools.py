"""Operator-defined tools: HTTP endpoints the model may call through function calling.

Every call ends in a string for the model: the endpoint's answer, or a short JSON error
(invalid arguments, timeout, HTTP error, oversized answer). A tool never crashes or hangs the
kiosk: each call has its own timeout. Arguments and results are logged only with
``logging.transcripts`` on; secret header values come from systemd credentials and are never
logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from .config import ToolSettings
from .errors import ConfigError
from .system.logging import log_event

if TYPE_CHECKING:
    import httpx  # imported when the first tool runs: a kiosk without tools never loads it

log = logging.getLogger(__name__)

END_CONVERSATION = "end_conversation"
BUILTIN_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": END_CONVERSATION,
        "description": (
            "End the conversation when the visitor says goodbye or is done, so the next "
            "visitor starts afresh. Say a short goodbye in the same reply."
        ),
        "parameters": {"type": "object", "properties": {}},
    }
]


def declarations(tools: Sequence[ToolSettings]) -> list[dict[str, Any]]:
    """The ``session.tools`` list: the built-in tools and the operator's."""
    return BUILTIN_TOOLS + [
        {
            "type": "function",
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        }
        for tool in tools
    ]


def _error(message: str) -> str:
    return json.dumps({"error": message})


class ToolRunner:
    """Calls the operator's tools. Construction reads the credentials named in
    ``secret_headers`` (from ``$CREDENTIALS_DIRECTORY``) and raises :class:`ConfigError`
    naming the tool when one is missing."""

    def __init__(
        self,
        tools: Sequence[ToolSettings],
        *,
        transcripts: bool = False,
        credentials_dir: str | None = None,
    ) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self._transcripts = transcripts
        self._validators: dict[str, Any] = {}
        if tools:  # jsonschema and its dependencies are megabytes a kiosk without tools skips
            from jsonschema import Draft202012Validator

            self._validators = {t.name: Draft202012Validator(t.parameters) for t in tools}
        directory = credentials_dir or os.environ.get("CREDENTIALS_DIRECTORY")
        self._secret_headers: dict[str, dict[str, str]] = {}
        for index, tool in enumerate(tools):
            headers = {}
            for header, credential in tool.secret_headers.items():
                path = Path(directory or "/nonexistent") / credential
                try:
                    headers[header] = path.read_text(encoding="utf-8").strip()
                except OSError:
                    raise ConfigError(
                        f"config error: tools.{index}.secret_headers: credential {credential!r} "
                        f"for {tool.name} not found (LoadCredential={credential}:...)"
                    ) from None
            self._secret_headers[tool.name] = headers

    def secrets(self) -> list[str]:
        """Secret header values, for the log redactor."""
        return [v for headers in self._secret_headers.values() for v in headers.values()]

    async def call(self, name: str, arguments: str, client: httpx.AsyncClient) -> str:
        """Run tool ``name`` with the model's JSON ``arguments``; always returns the output
        string for the model, and logs one ``tool_call`` record."""
        started = time.monotonic()
        outcome, output = await self._call(name, arguments, client)
        duration_ms = int((time.monotonic() - started) * 1000)
        message = f"tool {name}: {outcome} in {duration_ms} ms"
        if self._transcripts:
            message += f"; arguments {arguments[:500]}; result {output[:500]}"
        log_event(
            log,
            logging.INFO if outcome == "ok" else logging.WARNING,
            "tool_call",
            message,
            tool=name,
            duration_ms=duration_ms,
            outcome=outcome,
        )
        return output

    async def _call(self, name: str, arguments: str, client: httpx.AsyncClient) -> tuple[str, str]:
        tool = self.tools.get(name)
        if tool is None:
            return "unknown_tool", _error(f"there is no tool named {name!r}")
        try:
            args = json.loads(arguments or "{}")
        except ValueError:
            return "invalid_arguments", _error("arguments are not valid JSON")
        problems = sorted(self._validators[name].iter_errors(args), key=lambda e: e.path)
        if problems:
            where = "/".join(str(p) for p in problems[0].absolute_path) or "arguments"
            return "invalid_arguments", _error(f"{where}: {problems[0].message}"[:300])
        headers = {**tool.headers, **self._secret_headers[name]}
        try:
            async with asyncio.timeout(tool.timeout_s):  # the whole call, slow bodies too
                return await self._request(tool, args, headers, client)
        except TimeoutError:
            return "timeout", _error(f"no answer within {tool.timeout_s:g} s")

    async def _request(
        self,
        tool: ToolSettings,
        args: Any,
        headers: dict[str, str],
        client: httpx.AsyncClient,
    ) -> tuple[str, str]:
        import httpx

        try:
            params = None
            if tool.method == "GET":
                # The operator's own query parameters win: the model may add, never change.
                fixed = dict(parse_qsl(urlsplit(tool.url).query, keep_blank_values=True))
                params = {**(args if isinstance(args, dict) else {}), **fixed}
            request = client.build_request(
                tool.method,
                tool.url,
                headers=headers,
                params=params,
                json=args if tool.method == "POST" else None,
                timeout=tool.timeout_s,
            )
            response = await client.send(request, stream=True)
            try:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > tool.max_result_bytes:
                        return "too_large", _error(
                            f"the answer is longer than {tool.max_result_bytes} bytes"
                        )
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            return "timeout", _error(f"no answer within {tool.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return "unreachable", _error(f"the service is unreachable ({type(exc).__name__})")
        if response.status_code >= 300:  # redirects are not followed: not an answer
            return f"http_{response.status_code}", _error(
                f"the service answered HTTP {response.status_code}"
            )
        text = body.decode("utf-8", errors="replace")
        return "ok", text
