"""The check a turn runs on what it reads is ``load_context``'s, only cheaper.

A turn validates the joined document it read without building a ``Context``
(``context.check_joined``: the messages in their compact form, as plain dicts). It
must refuse exactly what ``load_context`` refuses, and a corrupt stored row is still a
``ContextError`` naming the session, with nothing written.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import Agent, AgentSessionMixin, ContextError
from agent_session import context as _context
from agent_session.testing import TestModel

DATA = Path(__file__).parent / "data"
AT = "2026-01-01T00:00:00Z"


def _joined(name: str) -> dict[str, Any]:
    raw = json.loads((DATA / name).read_text(encoding="utf-8"))
    rows = [(seq, parent, _context.dump_rows_data(data)) for seq, parent, data in raw["rows"]]
    return _context.joined_document(raw["head"], rows)


def _refused_by_check(joined: dict[str, Any]) -> bool:
    try:
        _context.check_joined(joined)
    except ValidationError:
        return True
    return False


def _refused_by_load(joined: dict[str, Any]) -> bool:
    try:
        _context.load_context(joined)
    except ContextError:
        return True
    return False


# Each changes the last message of a stored conversation (an assistant reply) or
# adds one after it; about half are valid.
CHANGES: dict[str, Any] = {
    "unchanged": {},
    "no_meta": {"meta": None},
    "meta_null": {"meta": {"created_at": None}},
    "meta_not_an_object": {"meta": [1]},
    "bad_created_at": {"meta": {"created_at": "yesterday"}},
    "unknown_meta_key": {"meta": {"mood": 1}},
    "unknown_message_key": {"mood": 1},
    "wrong_role": {"role": "robot"},
    "content_parts": {"content": [{"type": "text", "text": "hi"}]},
    "content_number": {"content": 5},
    "usage_compact": {"meta": {"usage": {"prompt_tokens": 2, "completion_tokens": 3}}},
    "usage_total": {"meta": {"usage": {"prompt_tokens": 2, "total_tokens": 9}}},
    "usage_bad": {"meta": {"usage": {"prompt_tokens": "many"}}},
    "usage_unknown_key": {"meta": {"usage": {"tokens": 3}}},
    "usage_not_an_object": {"meta": {"usage": 5}},
    "attempts": {"meta": {"attempts": 2}},
    "attempts_bad": {"meta": {"attempts": "twice"}},
    "cost_bad": {"meta": {"cost": "cheap"}},
    "raw_arguments": {"meta": {"raw_arguments": {"call_1": "{oops"}}},
    "raw_arguments_bad": {"meta": {"raw_arguments": {"call_1": 5}}},
    "input": {"meta": {"input": {"message": "hi"}}},
    "input_bad": {"meta": {"input": "hi"}},
    "interrupted": {"meta": {"interrupted": True}},
    "summary": {"role": "system", "meta": {"summary": {"covers": 2}}},
    "summary_negative": {"role": "system", "meta": {"summary": {"covers": -1}}},
    "summary_unknown_key": {"role": "system", "meta": {"summary": {"covers": 1, "x": 1}}},
    "tool_calls": {"tool_calls": [{"id": "c", "type": "function"}]},
    "tool_calls_bad": {"tool_calls": ["c"]},
    "tool_call_id_bad": {"tool_call_id": 3},
    "name_bad": {"name": ["x"]},
    "id_bad": {"id": 3},
    "parent_null": {"parent": None},
    "message_not_an_object": "hello",
}


def _changed(joined: dict[str, Any], change: Any, *, append: bool) -> dict[str, Any]:
    joined = copy.deepcopy(joined)
    messages = joined["messages"]
    if not isinstance(change, dict):
        messages.append(change)
        return joined
    message = {"role": "assistant", "content": "x"} if append else messages[-1]
    for key, value in change.items():
        if key == "meta" and isinstance(value, dict) and isinstance(message.get("meta"), dict):
            message["meta"] = {**message["meta"], **value}
        else:
            message[key] = value
    if append:
        messages.append(message)
    return joined


@pytest.mark.parametrize("append", [False, True], ids=["changed", "appended"])
@pytest.mark.parametrize("change", list(CHANGES.values()), ids=list(CHANGES))
@pytest.mark.parametrize("name", ["context_v4_plain_text.json", "context_v4_tool_calls.json"])
def test_the_check_refuses_what_load_context_refuses(name: str, change: Any, append: bool) -> None:
    joined = _changed(_joined(name), change, append=append)
    assert _refused_by_check(joined) == _refused_by_load(joined)


def test_the_changes_hold_valid_and_invalid_documents() -> None:
    outcomes = {
        _refused_by_load(_changed(_joined("context_v4_plain_text.json"), change, append=False))
        for change in CHANGES.values()
    }
    assert outcomes == {True, False}


def test_a_document_without_created_at_is_refused_by_the_check() -> None:
    joined = _joined("context_v4_plain_text.json")
    del joined["created_at"]
    assert _refused_by_check(joined) and _refused_by_load(joined)


class Base(DeclarativeBase):
    pass


class CheckedChat(AgentSessionMixin, Base):
    __tablename__ = "checked_chats"
    __agent__ = Agent(TestModel(text="fine"), instruction="You help.")
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


def test_a_turn_on_a_corrupt_history_row_is_a_context_error_and_writes_nothing() -> None:
    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    maker = sessionmaker(engine)
    chat = CheckedChat.start_session(maker, "hi")
    CheckedChat.continue_session(maker, chat.id, "again")
    history = Base.metadata.tables["checked_chats_history"]
    bad = json.dumps([{"role": "user", "content": "hi", "meta": {"created_at": "yesterday"}}])
    with engine.begin() as connection:
        connection.execute(sa.update(history).where(history.c.seq == 1).values(data=bad))
        before = connection.execute(sa.select(CheckedChat.__table__)).all()
        rows_before = connection.execute(sa.select(history)).all()

    with pytest.raises(ContextError) as info:
        CheckedChat.continue_session(maker, chat.id, "once more")

    assert info.value.key == chat.id
    assert f"session {chat.id}" in str(info.value) and "created_at" in str(info.value)
    with engine.connect() as connection:
        assert connection.execute(sa.select(CheckedChat.__table__)).all() == before
        assert connection.execute(sa.select(history)).all() == rows_before


@pytest.mark.parametrize(
    "text",
    ['[{"a":1,"a":2}]', "[123456789012345678901234567890, 1e400, -0.0, 0.1]", '["\\ud800"]'],
)
def test_rows_are_parsed_as_json_loads_parses_them(text: str) -> None:
    assert repr(_context._loads(text)) == repr(json.loads(text))


def test_malformed_row_text_is_json_loads_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        _context._loads('[{"role": "user",')


def test_a_row_with_a_lone_surrogate_escape_is_read() -> None:
    head = {"version": 4, "created_at": AT, "updated_at": AT, "path": [[1, 1]], "next": 2}
    message = {"role": "user", "content": "\ud800", "meta": {"created_at": AT}}
    rows = [(1, None, json.dumps([message]))]  # the escape, as ``json.dumps`` writes it
    joined = _context.joined_document(head, rows)
    assert joined["messages"][0]["content"] == "\ud800"
