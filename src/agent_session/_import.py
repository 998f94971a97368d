"""An existing conversation (OpenAI chat messages) as a new session's document, without I/O.

``imported_document`` validates the messages and builds the joined document that
``context.split`` stores as a head and rows: each ``user`` message starts a turn,
every assistant ``tool_calls`` message is followed by one ``tool`` result per call,
every turn ends with an assistant reply without calls. A message that breaks this is
an ``InputValidationError`` naming its index; nothing is built.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._text import first_unencodable
from ._turn import Instructions
from .context import CONTEXT_VERSION, isoformat, usage_document
from .context import Usage as _Usage
from .errors import InputValidationError
from .history import is_summary

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["imported_document"]

_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})
_ROLES = frozenset({"system", "user", "assistant", "tool"})


def _bad(index: int, why: str) -> InputValidationError:
    return InputValidationError(
        f"import_session: message {index} {why}; nothing was stored",
        errors=[],
        source="messages",
    )


def _stored_message(index: int, message: Any, now: str | None) -> dict[str, Any]:
    """One message in the stored form (``created_at`` on user messages)."""
    if not isinstance(message, Mapping):
        raise _bad(index, f"is not a message dict (got {type(message).__name__})")
    unknown = sorted(k for k, v in message.items() if k not in _FIELDS and v is not None)
    if unknown:
        raise _bad(index, f"has fields this library does not store: {unknown}")
    role = message.get("role")
    if role not in _ROLES:
        raise _bad(index, f"has an unknown role {role!r}")
    stored: dict[str, Any] = {"role": role}
    content = message.get("content")
    if content is not None:
        if not isinstance(content, str | list):
            raise _bad(index, "has content that is neither text nor a list of parts")
        stored["content"] = content
    for name in ("name", "tool_call_id"):
        value = message.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise _bad(index, f"has a {name} that is not a string")
            stored[name] = value
    calls = message.get("tool_calls")
    if calls:
        if role != "assistant" or not isinstance(calls, list):
            raise _bad(index, "has tool_calls but is not an assistant message with a list of them")
        stored["tool_calls"] = [_call(index, call) for call in calls]
    text = json.dumps(stored, ensure_ascii=False)
    if first_unencodable(text) is not None:
        raise _bad(index, "holds a character that cannot be encoded as UTF-8 (a lone surrogate)")
    if role == "user" and now is not None:
        stored["meta"] = {"created_at": now}
    return stored


def _call(index: int, call: Any) -> dict[str, Any]:
    if not isinstance(call, Mapping) or not isinstance(call.get("id"), str):
        raise _bad(index, "has a tool call without an id")
    function = call.get("function")
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise _bad(index, f"has a tool call ({call['id']!r}) without a function name")
    arguments = function.get("arguments")
    if isinstance(arguments, Mapping):
        arguments = json.dumps(arguments, ensure_ascii=False)
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _bad(index, f"has a tool call ({call['id']!r}) whose arguments are not a JSON object")
    return {
        "id": call["id"],
        "type": call.get("type") or "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def imported_document(
    agent: Agent[Any],
    messages: Sequence[Any],
    instructions: Instructions,
    now: datetime,
) -> dict[str, Any]:
    """The joined document of a session holding ``messages`` (finished turns only).

    A leading ``system`` message is the session's instruction when the agent has none
    (else the agent's rendered instruction replaces it); any other ``system`` message
    is refused. Calls must be answered right after their assistant message, results
    must answer a call, and the conversation must end with an assistant reply.
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InputValidationError(
            f"import_session: messages must be a list of message dicts, got "
            f"{type(messages).__name__}",
            errors=[],
            source="messages",
        )
    at = isoformat(now)
    stored: list[dict[str, Any]] = []
    if agent.template is not None:
        stored.append({"role": "system", "content": agent.template.render(instructions.values)})
    start = 0
    if messages and isinstance(messages[0], Mapping) and messages[0].get("role") == "system":
        first = _stored_message(0, messages[0], None)
        if agent.template is None:
            stored.append(first)
        start = 1
    open_calls: list[str] = []
    turns = 0
    expect_turn = True  # the next message must start a turn
    for index in range(start, len(messages)):
        message = _stored_message(index, messages[index], at)
        role = message["role"]
        if role == "system":
            if is_summary(message):
                raise _bad(index, "is a summary; import the conversation it summarizes")
            raise _bad(index, "is a system message; only the first message may be one")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in open_calls:
                raise _bad(index, f"is a tool result ({call_id!r}) that answers no open call")
            open_calls.remove(call_id)
        elif open_calls:
            raise _bad(index - 1, f"leaves tool calls without their results: {open_calls}")
        elif role == "user":
            if not expect_turn:
                raise _bad(index, "starts a turn before the previous one has its reply")
            turns += 1
            expect_turn = False
        elif expect_turn:
            raise _bad(index, "is an assistant message before any user message of its turn")
        if role == "assistant":
            calls = message.get("tool_calls")
            if calls:
                ids = [call["id"] for call in calls]
                if len(set(ids)) != len(ids):
                    raise _bad(index, "has tool calls without distinct ids")
                open_calls = ids
            else:
                expect_turn = True
        stored.append(message)
    last = len(messages) - 1
    if open_calls:
        raise _bad(last, f"leaves tool calls without their results: {open_calls}")
    if not expect_turn:
        raise _bad(last, "ends a turn without an assistant reply (import finished turns only)")
    document: dict[str, Any] = {
        "version": CONTEXT_VERSION,
        "created_at": at,
        "updated_at": at,
        "turns": turns,
        "usage": usage_document(_Usage()),
    }
    if instructions.stored is not None:
        document["instruction_args"] = instructions.stored
    document["messages"] = stored
    document["path"] = []
    document["next"] = 1
    return document
