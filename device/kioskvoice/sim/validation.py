"""Validation of client events: the GA ``session`` schema, audio formats, turn detection,
``response.create`` options and conversation items, and :class:`ClientError`, the mistake a
client is told about in an ``error`` event.

Everything here is pure: a client value in, the stored form or a :class:`ClientError` out.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final

from kioskvoice.sim.session import SAMPLE_RATE, lookup, new_id
from kioskvoice.sim.vad import TURN_DETECTION_DEFAULTS

__all__ = [
    "ClientError",
    "decode_audio",
    "normalize_item",
    "require",
    "validate_response_options",
    "validate_session_patch",
]


# Session fields a GA client may send; a nested dict lists the allowed sub-keys of an object,
# None means "any value of this field" (checked separately where the simulator cares).
_SESSION_SCHEMA: Final[dict[str, Any]] = {
    "type": None,
    "model": None,
    "instructions": None,
    "output_modalities": None,
    "audio": {
        "input": {"format": None, "transcription": None, "noise_reduction": None,
                  "turn_detection": None},
        "output": {"format": None, "voice": None, "speed": None},
    },
    "include": None,
    "max_output_tokens": None,
    "parallel_tool_calls": None,
    "prompt": None,
    "reasoning": None,
    "tool_choice": None,
    "tools": None,
    "tracing": None,
    "truncation": None,
}  # fmt: skip
_RESPONSE_KEYS: Final = frozenset(
    {
        "audio", "conversation", "input", "instructions", "max_output_tokens", "metadata",
        "output_modalities", "parallel_tool_calls", "prompt", "reasoning", "tool_choice", "tools",
    }
)  # fmt: skip
_MESSAGE_CONTENT_TYPES: Final[dict[str, frozenset[str]]] = {
    "user": frozenset({"input_text", "input_audio", "input_image"}),
    "assistant": frozenset({"output_text"}),
    "system": frozenset({"input_text"}),
}
_VALID_MODALITIES: Final = (["audio"], ["text"])
_EAGERNESS: Final = frozenset({"low", "medium", "high", "auto"})


class ClientError(Exception):
    """A client mistake, answered with an ``error`` event; the connection stays open."""

    def __init__(
        self,
        code: str | None,
        message: str,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.error_type = error_type


def _check_keys(obj: dict[str, Any], schema: dict[str, Any], path: str) -> None:
    for key, value in obj.items():
        param = f"{path}.{key}"
        if key not in schema:
            raise ClientError("unknown_parameter", f"Unknown parameter: '{param}'.", param)
        sub = schema[key]
        if isinstance(sub, dict) and value is not None:
            if not isinstance(value, dict):
                raise ClientError(
                    "invalid_type", f"Invalid type for '{param}': expected an object.", param
                )
            _check_keys(value, sub, param)


def _check_format(fmt: Any, param: str) -> None:
    if fmt is None:
        return
    if not isinstance(fmt, dict) or fmt.get("type") != "audio/pcm":
        raise ClientError(
            "invalid_value",
            f"Invalid value for '{param}': the simulator supports only audio/pcm at 24000 Hz.",
            f"{param}.type",
        )
    if fmt.get("rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise ClientError(
            "invalid_value",
            f"Invalid value: '{fmt.get('rate')}'. Supported values are: 24000.",
            f"{param}.rate",
        )


def _check_modalities(value: Any, param: str) -> None:
    if value is not None and value not in _VALID_MODALITIES:
        raise ClientError(
            "invalid_value",
            f'Invalid value for \'{param}\': use ["audio"] or ["text"].',
            param,
        )


def validate_session_patch(patch: Any, current: dict[str, Any]) -> None:
    """Raise ``ClientError`` unless ``patch`` is a GA ``session`` object acceptable now.

    Beta-shaped fields (``modalities``, ``input_audio_format``, ``voice``...) are unknown keys.
    """
    if not isinstance(patch, dict):
        raise ClientError(
            "missing_required_parameter", "Missing required parameter: 'session'.", "session"
        )
    if "type" not in patch:
        raise ClientError(
            "missing_required_parameter",
            "Missing required parameter: 'session.type'.",
            "session.type",
        )
    _check_keys(patch, _SESSION_SCHEMA, "session")
    if patch["type"] != "realtime":
        raise ClientError(
            "invalid_value",
            f"Invalid value: '{patch['type']}'. This session has type 'realtime'.",
            "session.type",
        )
    if "model" in patch and patch["model"] != current.get("model"):
        raise ClientError(
            "invalid_value", "The model of a session cannot be changed.", "session.model"
        )
    if "instructions" in patch and not isinstance(patch["instructions"], str | None):
        raise ClientError(
            "invalid_type", "Invalid type for 'session.instructions'.", "session.instructions"
        )
    _check_modalities(patch.get("output_modalities"), "session.output_modalities")
    _check_format(lookup(patch, "audio", "input", "format"), "session.audio.input.format")
    _check_format(lookup(patch, "audio", "output", "format"), "session.audio.output.format")
    _check_turn_detection(lookup(patch, "audio", "input", "turn_detection"))


def _check_turn_detection(value: Any) -> None:
    """Raise ``ClientError`` unless ``value`` is null or a GA server/semantic VAD object."""
    path = "session.audio.input.turn_detection"
    if value is None:
        return
    if not isinstance(value, dict):
        raise ClientError("invalid_type", f"Invalid type for '{path}'.", path)
    kind = value.get("type")
    if kind not in TURN_DETECTION_DEFAULTS:
        raise ClientError(
            "invalid_value",
            f"Invalid value for '{path}.type': use 'server_vad' or 'semantic_vad'.",
            f"{path}.type",
        )
    allowed = TURN_DETECTION_DEFAULTS[kind]
    for key, field_value in value.items():
        param = f"{path}.{key}"
        if key == "type":
            continue
        if key not in allowed:
            raise ClientError("unknown_parameter", f"Unknown parameter: '{param}'.", param)
        if field_value is None:
            continue
        if key == "threshold":
            valid = (
                isinstance(field_value, int | float)
                and not isinstance(field_value, bool)
                and 0.0 <= field_value <= 1.0
            )
        elif key.endswith("_ms"):
            valid = (
                isinstance(field_value, int)
                and not isinstance(field_value, bool)
                and field_value >= 0
            )
        elif key == "eagerness":
            valid = field_value in _EAGERNESS
        else:  # create_response, interrupt_response
            valid = isinstance(field_value, bool)
        if not valid:
            raise ClientError("invalid_value", f"Invalid value for '{param}'.", param)


def validate_response_options(options: Any) -> dict[str, Any]:
    """Return the ``response`` overrides of a ``response.create`` (``{}`` when absent)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ClientError("invalid_type", "Invalid type for 'response'.", "response")
    for key in options:
        if key not in _RESPONSE_KEYS:
            param = f"response.{key}"
            raise ClientError("unknown_parameter", f"Unknown parameter: '{param}'.", param)
    _check_modalities(options.get("output_modalities"), "response.output_modalities")
    if not isinstance(options.get("instructions", ""), str):
        raise ClientError(
            "invalid_type", "Invalid type for 'response.instructions'.", "response.instructions"
        )
    if not isinstance(options.get("conversation", "auto"), str):
        raise ClientError(
            "invalid_type", "Invalid type for 'response.conversation'.", "response.conversation"
        )
    return options


def require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    param = f"{path}.{key}" if path else key
    if key not in obj or obj[key] is None:
        raise ClientError(
            "missing_required_parameter", f"Missing required parameter: '{param}'.", param
        )
    value = obj[key]
    # bool is an int subclass; JSON true is never a valid count or offset.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ClientError("invalid_type", f"Invalid type for '{param}'.", param)
    return value


def decode_audio(value: str, param: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ClientError(
            "invalid_value", f"Invalid value for '{param}': not valid base64.", param
        ) from exc


def normalize_item(item: Any) -> dict[str, Any]:
    """Validate a ``conversation.item.create`` item and return it as the server stores it.

    Accepts ``message`` items (user: input_text/input_audio/input_image; assistant:
    output_text; system: input_text), ``function_call`` and ``function_call_output``. Audio
    bytes are checked then dropped: items are stored and echoed without them.
    """
    if not isinstance(item, dict):
        raise ClientError(
            "missing_required_parameter", "Missing required parameter: 'item'.", "item"
        )
    item_type = require(item, "type", str, "item")
    item_id = item.get("id")
    if item_id is not None and not isinstance(item_id, str):
        raise ClientError("invalid_type", "Invalid type for 'item.id'.", "item.id")
    stored: dict[str, Any] = {
        "id": item_id or new_id("item"),
        "type": item_type,
        "object": "realtime.item",
        "status": "completed",
    }
    if item_type == "message":
        role = require(item, "role", str, "item")
        allowed = _MESSAGE_CONTENT_TYPES.get(role)
        if allowed is None:
            raise ClientError(
                "invalid_value",
                f"Invalid value: '{role}'. Supported values are: 'user', 'assistant', 'system'.",
                "item.role",
            )
        content = require(item, "content", list, "item")
        stored["role"] = role
        stored["content"] = [_normalize_part(p, allowed, f"item.content[{i}]")
                             for i, p in enumerate(content)]  # fmt: skip
    elif item_type == "function_call_output":
        stored["call_id"] = require(item, "call_id", str, "item")
        stored["output"] = require(item, "output", str, "item")
    elif item_type == "function_call":
        stored["call_id"] = require(item, "call_id", str, "item")
        stored["name"] = require(item, "name", str, "item")
        stored["arguments"] = require(item, "arguments", str, "item")
    else:
        raise ClientError(
            "invalid_value",
            f"Invalid value: '{item_type}'. Supported values are: 'message', 'function_call', "
            "'function_call_output'.",
            "item.type",
        )
    return stored


def _normalize_part(part: Any, allowed: frozenset[str], path: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise ClientError("invalid_type", f"Invalid type for '{path}'.", path)
    part_type = require(part, "type", str, path)
    if part_type not in allowed:
        supported = ", ".join(f"'{t}'" for t in sorted(allowed))
        raise ClientError(
            "invalid_value",
            f"Invalid value: '{part_type}'. Supported values are: {supported}.",
            f"{path}.type",
        )
    if part_type in ("input_text", "output_text"):
        return {"type": part_type, "text": require(part, "text", str, path)}
    if part_type == "input_audio":
        decode_audio(require(part, "audio", str, path), f"{path}.audio")
        transcript = part.get("transcript")
        return {
            "type": part_type,
            "transcript": transcript if isinstance(transcript, str) else None,
        }
    return {"type": part_type, "image_url": require(part, "image_url", str, path)}
