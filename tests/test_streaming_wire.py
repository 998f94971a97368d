"""Streaming through LiteLLM, end to end, against the fake server's server-sent events.

``LiteLLMModel.stream``/``astream`` and the turn streams over them: text and tool
call deltas, usage and cost as unstreamed, errors mapped as unstreamed (also in the
middle of a stream), and an early stop that makes the server stop sending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import (
    Agent,
    AgentSessionMixin,
    ContextWindowError,
    LiteLLMModel,
    ModelCallError,
    ModelRequest,
    OutputDelta,
    StreamEnd,
    TextChunk,
    TextDelta,
    ToolCall,
    ToolCallChunk,
    TurnCompleted,
    Usage,
    _streaming,
    llm,
    sse,
)
from support.fake_openai import FakeOpenAI, running_fake_openai

MODEL = "openai/gpt-4o-mini"
SLOW = 0.05
"""Seconds between two chunks of a slow stream: 400 chunks would take 20 s, a client
that stops after a few ends it long before (the chunks sent are counted, not timed)."""


class Answer(BaseModel):
    answer: str
    score: int


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    llm.import_litellm()
    with running_fake_openai() as server:
        yield server


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _settings(fake: FakeOpenAI) -> dict[str, Any]:
    return {"api_base": fake.base_url, "api_key": "test-key"}


def _request(fake: FakeOpenAI, **kw: Any) -> ModelRequest:
    return ModelRequest(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        settings=_settings(fake),
        **kw,
    )


async def _chunks(request: ModelRequest, mode: str) -> list[Any]:
    model = LiteLLMModel()
    if mode == "sync":
        return list(model.stream(request))
    return [chunk async for chunk in model.astream(request)]


async def _complete(request: ModelRequest, mode: str) -> Any:
    model = LiteLLMModel()
    if mode == "sync":
        return model.complete(request)
    return await model.acomplete(request)


# -- the model stream ------------------------------------------------------------------


async def test_text_streams_with_usage_and_cost_as_unstreamed(fake: FakeOpenAI, mode: str) -> None:
    text = "The order A-1 ships today."
    fake.enqueue_stream(text, prompt_tokens=31, completion_tokens=9, chunk_chars=5)
    fake.enqueue_completion(text, prompt_tokens=31, completion_tokens=9)
    request = _request(fake)

    chunks = await _chunks(request, mode)
    unstreamed = await _complete(request, mode)

    pieces = [c.text for c in chunks if isinstance(c, TextChunk)]
    assert pieces == [text[i : i + 5] for i in range(0, len(text), 5)]
    assert isinstance(chunks[-1], StreamEnd)
    response = chunks[-1].response
    assert response == unstreamed
    assert response.usage == Usage(prompt_tokens=31, completion_tokens=9, total_tokens=40)
    assert response.cost is not None and response.cost > 0
    assert response.cost == unstreamed.cost
    body = fake.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert not {"num_retries", "max_retries", "api_base", "api_key"} & set(body)
    assert fake.streams[0].sent == fake.streams[0].scripted
    assert len(fake.requests) == 2


async def test_tool_call_deltas_are_assembled_as_unstreamed(fake: FakeOpenAI, mode: str) -> None:
    calls = [
        ("get_order", '{"order_id": "A-1", "include": ["items", "tracking"]}', "call_1"),
        ("refund", '{"amount": 12.5, "reason": "lat', "call_2"),  # cut-off JSON stays raw
        ("ping", "", "call_3"),
    ]
    fake.enqueue_stream("Let me check.", tool_calls=calls, chunk_chars=3)
    fake.enqueue_tool_calls(calls, content="Let me check.")
    tools = [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        for name, _, _ in calls
    ]
    request = _request(fake, tools=tools)

    chunks = await _chunks(request, mode)
    unstreamed = await _complete(request, mode)

    pieces = [c for c in chunks if isinstance(c, ToolCallChunk)]
    assert [(c.index, c.id, c.name) for c in pieces if c.name] == [
        (0, "call_1", "get_order"),
        (1, "call_2", "refund"),
        (2, "call_3", "ping"),
    ]
    assert sum(1 for c in pieces if c.index == 0) > 3  # the arguments came in pieces
    response = chunks[-1].response
    assert response.tool_calls == (
        ToolCall("get_order", calls[0][1], id="call_1"),
        ToolCall("refund", calls[1][1], id="call_2"),
        ToolCall("ping", "", id="call_3"),
    )
    assert response.tool_calls == unstreamed.tool_calls
    assert (response.text, response.finish_reason) == ("Let me check.", "tool_calls")
    assert (response.usage, response.cost) == (unstreamed.usage, unstreamed.cost)
    assert fake.requests[0].body["tools"] == tools


async def test_an_error_before_the_stream_is_mapped_as_unstreamed(
    fake: FakeOpenAI, mode: str
) -> None:
    fake.enqueue_error(429, "slow down", error_type="rate_limit_error", retry_after=7)
    fake.enqueue_error(429, "slow down", error_type="rate_limit_error", retry_after=7)
    fake.enqueue_error(400, "This model's maximum context length is 8192 tokens", code="x")
    request = _request(fake)

    with pytest.raises(ModelCallError) as streamed:
        await _chunks(request, mode)
    with pytest.raises(ModelCallError) as unstreamed:
        await _complete(request, mode)
    with pytest.raises(ContextWindowError) as window:
        await _chunks(request, mode)

    assert (streamed.value.status_code, streamed.value.retryable, streamed.value.retry_after) == (
        429,
        True,
        7.0,
    )
    assert str(streamed.value) == str(unstreamed.value)
    assert type(streamed.value) is type(unstreamed.value)
    assert window.value.status_code == 400
    assert len(fake.requests) == 3


@pytest.mark.parametrize("how", ["cut", "error-event"])
async def test_a_stream_that_breaks_raises_a_typed_error(
    fake: FakeOpenAI, mode: str, how: str
) -> None:
    if how == "cut":
        fake.enqueue_stream("Hello there, how are you", cut_after=3)
    else:
        fake.enqueue_stream("Hello there, how are you", error_after=3)
    model = LiteLLMModel()
    request = _request(fake)
    seen: list[Any] = []

    with pytest.raises(ModelCallError) as caught:
        if mode == "sync":
            for chunk in model.stream(request):
                seen.append(chunk)
        else:
            async for chunk in model.astream(request):
                seen.append(chunk)

    assert [c.text for c in seen] == ["Hell", "o th"]  # the role chunk carries no text
    assert caught.value.retryable is True
    assert caught.value.model == MODEL
    assert isinstance(caught.value.__cause__, Exception)


# -- turn streams over LiteLLM -----------------------------------------------------------


async def _run(agent: Agent[Any], mode: str) -> Any:
    if mode == "sync":
        return _streaming.run_stream(agent, "hi")
    return await _streaming.arun_stream(agent, "hi")


async def _collect(stream: Any) -> list[Any]:
    if isinstance(stream, _streaming.TurnStream):
        with stream:
            return list(stream)
    async with stream:
        return [event async for event in stream]


async def test_a_streamed_structured_run(fake: FakeOpenAI, mode: str) -> None:
    fake.enqueue_stream('{"answer": "forty two", "score": 7}', chunk_chars=6)
    fake.enqueue_completion('{"answer": "forty two", "score": 7}')
    agent = Agent(MODEL, output_schema=Answer, model_settings=_settings(fake))

    stream = await _run(agent, mode)
    events = await _collect(stream)
    unstreamed = agent.run("hi")

    assert any(isinstance(e, OutputDelta) for e in events)
    assert isinstance(events[-1], TurnCompleted)
    result = events[-1].result
    assert result.output == Answer(answer="forty two", score=7) == unstreamed.output
    assert (result.usage, result.cost) == (unstreamed.usage, unstreamed.cost)
    assert stream.usage == unstreamed.usage
    assert fake.requests[0].body["response_format"]["type"] == "json_schema"


async def test_a_broken_stream_in_a_turn_raises_with_the_usage_so_far(
    fake: FakeOpenAI, mode: str
) -> None:
    fake.enqueue_stream('{"answer": "x"}', prompt_tokens=20, completion_tokens=4)  # invalid
    fake.enqueue_stream('{"answer": "forty', cut_after=4)  # the re-ask breaks
    agent = Agent(MODEL, output_schema=Answer, model_settings=_settings(fake), model_retries=0)
    stream = await _run(agent, mode)

    with pytest.raises(ModelCallError) as caught:
        await _collect(stream)

    usage = Usage(prompt_tokens=20, completion_tokens=4, total_tokens=24)
    assert caught.value.usage == usage  # type: ignore[attr-defined]
    assert stream.usage == usage
    assert caught.value.attempts == 2
    assert stream.result is None


# -- stopping early: the server stops sending -------------------------------------------


def _slow(fake: FakeOpenAI) -> None:
    fake.enqueue_stream("x" * 400, chunk_chars=1, chunk_delay=SLOW)


async def _stopped(fake: FakeOpenAI) -> Any:
    record = fake.streams[-1]
    assert await asyncio.to_thread(record.wait)
    return record


async def test_closing_a_model_stream_closes_the_connection(fake: FakeOpenAI, mode: str) -> None:
    _slow(fake)
    model = LiteLLMModel()
    request = _request(fake)
    if mode == "sync":
        stream = model.stream(request)
        assert [next(stream) for _ in range(3)] == [TextChunk("x")] * 3
        stream.close()
    else:
        astream = model.astream(request)
        assert [await astream.__anext__() for _ in range(3)] == [TextChunk("x")] * 3
        await astream.aclose()

    record = await _stopped(fake)
    assert record.client_gone
    assert record.sent < record.scripted


async def test_breaking_out_of_a_turn_stream_stops_the_server(fake: FakeOpenAI, mode: str) -> None:
    _slow(fake)
    agent = Agent(MODEL, model_settings=_settings(fake))
    stream = await _run(agent, mode)
    seen = 0
    if isinstance(stream, _streaming.TurnStream):
        with stream:
            for event in stream:
                assert isinstance(event, TextDelta)
                seen += 1
                if seen == 2:
                    break
    else:
        async with stream:
            async for event in stream:
                assert isinstance(event, TextDelta)
                seen += 1
                if seen == 2:
                    break

    record = await _stopped(fake)
    assert record.client_gone
    assert record.sent < record.scripted
    assert stream.result is None
    assert len(fake.requests) == 1


async def test_cancelling_the_task_stops_the_server(fake: FakeOpenAI) -> None:
    _slow(fake)
    agent = Agent(MODEL, model_settings=_settings(fake))
    stream = await _streaming.arun_stream(agent, "hi")
    two = asyncio.Event()
    seen: list[Any] = []

    async def consume() -> None:
        async with stream:
            async for event in stream:
                seen.append(event)
                if len(seen) == 2:
                    two.set()

    task = asyncio.create_task(consume())
    await two.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    record = await _stopped(fake)
    assert record.client_gone
    assert record.sent < record.scripted
    assert stream.result is None


# -- stored sessions streamed over LiteLLM -------------------------------------------------


def _session_class(fake: FakeOpenAI) -> type[Any]:
    """A session model whose agent talks to ``fake`` (a new declarative base per test)."""

    def get_order(order_id: str) -> dict[str, str]:
        """Look up an order."""
        return {"order_id": order_id, "status": "shipped"}

    class Base(DeclarativeBase):
        pass

    class WireChat(AgentSessionMixin[str], Base):
        __tablename__ = "wire_chats"
        __agent__ = Agent(MODEL, model_settings=_settings(fake), tools=[get_order])
        __status_attribute__ = "status"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
        owner: Mapped[str] = mapped_column(sa.String(32), default="ann")

    return WireChat


async def _session_stream(cls: type[Any], tmp_path: Any, mode: str, **kw: Any) -> Any:
    """``cls.start_session(maker, ..., stream=True)`` on a SQLite file (aiosqlite async)."""
    path = tmp_path / "wire.db"
    sync_engine = sa.create_engine(f"sqlite:///{path}")
    cls.metadata.create_all(sync_engine)
    sync_engine.dispose()
    if mode == "sync":
        return cls.start_session(
            sessionmaker(sa.create_engine(f"sqlite:///{path}")), "where is 42?", stream=True, **kw
        )
    maker = async_sessionmaker(create_async_engine(f"sqlite+aiosqlite:///{path}"))
    return await cls.astart_session(maker, "where is 42?", stream=True, **kw)


def _stored(cls: type[Any], tmp_path: Any) -> list[dict[str, Any]]:
    """The rows, each context joined with its history rows (``messages``)."""
    from agent_session.context import joined_document

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'wire.db'}")
    history = cls.__table__.metadata.tables[f"{cls.__table__.name}_history"]
    with engine.connect() as conn:
        rows = [dict(row._mapping) for row in conn.execute(sa.select(cls.__table__))]
        for row in rows:
            found = conn.execute(
                sa.select(history.c.seq, history.c.parent, history.c.data)
                .where(history.c.session_id == row["id"])
                .order_by(history.c.seq)
            ).all()
            joined = joined_document(row["context"], found)
            joined["messages"] = [
                {k: v for k, v in m.items() if k not in ("id", "parent")}
                for m in joined["messages"]
            ]
            row["context"] = joined
    engine.dispose()
    return rows


async def test_a_streamed_tool_turn_of_a_session_through_sse(
    fake: FakeOpenAI, mode: str, tmp_path: Any
) -> None:
    [call] = fake.enqueue_stream(
        "Let me check.", tool_calls=[("get_order", {"order_id": "42"})], chunk_chars=3
    )
    fake.enqueue_stream("Order 42 was shipped.", prompt_tokens=30, completion_tokens=6)
    cls = _session_class(fake)
    stream = await _session_stream(cls, tmp_path, mode)
    if mode == "sync":
        frames = list(sse.encode(stream))
    else:
        frames = [frame async for frame in sse.aencode(stream)]

    kinds = [frame.split("\n", 1)[0].removeprefix("event: ") for frame in frames]
    assert kinds[-2:] == ["turn_completed", "completed"]
    first_tool = kinds.index("tool_call_delta")
    assert set(kinds[:first_tool]) == {"text_delta"}
    assert kinds.index("tool_call_started") < kinds.index("tool_call_finished")
    assert "text_delta" in kinds[kinds.index("tool_call_finished") :]
    [row] = _stored(cls, tmp_path)
    assert frames[-1] == f'event: completed\ndata: {{"session_key":{row["id"]}}}\n\n'
    messages = row["context"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["id"] == call.id
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"order_id": "42"}'
    assert messages[-1]["content"] == "Order 42 was shipped."
    assert row["context"]["usage"] == {"prompt_tokens": 40, "completion_tokens": 11}
    assert row["status"] == "completed"
    assert [r.body["stream"] for r in fake.requests] == [True, True]


@pytest.mark.parametrize("on_cancel", ["discard", "keep"])
async def test_stopping_a_session_stream_stops_the_server(
    fake: FakeOpenAI, mode: str, tmp_path: Any, on_cancel: str
) -> None:
    _slow(fake)
    cls = _session_class(fake)
    stream = await _session_stream(cls, tmp_path, mode, on_cancel=on_cancel)
    seen: list[Any] = []
    if mode == "sync":
        with stream:
            for event in stream:
                seen.append(event)
                if len(seen) == 3:
                    break
    else:
        async with stream:
            async for event in stream:
                seen.append(event)
                if len(seen) == 3:
                    break

    record = await _stopped(fake)
    assert record.client_gone
    assert record.sent < record.scripted
    assert len(fake.requests) == 1
    rows = _stored(cls, tmp_path)
    if on_cancel == "discard":
        assert rows == []
        assert stream.session is None
    else:
        [row] = rows
        last = row["context"]["messages"][-1]
        assert last == {
            "role": "assistant",
            "content": "xxx",
            "meta": {"model": MODEL, "interrupted": True},
        }
        assert stream.session.id == row["id"]
