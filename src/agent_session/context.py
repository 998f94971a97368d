"""The stored conversation: a versioned JSON document, validated when read.

A context document (version 3) looks like::

    {
      "version": 3,
      "created_at": "...", "updated_at": "...", "turns": 1,
      "usage": {"prompt_tokens": 21, "completion_tokens": 5},
      "cost": 0.00002,
      "instruction_args": {...},
      "messages": [
        {"role": "system", "content": "You are ..."},
        {"role": "user", "content": "Hello!", "meta": {"created_at": "..."}},
        {"role": "assistant", "content": "{...}", "meta": {"model": "...",
         "usage": {...}, "cost": 0.00002, "finish_reason": "stop"}}
      ]
    }

Each message is an OpenAI chat message (``role``, ``content`` and, for tool use,
``tool_calls``, ``tool_call_id``, ``name``) plus, when there is something to say,
one ``meta`` key that holds what the library knows about it;
``Context.chat_messages()`` drops ``meta`` so the history can be sent to any
provider as it is. A turn that called tools is stored as OpenAI's chat form: the
user message, each assistant message with its ``tool_calls`` followed by one
``tool`` message per call, then the final assistant message. A call whose
arguments were not a JSON object is stored with ``{}`` as its arguments and the
model's raw text in the assistant message's ``meta.raw_arguments`` (by call id).

``messages`` holds finished turns only: a call never appears there without its
result. A turn that waits for a person's approval (version 3) is kept apart, in
``pending``::

    "pending": {
      "messages": [<the user message>, <assistant tool_calls>, <tool results so far>],
      "approvals": [{"tool_call_id": "call_1", "tool_name": "refund",
                     "arguments": {"order_id": "42", "amount": 10.0}}],
      "steps": 1, "usage": {...}, "cost": 0.0001,
      "claimed_at": "..."   (while a resume runs it)
    }

A session with a token or cost budget and no status column is claimed by a turn
before its model call: the document then has a top-level ``"claimed_at"``, which
the turn's own write (or its failure) removes again.

A long conversation may hold compaction summaries: a ``system`` message after the
first, with ``meta.summary = {"covers": n}`` (the n stored messages before it that it
stands for, which stay stored); see ``agent_session.history``.

No message repeats what can be derived, and what is left is written compactly:

- a user message's input is its ``content`` (the single input field's text, or the
  input as JSON), so ``meta.input`` is only there when that rule would not give it
  back; an assistant message's output is ``agent.parse_output(content)``
  (``Message.parse_input`` / ``Message.parse_output`` rebuild both);
- a user message always has ``meta.created_at``; any other message without it was
  created with the message before it (the first one: with the document);
- an assistant message without ``meta.attempts`` took one; a ``usage`` without
  ``total_tokens`` totals its two counts;
- keys whose value is unknown (``null``) are left out.

The document keeps a summary beside the messages (``turns``, ``usage``, ``cost``,
``updated_at``): a few bytes that let a reader, or a SQL query, see the totals
without summing the messages.

``load_context`` fills all of that in, so a ``Context`` always has every field;
``Context.to_document()`` gives the compact form back.

Compatibility promise: every release reads every context version any earlier
release wrote. A format change bumps ``version`` and adds an upgrade function to
``_UPGRADES``; documents are upgraded in memory when read and written back in the
current version on the next turn. A document with a version newer than this
release knows is refused with ``ContextError`` rather than guessed at.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ContextError, show_key

if TYPE_CHECKING:
    from .agent import Agent
    from .tools import PendingApproval

__all__ = [
    "CONTEXT_VERSION",
    "Context",
    "Message",
    "MessageMeta",
    "PendingTurn",
    "SummaryMeta",
    "Usage",
    "load_context",
]

CONTEXT_VERSION = 3
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

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid", frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


def usage_document(usage: Usage) -> dict[str, int]:
    """A ``Usage`` as stored: ``total_tokens`` only when it is not the sum of the two."""
    stored = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
    if usage.total_tokens != usage.prompt_tokens + usage.completion_tokens:
        stored["total_tokens"] = usage.total_tokens
    return stored


def stored_usage(raw: Any) -> Usage:
    """The ``Usage`` a stored (possibly compact) usage object stands for."""
    return Usage.model_validate(_expand_usage(raw or {}))


def _expand_usage(raw: Any) -> Any:
    if not isinstance(raw, dict) or "total_tokens" in raw:
        return raw
    counts = [raw.get("prompt_tokens", 0), raw.get("completion_tokens", 0)]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
        return raw  # left for validation to reject
    return {**raw, "total_tokens": sum(counts)}


def input_document(single_input_field: str | None, content: str) -> Any:
    """The input (as JSON) that a user message's ``content`` stands for.

    With one input field the content is that field's text; otherwise it is the
    input as JSON. A turn stores ``meta.input`` only when this does not give the
    input back (a single field that is not a string).
    """
    if single_input_field is not None:
        return {single_input_field: content}
    return json.loads(content)


class SummaryMeta(BaseModel):
    """``meta.summary`` of a compaction summary (a ``system`` message after the first)."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    covers: int = Field(ge=0)
    """How many stored messages directly before the summary it stands for."""


class MessageMeta(BaseModel):
    """What the library records beside one chat message."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    created_at: datetime
    input: dict[str, Any] | None = None
    """User messages: the input as JSON, only when ``content`` does not give it back
    (use ``Message.parse_input``)."""
    model: str | None = None
    usage: Usage | None = None
    """Assistant messages: tokens of this turn, re-asks included."""
    cost: float | None = None
    finish_reason: str | None = None
    attempts: int | None = None
    raw_arguments: dict[str, str] | None = None
    """Assistant messages with tool calls: the model's raw arguments text, by call id,
    of the calls whose arguments were not a JSON object (they are stored as ``{}``)."""
    interrupted: bool | None = None
    """Assistant messages: ``True`` when the reader of a streamed turn stopped early and
    the reply was stored as far as it went (``on_cancel="keep"``); it has no output."""
    summary: SummaryMeta | None = None
    """A compaction summary (``role`` ``system``): what it covers. See ``history``."""


class Message(BaseModel):
    """One stored chat message: the OpenAI fields plus ``meta``."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[Any] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    meta: MessageMeta

    def parse_input(self, agent: Agent[Any]) -> BaseModel | None:
        """A user message's input, validated with ``agent.input_schema``; else ``None``."""
        if self.role != "user" or not isinstance(self.content, str):
            return None
        data = self.meta.input
        if data is None:
            data = input_document(agent.single_input_field, self.content)
        return agent.input_schema.model_validate(data)

    def parse_output(self, agent: Agent[Any]) -> Any:
        """An assistant reply parsed as ``agent`` parses it (``None`` for other messages
        and for tool calls without text). Raises ``ValidationError`` if the stored text
        no longer matches the agent's output schema."""
        if self.role != "assistant" or not isinstance(self.content, str):
            return None
        return agent.parse_output(self.content)


class PendingApprovalData(BaseModel):
    """A call of a paused turn that waits for a decision (``PendingApproval`` as stored)."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any]


class PendingTurn(BaseModel):
    """A turn paused for approvals: its messages so far and the calls to decide."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    messages: list[Message]
    """The user message, the assistant ``tool_calls`` messages and the results so far."""
    approvals: list[PendingApprovalData]
    steps: int = 0
    """Model calls the turn made so far (they count against ``max_tool_steps``)."""
    usage: Usage = Field(default_factory=Usage)
    cost: float | None = None
    claimed_at: datetime | None = None
    """Set while a resume runs the turn: another resume then finds the pause taken."""

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        return _expand_document(data, None)

    @model_validator(mode="after")
    def _approvals_name_calls(self) -> PendingTurn:
        """Each approval is a call of the last reply, to the same tool: the approver
        is shown its arguments, and they are the arguments that run."""
        calls: dict[Any, Any] = {}
        for message in reversed(self.messages):
            if message.role == "assistant" and message.tool_calls:
                calls = {
                    entry.get("id"): (entry.get("function") or {}).get("name")
                    for entry in message.tool_calls
                    if isinstance(entry, dict)
                }
                break
        for approval in self.approvals:
            if calls.get(approval.tool_call_id, object()) != approval.tool_name:
                raise ValueError(
                    f"approval {approval.tool_call_id!r} ({approval.tool_name}) is not a "
                    f"call of the paused reply"
                )
        return self

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "messages": _messages_document(self.messages, None),
            "approvals": [approval.model_dump(mode="json") for approval in self.approvals],
            "steps": self.steps,
            "usage": usage_document(self.usage),
        }
        if self.cost is not None:
            doc["cost"] = self.cost
        if self.claimed_at is not None:
            doc["claimed_at"] = isoformat(self.claimed_at)
        return doc


class Context(BaseModel):
    """A whole stored conversation (the current version of the document).

    Validating a stored document fills in what the compact form leaves out (see the
    module docstring); ``to_document`` writes it compactly again.
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    version: Literal[3] = 3
    messages: list[Message]
    """Finished turns only."""
    pending: PendingTurn | None = None
    """The turn that waits for approvals, if one does."""
    instruction_args: dict[str, Any] | None = None
    usage: Usage = Field(default_factory=Usage)
    cost: float | None = None
    """Cumulative USD cost of the turns whose cost was known; ``None`` if none was."""
    turns: int = 0
    created_at: datetime
    updated_at: datetime
    claimed_at: datetime | None = None
    """Set while a turn with a session budget runs (without a status column): other
    turns wait for it, or get ``SessionBusyError``."""

    @model_validator(mode="before")
    @classmethod
    def _expand(cls, data: Any) -> Any:
        """Fill in what the stored form leaves out: carried-over timestamps, defaults."""
        if not isinstance(data, dict):
            return data
        return _expand_document(data, data.get("created_at"))

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

    def to_document(self) -> dict[str, Any]:
        """The compact JSON document the library stores for this context."""
        doc: dict[str, Any] = {
            "version": self.version,
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
            "turns": self.turns,
            "usage": usage_document(self.usage),
        }
        if self.cost is not None:
            doc["cost"] = self.cost
        if self.instruction_args is not None:
            doc["instruction_args"] = self.instruction_args
        doc["messages"] = _messages_document(self.messages, self.created_at)
        if self.pending is not None:
            doc["pending"] = self.pending.to_document()
        if self.claimed_at is not None:
            doc["claimed_at"] = isoformat(self.claimed_at)
        return doc

    @property
    def pending_approvals(self) -> list[PendingApproval]:
        """The ``PendingApproval`` objects of the paused turn (empty if none waits)."""
        if self.pending is None:
            return []
        from .tools import PendingApproval

        return [PendingApproval(**a.model_dump()) for a in self.pending.approvals]


def _messages_document(messages: list[Message], created_at: datetime | None) -> list[Any]:
    stored_messages = []
    previous_at = created_at
    for message in messages:
        stored = message.model_dump(mode="json", exclude_none=True, exclude={"meta"})
        meta = _meta_document(message, previous_at)
        if meta:
            stored["meta"] = meta
        previous_at = message.meta.created_at
        stored_messages.append(stored)
    return stored_messages


def _expand_document(data: Any, created_at: Any) -> Any:
    """A stored context or pending turn with its usage and messages filled in."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if "usage" in data:
        data["usage"] = _expand_usage(data["usage"])
    messages = data.get("messages")
    if isinstance(messages, list):
        data["messages"] = _expand_messages(messages, created_at)
    return data


def _expand_messages(messages: list[Any], created_at: Any) -> list[Any]:
    """The messages with what their compact form leaves out; unchanged ones as they are."""
    expanded = []
    previous_at = created_at
    for message in messages:
        if not isinstance(message, dict):
            expanded.append(message)
            continue
        meta = message.get("meta")
        if meta is None:
            meta = {}
        elif not isinstance(meta, dict):
            expanded.append(message)  # left for validation to reject
            continue
        filled: dict[str, Any] = {}
        at = meta.get("created_at")
        if at is None:
            if previous_at is not None:
                filled["created_at"] = previous_at
        else:
            previous_at = at
        usage = meta.get("usage")
        if isinstance(usage, dict) and "total_tokens" not in usage:
            filled["usage"] = _expand_usage(usage)
        if message.get("role") == "assistant" and meta.get("attempts") is None:
            filled["attempts"] = 1
        if filled or "meta" not in message:
            message = {**message, "meta": {**meta, **filled}}
        expanded.append(message)
    return expanded


def _meta_document(message: Message, previous_at: datetime | None) -> dict[str, Any]:
    meta = message.meta
    stored: dict[str, Any] = {}
    if message.role == "user" or previous_at is None or meta.created_at != previous_at:
        stored["created_at"] = isoformat(meta.created_at)
    if meta.input is not None:
        stored["input"] = meta.input
    if meta.model is not None:
        stored["model"] = meta.model
    if meta.usage is not None:
        stored["usage"] = usage_document(meta.usage)
    if meta.cost is not None:
        stored["cost"] = meta.cost
    if meta.finish_reason is not None:
        stored["finish_reason"] = meta.finish_reason
    if meta.attempts is not None and not (message.role == "assistant" and meta.attempts == 1):
        stored["attempts"] = meta.attempts
    if meta.raw_arguments is not None:
        stored["raw_arguments"] = meta.raw_arguments
    if meta.interrupted:
        stored["interrupted"] = True
    if meta.summary is not None:
        stored["summary"] = meta.summary.model_dump(mode="json")
    return stored


def chat_messages(stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Strip ``meta`` from stored message dicts."""
    return [{k: v for k, v in m.items() if k != "meta"} for m in stored]


# -- earlier versions --------------------------------------------------------------
# Read only to upgrade an old document: their schemas are built on first use.


class _MessageMetaV1(BaseModel):
    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid", defer_build=True)

    created_at: datetime
    input: dict[str, Any] | None = None
    output: Any = None
    model: str | None = None
    usage: Usage | None = None
    cost: float | None = None
    finish_reason: str | None = None
    attempts: int | None = None


class _MessageV1(BaseModel):
    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid", defer_build=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[Any] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    meta: _MessageMetaV1


class _ContextV1(BaseModel):
    """Version 1: every message has a full ``meta``; user messages repeat their input
    in ``meta.input`` and assistant messages their parsed output in ``meta.output``."""

    model_config: ClassVar[ConfigDict] = ConfigDict(extra="forbid", defer_build=True)

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


def _upgrade_v1(raw: dict[str, Any]) -> dict[str, Any]:
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
    return {**context.to_document(), "version": 2}


class _MessageMetaV2(MessageMeta):
    model_config = ConfigDict(defer_build=True)

    raw_arguments: None = None
    interrupted: None = None
    summary: None = None


class _MessageV2(Message):
    model_config = ConfigDict(defer_build=True)

    meta: _MessageMetaV2


class _ContextV2(Context):
    """Version 2: version 3 without a pending part (and without ``meta.raw_arguments``)."""

    model_config = ConfigDict(defer_build=True)

    version: Literal[2] = 2  # type: ignore[assignment]
    messages: list[_MessageV2]  # type: ignore[assignment]
    pending: None = None


def _upgrade_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 2 -> 3: the same document, with nothing pending."""
    _ContextV2.model_validate(raw)
    return {**raw, "version": 3}


_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _upgrade_v1,
    2: _upgrade_v2,
}
"""``_UPGRADES[n]`` turns a version-n document into a version n+1 document (and raises
``ValidationError`` if it is not a valid version-n document)."""


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
    try:
        doc = raw
        while version < CONTEXT_VERSION:
            doc = _UPGRADES[version](doc)
            version += 1
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
