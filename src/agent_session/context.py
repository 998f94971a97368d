"""The stored conversation: a small head in the context column, the history in rows.

Version 4 stores a conversation in two places. The context column holds the *head*,
what every turn reads and rewrites::

    {
      "version": 4,
      "created_at": "...", "updated_at": "...", "turns": 12,
      "usage": {"prompt_tokens": 210, "completion_tokens": 45}, "cost": 0.0002,
      "instruction_args": {...},
      "system": {"role": "system", "content": "You are ..."},
      "path": [[1, 10], [12, 13]],      the active path: turn-row seqs, as runs
      "next": 14,                        the next seq a row gets
      "summary": {"seq": 11, "anchor": 10, "message": {...}},   the newest summary
      "last": {"role": "assistant", ...},                       the newest reply
      "pending": {...}, "claimed_at": "..."                     as described below
    }

The history lives in a companion table (``<table>_history`` by default, see
``AgentSessionMixin.__history_table__``): one row per finished turn (the user
message, the tool exchange, the final assistant message) or per compaction summary,
keyed by the session's primary key and its ``seq``, with ``parent`` (the seq of the
turn before it on its path; for a summary, the turn it is anchored at) and ``data``
(the row's messages as compact JSON). A turn writes the head and its new rows in one
compare-and-swap, so the bytes a turn writes grow with its new messages only, and a
windowed turn reads only the rows it sends. With ``__history_table__ = None`` (the
single-column layout) the head keeps every row itself, in ``"rows"``.

A message's ``id`` is ``"<seq>.<index>"`` (``"0.0"`` for the system message); ids and
``parent`` ids are derived when rows are read, never stored. In memory a turn works
on the *joined* document: the head's fields with ``messages`` (the system message and
the loaded rows' messages, each summary right after the turn it is anchored at), as
version 3 stored it; ``split_document`` turns it back into a head and the new rows.

Version 3 (still read, and stored as rows by the next turn) kept the whole
conversation in the column::

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

The history holds finished turns only: a call never appears there without its
result. A turn that waits for a person's approval (since version 3) is kept apart,
in the head's ``pending``::

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
first, with ``meta.summary = {"covers": n}`` (the n messages before it that it stands
for, which stay stored); see ``agent_session.history``. In version 4 each summary is a
row of its own, anchored at the turn it follows, and the newest one on the active
path is also in the head, so a turn sends it without reading any row.

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
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator
from pydantic_core import from_json

from . import _paths
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
    "split_document",
]

CONTEXT_VERSION = 4
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
    id: str | None = None
    """``"<seq>.<index>"``: the stored turn (or summary) and the place in it; the
    system message is ``"0.0"``. Derived when read, never stored; ``None`` for a
    message not stored as a row yet (a document of a version before 4)."""
    parent: str | None = None
    """The id of the message before this one on its path (``None`` for the first)."""

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

    version: Literal[4] = 4
    messages: list[Message]
    """Finished turns only: the system message, then the active path's turns, each
    summary right after the turn it is anchored at."""
    path: list[list[int]] = Field(default_factory=list)
    """The active path: the seqs of its turn rows, as inclusive runs (see ``_paths``)."""
    next: int = Field(default=1, ge=1)
    """The next seq a new row gets."""
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

    @model_validator(mode="after")
    def _valid_path(self) -> Context:
        if not _paths.valid(self.path):
            raise ValueError(f"path is not a list of [first, last] runs: {self.path!r}")
        newest = _paths.last(self.path)
        if newest is not None and any(run[1] >= self.next for run in self.path):
            raise ValueError(f"path holds seq {newest}, not below next ({self.next})")
        return self

    def chat_messages(self) -> list[dict[str, Any]]:
        """The history in OpenAI chat format, ready to send."""
        return chat_messages(self.model_dump(mode="json", exclude_none=True)["messages"])

    def to_document(self) -> dict[str, Any]:
        """The context as one compact JSON document: the head's fields, ``messages``
        (with their ``id``), ``path`` and ``next``: the joined form a turn works on,
        which ``split_document`` stores as a head and rows."""
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
        doc["messages"] = _messages_document(self.messages, self.created_at, ids=True)
        if self.pending is not None:
            doc["pending"] = self.pending.to_document()
        if self.claimed_at is not None:
            doc["claimed_at"] = isoformat(self.claimed_at)
        doc["path"] = [list(run) for run in self.path]
        doc["next"] = self.next
        return doc

    _every_row: bool = PrivateAttr(default=False)
    """Read with ``path="all"``: ``messages`` holds every stored row."""

    def branches_at(self, message_id: str) -> list[str]:
        """The versions of a message: its id and the id of the same place in each
        sibling turn (a turn a regenerate or an edit made beside it), oldest first.

        The same place is the sibling's user message for a user message, its final
        reply for a final reply (else the message with the same index, or its last).
        ``switch_branch`` with one of them makes that version active. Needs every
        stored message: read the context with ``get_context(..., path="all")``
        (``ValueError`` otherwise, or when the id is not a message of this context).
        """
        if not self._every_row:
            raise ValueError(
                'branches_at needs every stored message: read the context with path="all"'
            )
        rows: dict[int, list[Any]] = {}  # seq -> [parent seq, message count, is a turn]
        for message in self.messages:
            row_text, _, place = (message.id or "").partition(".")
            if not row_text.isdigit() or row_text == "0" or not place.isdigit():
                continue
            row = rows.setdefault(int(row_text), [None, 0, message.meta.summary is None])
            row[1] = max(row[1], int(place) + 1)
            if place == "0" and message.parent is not None:
                row[0] = int(message.parent.partition(".")[0])
        seq_text, _, index_text = str(message_id).partition(".")
        if message_id == "0.0":
            return [message_id]
        if not (seq_text.isdigit() and index_text.isdigit()) or int(seq_text) not in rows:
            raise ValueError(f"no message {message_id!r} in this context")
        seq, index = int(seq_text), int(index_text)
        parent, count, _ = rows[seq]
        if index >= count:
            raise ValueError(f"no message {message_id!r} in this context")
        found = []
        for other in sorted(rows):
            other_parent, other_count, is_turn = rows[other]
            if other_parent != parent or not is_turn:
                continue
            if index == 0:
                at = 0
            elif index == count - 1:
                at = other_count - 1
            else:
                at = min(index, other_count - 1)
            found.append(f"{other}.{at}")
        return found

    @property
    def pending_approvals(self) -> list[PendingApproval]:
        """The ``PendingApproval`` objects of the paused turn (empty if none waits)."""
        if self.pending is None:
            return []
        from .tools import PendingApproval

        return [PendingApproval(**a.model_dump()) for a in self.pending.approvals]


def _messages_document(
    messages: list[Message], created_at: datetime | None, *, ids: bool = False
) -> list[Any]:
    stored_messages = []
    previous_at = created_at
    excluded = {"meta", "parent"} if ids else {"meta", "parent", "id"}
    for message in messages:
        stored = message.model_dump(mode="json", exclude_none=True, exclude=excluded)
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


_NOT_SENT = frozenset({"meta", "id", "parent"})


def chat_messages(stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Strip ``meta`` (and the derived ``id`` and ``parent``) from stored message dicts."""
    return [{k: v for k, v in m.items() if k not in _NOT_SENT} for m in stored]


# -- earlier versions --------------------------------------------------------------
# The models of versions 1 and 2 are read only to upgrade an old document: they live in
# ``_upgrades``, imported by the first such document.


def _upgrade_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: drop ``meta.output`` and derivable ``meta.input``; compact."""
    from ._upgrades import upgrade_v1

    return upgrade_v1(raw)


def _upgrade_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 2 -> 3: the same document, with nothing pending."""
    from ._upgrades import upgrade_v2

    return upgrade_v2(raw)


def _upgrade_v3(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 3 -> 4, in memory: the joined form of a document not stored as rows yet
    (no message ids, an empty path); its next write stores every message as rows."""
    return {**raw, "version": 4, "path": [], "next": 1, FROM_VERSION: raw.get("version", 3)}


_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _upgrade_v1,
    2: _upgrade_v2,
    3: _upgrade_v3,
}
"""``_UPGRADES[n]`` turns a version-n document into a version n+1 document (and raises
``ValidationError`` if it is not a valid version-n document)."""


def _of_session(key: Any) -> str:
    return "" if key is None else f" of session {show_key(key)}"


def load_context(raw: Any, *, key: Any = None, rows: Any = None) -> Context:
    """Validate a stored document (any version this release knows) into a ``Context``.

    A version-4 head is joined with ``rows`` (``(seq, parent, data)`` as read from the
    history table; in the single-column layout the head's own ``rows``); a joined
    document (one with ``messages``) is validated as it is.
    Raises ``ContextError`` naming ``key`` when the value is not a valid context.
    """
    try:
        return Context.model_validate(_validatable(joined_document(raw, rows, key=key)))
    except ValidationError as exc:
        raise _invalid(exc, key) from exc


def _invalid(exc: ValidationError, key: Any) -> ContextError:
    return ContextError(
        f"stored context{_of_session(key)} is invalid: "
        f"{exc.error_count()} error(s): {_short_errors(exc)}",
        key=key,
    )


def _check_version(raw: Any, key: Any) -> int:
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
    return version


# -- version 4: a head and rows ------------------------------------------------------

FROM_VERSION = "from_version"
"""Key of a joined document read from a document of an earlier version (not stored as
rows yet): writes that change only head fields keep that document's form."""

JOINED_ONLY = frozenset(
    {"messages", "loaded", "rows", "summary", "last", "keys", "started_with", FROM_VERSION}
)
"""Keys of a joined document that ``Context`` does not have (``keys``: the idempotency
keys of the newest turns; ``started_with``: what a start with a chosen key sent)."""

HEAD_FIELDS = frozenset(
    {
        "version",
        "created_at",
        "updated_at",
        "turns",
        "usage",
        "cost",
        "instruction_args",
        "system",
        "path",
        "next",
        "summary",
        "last",
        "pending",
        "claimed_at",
        "rows",
        "keys",
        "started_with",
    }
)

_SUMMARY_PREFIX = '[{"role":"system"'


def _validatable(joined: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in joined.items() if k not in JOINED_ONLY or k == "messages"}


def check_joined(joined: dict[str, Any]) -> None:
    """Validate a joined document as ``load_context`` does, without building the
    ``Context``: the head's fields with ``Context`` itself, the messages in their stored
    (compact) form with a schema of plain dicts that accepts exactly what ``Message``
    accepts once ``load_context`` has filled the compact form in. Raises
    ``ValidationError`` (``load_context`` then gives the ``ContextError`` that names it).
    """
    head = _validatable(joined)
    messages = head.pop("messages", None)
    head["messages"] = []
    Context.model_validate(head)
    _messages_checker().validate_python(messages)


_CHECKER: list[Any] = []


def _messages_checker() -> Any:
    """A ``TypeAdapter`` of the stored messages, built on first use (not on import)."""
    if not _CHECKER:
        from typing import NotRequired, Required

        from pydantic import TypeAdapter
        from typing_extensions import TypedDict

        forbid = ConfigDict(extra="forbid")

        class UsageData(TypedDict, total=False):
            __pydantic_config__ = forbid  # type: ignore[misc]
            prompt_tokens: int
            completion_tokens: int
            total_tokens: int

        class SummaryData(TypedDict):
            __pydantic_config__ = forbid  # type: ignore[misc]
            covers: Annotated[int, Field(ge=0)]

        # ``created_at`` may be left out (or null): it is then the previous message's,
        # the first one's the document's (validated with the head).
        class MetaData(TypedDict, total=False):
            __pydantic_config__ = forbid  # type: ignore[misc]
            created_at: datetime | None
            input: dict[str, Any] | None
            model: str | None
            usage: UsageData | None
            cost: float | None
            finish_reason: str | None
            attempts: int | None
            raw_arguments: dict[str, str] | None
            interrupted: bool | None
            summary: SummaryData | None

        class MessageData(TypedDict, total=False):
            __pydantic_config__ = forbid  # type: ignore[misc]
            role: Required[Literal["system", "user", "assistant", "tool"]]
            content: str | list[Any] | None
            name: str | None
            tool_calls: list[dict[str, Any]] | None
            tool_call_id: str | None
            meta: NotRequired[MetaData | None]
            id: str | None
            parent: str | None

        _CHECKER.append(TypeAdapter(list[MessageData]))
    return _CHECKER[0]


def is_head(raw: Any) -> bool:
    """Whether ``raw`` is a stored version-4 head (not a joined document)."""
    return isinstance(raw, dict) and raw.get("version") == 4 and "messages" not in raw


def _compact(message: dict[str, Any]) -> dict[str, Any]:
    if "id" in message or "parent" in message:
        return {k: v for k, v in message.items() if k != "id" and k != "parent"}
    return message


def dump_rows_data(messages: list[dict[str, Any]]) -> str:
    """A row's ``data``: its messages as compact JSON text."""
    return json.dumps(messages, ensure_ascii=False, separators=(",", ":"))


def _parsed(data: Any) -> list[Any]:
    if isinstance(data, str | bytes | bytearray):
        data = json.loads(data)
    if not isinstance(data, list):
        raise ValueError(
            f"a history row's data is not a list of messages (got {type(data).__name__})"
        )
    return data


def _loads(text: str) -> Any:
    """``json.loads``, by pydantic-core's parser (about twice as fast on a long
    history); what it refuses (a lone surrogate escape, which ``json.loads`` reads,
    or malformed text) goes to ``json.loads``, so the result and the errors are its."""
    try:
        return from_json(text, cache_strings="keys")
    except ValueError:
        return json.loads(text)


def _is_summary_message(message: Any) -> bool:
    if not isinstance(message, dict) or message.get("role") != "system":
        return False
    meta = message.get("meta")
    return isinstance(meta, dict) and meta.get("summary") is not None


def seq_range(head: Any, history: Any) -> tuple[int, int] | None:
    """The seqs ``first..last`` a read of ``history`` needs with this head (``None``:
    no row).

    ``history``: ``None`` (the head only), an int n (the newest n turns of the path),
    ``"after_summary"`` (the path after the head summary's anchor), ``"path"`` (the
    whole active path, and the summaries anchored on it), ``"all"`` (every row), or
    ``("page", seq, n)``: the newest n turns of the path up to turn ``seq`` (``None``:
    the newest), ``("row", seq)``: that row alone (a replayed turn), or
    ``("from", seq, n)``: the path from n turns before turn ``seq`` to
    its end (an edit of that turn under a window of n turns).
    """
    if history is None or not is_head(head):
        return None
    path = head.get("path") or []
    newest = int(head.get("next", 1)) - 1
    if not _paths.valid(path):
        return None  # refused when the document is validated
    if history == "all":
        return (1, newest) if newest >= 1 else None
    if isinstance(history, tuple) and history[0] == "row":
        return (history[1], history[1]) if 1 <= history[1] <= newest else None
    if not path:
        return None
    if isinstance(history, tuple) and history[0] == "from":
        _, at, n = history
        where = _paths.position(path, at)
        if where is None:
            return None
        first = _paths.last_seqs(path, _paths.count(path) - max(where - n, 0))[0]
        return first, newest
    if isinstance(history, tuple):
        _, upto, n = history
        if upto is not None:
            if not _paths.contains(path, upto):
                return None
            path = _paths.truncate_after(path, upto)
        wanted = _paths.last_seqs(path, n) if n > 0 else []
        return (wanted[0], wanted[-1]) if wanted else None
    if history == "path":
        return int(path[0][0]), newest
    if history == "after_summary":
        summary = head.get("summary")
        where = None
        if isinstance(summary, dict):
            where = _paths.position(path, summary.get("anchor"))  # type: ignore[arg-type]
        if where is None:
            return int(path[0][0]), newest
        after = _paths.last_seqs(path, _paths.count(path) - where - 1)
        return (after[0], newest) if after else None
    if isinstance(history, int) and not isinstance(history, bool):
        wanted = _paths.last_seqs(path, max(history, 0))
        return (wanted[0], newest) if wanted else None
    raise ValueError(f"unknown history read {history!r}")


def joined_document(raw: Any, rows: Any = None, *, key: Any = None) -> dict[str, Any]:
    """The joined document a turn works on, from a stored document of any version.

    A version-4 head is joined with the ``rows`` read with it (each ``(seq, parent,
    data)``, ``data`` JSON text or a list) or, in the single-column layout, with its
    own ``rows``: ``messages`` holds the system message and the loaded turns of the
    path, each message with its ``id`` and ``parent``, each summary right after the
    turn it is anchored at (the head's summary first when its anchor is not loaded);
    ``loaded`` says how many turns of the path were not loaded (0: complete).
    A document of an earlier version is upgraded (no ids, an empty path). A joined
    document is returned as it is. Not validated: ``load_context`` validates.
    """
    version = _check_version(raw, key)
    if version == 4 and "messages" in raw:
        return cast("dict[str, Any]", raw)
    if version < 4:
        try:
            doc: dict[str, Any] = raw
            while version < CONTEXT_VERSION:
                doc = _UPGRADES[version](doc)
                version += 1
        except ValidationError as exc:
            raise _invalid(exc, key) from exc
        return doc
    try:
        return _join(raw, rows)
    except (ValueError, TypeError, KeyError) as exc:
        raise ContextError(
            f"stored context{_of_session(key)} is invalid: {type(exc).__name__}: {exc}", key=key
        ) from exc


def _loaded_turns(path: list[list[int]], by_seq: Mapping[int, Any]) -> list[int]:
    """The newest contiguous run of the path's turns that are in ``by_seq``, oldest first."""
    if not by_seq:
        return []
    found: list[int] = []
    for first, end in reversed(path):
        for seq in range(end, first - 1, -1):
            if seq in by_seq:
                found.append(seq)
            elif found:
                found.reverse()
                return found
    found.reverse()
    return found


def _join(head: dict[str, Any], rows: Any) -> dict[str, Any]:
    path = head.get("path") or []
    if not _paths.valid(path):
        raise ValueError(f"path is not a list of [first, last] runs: {path!r}")
    if "rows" in head:  # the single-column layout: the head holds every row
        rows = head["rows"] or ()
    elif rows is None:
        rows = ()
    newest = int(head.get("next", 1))
    by_seq: dict[int, tuple[Any, Any]] = {}
    for row in rows:
        seq, parent, data = row
        if seq < newest:
            by_seq[seq] = (parent, data)
    # The loaded turns: the newest run of the path's turns that were read (all of
    # the path's end for a turn's read; a page of it for ``get_messages``), found by
    # walking the path's runs from its end: a read costs what it read, not the path.
    loaded = _loaded_turns(path, by_seq)
    first = _paths.position(path, loaded[0]) if loaded else _paths.count(path)
    assert first is not None
    loaded_set = set(loaded)
    # Summaries anchored at a loaded turn: the head's, and any other read with it.
    anchored: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    summary = head.get("summary")
    front: dict[str, Any] | None = None
    if summary is not None:
        if not isinstance(summary, dict):
            raise ValueError("summary is not an object")
        anchor, seq = summary.get("anchor"), int(summary["seq"])
        message = {**summary["message"], "id": f"{seq}.0"}
        if anchor in loaded_set:
            anchored.setdefault(anchor, []).append((seq, message))
        else:
            front = message
    for seq, (parent, data) in by_seq.items():
        if seq in loaded_set or parent not in loaded_set or _paths.contains(path, seq):
            continue
        if summary is not None and seq == summary.get("seq"):
            continue
        if isinstance(data, str) and not data.startswith(_SUMMARY_PREFIX):
            continue
        parsed = _parsed(data)
        if len(parsed) == 1 and _is_summary_message(parsed[0]):
            anchored.setdefault(parent, []).append((seq, {**parsed[0], "id": f"{seq}.0"}))
    joined = {k: v for k, v in head.items() if k != "system"}
    messages: list[dict[str, Any]] = []
    system = head.get("system")
    if system is not None:
        messages.append({**system, "id": "0.0"})
    if front is not None:
        messages.append(front)
    last_of: dict[int, str] = {}
    texts = [by_seq[seq][1] for seq in loaded]
    # One parse of every row read, rather than one per row; the messages it makes
    # are this read's own, so they take their ids in place (rows kept in the head,
    # in the single-column layout, are copied instead).
    own = bool(texts) and all(isinstance(text, str) for text in texts)
    datas: list[Any] = _loads("[" + ",".join(texts) + "]") if own else texts
    for seq, data in zip(loaded, datas, strict=True):
        parent = by_seq[seq][0]
        parsed = data if own and isinstance(data, list) else _parsed(data)
        previous = last_of.get(parent) if parent is not None else None
        for index, message in enumerate(parsed):
            if not isinstance(message, dict):
                raise ValueError(f"row {seq} holds a message that is not an object")
            ident = f"{seq}.{index}"
            entry = message if own else dict(message)
            entry["id"] = ident
            if previous is not None:
                entry["parent"] = previous
            messages.append(entry)
            previous = ident
        if previous is not None:
            last_of[seq] = previous
        for _summary_seq, message in sorted(anchored.get(seq, ()), key=lambda item: item[0]):
            if previous is not None:
                message = {**message, "parent": previous}
            messages.append(message)
    joined["messages"] = messages
    joined["path"] = path
    joined["next"] = newest
    joined["loaded"] = first
    return joined


def split_document(doc: dict[str, Any], *, inline: bool) -> tuple[dict[str, Any], list[Any]]:
    """The head and the new rows that store a joined document.

    Messages without an ``id`` are new: grouped into turn rows (a user message starts
    one; leading other messages of an older document form one of their own), each
    given the next seq, its parent the path's previous seq, and appended to the path;
    a new summary message becomes a summary row anchored at the row before it, and the
    head's ``summary``. The system message goes into the head. ``inline``: the
    single-column layout, where the head keeps every row (``rows``) and no row is
    returned. Rows are ``(seq, parent, data)`` with ``data`` compact JSON text.
    """
    head, rows, _ = split(doc, inline=inline)
    return head, rows


def split(doc: dict[str, Any], *, inline: bool) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """``split_document``, and the joined document as stored (every message with its id)."""
    path: list[list[int]] = [list(run) for run in doc.get("path") or []]
    next_seq = int(doc.get("next", 1))
    messages = doc.get("messages") or []
    new_rows: list[tuple[int, int | None, list[dict[str, Any]]]] = []
    after: list[dict[str, Any]] = []
    system: dict[str, Any] | None = None
    start = 0
    if messages and messages[0].get("role") == "system" and not _is_summary_message(messages[0]):
        system = _compact(messages[0])
        after.append({**system, "id": "0.0"})
        start = 1
    current: list[dict[str, Any]] | None = None
    current_seq = 0
    row_of_previous: int | None = None  # the turn row of the message before
    previous_id: str | None = None
    summary = doc.get("summary")
    newest_summary: dict[str, Any] | None = None
    for message in messages[start:]:
        ident = message.get("id")
        if ident is not None:
            current = None
            seq = int(str(ident).split(".", 1)[0])
            if _is_summary_message(message):
                if isinstance(summary, dict) and summary.get("seq") == seq:
                    newest_summary = summary
                elif row_of_previous is not None:
                    newest_summary = {
                        "seq": seq,
                        "anchor": row_of_previous,
                        "message": _compact(message),
                    }
            else:
                row_of_previous = seq
            after.append(message)
            previous_id = str(ident)
            continue
        stored = _compact(message)
        if _is_summary_message(message):
            current = None
            seq = next_seq
            next_seq += 1
            new_rows.append((seq, row_of_previous, [stored]))
            newest_summary = {"seq": seq, "anchor": row_of_previous, "message": stored}
            entry = {**stored, "id": f"{seq}.0"}
        elif current is None or message.get("role") == "user":
            current_seq = next_seq
            next_seq += 1
            current = [stored]
            new_rows.append((current_seq, _paths.last(path), current))
            path = _paths.append(path, current_seq)
            row_of_previous = current_seq
            entry = {**stored, "id": f"{current_seq}.0"}
        else:
            current.append(stored)
            entry = {**stored, "id": f"{current_seq}.{len(current) - 1}"}
        if previous_id is not None:
            entry["parent"] = previous_id
        after.append(entry)
        previous_id = entry["id"]
    head: dict[str, Any] = {"version": CONTEXT_VERSION}
    for name, value in doc.items():
        if name in HEAD_FIELDS and name not in ("version", "path", "next", "summary", "rows"):
            head[name] = value
    if system is not None:
        head["system"] = system
    else:
        head.pop("system", None)
    head["path"] = path
    head["next"] = next_seq
    if newest_summary is not None:
        head["summary"] = newest_summary
    last = next((m for m in reversed(after) if not _is_summary_message(m)), None)
    if last is not None and last.get("id") != "0.0":
        if last.get("role") == "assistant":
            head["last"] = _compact(last)
        else:
            head.pop("last", None)
    if inline:
        stored_rows = list(doc.get("rows") or [])
        stored_rows.extend([seq, parent, data] for seq, parent, data in new_rows)
        head["rows"] = stored_rows
        rows: list[Any] = []
    else:
        rows = [(seq, parent, dump_rows_data(data)) for seq, parent, data in new_rows]
    joined = {k: v for k, v in doc.items() if k != FROM_VERSION}
    joined.update(
        {k: v for k, v in head.items() if k not in ("system",)},
    )
    joined["messages"] = after
    return head, rows, joined


def older_form(joined: dict[str, Any]) -> dict[str, Any]:
    """A joined document read from an earlier version, in version 3's stored form (a
    write that changes only head fields keeps a document not stored as rows yet)."""
    doc = {k: v for k, v in joined.items() if k not in JOINED_ONLY and k not in ("path", "next")}
    doc["version"] = 3
    doc["messages"] = [_compact(m) for m in joined.get("messages") or ()]
    return doc


def last_message(raw: Any) -> Message | None:
    """The final assistant message of the newest turn, from a stored head (or any
    document), without reading rows; ``None`` if there is none."""
    if is_head(raw):
        last = raw.get("last")
        if last is None:
            return None
        created = raw.get("updated_at")
        expanded = _expand_messages([last], created)[0]
        return Message.model_validate(expanded)
    return load_context(raw).last_assistant


def _short_errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in error["loc"])
        parts.append(f"{loc}: {error['msg']}")
    return "; ".join(parts)
