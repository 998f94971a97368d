"""The tool-call invariant, checked on everything the suite stores and sends.

A stored history (``messages``) never holds a tool call without its result or a
result without its call; a paused turn's unresolved calls are exactly its pending
approvals; and no request to a model carries an unresolved call. ``conftest.py``
records every context document the stores write (``Insert`` and ``Swap`` through
``SyncStore``/``AsyncStore``) and every request a model double or ``LiteLLMModel``
receives, and checks each test's records when the test ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["check_document", "check_history", "check_row"]


def check_row(data: Any, *, where: str) -> None:
    """A format-4 history row: a whole turn (its calls answered, ending with a reply
    without calls) or one summary message."""
    messages = json.loads(data) if isinstance(data, str) else data
    if not isinstance(messages, list) or not messages:
        raise AssertionError(f"{where}: a history row that is not a list of messages")
    if len(messages) == 1 and messages[0].get("role") == "system":
        return  # a summary (or the leading system part of an older document)
    check_history(messages, where=where)
    last = messages[-1]
    if last.get("role") == "assistant" and _calls(last):
        raise AssertionError(f"{where}: a turn row that ends with unanswered calls")


def _calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    calls = message.get("tool_calls") or []
    return [call for call in calls if isinstance(call, dict)]


def check_history(messages: Sequence[Any], *, open_ids: Iterable[str] = (), where: str) -> None:
    """Every call answered by one ``tool`` message right after its assistant message
    (except ``open_ids`` of the last one), every result answering a call, and every
    call's arguments a JSON object."""
    open_set = set(open_ids)
    index = 0
    while index < len(messages):
        message = messages[index]
        index += 1
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "tool":
            raise AssertionError(f"{where}: a tool result without its call: {message}")
        if role != "assistant" or not _calls(message):
            continue
        ids = []
        for call in _calls(message):
            arguments = call.get("function", {}).get("arguments")
            try:
                parsed = json.loads(arguments) if isinstance(arguments, str) else None
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise AssertionError(f"{where}: call arguments are not a JSON object: {call}")
            ids.append(call["id"])
        answered = []
        while index < len(messages) and messages[index].get("role") == "tool":
            answered.append(messages[index].get("tool_call_id"))
            index += 1
        last = index >= len(messages)
        expected = [i for i in ids if not (last and i in open_set)]
        if sorted(answered) != sorted(expected) or len(set(answered)) != len(answered):
            raise AssertionError(
                f"{where}: calls {ids} answered by {answered}"
                + (f" (pending: {sorted(open_set)})" if open_set else "")
            )


def check_document(document: Any, *, where: str) -> None:
    """A context document as the library wrote it (any version; a format-4 head, its
    inline rows, or a ``{"row": data}`` history row) keeps the invariant."""
    if not isinstance(document, dict):
        return
    if "row" in document:
        check_row(document["row"], where=where)
        return
    for seq, _, data in document.get("rows") or ():
        check_row(data, where=f"{where} inline row {seq}")
    check_history(document.get("messages") or [], where=f"{where} messages")
    pending = document.get("pending")
    if pending is None:
        return
    ids = [a["tool_call_id"] for a in pending["approvals"]]
    if not ids:
        raise AssertionError(f"{where}: a pending part with nothing to approve")
    turn = pending["messages"]
    if not turn or turn[0].get("role") != "user":
        raise AssertionError(f"{where}: a pending part that does not start with the user message")
    last_calls = [m for m in turn if m.get("role") == "assistant" and _calls(m)]
    if not last_calls or not set(ids) <= {c["id"] for c in _calls(last_calls[-1])}:
        raise AssertionError(f"{where}: pending calls {ids} are not calls of the last reply")
    check_history(turn, open_ids=ids, where=f"{where} pending")
