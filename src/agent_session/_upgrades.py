"""The context models of versions 1 and 2, read only to upgrade an old document
(``context._UPGRADES``): imported by the first such document, not by a turn of the
current version. Their schemas are built when it is imported (under the import
lock: no thread sees one half built)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from .context import Context, Message, MessageMeta, Usage


class _MessageMetaV1(BaseModel):
    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    created_at: datetime
    input: dict[str, Any] | None = None
    output: Any = None
    model: str | None = None
    usage: Usage | None = None
    cost: float | None = None
    finish_reason: str | None = None
    attempts: int | None = None


class _MessageV1(BaseModel):
    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[Any] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    meta: _MessageMetaV1


class _ContextV1(BaseModel):
    """Version 1: every message has a full ``meta``; user messages repeat their input
    in ``meta.input`` and assistant messages their parsed output in ``meta.output``."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    version: Literal[1]
    messages: list[_MessageV1]
    instruction_args: dict[str, Any] | None = None
    usage: Usage = Field(default_factory=Usage)
    cost: float | None = None
    turns: int = 0
    created_at: datetime
    updated_at: datetime


def _input_is_derived(content: Any, stored: dict[str, Any] | None) -> bool:
    """Whether ``input_document`` gives ``stored`` back from ``content``, for the agent
    that wrote it (one input field exactly when the input has one key)."""
    if stored is None:
        return True
    if not isinstance(content, str):
        return False
    if len(stored) == 1:
        return bool(next(iter(stored.values())) == content)
    try:
        return bool(json.loads(content) == stored)
    except ValueError:
        return False


def upgrade_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: drop ``meta.output`` and derivable ``meta.input``; compact."""
    old = _ContextV1.model_validate(raw)
    messages = []
    for message in old.messages:
        meta = message.meta.model_dump(exclude={"output"})
        if _input_is_derived(message.content, message.meta.input):
            meta["input"] = None
        fields = message.model_dump(exclude={"meta"})
        messages.append(Message(**fields, meta=MessageMeta(**meta)))
    context = Context(messages=messages, **old.model_dump(exclude={"version", "messages"}))
    # Version 2 exactly, even once ``Context`` is a later version: the next upgrade
    # in the chain takes it from there.
    upgraded = context.to_document()
    del upgraded["path"], upgraded["next"]
    return {**upgraded, "version": 2}


class _MessageMetaV2(MessageMeta):
    raw_arguments: None = None
    interrupted: None = None
    summary: None = None


class _MessageV2(Message):
    meta: _MessageMetaV2


class _ContextV2(Context):
    """Version 2: version 3 without a pending part (and without ``meta.raw_arguments``)."""

    version: Literal[2] = 2  # type: ignore[assignment]
    messages: list[_MessageV2]  # type: ignore[assignment]
    pending: None = None


def upgrade_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 2 -> 3: the same document, with nothing pending."""
    _ContextV2.model_validate(raw)
    return {**raw, "version": 3}
