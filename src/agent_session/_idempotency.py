"""Idempotency keys: a retried request is not a second turn (pure helpers, no I/O).

The head keeps the newest ``KEPT`` keys as ``[key, fingerprint, seq]``: the key the
client sent, a hash of what the call asked for (operation, input, approvals, message
id), and the seq of the turn row it produced (``None``: the turn paused for
approvals). They are written by the turn's own compare-and-swap, so a key is in the
head exactly when its turn is stored. A start with a primary key the client chose
keeps ``started_with``: ``[fingerprint, seq]``.

A call whose key the head holds is answered from the stored turn row (``replayed``)
without calling the model; the same key with another fingerprint is an
``IdempotencyKeyReusedError``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._text import encodable
from .context import Message, Usage, _expand_messages, _parsed, chat_messages
from .errors import IdempotencyKeyReusedError, InputValidationError, show_key
from .result import Result

if TYPE_CHECKING:
    from .agent import Agent

KEPT = 100
"""How many of the newest keys a session's head keeps."""

MAX_KEY_CHARS = 255
"""The longest key accepted (an ``Idempotency-Key`` header is a UUID, usually)."""


@dataclass(frozen=True)
class Idem:
    """This call's key and the fingerprint of what it asks for."""

    key: str
    fingerprint: str


class Replayed(Exception):
    """The head holds this call's key with this fingerprint: answer from ``seq`` (a
    signal inside a flow, never raised to a caller)."""

    def __init__(self, seq: int | None) -> None:
        super().__init__(seq)
        self.seq = seq


def checked_key(value: Any) -> str | None:
    """``idempotency_key`` as given (``None``: no key); anything but a short,
    encodable, non-empty string is an ``InputValidationError``."""
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_KEY_CHARS
        or not encodable(value)
    ):
        raise InputValidationError(
            f"idempotency_key must be a string of 1 to {MAX_KEY_CHARS} characters, "
            f"got {type(value).__name__ if not isinstance(value, str) else repr(value[:40])}",
            errors=[],
            source="idempotency_key",
        )
    return value


def fingerprint(operation: str, *parts: Any) -> str:
    """A hash of what a call asks for: its operation and its input (as JSON)."""
    text = json.dumps(
        [operation, *parts], sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def input_parts(turn_input: Any) -> list[Any]:
    """What a validated turn input sends: its text, and its JSON when the text does not
    give it back."""
    return [turn_input.content, turn_input.stored_input]


def approval_parts(approvals: Any) -> list[Any]:
    """Decisions as plain data: ``True``, ``False`` or ``["denied", reason]``."""
    if not isinstance(approvals, Mapping):
        return [repr(approvals)]
    decided = []
    for call_id, decision in approvals.items():
        if isinstance(decision, bool):
            decided.append([str(call_id), decision])
        else:
            decided.append([str(call_id), ["denied", getattr(decision, "reason", None)]])
    return sorted(decided, key=lambda item: item[0])


def check(document: Mapping[str, Any] | None, idem: Idem | None, key: Any) -> None:
    """Raise ``Replayed`` when the head holds this call's key, and
    ``IdempotencyKeyReusedError`` when it holds it with another fingerprint."""
    if idem is None or document is None:
        return
    for entry in document.get("keys") or ():
        if isinstance(entry, list) and entry and entry[0] == idem.key:
            if entry[1] != idem.fingerprint:
                raise IdempotencyKeyReusedError(
                    f"session {show_key(key)}: idempotency key {idem.key[:40]!r} was used by a "
                    "request with another input; nothing was run",
                    key=key,
                    idempotency_key=idem.key,
                )
            raise Replayed(entry[2] if len(entry) > 2 else None)


def recorded(head: dict[str, Any], idem: Idem, seq: int | None) -> list[Any]:
    """The head's keys with this call's added (the oldest dropped past ``KEPT``)."""
    kept = [entry for entry in head.get("keys") or () if entry and entry[0] != idem.key]
    kept.append([idem.key, idem.fingerprint, seq])
    return kept[-KEPT:]


def produced_seq(joined: Mapping[str, Any]) -> int | None:
    """The seq of the turn row a write stored (``None``: the turn paused)."""
    if joined.get("pending") is not None:
        return None
    path = joined.get("path") or []
    return int(path[-1][1]) if path else None


def started(document: Mapping[str, Any] | None, fp: str, key: Any) -> int | None:
    """A start retried with its chosen primary key: the seq of its first turn when
    the stored start sent the same input; else ``IdempotencyKeyReusedError``."""
    stored = None if document is None else document.get("started_with")
    if not isinstance(stored, list) or not stored or stored[0] != fp:
        raise IdempotencyKeyReusedError(
            f"session {show_key(key)} already exists and was not started with this input; "
            "nothing was run",
            key=key,
        )
    seq = stored[1] if len(stored) > 1 else None
    return seq if isinstance(seq, int) else None


def replayed(agent: Agent[Any], head: Mapping[str, Any], rows: Any, seq: int) -> Result[Any] | None:
    """The result of the stored turn ``seq``, rebuilt from its row (``None`` if that
    row was not found, or holds no reply)."""
    if rows is None:
        rows = head.get("rows") or ()
    data = next((row[2] for row in rows if row[0] == seq), None)
    if data is None:
        return None
    expanded = _expand_messages(list(_parsed(data)), head.get("created_at"))
    messages = [Message.model_validate(message) for message in expanded]
    final = next((m for m in reversed(messages) if m.role == "assistant"), None)
    user = messages[0] if messages and messages[0].role == "user" else None
    if final is None or user is None:
        return None
    meta = final.meta
    sent = user.parse_input(agent)
    if sent is None:
        return None
    output = None if meta.interrupted else final.parse_output(agent)
    stored = [m.model_dump(mode="json", exclude_none=True) for m in messages]
    return Result(
        output=output,
        text=final.content if isinstance(final.content, str) else "",
        messages=chat_messages(stored),
        usage=meta.usage or Usage(),
        cost=meta.cost,
        model=meta.model or "",
        finish_reason=meta.finish_reason,
        attempts=meta.attempts or 1,
        duration_s=0.0,
        input=sent,
        stored_messages=stored,
        interrupted=bool(meta.interrupted),
    )
