"""Bad data from a provider, a tool or the caller: no paid turn lost, no raw error.

Through a real LiteLLM call to the fake OpenAI-compatible server, on the six drivers:
a lone surrogate (``"\\ud83d"`` without its pair, which no driver can store) in a
plain reply, a streamed reply and a tool result is stored as U+FFFD, with a warning;
the caller's own text that UTF-8 cannot encode is refused before anything runs.
Streamed tool arguments nested 100,000 deep go back to the model as an error result,
and a paused call runs with the arguments its approver was shown.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import (
    Agent,
    AgentSessionMixin,
    ContextError,
    Denied,
    InputValidationError,
    StorageError,
    Tool,
    ToolCall,
)
from agent_session._secrets import mask, secret_values
from agent_session.llm import ModelRequest, ModelResponse, StreamChunk, StreamEnd, TextChunk
from agent_session.testing import TestModel
from support.databases import Database
from support.fake_openai import FakeOpenAI, running_fake_openai
from support.sessions import Api, joined_rows

REPLACED = "\ufffd"
WARNING = "cannot be encoded as UTF-8"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with running_fake_openai() as server:
        yield server


def lookup(query: str) -> str:
    """Look something up; the answer holds a lone surrogate, as a broken tool's may."""
    return f"bad \udc80 {query}"


class Company(BaseModel):
    company: str


def _chat_class(server: FakeOpenAI) -> Any:
    class Base(DeclarativeBase):
        pass

    class SurrogateChat(AgentSessionMixin[str], Base):
        __tablename__ = "surrogate_chats"
        __agent__ = Agent(
            "openai/gpt-4o-mini",
            instruction="You help {{ company }}.",
            instruction_schema=Company,
            tools=[lookup],
            model_settings={"api_base": server.base_url, "api_key": "test-key"},
            model_retries=0,
        )
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
        owner: Mapped[str] = mapped_column(sa.String(32), default="ann")

    return SurrogateChat


async def _drain(stream: Any) -> list[Any]:
    if inspect.isawaitable(stream):
        stream = await stream
    if hasattr(stream, "__aiter__"):
        return [event async for event in stream]
    return list(stream)


def _messages(database: Database, cls: Any) -> list[dict[str, Any]]:
    [row] = joined_rows(database, cls.__table__)
    messages: list[dict[str, Any]] = row["context"]["messages"]
    return messages


async def test_lone_surrogates_from_the_model_and_a_tool_are_stored_replaced(
    database: Database, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    cls = _chat_class(fake)
    database.create_all(cls.metadata)
    api = Api(database, cls, maker=True)
    company = {"company": "Acme"}

    # The caller's own text is refused, before any model call and any write.
    for bad in (
        {"input": "bad \ud83d input", "instruction_args": company},
        {"input": "hi", "instruction_args": {"company": "bad \udc80"}},
    ):
        with pytest.raises(InputValidationError) as info:
            await api.start(None, bad["input"], instruction_args=bad["instruction_args"])
        assert WARNING in str(info.value)
        assert info.value.source == ("input" if "input" in bad["input"] else "instruction_args")
    assert joined_rows(database, cls.__table__) == [] and fake.requests == []
    with pytest.raises(InputValidationError) as info:
        await api.start(None, "hi", instruction_args=company, owner="bad \ud83d")
    assert info.value.source == "values"
    for call, source in (
        (api.cont(None, "bad \ud83d", "hi"), "key"),
        (api.context(None, 1, where=cls.owner == "bad \udc80"), "where"),
    ):
        with pytest.raises(InputValidationError) as info:
            await call
        assert info.value.source == source
    assert joined_rows(database, cls.__table__) == [] and fake.requests == []

    caplog.set_level(logging.WARNING, logger="agent_session")
    # A plain reply whose JSON holds "\ud83d" alone, as the server sent it.
    body = fake.completion_body("bad \ud83d reply")
    fake.enqueue_raw(json.dumps(body))
    assert '"bad \\ud83d reply"' in json.dumps(body)
    chat = await api.start(None, "hello", instruction_args=company)
    assert chat.last_output == f"bad {REPLACED} reply"

    # A streamed reply: the deltas the reader sees are replaced too.
    fake.enqueue_stream("streamed \ud83d reply", chunk_chars=3)
    events = await _drain(api.cont(None, chat.id, "again", stream=True))
    deltas = "".join(e.text for e in events if type(e).__name__ == "TextDelta")
    assert deltas == f"streamed {REPLACED} reply"

    # A tool result, and a tool call's arguments that hold the escape themselves.
    fake.enqueue_tool_calls([("lookup", '{"query": "q\\ud83d"}')])
    fake.enqueue_completion("done")
    chat = await api.cont(None, chat.id, "look it up")
    assert chat.last_result.tool_calls[0].result == f"bad {REPLACED} q{REPLACED}"

    messages = _messages(database, cls)
    replies = [m["content"] for m in messages if m["role"] == "assistant" and m.get("content")]
    assert replies == [f"bad {REPLACED} reply", f"streamed {REPLACED} reply", "done"]
    [tool_message] = [m for m in messages if m["role"] == "tool"]
    assert tool_message["content"] == f"bad {REPLACED} q{REPLACED}"
    # The next request carried the repaired history: the provider saw no broken text.
    sent = fake.requests[-1].body["messages"]
    assert [m["content"] for m in sent if m["role"] == "tool"] == [tool_message["content"]]
    assert f"bad {REPLACED} reply" in [m.get("content") for m in sent]
    warnings = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert len(warnings) == 3, warnings  # the plain reply, the streamed one, the tool result
    assert {r.name for r in caplog.records if WARNING in r.getMessage()} == {
        "agent_session.turn",
        "agent_session.tools",
    }


def _deep_agent() -> Agent[str]:
    return Agent(TestModel(), tools=[lookup, Tool(lookup, name="pay", requires_approval=True)])


@pytest.mark.parametrize("stream", [False, True])
def test_tool_arguments_nested_too_deeply_are_an_error_result(stream: bool) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    agent = _deep_agent()
    model = TestModel(replies=[ToolCall("lookup", deep, id="c1"), "fine"])
    with agent.override(model=model):
        if stream:
            turn = agent.run("hi", stream=True)
            list(turn)
            result = turn.result
        else:
            result = agent.run("hi")
    assert result is not None and result.text == "fine"
    [call] = result.tool_calls
    assert call.status == "error" and "nested too deeply" in str(call.error)
    assert call.raw_arguments == deep  # kept beside the call, replayed as {}
    assert model.requests[1].messages[-2]["tool_calls"][0]["function"]["arguments"] == "{}"


def test_deeply_nested_caller_values_are_input_errors() -> None:
    class Args(BaseModel):
        data: Any

    class Input(BaseModel):
        data: Any
        size: int = 0

    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100_000):
        node["a"] = {}
        node = node["a"]
    for schema in (Args, None):
        agent = Agent(TestModel(), instruction="hi", instruction_schema=schema)
        with pytest.raises(InputValidationError) as info:
            agent.run("hi", instruction_args={"data": deep})
        assert info.value.source == "instruction_args"
    agent = Agent(TestModel(), input_schema=Input)
    with pytest.raises(InputValidationError) as info:
        agent.run({"data": deep})
    assert info.value.source == "input"


class _ApprovalBase(DeclarativeBase):
    pass


PAID: list[dict[str, Any]] = []


def pay(to: str, amount: float = 10.0) -> str:
    """Pay someone."""
    PAID.append({"to": to, "amount": amount})
    return f"paid {amount} to {to}"


class PayChat(AgentSessionMixin[str], _ApprovalBase):
    __tablename__ = "hostile_pay_chats"
    __agent__ = Agent(TestModel(), tools=[Tool(pay, requires_approval=True)])
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


async def test_a_paused_call_runs_with_the_arguments_its_approver_saw(database: Database) -> None:
    """The pending approval is the one source of a paused call's arguments: a stored
    message whose call says otherwise does not change what runs, and an approval that
    names no call of the paused reply is a damaged document."""
    database.create_all(_ApprovalBase.metadata)
    api = Api(database, PayChat, maker=True)
    model = TestModel(replies=[ToolCall("pay", {"to": "bob"}, id="p1"), "done"])
    PAID.clear()
    with PayChat.__agent__.override(model=model):
        chat = await api.start(None, "pay bob")
        [shown] = chat.pending_approvals
        assert shown.arguments == {"to": "bob", "amount": 10.0}
        table = PayChat.__table__
        [row] = joined_rows(database, table)
        document = row["context"]
        call = document["pending"]["messages"][1]["tool_calls"][0]
        call["function"]["arguments"] = json.dumps({"to": "mallory", "amount": 9999})
        with database.sync_engine().begin() as conn:
            conn.execute(sa.update(table).values(context=document))
        assert [p.arguments for p in (await api.context(None, chat.id)).pending_approvals] == [
            shown.arguments
        ]
        paused = joined_rows(database, table)
        with pytest.raises(InputValidationError) as info:  # the approver's text, too
            await api.resume(None, chat.id, approvals={"p1": Denied("bad \ud83d")})
        assert info.value.source == "approvals" and joined_rows(database, table) == paused
        chat = await api.resume(None, chat.id, approvals={"p1": True})
    assert PAID == [{"to": "bob", "amount": 10.0}]
    assert chat.last_result.tool_calls[0].arguments == shown.arguments

    # An approval for a call the paused reply does not hold: refused as damaged.
    with PayChat.__agent__.override(model=TestModel(replies=[ToolCall("pay", {"to": "x"})])):
        chat = await api.start(None, "pay x")
    [row] = [r for r in joined_rows(database, table) if r["id"] == chat.id]
    document = row["context"]
    document["pending"]["approvals"][0]["tool_name"] = "other"
    with database.sync_engine().begin() as conn:
        conn.execute(sa.update(table).where(table.c.id == chat.id).values(context=document))
    before = joined_rows(database, table)
    with pytest.raises(ContextError, match="not a call of the paused reply"):
        await api.resume(
            None, chat.id, approvals={document["pending"]["approvals"][0]["tool_call_id"]: True}
        )
    assert joined_rows(database, table) == before


class _StoredBase(DeclarativeBase):
    pass


class CodedChat(AgentSessionMixin[str], _StoredBase):
    __tablename__ = "hostile_coded_chats"
    __agent__ = Agent(TestModel(text="a reply quoting private-reply-text"))
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(sa.String(40), unique=True)


class JsonbChat(AgentSessionMixin[str], _StoredBase):
    __tablename__ = "hostile_jsonb_chats"
    __agent__ = Agent(TestModel(text="private-reply-text \x00 with a NUL"))
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    context: Mapped[Any] = mapped_column(
        sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True
    )


async def test_a_storage_error_quotes_no_stored_data(database: Database) -> None:
    """The driver's message may quote the refused value (MySQL's ``Duplicate entry
    '...'``, PostgreSQL's ``DETAIL``): the error keeps its class and first line only."""
    database.create_all(_StoredBase.metadata)
    api = Api(database, CodedChat, maker=True)
    await api.start(None, "hi", code="private-code-4242")
    before = joined_rows(database, CodedChat.__table__)
    with pytest.raises(StorageError) as info:
        await api.start(None, "hi", code="private-code-4242")
    message = str(info.value)
    assert "private-code-4242" not in message and "DETAIL" not in message, message
    assert type(info.value.__cause__.orig).__name__ in message  # type: ignore[union-attr]
    assert joined_rows(database, CodedChat.__table__) == before


@pytest.mark.parametrize(
    "named_database", ["postgresql+psycopg", "postgresql+asyncpg"], indirect=True
)
async def test_a_document_jsonb_refuses_is_not_quoted(named_database: Database) -> None:
    """PostgreSQL's ``jsonb`` refuses ``\\u0000`` with ``CONTEXT: JSON data, line 1:
    <the document>``: that line never reaches the error."""
    named_database.create_all(_StoredBase.metadata)
    api = Api(named_database, JsonbChat, maker=True)
    with pytest.raises(StorageError) as info:
        await api.start(None, "hi")
    message = str(info.value)
    assert "private-reply-text" in str(info.value.__cause__)  # what SQLAlchemy says
    assert "private-reply-text" not in message and "JSON data" not in message, message
    assert joined_rows(named_database, JsonbChat.__table__) == []


def test_what_mask_hides(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = {
        "api_key": "plain-key-value-1",
        "temperature": 0.2,
        "max_tokens": 12345678,
        "extra_headers": {"Authorization": "Bearer hdr-value-22", "X-Trace": "trace-id-12345"},
        "vertex_credentials": {"private_key": "pem-value-333"},
        "refresh_token": "short",  # too short to mask by value
    }
    assert secret_values(settings) == {
        "plain-key-value-1",
        "Bearer hdr-value-22",
        "hdr-value-22",
        "pem-value-333",
    }
    monkeypatch.setenv("SOME_PROVIDER_API_KEY", "env-secret-4444")
    text = (
        "plain-key-value-1 hdr-value-22 pem-value-333 env-secret-4444 trace-id-12345 "
        "sk-ant-api03-abcdef Bearer abc.def-123456 short sk-1 ask-me-anything"
    )
    assert mask(text, secret_values(settings)) == (
        "**** **** **** **** trace-id-12345 sk-**** Bearer **** short sk-1 ask-me-anything"
    )


def test_the_library_logs_mask_messages_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    Agent(TestModel(), model_settings={"api_key": "registered-key-5555"})
    log = logging.getLogger("agent_session.turn")
    caplog.set_level(logging.DEBUG, logger="agent_session")
    try:
        raise RuntimeError("the provider said: registered-key-5555 is wrong")
    except RuntimeError:
        log.debug("call failed with %s", "registered-key-5555", exc_info=True)
    [record] = [r for r in caplog.records if r.name == "agent_session.turn"]
    text = logging.Formatter().format(record)
    assert "registered-key-5555" not in text
    assert "call failed with ****" in text and "RuntimeError: the provider said: ****" in text


class _SplitPair(TestModel):
    """Streams an emoji's surrogate pair split across two chunks, as a JSON stream may."""

    def stream(self, request: ModelRequest) -> Iterator[StreamChunk]:
        yield TextChunk("a \ud83d")
        yield TextChunk("\ude00 b")
        yield StreamEnd(ModelResponse(text="a \ud83d\ude00 b", model="split"))


def test_a_surrogate_pair_split_across_chunks_is_joined(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent_session")
    agent = Agent(TestModel())
    with agent.override(model=_SplitPair()):
        turn = agent.run("hi", stream=True)
        list(turn)
    assert turn.result is not None and turn.result.text == "a \U0001f600 b"
    assert not [r for r in caplog.records if WARNING in r.getMessage()]
