"""Streamed turns through the test doubles: events, re-asks, failures, early stops,
and session flows streamed on every database (stored once, or not at all)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from agent_session import (
    Agent,
    AgentSessionMixin,
    ApprovalRequired,
    AsyncTurnStream,
    AttemptDiscarded,
    ModelCallError,
    ModelRequest,
    ModelResponse,
    OutputDelta,
    OutputValidationError,
    PendingApproval,
    Result,
    StreamEnd,
    TextChunk,
    TextDelta,
    ToolCall,
    ToolCallChunk,
    ToolCallDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnCompleted,
    TurnStream,
    Usage,
    _flows,
    _streaming,
    _turn,
    mixin,
)
from agent_session._store import AsyncStore, SyncStore
from agent_session.events import PartialOutput, parse_partial
from agent_session.llm import Model, StreamChunk
from agent_session.testing import FunctionModel, TestModel
from agent_session.tools import ToolCallResult
from support.databases import Database
from support.sessions import joined_rows

# -- helpers ---------------------------------------------------------------------------


class Answer(BaseModel):
    answer: str
    score: int


GOOD = '{"answer": "forty two", "score": 7}'


def _usage(prompt: int, completion: int) -> Usage:
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


async def _collect(stream: TurnStream[Any, Any] | AsyncTurnStream[Any, Any]) -> list[Any]:
    if isinstance(stream, TurnStream):
        with stream:
            return list(stream)
    async with stream:
        return [event async for event in stream]


async def _agent_stream(agent: Agent[Any], mode: str, input: Any = "hi") -> Any:
    if mode == "sync":
        return _streaming.run_stream(agent, input)
    return await _streaming.arun_stream(agent, input)


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class ScriptedStream(Model):
    """Streams scripted chunks; an exception in the script is raised at that point.
    Records which streams were closed before their end."""

    name = "scripted"

    def __init__(self, *scripts: list[Any]) -> None:
        self.scripts = list(scripts)
        self.opened = 0
        self.closed_early = 0
        self.chunks_given = 0

    def complete(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("a streamed turn must not call complete")

    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("a streamed turn must not call acomplete")

    def _script(self) -> list[Any]:
        self.opened += 1
        return self.scripts.pop(0)

    def stream(self, request: ModelRequest) -> Generator[StreamChunk, None, None]:
        ended = False
        try:
            for item in self._script():
                if isinstance(item, BaseException):
                    raise item
                self.chunks_given += 1
                yield item
            ended = True
        finally:
            if not ended:
                self.closed_early += 1

    async def astream(self, request: ModelRequest) -> AsyncGenerator[StreamChunk, None]:
        ended = False
        try:
            for item in self._script():
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, float):
                    await asyncio.sleep(item)
                    continue
                self.chunks_given += 1
                yield item
            ended = True
        finally:
            if not ended:
                self.closed_early += 1


def _reply(text: str, prompt: int = 10, completion: int = 5) -> list[Any]:
    response = ModelResponse(
        text=text, usage=_usage(prompt, completion), model="m", finish_reason="stop"
    )
    return [*(TextChunk(piece) for piece in text.split(" ") if piece), StreamEnd(response)]


# -- agent runs through the doubles ----------------------------------------------------


async def test_text_stream_gives_deltas_then_the_same_result_as_run(mode: str) -> None:
    agent = Agent(TestModel(text="the quick brown fox"))
    expected = agent.run("hi")

    stream = await _agent_stream(agent, mode)
    events = await _collect(stream)

    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) == 4
    assert "".join(deltas) == "the quick brown fox"
    assert isinstance(events[-1], TurnCompleted)
    assert [type(e) for e in events[:-1]] == [TextDelta] * 4
    result = stream.result
    assert result is events[-1].result
    assert (result.text, result.output, result.usage, result.attempts) == (
        expected.text,
        expected.output,
        expected.usage,
        expected.attempts,
    )
    assert result.messages == expected.messages
    assert stream.session is None
    assert stream.usage == expected.usage
    assert stream.done


async def test_text_deltas_gives_only_the_text(mode: str) -> None:
    agent = Agent(TestModel(text="one two three"))
    stream = await _agent_stream(agent, mode)
    if isinstance(stream, TurnStream):
        with stream:
            pieces = list(stream.text_deltas())
    else:
        async with stream:
            pieces = [piece async for piece in stream.text_deltas()]
    assert pieces == ["one ", "two ", "three"]
    assert stream.result is not None and stream.result.text == "one two three"


async def test_structured_output_streams_partial_objects_when_they_change(mode: str) -> None:
    agent = Agent(TestModel(replies=[GOOD]), output_schema=Answer)

    events = await _collect(await _agent_stream(agent, mode))

    partials = [e.partial for e in events if isinstance(e, OutputDelta)]
    assert partials == [
        {},
        {"answer": "forty "},
        {"answer": "forty two"},
        {"answer": "forty two", "score": 7},
    ]
    assert all(a != b for a, b in itertools.pairwise(partials))
    completed = events[-1]
    assert isinstance(completed, TurnCompleted)
    assert completed.result.output == Answer(answer="forty two", score=7)
    assert partials[-1] == completed.result.output_json


async def test_a_reask_announces_the_discarded_attempt(mode: str) -> None:
    agent = Agent(TestModel(replies=['{"answer": "x"}', GOOD]), output_schema=Answer)

    stream = await _agent_stream(agent, mode)
    events = await _collect(stream)

    kinds = [type(e) for e in events]
    assert kinds.count(AttemptDiscarded) == 1
    at = kinds.index(AttemptDiscarded)
    assert events[at] == AttemptDiscarded("invalid_output", 1)
    before = "".join(e.text for e in events[:at] if isinstance(e, TextDelta))
    after = "".join(e.text for e in events[at:] if isinstance(e, TextDelta))
    assert (before, after) == ('{"answer": "x"}', GOOD)
    assert stream.result is not None and stream.result.attempts == 2
    assert stream.usage == stream.result.usage


async def test_a_retried_broken_stream_announces_the_discarded_attempt(mode: str) -> None:
    broken = ModelCallError("connection dropped", model="m", status_code=502)
    model = ScriptedStream([TextChunk("Hel"), TextChunk("lo"), broken], _reply("Hello world"))
    agent = Agent(model, model_retries=1)

    stream = await _agent_stream(agent, mode)
    events = await _collect(stream)

    assert events[:3] == [TextDelta("Hel"), TextDelta("lo"), AttemptDiscarded("retry", 1)]
    assert isinstance(events[-1], TurnCompleted)
    assert events[-1].result.text == "Hello world"
    assert events[-1].result.attempts == 2
    assert stream.usage == _usage(10, 5)  # the broken call reported no usage
    assert model.opened == 2


async def test_a_failure_mid_stream_raises_the_typed_error_with_the_usage_so_far(
    mode: str,
) -> None:
    broken = ModelCallError("bad gateway", model="m", status_code=400)
    model = ScriptedStream(_reply('{"answer": "x"}', 12, 4), [TextChunk('{"ans'), broken])
    agent = Agent(model, output_schema=Answer)
    stream = await _agent_stream(agent, mode)

    seen: list[Any] = []
    with pytest.raises(ModelCallError, match="bad gateway") as caught:
        if isinstance(stream, TurnStream):
            with stream:
                seen.extend(stream)
        else:
            async with stream:
                async for event in stream:
                    seen.append(event)

    assert caught.value.usage == _usage(12, 4)  # type: ignore[attr-defined]
    assert stream.usage == _usage(12, 4)
    assert caught.value.attempts == 2
    assert seen[-3:] == [AttemptDiscarded("invalid_output", 1), TextDelta('{"ans'), OutputDelta({})]
    assert stream.result is None and not stream.done


async def test_an_output_error_keeps_its_own_usage(mode: str) -> None:
    agent = Agent(TestModel(replies=["no", "no"]), output_schema=Answer, output_retries=1)
    stream = await _agent_stream(agent, mode)
    with pytest.raises(OutputValidationError) as caught:
        await _collect(stream)
    assert caught.value.usage == stream.usage
    assert stream.usage.total_tokens > 0


async def test_stopping_early_closes_the_model_stream_and_the_flow(mode: str) -> None:
    model = ScriptedStream(_reply("one two three four five"))
    agent = Agent(model)
    stream = await _agent_stream(agent, mode)
    flow = stream._turn.flow

    if isinstance(stream, TurnStream):
        with stream:
            for event in stream:
                assert event == TextDelta("one")
                break
    else:
        async with stream:
            async for event in stream:
                assert event == TextDelta("one")
                break

    assert model.closed_early == 1
    assert model.chunks_given == 1
    assert flow.gi_frame is None  # the flow generator is closed
    assert stream.result is None and not stream.done
    assert stream.usage == Usage()
    # The stream is over: iterating again gives nothing.
    assert await _collect(stream) == []


async def test_cancelling_the_task_closes_the_model_stream() -> None:
    model = ScriptedStream([TextChunk("one"), 30.0, *_reply("never")])
    agent = Agent(model)
    stream = await _streaming.arun_stream(agent, "hi")
    first = asyncio.Event()
    seen: list[Any] = []

    async def consume() -> None:
        async with stream:
            async for event in stream:
                seen.append(event)
                first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [TextDelta("one")]
    assert model.closed_early == 1
    assert stream._turn.flow.gi_frame is None
    assert stream.result is None


async def test_a_model_that_does_not_stream_gives_its_reply_in_one_piece(mode: str) -> None:
    class Plain(Model):
        def complete(self, request: ModelRequest) -> ModelResponse:
            return ModelResponse(text="all at once", usage=_usage(3, 3))

        async def acomplete(self, request: ModelRequest) -> ModelResponse:
            return self.complete(request)

    events = await _collect(await _agent_stream(Agent(Plain()), mode))
    assert events[0] == TextDelta("all at once")
    assert isinstance(events[1], TurnCompleted)
    assert len(events) == 2


# -- the doubles stream ----------------------------------------------------------------


REQUEST = ModelRequest(model="m", messages=[{"role": "user", "content": "hi there"}])


def _calls() -> list[ToolCall]:
    return [
        ToolCall("get_order", '{"order_id": "A-1", "full": true}', id="c1"),
        ToolCall("refund", "{not json", id="c2"),
    ]


@pytest.mark.parametrize(
    "reply", [GOOD, "plain words here", _calls()], ids=["json", "text", "tool-calls"]
)
@pytest.mark.parametrize("double", ["test-model", "function-model"])
async def test_the_doubles_stream_what_complete_returns(reply: Any, double: str) -> None:
    def make() -> Model:
        if double == "test-model":
            return TestModel(replies=[reply])
        return FunctionModel(lambda messages: reply)

    expected = make().complete(REQUEST)
    sync_chunks = list(make().stream(REQUEST))
    async_chunks = [chunk async for chunk in make().astream(REQUEST)]

    assert sync_chunks == async_chunks
    assert sync_chunks[-1] == StreamEnd(expected)
    assert sum(isinstance(c, StreamEnd) for c in sync_chunks) == 1
    text = "".join(c.text for c in sync_chunks if isinstance(c, TextChunk))
    assert text == expected.text
    if expected.text:
        assert sum(isinstance(c, TextChunk) for c in sync_chunks) > 1
    pieces = [c for c in sync_chunks if isinstance(c, ToolCallChunk)]
    rebuilt = {
        i: "".join(c.arguments_delta for c in pieces if c.index == i)
        for i in range(len(expected.tool_calls))
    }
    assert rebuilt == {i: call.arguments for i, call in enumerate(expected.tool_calls)}
    firsts = [c for c in pieces if c.name is not None]
    assert [(c.id, c.name) for c in firsts] == [(c.id, c.name) for c in expected.tool_calls]


async def test_tool_call_deltas_become_events(mode: str) -> None:
    model = TestModel(replies=[_calls(), "done"])
    agent = Agent(model)
    request = ModelRequest(model="m", messages=[])

    def flow() -> Generator[Any, Any, Result[Any]]:
        first: ModelResponse = yield request
        assert [c.arguments for c in first.tool_calls] == [c.arguments for c in _calls()]
        final: ModelResponse = yield request
        return _result(final.text)

    stream = _make_stream(agent, flow(), mode, model)
    events = await _collect(stream)
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [(d.index, d.id, d.name) for d in deltas if d.name] == [
        (0, "c1", "get_order"),
        (1, "c2", "refund"),
    ]
    assert "".join(d.arguments_delta for d in deltas if d.index == 1) == "{not json"
    assert not any(isinstance(e, AttemptDiscarded) for e in events)


# -- tool and approval operations (the shape the tool loop yields) ---------------------


@dataclass(frozen=True)
class RunTools:
    """Stands for the tool loop's operation: it carries the calls to run."""

    calls: tuple[ToolCall, ...]


def _result(text: str, cls: type[Result[Any]] = Result, **extra: Any) -> Result[Any]:
    return cls(
        output=text,
        text=text,
        messages=[],
        usage=Usage(),
        cost=None,
        model="m",
        finish_reason="stop",
        attempts=1,
        duration_s=0.0,
        input=Answer(answer="in", score=1),
        **extra,
    )


def _make_stream(agent: Agent[Any], flow: Any, mode: str, model: Model) -> Any:
    def handle(op: Any) -> Any:
        assert isinstance(op, RunTools)
        return [
            ToolCallResult(c.id, c.name, {"order_id": "A-1"}, "ok", '"shipped"', result="shipped")
            for c in op.calls
        ]

    async def ahandle(op: Any) -> Any:
        return handle(op)

    if mode == "sync":
        return TurnStream(agent, flow, handle, model)
    return AsyncTurnStream(agent, flow, ahandle, model)


async def test_tool_operations_are_announced_started_and_finished(mode: str) -> None:
    call = ToolCall("get_order", '{"order_id": "A-1"}', id="c1")
    model = TestModel(replies=[call, "done"])

    def flow() -> Generator[Any, Any, Result[Any]]:
        yield ModelRequest(model="m", messages=[])
        results = yield RunTools((call,))
        assert results[0].result == "shipped"
        final: ModelResponse = yield ModelRequest(model="m", messages=[])
        return _result(final.text)

    events = await _collect(_make_stream(Agent(model), flow(), mode, model))
    kinds = [type(e) for e in events if not isinstance(e, ToolCallDelta)]
    assert kinds == [ToolCallStarted, ToolCallFinished, TextDelta, TurnCompleted]
    assert isinstance(events[0], ToolCallDelta)
    started = kinds.index(ToolCallStarted) + len(events) - len(kinds)
    assert events[started] == ToolCallStarted("c1", "get_order", '{"order_id": "A-1"}')
    assert events[started + 1] == ToolCallFinished(
        "c1", "get_order", {"order_id": "A-1"}, "ok", "shipped", None
    )


async def test_a_paused_turn_ends_with_approval_required(mode: str) -> None:
    model = TestModel(replies=["calling"])
    pending = (PendingApproval("c9", "refund", {"amount": 5}),)

    def flow() -> Generator[Any, Any, Any]:
        yield ModelRequest(model="m", messages=[])
        return _result("calling", pending_approvals=list(pending))

    stream = _make_stream(Agent(model), flow(), mode, model)
    events = await _collect(stream)
    assert events[-2:] == [ApprovalRequired(pending), TurnCompleted(stream.result)]
    assert stream.result.pending_approvals == list(pending)


# -- the partial-output helper ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("", None),
        ("Sure! Here", None),
        ("{", {}),
        ('{"answer": "for', {"answer": "for"}),
        ('{"answer": "forty two", "sc', {"answer": "forty two"}),
        ('{"items": [1, 2', {"items": [1, 2]}),
        ('```json\n{"a": 1', {"a": 1}),
        ("```json", None),
        ('  [{"a": tr', [{}]),
        ("42", None),
        ('"just a string', None),
    ],
)
def test_parse_partial(text: str, value: Any) -> None:
    assert parse_partial(text) == value


def test_partial_output_reports_only_changes() -> None:
    prose = PartialOutput()
    assert [prose.feed(piece) for piece in ["Sure", '{"a": 1}']] == [None, None]
    partial = PartialOutput()
    fed = [partial.feed(piece) for piece in [" ", '{"a"', ": ", '"x', '"', ", ", '"b": 1}']]
    assert fed == [
        None,
        OutputDelta({}),
        None,
        OutputDelta({"a": "x"}),
        None,
        None,
        OutputDelta({"a": "x", "b": 1}),
    ]


# -- session flows, streamed, on every database ----------------------------------------


class Base(DeclarativeBase):
    pass


class Chat(AgentSessionMixin, Base):
    __tablename__ = "stream_chats"
    __agent__ = Agent(TestModel(text="a stored reply"))
    __status_attribute__ = "status"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[str] = mapped_column(sa.String(32))


async def _start(database: Database, engine: Any) -> uuid.UUID:
    if database.is_async:
        async with AsyncSession(engine, expire_on_commit=False) as db:
            chat = await Chat.astart_session(db, "Hi", user_id="u1")
            await db.commit()
    else:
        with Session(engine, expire_on_commit=False) as db:
            chat = Chat.start_session(db, "Hi", user_id="u1")
            db.commit()
    return chat.id


def _continue_stream(database: Database, engine: Any, key: Any, model: Model) -> Any:
    """What ``Chat.continue_session(maker, key, input, stream=True)`` is to return: the
    session flow driven by a turn stream (answering its database operations with the
    store, through a sessionmaker)."""
    spec = mixin._spec(Chat)
    if database.is_async:
        from sqlalchemy.ext.asyncio import async_sessionmaker

        astore = AsyncStore(spec, model, async_sessionmaker(engine))
        flow = _flows.continue_flow(spec, model, key, None, "Where is my order?", 0)
        return AsyncTurnStream(spec.agent, flow, astore, model)
    from sqlalchemy.orm import sessionmaker

    store = SyncStore(spec, model, sessionmaker(engine))
    flow = _flows.continue_flow(spec, model, key, None, "Where is my order?", 0)
    return TurnStream(spec.agent, flow, store, model)


@pytest.fixture
def engine(database: Database) -> Any:
    database.create_all(Base.metadata)
    return database.engine()


async def test_a_streamed_continue_is_stored_once(database: Database, engine: Any) -> None:
    key = await _start(database, engine)
    [before] = joined_rows(database, Chat.__table__)

    stream = _continue_stream(database, engine, key, TestModel(text="It ships today"))
    events = await _collect(stream)

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "It ships today"
    assert isinstance(events[-1], TurnCompleted)
    assert stream.session is not None and stream.session.id == key
    assert stream.result is stream.session.last_result
    [after] = joined_rows(database, Chat.__table__)
    assert after["status"] == "completed"
    assert after["context_revision"] == before["context_revision"] + 2  # the claim, then the turn
    messages = after["context"]["messages"]
    assert [m["content"] for m in messages[-2:]] == ["Where is my order?", "It ships today"]
    assert after["context"]["turns"] == 2


async def test_a_cancelled_streamed_continue_stores_nothing_and_ends_failed(
    database: Database, engine: Any
) -> None:
    key = await _start(database, engine)
    [before] = joined_rows(database, Chat.__table__)
    model = ScriptedStream(_reply("It ships today"))

    stream = _continue_stream(database, engine, key, model)
    if isinstance(stream, TurnStream):
        with stream:
            for _event in stream:
                break
    else:
        async with stream:
            async for _event in stream:
                break

    assert model.closed_early == 1
    [after] = joined_rows(database, Chat.__table__)
    assert after["context"] == before["context"]
    assert after["status"] == "failed"
    assert after["context_revision"] == before["context_revision"] + 2  # the claim, then the status
    assert stream.session is None and stream.result is None


async def test_a_streamed_continue_that_fails_mid_stream_stores_nothing(
    database: Database, engine: Any
) -> None:
    key = await _start(database, engine)
    [before] = joined_rows(database, Chat.__table__)
    broken = ModelCallError("invalid request", model="m", status_code=400)
    model = ScriptedStream([TextChunk("It "), broken])

    stream = _continue_stream(database, engine, key, model)
    with pytest.raises(ModelCallError, match="invalid request") as caught:
        await _collect(stream)

    assert caught.value.usage == Usage()  # type: ignore[attr-defined]
    [after] = joined_rows(database, Chat.__table__)
    assert after["context"] == before["context"]
    assert after["status"] == "failed"


async def test_a_task_cancelled_streamed_continue_ends_failed(
    async_database: Database,
) -> None:
    async_database.create_all(Base.metadata)
    engine = async_database.engine()
    key = await _start(async_database, engine)
    [before] = joined_rows(async_database, Chat.__table__)
    model = ScriptedStream([TextChunk("It "), 30.0, *_reply("never")])
    stream = _continue_stream(async_database, engine, key, model)
    first = asyncio.Event()

    async def consume() -> None:
        async with stream:
            async for _event in stream:
                first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert model.closed_early == 1
    [after] = joined_rows(async_database, Chat.__table__)
    assert after["context"] == before["context"]
    assert after["status"] == "failed"


async def test_a_cancelled_streamed_start_inserts_nothing(database: Database, engine: Any) -> None:
    spec = mixin._spec(Chat)
    model = ScriptedStream(_reply("Hello there"))
    flow = _flows.start_flow(spec, model, "Hi", None, {"user_id": "u1"})
    if database.is_async:
        from sqlalchemy.ext.asyncio import async_sessionmaker

        astream = AsyncTurnStream(
            spec.agent, flow, AsyncStore(spec, model, async_sessionmaker(engine)), model
        )
        async with astream:
            async for _event in astream:
                break
    else:
        from sqlalchemy.orm import sessionmaker

        stream = TurnStream(spec.agent, flow, SyncStore(spec, model, sessionmaker(engine)), model)
        with stream:
            for _event in stream:
                break
    assert model.closed_early == 1
    assert joined_rows(database, Chat.__table__) == []


def test_the_plain_flow_driver_is_unchanged() -> None:
    """``drive`` still answers a model request with ``complete``."""
    agent = Agent(TestModel(text="plain"))
    plan = _turn.plan_first_turn(agent, "hi", None)
    result = _turn.drive(_turn.model_flow(agent, plan, None), _turn.model_handler(agent.model))
    assert result.text == "plain"


@dataclass(frozen=True)
class LostSwap:
    """Stands for the final write of a turn that another writer beat."""


async def test_a_turn_run_again_after_a_lost_race_announces_the_discarded_attempt(
    mode: str,
) -> None:
    model = TestModel(replies=["first try", "second try"])

    def flow() -> Generator[Any, Any, Result[Any]]:
        while True:
            response: ModelResponse = yield ModelRequest(model="m", messages=[])
            if (yield LostSwap()):
                return _result(response.text)

    answers = iter([False, True])

    def handle(op: Any) -> Any:
        assert isinstance(op, LostSwap)
        return next(answers)

    async def ahandle(op: Any) -> Any:
        return handle(op)

    agent = Agent(model)
    stream: Any = (
        TurnStream(agent, flow(), handle, model)
        if mode == "sync"
        else AsyncTurnStream(agent, flow(), ahandle, model)
    )
    events = await _collect(stream)
    assert events == [
        TextDelta("first "),
        TextDelta("try"),
        AttemptDiscarded("rerun", 1),
        TextDelta("second "),
        TextDelta("try"),
        TurnCompleted(stream.result),
    ]


async def test_a_cancel_scope_that_cancels_every_await_still_ends_failed(
    async_database: Database,
) -> None:
    """Starlette cancels a disconnected client's response with an anyio cancel scope,
    which cancels every later ``await`` of the task too: the status write runs in a
    shielded task of its own."""
    import anyio

    async_database.create_all(Base.metadata)
    engine = async_database.engine()
    key = await _start(async_database, engine)
    [before] = joined_rows(async_database, Chat.__table__)
    model = ScriptedStream([TextChunk("It "), 30.0, *_reply("never")])
    stream = _continue_stream(async_database, engine, key, model)

    with anyio.CancelScope() as scope:
        async with stream:
            async for _event in stream:
                scope.cancel()
    assert scope.cancelled_caught
    for _ in range(500):  # the clean-up task finishes on its own
        if not _streaming._CLEANUPS:
            break
        await asyncio.sleep(0.01)

    assert not _streaming._CLEANUPS
    assert model.closed_early == 1
    [after] = joined_rows(async_database, Chat.__table__)
    assert after["context"] == before["context"]
    assert after["status"] == "failed"
