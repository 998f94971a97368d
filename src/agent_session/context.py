"""The stored conversation: a versioned JSON document, validated when read.

A context document looks like::

    {
      "version": 1,
      "messages": [
        {"role": "system", "content": "You are ...", "meta": {"created_at": "..."}},
        {"role": "user", "content": "Hello!", "meta": {"created_at": "...", "input": {...}}},
        {"role": "assistant", "content": "{...}", "meta": {"created_at": "...",
         "output": {...}, "model": "...", "usage": {...}, "cost": 0.0001, ...}}
      ],
      "instruction_args": {...},
      "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
      "cost": 0.0001,
      "turns": 1,
      "created_at": "...",
      "updated_at": "..."
    }

Each message is an OpenAI chat message (``role``, ``content`` and, for tool use,
``tool_calls``, ``tool_call_id``, ``name``) plus one ``meta`` key that holds what
the library knows about it; ``Context.chat_messages()`` drops ``meta`` so the
history can be sent to any provider as it is.

Compatibility promise: every release reads every context version any earlier
release wrote. A format change bumps ``version`` and adds an upgrade function to
``_UPGRADES``; documents are upgraded in memory when read and written back in the
current version on the next turn. A document with a version newer than this
release knows is refused with ``ContextError`` rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ContextError, show_key

__all__ = ["CONTEXT_VERSION", "Context", "Message", "MessageMeta", "Usage", "load_context"]

CONTEXT_VERSION = 1
"""The version this release writes."""


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def isoformat(moment: datetime) -> str:
    """A timestamp as stored: ISO 8601, UTC as ``Z`` (what Pydantic writes too)."""
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class Usage(BaseModel):
    """Token counts of one call, one turn or a whole session."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


class MessageMeta(BaseModel):
    """What the library records beside one chat message."""

    model_config = ConfigDict(extra="forbid")

    created_at: datetime
    input: dict[str, Any] | None = None
    """User messages: the validated input, as JSON."""
    output: Any = None
    """Assistant messages: the parsed output, as JSON (a string for plain-text agents)."""
    model: str | None = None
    usage: Usage | None = None
    """Assistant messages: tokens of this turn, re-asks included."""
    cost: float | None = None
    finish_reason: str | None = None
    attempts: int | None = None


class Message(BaseModel):
    """One stored chat message: the OpenAI fields plus ``meta``."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[Any] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    meta: MessageMeta


class Context(BaseModel):
    """A whole stored conversation (the current version of the document)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    messages: list[Message]
    instruction_args: dict[str, Any] | None = None
    usage: Usage = Field(default_factory=Usage)
    cost: float | None = None
    """Cumulative USD cost of the turns whose cost was known; ``None`` if none was."""
    turns: int = 0
    created_at: datetime
    updated_at: datetime

    @property
    def system(self) -> str | None:
        """The rendered instruction, if the session has one."""
        first = self.messages[0] if self.messages else None
        if first is not None and first.role == "system" and isinstance(first.content, str):
            return first.content
        return None

    @property
    def last_assistant(self) -> Message | None:
        """The newest assistant message, if any."""
        for message in reversed(self.messages):
            if message.role == "assistant":
                return message
        return None

    def chat_messages(self) -> list[dict[str, Any]]:
        """The history in OpenAI chat format, ready to send."""
        return chat_messages(self.model_dump(mode="json", exclude_none=True)["messages"])


def chat_messages(stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Strip ``meta`` from stored message dicts."""
    return [{k: v for k, v in m.items() if k != "meta"} for m in stored]


_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""``_UPGRADES[n]`` turns a version-n document into a version n+1 document."""


def _of_session(key: Any) -> str:
    return "" if key is None else f" of session {show_key(key)}"


def load_context(raw: Any, *, key: Any = None) -> Context:
    """Validate a stored document (any version this release knows) into a ``Context``.

    Raises ``ContextError`` naming ``key`` when the value is not a valid context.
    """
    if not isinstance(raw, dict):
        kind = "NULL" if raw is None else type(raw).__name__
        raise ContextError(
            f"stored context{_of_session(key)} is not a context document (got {kind})", key=key
        )
    version = raw.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ContextError(
            f"stored context{_of_session(key)} has no valid version field (got {version!r})",
            key=key,
        )
    if version > CONTEXT_VERSION:
        raise ContextError(
            f"stored context{_of_session(key)} has version {version}, written by a newer "
            f"agent-session; this release reads versions 1 to {CONTEXT_VERSION}",
            key=key,
        )
    doc = raw
    while version < CONTEXT_VERSION:
        doc = _UPGRADES[version](doc)
        version += 1
    try:
        return Context.model_validate(doc)
    except ValidationError as exc:
        raise ContextError(
            f"stored context{_of_session(key)} is invalid: "
            f"{exc.error_count()} error(s): {_short_errors(exc)}",
            key=key,
        ) from exc


def _short_errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in error["loc"])
        parts.append(f"{loc}: {error['msg']}")
    return "; ".join(parts)
