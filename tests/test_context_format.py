"""The stored context format: golden documents, the upgrade and ``load_context`` errors.

The files in ``tests/data/context_v<N>_*.json`` are documents as version N writes
them. They are the compatibility promise: every later release must read every
earlier version, so these files are never edited, only added to. The version-2
files hold the same conversations as the version-1 ones, and the version-3 files
the same as the version-2 ones (plus ``context_v3_pending_approval.json``, a
session paused for an approval, and ``context_v3_interrupted.json``, a streamed reply
whose reader stopped early, stored with ``on_cancel="keep"``), so each upgrade is
checked against them.
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
    TextInput,
    Usage,
    _turn,
)
from agent_session import context as _context
from agent_session.context import load_context
from agent_session.history import SUMMARY_HEADER
from agent_session.testing import TestModel

DATA = Path(__file__).parent / "data"
GOLDEN_V1 = sorted(DATA.glob("context_v1_*.json"))
GOLDEN_V2 = sorted(DATA.glob("context_v2_*.json"))
GOLDEN_V3 = sorted(DATA.glob("context_v3_*.json"))
GOLDEN = GOLDEN_V1 + GOLDEN_V2 + GOLDEN_V3
KINDS = ["plain_text", "structured", "tool_calls"]


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


def _minimal_v2() -> dict[str, Any]:
    return {**_minimal(), "version": 2}


# -- golden documents ----------------------------------------------------------


def test_golden_documents_are_present() -> None:
    names = {path.name for path in GOLDEN}
    assert {f"context_v{v}_{kind}.json" for v in (1, 2, 3) for kind in KINDS} <= names
    assert "context_v3_pending_approval.json" in names
    assert "context_v3_interrupted.json" in names


@pytest.mark.parametrize("path", GOLDEN, ids=lambda path: path.stem)
def test_every_golden_document_loads(path: Path) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    before = copy.deepcopy(raw)

    context = load_context(raw, key=path.stem)

    assert isinstance(context, Context)
    assert raw == before, "load_context must not modify the stored document"
    assert context.version == CONTEXT_VERSION == 4
    assert context.messages
    assert all(m.meta.created_at.tzinfo is not None for m in context.messages)
    assert context.created_at.tzinfo is not None
    assert context.updated_at >= context.created_at
    # Both the full dump and the compact form read back the same.
    assert load_context(context.model_dump(mode="json")) == context
    assert load_context(context.to_document()) == context


@pytest.mark.parametrize("path", GOLDEN_V3, ids=lambda path: path.stem)
def test_version_3_golden_documents_read_back_as_they_were_written(path: Path) -> None:
    """Read, a version-3 document is the joined form of format 4 with no rows yet:
    the same fields and messages, an empty path (its next write stores them as rows)."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert load_context(raw).to_document() == {**raw, "version": 4, "path": [], "next": 1}


@pytest.mark.parametrize("kind", KINDS)
def test_version_1_upgrades_to_the_version_2_golden_document(kind: str) -> None:
    upgraded = _context._UPGRADES[1](_golden(f"context_v1_{kind}.json"))
    assert upgraded == _golden(f"context_v2_{kind}.json")


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_older_versions_upgrade_to_the_version_3_golden_document(version: int, kind: str) -> None:
    upgraded = load_context(_golden(f"context_v{version}_{kind}.json")).to_document()
    assert upgraded == {**_golden(f"context_v3_{kind}.json"), "version": 4, "path": [], "next": 1}
    assert "pending" not in upgraded


def test_version_2_with_a_pending_part_is_refused() -> None:
    document = {**_golden("context_v3_pending_approval.json"), "version": 2}
    with pytest.raises(ContextError, match="pending"):
        load_context(document, key=7)


def test_the_pending_approval_golden_document() -> None:
    raw = _golden("context_v3_pending_approval.json")
    context = load_context(raw)

    assert context.turns == 1
    assert [m.role for m in context.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    # A call whose arguments were cut off is replayed as {} with the raw text kept.
    cut = context.messages[2]
    assert cut.tool_calls is not None and cut.tool_calls[0]["function"]["arguments"] == "{}"
    assert cut.meta.raw_arguments == {"call_a1": '{"order_id": "4'}
    assert "raw_arguments" not in context.chat_messages()[2]
    pending = context.pending
    assert pending is not None
    assert [m.role for m in pending.messages] == ["user", "assistant", "tool"]
    assert pending.steps == 1
    assert pending.usage == Usage(prompt_tokens=260, completion_tokens=30, total_tokens=290)
    assert [a.tool_call_id for a in pending.approvals] == ["call_b2"]
    assert context.pending_approvals[0].arguments == {"order_id": "42", "amount": 20.0}
    # The history holds finished turns only: every call has its result.
    calls = {c["id"] for m in context.messages for c in (m.tool_calls or [])}
    results = {m.tool_call_id for m in context.messages if m.role == "tool"}
    assert calls == results


def test_the_interrupted_golden_document() -> None:
    raw = _golden("context_v3_interrupted.json")
    context = load_context(raw)

    last = context.messages[-1]
    assert (last.role, last.content, last.meta.interrupted) == (
        "assistant",
        "Order 42 was shipped on",
        True,
    )
    assert all(not m.meta.interrupted for m in context.messages[:-1])
    # Only complete pieces: the tool step before it has its result.
    assert [m.role for m in context.messages[-3:]] == ["assistant", "tool", "assistant"]
    assert "interrupted" not in context.chat_messages()[-1]
    # An older version has no such key.
    with pytest.raises(ContextError):
        load_context({**raw, "version": 2}, key=7)


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


@pytest.mark.parametrize("version", [1, 2, 3])
def test_plain_text_golden_document(version: int) -> None:
    context = load_context(_golden(f"context_v{version}_plain_text.json"))
    agent = Agent(TestModel())

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
    assert last.parse_output(agent) == last.content
    assert last.meta.model == "gpt-4o-mini-2024-07-18"
    assert last.meta.attempts == 1
    assert last.meta.usage == Usage(prompt_tokens=78, completion_tokens=17, total_tokens=95)
    user = context.messages[3]
    assert user.meta.input is None  # it is the content
    assert user.parse_input(agent) == TextInput(message="I did not get the reset email.")
    assert last.parse_input(agent) is None and user.parse_output(agent) is None
    # The reply was created with its user message, the instruction with the document.
    assert last.meta.created_at == user.meta.created_at
    assert context.messages[0].meta.created_at == context.created_at
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


class Trip(BaseModel):
    city: str
    days: int
    interests: list[str]


PLANNER = Agent(TestModel(), input_schema=Trip, output_schema=Plan)


@pytest.mark.parametrize("version", [1, 2])
def test_structured_golden_document_keeps_non_ascii_and_nested_output(version: int) -> None:
    context = load_context(_golden(f"context_v{version}_structured.json"))

    assert context.cost is None
    assert context.system == "Du bist ein Reiseplaner für Köln. Antworte auf Deutsch. 🧳"
    first, last = (m for m in context.messages if m.role == "assistant")
    assert first.meta.attempts == 2
    assert first.meta.cost is None
    plan = first.parse_output(PLANNER)
    assert plan.title == "Zwei Tage in Köln 🏰"
    assert plan.days[0].stops[1].tags == ["Kölsch 🍺"]
    assert last.parse_output(PLANNER).days[0].stops[0].name == "築地場外市場"
    user = context.messages[1]
    assert user.meta.input is None
    assert user.parse_input(PLANNER) == Trip(city="Köln", days=2, interests=["Dom", "Kölsch 🍺"])


@pytest.mark.parametrize("kind", KINDS)
def test_what_version_1_stored_twice_is_derived_back(kind: str) -> None:
    """``meta.input`` and ``meta.output`` of version 1 are what the upgraded messages
    give back from their content."""
    raw = _golden(f"context_v1_{kind}.json")
    agent = PLANNER if kind == "structured" else Agent(TestModel())
    context = load_context(raw)
    checked = 0
    for stored, message in zip(raw["messages"], context.messages, strict=True):
        if "input" in stored["meta"]:
            value = message.parse_input(agent)
            assert value == agent.input_schema.model_validate(stored["meta"]["input"])
            checked += 1
        if "output" in stored["meta"]:
            assert message.parse_output(agent) == agent.output_from_json(stored["meta"]["output"])
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("version", [1, 2, 3])
def test_tool_calls_golden_document(version: int) -> None:
    context = load_context(_golden(f"context_v{version}_tool_calls.json"))

    call = context.messages[2]
    assert call.role == "assistant"
    assert call.content is None
    assert call.parse_output(Agent(TestModel())) is None
    assert call.tool_calls is not None
    assert call.tool_calls[0]["function"]["name"] == "get_order"
    assert call.meta.finish_reason == "tool_calls"
    tool = context.messages[3]
    assert tool.role == "tool"
    assert tool.tool_call_id == "call_7QpX2"
    assert tool.name == "get_order"
    assert tool.meta.created_at == datetime(2026, 8, 9, 12, 0, 1, 250000, tzinfo=UTC)

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
    stored = load_context(raw)
    model = TestModel(replies=["Noted."], cost=0.5)
    agent = Agent(model)

    turn_input = _turn.validate_input(agent, "One more question 🙂")
    current = raw if raw["version"] == CONTEXT_VERSION else stored.to_document()
    plan = _turn.plan_next_turn(current, turn_input)
    result = _turn.drive(_turn.model_flow(agent, plan, False), model.complete)
    document = _turn.next_document(plan, result, current)

    context = load_context(document)
    assert raw == before
    assert document["version"] == CONTEXT_VERSION
    assert context.turns == before["turns"] + 1
    assert len(context.messages) == len(before["messages"]) + 2
    assert context.messages[:-2] == stored.messages
    assert context.created_at == stored.created_at
    assert context.instruction_args == before.get("instruction_args")
    assert context.cost == pytest.approx((before.get("cost") or 0.0) + 0.5)
    assert context.to_document() == document
    # What was sent is the stored history without meta (from the newest summary on,
    # which is sent with the system message), then the new message.
    sent = model.requests[0].messages
    history = before["messages"]
    summaries = [i for i, m in enumerate(history) if m.get("meta", {}).get("summary")]
    if summaries:
        newest = history[summaries[-1]]
        head = f"{history[0]['content']}\n\n{SUMMARY_HEADER}\n{newest['content']}"
        history = [{"role": "system", "content": head}, *history[summaries[-1] + 1 :]]
    assert sent[:-1] == [
        {k: v for k, v in m.items() if k != "meta" and v is not None} for m in history
    ]
    assert sent[-1] == {"role": "user", "content": "One more question 🙂"}


# -- the compact form ----------------------------------------------------------------


def test_what_the_compact_form_leaves_out_is_filled_in() -> None:
    document = {
        "version": CONTEXT_VERSION,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:05:00Z",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi", "meta": {"created_at": "2026-01-01T00:05:00Z"}},
            {
                "role": "assistant",
                "content": "hello",
                "meta": {"usage": {"prompt_tokens": 3, "completion_tokens": 1}},
            },
            {
                "role": "assistant",
                "content": "again",
                "meta": {
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 9},
                    "attempts": 3,
                },
            },
        ],
    }
    context = load_context(document)
    system, user, first, second = context.messages
    assert system.meta.created_at == context.created_at
    assert first.meta.created_at == user.meta.created_at == context.updated_at
    assert first.meta.usage == Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4)
    assert second.meta.usage == Usage(prompt_tokens=3, completion_tokens=1, total_tokens=9)
    assert (first.meta.attempts, second.meta.attempts) == (1, 3)
    assert user.meta.attempts is None and system.meta.usage is None
    assert context.usage == Usage() and context.cost is None
    assert context.to_document() == {
        **document,
        "version": 4,
        "turns": 0,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
        "path": [],
        "next": 1,
    }


class Count(BaseModel):
    n: int


class Pair(BaseModel):
    a: str
    b: float


@pytest.mark.parametrize(
    ("agent", "value", "content", "stored"),
    [
        pytest.param(Agent(TestModel()), "héllo 🙂", "héllo 🙂", None, id="one-text-field"),
        pytest.param(
            Agent(TestModel(), input_schema=Pair),
            {"a": "x", "b": 1},
            '{"a":"x","b":1.0}',
            None,
            id="json-of-the-input",
        ),
        pytest.param(
            Agent(TestModel(), input_schema=Count), {"n": 5}, '{"n":5}', {"n": 5}, id="one-int"
        ),
    ],
)
def test_the_input_is_stored_only_when_the_content_does_not_give_it_back(
    agent: Agent[Any], value: Any, content: str, stored: Any
) -> None:
    turn_input = _turn.validate_input(agent, value)
    plan = _turn.plan_first_turn(agent, turn_input, None)
    assert plan.user_message["content"] == content
    assert plan.user_message["meta"].get("input") == stored
    result = _turn.drive(_turn.model_flow(agent, plan, False), agent.model.complete)
    context = load_context(_turn.next_document(plan, result, None))
    assert context.messages[0].parse_input(agent) == turn_input.value


def test_a_version_1_input_that_the_content_does_not_give_back_is_kept() -> None:
    document = _minimal()
    document["messages"][0]["content"] = '{"n":5}'
    document["messages"][0]["meta"]["input"] = {"n": 5}
    upgraded = load_context(document).to_document()
    assert upgraded["messages"][0]["meta"]["input"] == {"n": 5}
    message = load_context(upgraded).messages[0]
    assert message.parse_input(Agent(TestModel(), input_schema=Count)) == Count(n=5)


def test_the_compact_form_is_much_smaller_than_version_1() -> None:
    for kind in KINDS:
        v1 = json.dumps(_golden(f"context_v1_{kind}.json"), separators=(",", ":"))
        v2 = json.dumps(_golden(f"context_v2_{kind}.json"), separators=(",", ":"))
        assert len(v2) < 0.8 * len(v1), kind


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
    "version_newer": _with(version=CONTEXT_VERSION + 1),
    "version_string": _with(version="1"),
    "version_bool": _with(version=True),
    "wrong_role": _message(role="robot"),
    "missing_meta": _message_without("meta"),
    "meta_without_created_at": _message(meta={}),
    "unknown_message_key": _message(mood="happy"),
    "unknown_meta_key": _message(meta={"created_at": "2026-01-01T00:00:00Z", "mood": 1}),
    "extra_unknown_key": _with(favourite_colour="blue"),
    "v1_output_of_a_user_message_is_fine_but_not_a_mood": _message(
        meta={"created_at": "2026-01-01T00:00:00Z", "output": "x", "mood": 1}
    ),
    "v2_output_key": {
        **_minimal_v2(),
        "messages": [
            {"role": "assistant", "content": "x", "meta": {"output": "x"}},
        ],
    },
    "v2_unknown_message_key": {**_minimal_v2(), "messages": [{"role": "user", "mood": 1}]},
    "v2_wrong_role": {**_minimal_v2(), "messages": [{"role": "robot"}]},
    "v2_no_created_at_anywhere": {
        "version": 2,
        "messages": [{"role": "user", "content": "hi"}],
        "updated_at": "2026-01-01T00:00:00Z",
    },
    "v2_bad_usage": {**_minimal_v2(), "usage": {"prompt_tokens": "many"}},
    "v2_message_usage_not_an_object": {
        **_minimal_v2(),
        "messages": [{"role": "assistant", "meta": {"usage": 5}}],
    },
    "v2_meta_not_an_object": {**_minimal_v2(), "messages": [{"role": "user", "meta": [1]}]},
    "v2_bad_message_usage": {
        **_minimal_v2(),
        "messages": [{"role": "assistant", "meta": {"usage": {"completion_tokens": "many"}}}],
    },
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
    assert f"version {CONTEXT_VERSION + 1}" in str(info.value)


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


def test_a_version_2_message_without_meta_was_created_with_the_document() -> None:
    document = {**_minimal_v2(), "messages": [{"role": "system", "content": "Hi"}]}
    context = load_context(document)
    assert context.messages[0].meta.created_at == context.created_at
    assert context.to_document()["messages"] == [{"role": "system", "content": "Hi"}]


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


def test_the_summary_golden_document() -> None:
    raw = _golden("context_v3_summary.json")
    context = load_context(raw)
    summary = context.messages[5]
    assert summary.role == "system"
    assert summary.meta.summary is not None and summary.meta.summary.covers == 4
    assert [m.meta.summary is None for m in context.messages].count(False) == 1
    assert context.to_document() == {**raw, "version": 4, "path": [], "next": 1}
    # Version 2 had no summaries: such a document is refused, not guessed at.
    with pytest.raises(ContextError):
        load_context({**raw, "version": 2})


# -- version 4: a head and its rows --------------------------------------------------

GOLDEN_V4 = sorted(DATA.glob("context_v4_*.json"))


def _v4(path: Path) -> tuple[dict[str, Any], list[Any]]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    rows = [(seq, parent, _context.dump_rows_data(data)) for seq, parent, data in raw["rows"]]
    return raw["head"], rows


def test_version_4_golden_documents_are_present() -> None:
    names = {path.name for path in GOLDEN_V4}
    assert {
        "context_v4_tool_calls.json",
        "context_v4_summary.json",
        "context_v4_pending_approval.json",
        "context_v4_plain_text.json",
    } <= names


@pytest.mark.parametrize("path", GOLDEN_V4, ids=lambda p: p.name)
def test_version_4_golden_documents_load_as_their_version_3_twins(path: Path) -> None:
    head, rows = _v4(path)
    assert "messages" not in head and head["version"] == 4
    context = load_context(head, rows=rows)
    twin = load_context(_golden(path.name.replace("context_v4_", "context_v3_")))
    assert [m.model_dump(exclude={"id", "parent"}) for m in context.messages] == [
        m.model_dump(exclude={"id", "parent"}) for m in twin.messages
    ]
    assert context.pending == twin.pending and context.usage == twin.usage
    ids = [m.id for m in context.messages]
    assert ids[0] == "0.0" and len(set(ids)) == len(ids)
    # A message's parent is the message before it on the path; a summary annotates
    # the path (its parent is the turn it is anchored at) and is no message's parent.
    expected, previous = [], None
    for message in context.messages[1:]:
        expected.append(previous)
        if message.meta.summary is None:
            previous = message.id
    assert [m.parent for m in context.messages[1:]] == expected


@pytest.mark.parametrize("path", GOLDEN_V4, ids=lambda p: p.name)
def test_version_4_golden_documents_are_what_a_version_3_document_becomes(path: Path) -> None:
    head, rows = _v4(path)
    twin = _golden(path.name.replace("context_v4_", "context_v3_"))
    written_head, written_rows = _context.split_document(
        _context.joined_document(twin), inline=False
    )
    assert written_head == head
    assert written_rows == rows


def test_the_version_4_summary_golden_document() -> None:
    head, rows = _v4(DATA / "context_v4_summary.json")
    assert head["path"] == [[1, 2], [4, 4]] and head["next"] == 5
    assert head["summary"]["seq"] == 3 and head["summary"]["anchor"] == 2
    [summary_row] = [row for row in rows if row[0] == 3]
    assert summary_row[1] == 2
    # A turn after the summary reads the rows after its anchor only.
    assert _context.seq_range(head, "after_summary") == (4, 4)
    joined = _context.joined_document(head, [row for row in rows if row[0] >= 4])
    assert [m["id"] for m in joined["messages"]] == ["0.0", "3.0", "4.0", "4.1"]
    assert joined["loaded"] == 2


def test_a_joined_document_splits_back_to_its_head_without_new_rows() -> None:
    head, rows = _v4(DATA / "context_v4_tool_calls.json")
    joined = _context.joined_document(head, rows)
    again, new = _context.split_document(joined, inline=False)
    assert new == [] and again == head


def test_the_single_column_layout_keeps_the_rows_in_the_head() -> None:
    twin = _golden("context_v3_tool_calls.json")
    head, rows = _context.split_document(_context.joined_document(twin), inline=True)
    assert rows == [] and [row[0] for row in head["rows"]] == [1]
    golden_head, golden_rows = _v4(DATA / "context_v4_tool_calls.json")
    assert load_context(head).messages == load_context(golden_head, rows=golden_rows).messages


def test_a_missing_history_row_reads_as_an_empty_history_not_a_crash() -> None:
    head, _ = _v4(DATA / "context_v4_plain_text.json")
    joined = _context.joined_document(head, [])
    assert joined["loaded"] == 2 and [m["id"] for m in joined["messages"]] == ["0.0"]


@pytest.mark.parametrize(
    "head",
    [
        {"version": 4, "created_at": "2026-01-01T00:00:00Z", "updated_at": "x", "path": [[2, 1]]},
        {"version": 4, "created_at": "2026-01-01T00:00:00Z", "path": [[1, 3]], "next": 2},
    ],
)
def test_a_bad_version_4_head_is_a_context_error(head: dict[str, Any]) -> None:
    with pytest.raises(ContextError):
        load_context(head, key=7)
