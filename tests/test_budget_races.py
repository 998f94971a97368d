"""Concurrent turns against a session budget: claimed before the model call, so they
cannot together spend more than one turn past it; a paid turn whose write lost still
counts in the session's totals.

Threads for sync drivers, asyncio tasks for async ones, on every database.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from agent_session import (
    BudgetExceededError,
    ModelResponse,
    SessionBusyError,
    StaleSessionError,
    Usage,
)
from support.databases import Database
from support.stress_worker import Harness, make_chat, token_of

TURNS = 20
PER_CALL = 10
"""Tokens each model call spends."""


def _reply(messages: list[dict[str, Any]], tokens: int = PER_CALL) -> ModelResponse:
    user = next(m for m in reversed(messages) if m["role"] == "user")
    text = json.dumps({"answer": f"echo:{token_of(str(user['content']))}"})
    return ModelResponse(text=text, usage=Usage(prompt_tokens=tokens, total_tokens=tokens))


def _spent(row: dict[str, Any]) -> int:
    usage = row["context"]["usage"]
    return int(usage.get("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"]))


async def _all_at_once(h: Harness, key: int, **kw: Any) -> list[Any]:
    """``TURNS`` turns on one session at once; their outcomes ("ok" or the error)."""
    outcomes: list[Any] = []

    async def turn(n: int) -> None:
        try:
            await h.cont(key, f"turn [w{n}]", **kw)
        except Exception as exc:
            outcomes.append(exc)
        else:
            outcomes.append("ok")

    if h.is_async:
        await asyncio.gather(*(turn(n) for n in range(TURNS)))
    else:
        threads = [threading.Thread(target=asyncio.run, args=(turn(n),)) for n in range(TURNS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert len(outcomes) == TURNS
    return outcomes


@pytest.mark.parametrize(
    ("status", "busy_timeout"),
    [(False, None), (False, 30.0), (True, 30.0)],
    ids=["no-status-no-wait", "no-status-wait", "status-wait"],
)
async def test_concurrent_turns_cannot_spend_past_the_budget(
    database: Database, status: bool, busy_timeout: float | None
) -> None:
    """A session at 42 of 60 tokens, 20 turns at once, 10 tokens a call: the turns run
    one at a time, so at most two calls are made (42 -> 52 -> 62), never twenty."""

    async def fn(messages: list[dict[str, Any]]) -> ModelResponse:
        if token_of(str(messages[-1]["content"])) == "t0":
            return _reply(messages, 42)
        await asyncio.sleep(0.2)  # long enough for every other turn to find this one running
        return _reply(messages)

    h = Harness(database, make_chat(fn, status=status, table="budget_race_chats"))
    chat = await h.start("hello [t0]")
    assert _spent(h.row(chat.id)) == 42

    outcomes = await _all_at_once(
        h, chat.id, max_session_tokens=60, busy_timeout=busy_timeout, conflict_retries=3
    )

    calls = len(h.model.requests) - 1
    done = outcomes.count("ok")
    assert 1 <= calls <= 2, outcomes
    assert done == calls  # every paid call is a stored turn
    refused = (BudgetExceededError, SessionBusyError, StaleSessionError)
    assert all(isinstance(o, refused) for o in outcomes if o != "ok"), outcomes
    if busy_timeout is not None and not database.name.startswith("sqlite"):
        # Waiting turns run one after the other until the budget refuses the rest.
        assert calls == 2
        assert sum(isinstance(o, BudgetExceededError) for o in outcomes) == TURNS - 2
    row = h.row(chat.id)
    assert _spent(row) == 42 + PER_CALL * calls
    assert len(h.tokens(chat.id)) == 1 + done
    assert "claimed_at" not in row["context"]
    if status:
        assert row["status"] == "completed"


async def test_a_turn_that_loses_its_write_still_counts(database: Database) -> None:
    """Another writer changes the row during the model call (as one that took over a
    claim left too long would): the turn's write loses, and its paid call is added
    to the session's totals before it is run again on the newer row."""
    h: Harness

    def fn(messages: list[dict[str, Any]]) -> ModelResponse:
        if token_of(str(messages[-1]["content"])) == "lose" and len(h.model.requests) == 2:
            row = h.row(key[0])
            assert row["context"]["claimed_at"]  # the turn claimed the session first
            h.update(key[0], context_revision=row["context_revision"] + 1)
        return _reply(messages, 42 if len(h.model.requests) == 1 else PER_CALL)

    key: list[int] = []
    h = Harness(database, make_chat(fn, table="budget_lost_chats"))
    chat = await h.start("hello [t0]")
    key.append(chat.id)

    with pytest.raises(StaleSessionError):
        await h.cont(chat.id, "turn [lose]", max_session_tokens=60, conflict_retries=0)
    row = h.row(chat.id)
    assert _spent(row) == 42 + PER_CALL  # the lost turn's call is counted
    assert h.tokens(chat.id) == ["t0"]  # and nothing else of it is stored
    assert "claimed_at" not in row["context"]

    # Run again on the newer row: it is charged once more, and stored.
    chat = await h.cont(chat.id, "turn [again]", max_session_tokens=70, conflict_retries=0)
    assert _spent(h.row(chat.id)) == 42 + 2 * PER_CALL
    assert h.tokens(chat.id) == ["t0", "again"]


async def test_a_refused_turn_leaves_the_row_as_it_was(database: Database) -> None:
    """A claimed turn that fails (here its model call) puts the row back exactly, its
    revision included; a spent budget refuses the turn before any write."""

    def fn(messages: list[dict[str, Any]]) -> ModelResponse:
        if token_of(str(messages[-1]["content"])) == "boom":
            raise RuntimeError("the model broke")
        return _reply(messages, 42)

    h = Harness(database, make_chat(fn, table="budget_refused_chats"))
    chat = await h.start("hello [t0]")
    before = h.row(chat.id)

    with pytest.raises(RuntimeError):
        await h.cont(chat.id, "turn [boom]", max_session_tokens=60)
    assert h.row(chat.id) == before
    with pytest.raises(BudgetExceededError):
        await h.cont(chat.id, "turn [more]", max_session_tokens=40)
    assert h.row(chat.id) == before
    assert len(h.model.requests) == 2
