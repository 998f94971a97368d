"""The stored context format: golden documents and ``load_context`` errors.

The files in ``tests/data/context_v1_*.json`` are documents as version 1 writes
them. They are the compatibility promise: every later release must read every
earlier version, so these files are never edited, only added to.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from agent_session import (
    CONTEXT_VERSION,
    Agent,
    AgentSessionError,
    Context,
    ContextError,
    Message,
    Usage,
    _turn,
)
from agent_session.context import load_context
from agent_session.testing import TestModel

DATA = Path(__file__).parent / "data"
GOLDEN = sorted(DATA.glob("context_v1_*.json"))


def _golden(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DATA / name).read_text(encoding="utf-8"))
    return document


def _minimal() -> dict[str, Any]:
    return {
        "version": 1,
        "messages": [
            {"role": "user", "content": "hi", "meta": {"created_at": "2026-01-01T00:00:00Z"}},
        ],
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }


# -- golden documents ----------------------------------------------------------


def test_golden_documents_are_present() -> None:
    names = {path.name for path in GOLDEN}
    assert {
        "context_v1_plain_text.json",
        "context_v1_structured.json",
        "context_v1_tool_calls.json",
    } <= names


@pytest.mark.parametrize("path", GOLDEN, ids=lambda path: path.stem)
def test_every_golden_document_loads(path: Path) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    before = copy.deepcopy(raw)

    context = load_context(raw, key=path.stem)

    assert isinstance(context, Context)
    assert raw == before, "load_context must not modify the stored document"
    assert context.version == CONTEXT_VERSION == 1
    assert context.messages
    assert context.created_at.tzinfo is not None
    assert context.updated_at >= context.created_at
    # Re-serialising what was read gives a document that reads the same.
    again = load_context(context.model_dump(mode="json"))
    assert again == context


@pytest.mark.parametrize("path", GOLDEN, ids=lambda path: path.stem)
def test_golden_usage_totals_match_the_assistant_messages(path: Path) -> None:
    context = load_context(json.loads(path.read_text(encoding="utf-8")))
    per_turn = [m.meta.usage for m in context.messages if m.meta.usage is not None]
    assert sum(per_turn, Usage()) == context.usage


@pytest.mark.parametrize("path", GOLDEN, ids=lambda path: path.stem)
def test_chat_messages_strip_meta_and_keep_the_chat_fields(path: Path) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    context = load_context(raw)

    chat = context.chat_messages()

    assert len(chat) == len(raw["messages"])
    for sent, stored in zip(chat, raw["messages"], strict=True):
        assert "meta" not in sent
        expected = {k: v for k, v in stored.items() if k != "meta" and v is not None}
        assert sent == expected
    json.dumps(chat)  # plain JSON, ready to send


def test_plain_text_golden_document() -> None:
    context = load_context(_golden("context_v1_plain_text.json"))

    assert context.system is not None
    assert context.system.startswith("You are a friendly support assistant for Acme Hosting")
    assert context.turns == 2
    assert context.instruction_args == {"company_name": "Acme Hosting", "tone": "friendly"}
    assert context.cost == pytest.approx(0.00003945)
    assert [m.role for m in context.messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    last = context.last_assistant
    assert last is not None
    assert last.meta.output == last.content
    assert last.meta.model == "gpt-4o-mini-2024-07-18"
    assert context.created_at == datetime(2026, 3, 2, 9, 14, 5, 120331, tzinfo=UTC)


class Stop(BaseModel):
    name: str
    hours: float
    tags: list[str]


class Day(BaseModel):
    day: int
    stops: list[Stop]


class Budget(BaseModel):
    amount: float
    currency: str


class Plan(BaseModel):
    title: str
    days: list[Day]
    budget: Budget
    notes: str | None = None


def test_structured_golden_document_keeps_non_ascii_and_nested_output() -> None:
    context = load_context(_golden("context_v1_structured.json"))

    assert context.cost is None
    assert context.system == "Du bist ein Reiseplaner für Köln. Antworte auf Deutsch. 🧳"
    first, last = (m for m in context.messages if m.role == "assistant")
    assert first.meta.attempts == 2
    assert first.meta.cost is None
    plan = Plan.model_validate(first.meta.output)
    assert plan.title == "Zwei Tage in Köln 🏰"
    assert plan.days[0].stops[1].tags == ["Kölsch 🍺"]
    assert Plan.model_validate(last.meta.output).days[0].stops[0].name == "築地場外市場"
    user = context.messages[1]
    assert user.meta.input == {"city": "Köln", "days": 2, "interests": ["Dom", "Kölsch 🍺"]}
    assert json.loads(user.content) == user.meta.input  # type: ignore[arg-type]


def test_structured_golden_output_matches_what_the_agent_would_parse() -> None:
    agent = Agent(TestModel(), output_schema=Plan)
    context = load_context(_golden("context_v1_structured.json"))
    for message in context.messages:
        if message.role == "assistant":
            assert isinstance(message.content, str)
            parsed = agent.parse_output(message.content)
            assert parsed == agent.output_from_json(message.meta.output)


def test_tool_calls_golden_document() -> None:
    context = load_context(_golden("context_v1_tool_calls.json"))

    call = context.messages[2]
    assert call.role == "assistant"
    assert call.content is None
    assert call.tool_calls is not None
    assert call.tool_calls[0]["function"]["name"] == "get_order"
    assert call.meta.finish_reason == "tool_calls"
    tool = context.messages[3]
    assert tool.role == "tool"
    assert tool.tool_call_id == "call_7QpX2"
    assert tool.name == "get_order"

    chat = context.chat_messages()
    assert chat[2] == {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_7QpX2",
                "type": "function",
                "function": {"name": "get_order", "arguments": '{"order_id": 1042}'},
            }
        ],
    }
    assert chat[3]["tool_call_id"] == "call_7QpX2"
    assert context.last_assistant is context.messages[-1]


@pytest.mark.parametrize("path", GOLDEN, ids=lambda path: path.stem)
def test_a_turn_continues_every_golden_document(path: Path) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    before = copy.deepcopy(raw)
    load_context(raw)
    model = TestModel(replies=["Noted."], cost=0.5)
    agent = Agent(model)

    turn_input = _turn.validate_input(agent, "One more question 🙂")
    plan = _turn.plan_next_turn(raw, turn_input)
    result = _turn.drive(_turn.model_flow(agent, plan, False), model.complete)
    document = _turn.next_document(plan, result, raw)

    context = load_context(document)
    assert raw == before
    assert context.turns == before["turns"] + 1
    assert len(context.messages) == len(before["messages"]) + 2
    assert context.created_at == load_context(before).created_at
    assert context.instruction_args == before.get("instruction_args")
    assert context.cost == pytest.approx((before["cost"] or 0.0) + 0.5)
    # What was sent is the stored history without meta, then the new message.
    sent = model.requests[0].messages
    assert sent[:-1] == [{k: v for k, v in m.items() if k != "meta"} for m in before["messages"]]
    assert sent[-1] == {"role": "user", "content": "One more question 🙂"}


# -- invalid documents -------------------------------------------------------------


def _without(key: str) -> dict[str, Any]:
    document = _minimal()
    del document[key]
    return document


def _with(**changes: Any) -> dict[str, Any]:
    document = _minimal()
    document.update(changes)
    return document


def _message(**changes: Any) -> dict[str, Any]:
    document = _minimal()
    document["messages"][0].update(changes)
    return document


def _message_without(key: str) -> dict[str, Any]:
    document = _minimal()
    del document["messages"][0][key]
    return document


INVALID: dict[str, Any] = {
    "none": None,
    "list": [_minimal()],
    "string": json.dumps(_minimal()),
    "missing_version": _without("version"),
    "version_0": _with(version=0),
    "version_negative": _with(version=-1),
    "version_2_newer": _with(version=2),
    "version_string": _with(version="1"),
    "version_bool": _with(version=True),
    "wrong_role": _message(role="robot"),
    "missing_meta": _message_without("meta"),
    "meta_without_created_at": _message(meta={}),
    "unknown_message_key": _message(mood="happy"),
    "unknown_meta_key": _message(meta={"created_at": "2026-01-01T00:00:00Z", "mood": 1}),
    "extra_unknown_key": _with(favourite_colour="blue"),
    "messages_not_a_list": _with(messages={"role": "user"}),
    "missing_messages": _without("messages"),
    "missing_created_at": _without("created_at"),
    "bad_timestamp": _with(updated_at="yesterday"),
    "negative_usage_type": _with(usage={"prompt_tokens": "many"}),
    "unknown_usage_key": _with(usage={"tokens": 3}),
}


@pytest.mark.parametrize("raw", list(INVALID.values()), ids=list(INVALID))
def test_invalid_documents_raise_context_error_naming_the_key(raw: Any) -> None:
    with pytest.raises(ContextError) as info:
        load_context(raw, key=4711)

    assert info.value.key == 4711
    assert "4711" in str(info.value)
    assert isinstance(info.value, AgentSessionError)


def test_none_and_lists_say_what_was_found() -> None:
    with pytest.raises(ContextError, match="NULL"):
        load_context(None, key="row-1")
    with pytest.raises(ContextError, match="list"):
        load_context([], key="row-1")


def test_a_newer_version_is_refused_not_guessed() -> None:
    with pytest.raises(ContextError, match="newer") as info:
        load_context(_with(version=CONTEXT_VERSION + 1), key="k")
    assert "version 2" in str(info.value)


def test_missing_or_bad_version_is_named() -> None:
    for raw in (_without("version"), _with(version=0)):
        with pytest.raises(ContextError, match="version"):
            load_context(raw, key="k")


def test_structural_errors_keep_the_validation_error_as_cause() -> None:
    with pytest.raises(ContextError, match=r"messages\.0\.role") as info:
        load_context(_message(role="robot"), key="k")
    assert isinstance(info.value.__cause__, ValidationError)

    with pytest.raises(ContextError, match=r"messages\.0\.meta") as info:
        load_context(_message_without("meta"), key="k")

    with pytest.raises(ContextError, match="favourite_colour"):
        load_context(_with(favourite_colour="blue"), key="k")


def test_the_key_defaults_to_none() -> None:
    with pytest.raises(ContextError) as info:
        load_context(None)
    assert info.value.key is None


# -- the models ------------------------------------------------------------------


def test_minimal_document_defaults() -> None:
    context = load_context(_minimal())
    assert context.usage == Usage()
    assert context.cost is None
    assert context.turns == 0
    assert context.instruction_args is None
    assert context.system is None
    assert context.last_assistant is None
    assert context.chat_messages() == [{"role": "user", "content": "hi"}]


def test_message_content_may_be_a_list_of_parts() -> None:
    parts = [{"type": "text", "text": "What is in this picture?"}]
    document = _message(content=parts)
    context = load_context(document)
    assert context.messages[0].content == parts
    assert context.chat_messages()[0]["content"] == parts


def test_usage_adds_up_and_is_frozen() -> None:
    total = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3) + Usage(
        prompt_tokens=10, completion_tokens=20, total_tokens=30
    )
    assert total == Usage(prompt_tokens=11, completion_tokens=22, total_tokens=33)
    with pytest.raises(ValidationError):
        total.prompt_tokens = 5  # type: ignore[misc]


def test_message_model_rejects_unknown_roles() -> None:
    with pytest.raises(ValidationError):
        Message.model_validate({"role": "robot", "meta": {"created_at": "2026-01-01T00:00:00Z"}})
