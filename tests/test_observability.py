"""Logging, OpenTelemetry spans and the Agent hooks, on Agent.run and on stored sessions.

Spans are read from the SDK's ``InMemorySpanExporter``. OpenTelemetry lets a process
set its global tracer provider once, so the first test that needs it installs one for
the whole test run; its exporter records only while a test holds the ``spans`` fixture.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import (
    Agent,
    AgentSessionMixin,
    ConfigurationError,
    ModelCallError,
    ModelRequest,
    ModelResponse,
    Tool,
    ToolCall,
    ToolExecutionError,
    _observe,
    sse,
)
from agent_session.testing import FunctionModel, TestModel
from agent_session.tools import ToolCallResult
from support.databases import Database
from support.fake_openai import running_fake_openai
from support.sessions import Api, joined_rows

otel_trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

SECRET = "sk-do-not-log-0123456789"


class Reply(BaseModel):
    answer: str


# -- the span recorder --------------------------------------------------------------


class _Recorder(SpanProcessor):
    """Exports finished spans to ``exporter`` while ``on`` is set."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.on = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            self.exporter.export([span])


_RECORDER = _Recorder()


def _install_provider() -> None:
    provider = otel_trace.get_tracer_provider()
    if not isinstance(provider, sdk_trace.TracerProvider):
        provider = sdk_trace.TracerProvider()
        otel_trace.set_tracer_provider(provider)
    if not getattr(provider, "_agent_session_test_recorder", False):
        provider.add_span_processor(_RECORDER)
        provider._agent_session_test_recorder = True  # type: ignore[attr-defined]


class Spans:
    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    def all(self) -> list[ReadableSpan]:
        return sorted(self.exporter.get_finished_spans(), key=lambda s: s.start_time or 0)

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name.startswith(prefix)]

    def one(self, prefix: str) -> ReadableSpan:
        [span] = self.named(prefix)
        return span

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        assert parent.context is not None
        return [
            s
            for s in self.all()
            if s.parent is not None and s.parent.span_id == parent.context.span_id
        ]


@pytest.fixture
def spans() -> Iterator[Spans]:
    _install_provider()
    _RECORDER.exporter.clear()
    _RECORDER.on = True
    try:
        yield Spans(_RECORDER.exporter)
    finally:
        _RECORDER.on = False
        _RECORDER.exporter.clear()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


# -- the models of the session tests ------------------------------------------------


class Base(DeclarativeBase):
    pass


calls: list[str] = []
"""What the hooks of ``hooked_agent`` saw, in order."""
veto: list[Exception] = []
"""An exception here makes ``before_model_call`` of ``hooked_agent`` raise it."""


def _before(request: ModelRequest) -> ModelRequest:
    calls.append("before")
    if veto:
        raise veto[0]
    # Redact what is sent; the stored history keeps the user's words.
    messages = [
        {**m, "content": m["content"].replace("secret", "[redacted]")} for m in request.messages
    ]
    return replace(request, messages=messages)


async def _after(request: ModelRequest, response: ModelResponse) -> None:
    await asyncio.sleep(0)
    calls.append(f"after {Reply.model_validate_json(response.text).answer}")


def _on_error(error: Exception) -> None:
    calls.append(f"error {type(error).__name__}")


hooked_agent = Agent(
    FunctionModel(lambda messages: Reply(answer=messages[-1]["content"])),
    output_schema=Reply,
    before_model_call=_before,
    after_model_call=_after,
    on_error=_on_error,
    name="hooked",
)


class HookedChat(AgentSessionMixin[Reply], Base):
    __tablename__ = "observe_hooked_chats"
    __agent__ = hooked_agent
    __status_attribute__ = "status"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


plain_agent = Agent(
    TestModel(cost=0.25),
    output_schema=Reply,
    model_settings={"api_key": SECRET, "temperature": 0.5},
    name="support",
)


class Chat(AgentSessionMixin[Reply], Base):
    __tablename__ = "observe_chats"
    __agent__ = plain_agent
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


@pytest.fixture(autouse=True)
def reset_hooks() -> None:
    calls.clear()
    veto.clear()


# -- import cost --------------------------------------------------------------------


def test_importing_the_library_does_not_import_opentelemetry() -> None:
    code = (
        "import sys\n"
        "import agent_session\n"
        "from agent_session import Agent, AgentSessionMixin, _observe\n"
        "from agent_session.testing import TestModel\n"
        "Agent(TestModel()).run('hi')\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_nothing_is_observed_without_hooks_tracer_or_logging(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # OpenTelemetry imported, no provider set: the plain drivers run.
    code = (
        "import opentelemetry.trace\n"
        "from agent_session import Agent, _observe\n"
        "from agent_session.testing import TestModel\n"
        "agent = Agent(TestModel())\n"
        "watched = _observe._observation(agent, 'run', None, None, is_async=False)\n"
        "print(_observe._tracer(), watched)\n"
        "print(agent.run('hi').output)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["None", "None", "ok"]
    monkeypatch.setattr(_observe, "_tracer", lambda: None)
    caplog.set_level(logging.WARNING, logger="agent_session")
    agent = Agent(TestModel())
    assert _observe._observation(agent, "run", None, None, is_async=False) is None
    hooked = Agent(TestModel(), on_error=print)
    assert _observe._observation(hooked, "run", None, None, is_async=False) is not None


# -- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["before_model_call", "after_model_call", "on_tool_call", "on_error"]
)
def test_a_hook_must_be_callable(name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        Agent(TestModel(), **{name: "not a function"})  # type: ignore[arg-type]


# -- Agent.run ----------------------------------------------------------------------


async def test_agent_run_spans(run: Any, spans: Spans) -> None:
    agent = Agent(
        TestModel(cost=0.5),
        output_schema=Reply,
        model_settings={"api_key": SECRET, "temperature": 0.2, "max_tokens": 50},
        name="helper",
    )
    result = await run(agent, "hello")
    turn = spans.one("invoke_agent")
    assert turn.name == "invoke_agent helper"
    assert turn.parent is None
    [chat] = spans.children(turn)
    assert chat.name == "chat test-model"
    assert chat.kind == otel_trace.SpanKind.CLIENT
    a = attrs(chat)
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "test-model"
    assert a["gen_ai.response.model"] == result.model
    assert a["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens > 0
    assert a["gen_ai.usage.output_tokens"] == result.usage.completion_tokens > 0
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert a["gen_ai.request.temperature"] == 0.2
    assert a["gen_ai.request.max_tokens"] == 50
    assert a["gen_ai.output.type"] == "json"
    t = attrs(turn)
    assert t["gen_ai.operation.name"] == "invoke_agent"
    assert t["gen_ai.agent.name"] == "helper"
    assert t["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens
    assert t["agent_session.cost"] == 0.5
    assert t["agent_session.model_calls"] == 1
    everything = repr([attrs(s) for s in spans.all()])
    assert SECRET not in everything
    assert "hello" not in everything  # no message contents in spans


async def test_a_failed_call_is_an_error_on_both_spans(run: Any, spans: Spans) -> None:
    def fail(messages: list[dict[str, Any]]) -> str:
        raise ModelCallError("bad request", model="function-model", status_code=400)

    seen: list[Exception] = []

    async def on_error(error: Exception) -> None:
        seen.append(error)

    agent = Agent(FunctionModel(fail), on_error=on_error)
    with pytest.raises(ModelCallError) as caught:
        await run(agent, "hi")
    assert seen == [caught.value]
    turn, chat = spans.one("invoke_agent"), spans.one("chat")
    for span in (turn, chat):
        assert attrs(span)["error.type"] == "ModelCallError"
        assert span.status.status_code == otel_trace.StatusCode.ERROR
    assert chat.parent is not None and turn.context is not None
    assert chat.parent.span_id == turn.context.span_id


async def test_a_retry_is_an_event_and_a_second_chat_span(run: Any, spans: Spans) -> None:
    failures = [ModelCallError("busy", model="function-model", status_code=503)]

    def flaky(messages: list[dict[str, Any]]) -> str:
        if failures:
            raise failures.pop()
        return "fine"

    result = await run(Agent(FunctionModel(flaky), model_retries=1), "hi")
    assert result.attempts == 2
    turn = spans.one("invoke_agent")
    chats = spans.named("chat")
    assert [attrs(c).get("error.type") for c in chats] == ["ModelCallError", None]
    assert [e.name for e in turn.events] == ["agent_session.wait"]
    assert attrs(turn)["agent_session.model_calls"] == 1


# -- hooks on Agent.run -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_every_hook_sync_or_async(run: Any, kind: str) -> None:
    seen: list[Any] = []

    def before(request: ModelRequest) -> ModelRequest:
        seen.append(("before", request.messages[-1]["content"]))
        return replace(request, messages=[*request.messages[:-1], {"role": "user", "content": "B"}])

    def after(request: ModelRequest, response: ModelResponse) -> None:
        seen.append(("after", request.messages[-1]["content"], response.text))

    def on_error(error: Exception) -> None:
        seen.append(("error", type(error).__name__))

    hooks: dict[str, Any] = {
        "before_model_call": before,
        "after_model_call": after,
        "on_error": on_error,
    }
    if kind == "async":
        hooks = {name: _as_async(fn) for name, fn in hooks.items()}
    model = FunctionModel(lambda messages: messages[-1]["content"].lower())
    agent = Agent(model, **hooks)
    result = await run(agent, "A")
    assert result.output == "b"
    assert model.requests[-1].messages[-1]["content"] == "B"
    assert result.messages[-2]["content"] == "A"  # the history keeps what the user said
    assert seen == [("before", "A"), ("after", "B", "b")]


def _as_async(fn: Any) -> Any:
    async def hook(*args: Any) -> Any:
        await asyncio.sleep(0)
        return fn(*args)

    return hook


async def test_before_model_call_returning_none_keeps_the_request(run: Any) -> None:
    model = TestModel()
    agent = Agent(model, before_model_call=lambda request: None)
    await run(agent, "same")
    assert model.requests[-1].messages[-1]["content"] == "same"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_raising_before_model_call_vetoes_the_call(run: Any, kind: str) -> None:
    class Refused(Exception):
        pass

    def before(request: ModelRequest) -> None:
        raise Refused("over budget")

    model = TestModel()
    agent = Agent(model, before_model_call=before if kind == "sync" else _as_async(before))
    with pytest.raises(ModelCallError, match="over budget") as caught:
        await run(agent, "hi")
    assert isinstance(caught.value.__cause__, Refused)
    assert caught.value.retryable is False
    assert model.requests == []


async def test_raising_after_model_call_fails_the_turn(run: Any) -> None:
    def after(request: ModelRequest, response: ModelResponse) -> None:
        raise KeyError("audit log down")

    agent = Agent(TestModel(), after_model_call=after)
    with pytest.raises(ModelCallError, match="after_model_call") as caught:
        await run(agent, "hi")
    assert isinstance(caught.value.__cause__, KeyError)


async def test_before_model_call_must_return_a_request(run: Any) -> None:
    model = TestModel()
    agent = Agent(model, before_model_call=lambda request: request.messages)
    with pytest.raises(ConfigurationError, match="ModelRequest or None"):
        await run(agent, "hi")
    assert model.requests == []


async def test_a_raising_on_error_does_not_hide_the_error(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def on_error(error: Exception) -> None:
        raise RuntimeError("hook broke")

    def fail(messages: list[dict[str, Any]]) -> str:
        raise ModelCallError("denied", model="function-model", status_code=401)

    with pytest.raises(ModelCallError, match="denied"):
        await run(Agent(FunctionModel(fail), on_error=on_error), "hi")
    assert "the on_error hook raised" in caplog.text


# -- logging ------------------------------------------------------------------------


async def test_turn_logs_at_info_and_contents_only_at_debug(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_session")
    agent = Agent(
        TestModel(cost=0.125),
        output_schema=Reply,
        model_settings={"api_key": SECRET},
        name="support",
    )
    result = await run(agent, "my private question")
    [started, ended] = [r for r in caplog.records if r.name == "agent_session.turn"]
    assert started.levelno == ended.levelno == logging.INFO
    assert "started" in started.getMessage() and "test-model" in started.getMessage()
    text = ended.getMessage()
    assert "ended" in text and "1 model call(s)" in text and "cost 0.125000" in text
    assert f"{result.usage.prompt_tokens} input + {result.usage.completion_tokens} output" in text
    summary = ended.agent_session  # type: ignore[attr-defined]
    assert summary["input_tokens"] == result.usage.prompt_tokens
    assert summary["cost"] == 0.125 and summary["model_calls"] == 1
    assert "my private question" not in caplog.text
    assert SECRET not in caplog.text

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="agent_session")
    await run(agent, "my private question")
    assert "my private question" in caplog.text  # contents at DEBUG
    assert result.text in caplog.text
    assert SECRET not in caplog.text


async def test_a_failed_turn_logs_the_error_type_not_the_input(
    run: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent_session")

    class Strict(BaseModel):
        count: int

    agent = Agent(
        FunctionModel(lambda messages: '{"count": "many"}'), output_schema=Strict, output_retries=0
    )
    with pytest.raises(Exception, match="did not match"):
        await run(agent, "the input text")
    [failed] = [r for r in caplog.records if "failed" in r.getMessage() and r.name.endswith("turn")]
    assert failed.levelno == logging.INFO
    assert "OutputValidationError" in failed.getMessage()
    assert "many" not in caplog.text


# -- stored sessions ----------------------------------------------------------------


async def test_session_spans(database: Database, spans: Spans) -> None:
    database.create_all(Base.metadata)
    api = Api(database, Chat)
    async with api.session() as db:
        chat = await api.start(db, "hello")
        await api.commit(db)
        start_spans = spans.all()
        spans.exporter.clear()
        await api.cont(db, chat.id, "again")
        await api.commit(db)
    prefix = "a" if api.is_async else ""
    system = {"sqlite": "sqlite", "postgresql": "postgresql"}.get(database.dialect)
    if database.dialect == "mysql":
        with database.sync_engine().connect() as conn:
            system = "mariadb" if conn.dialect.is_mariadb else "mysql"  # type: ignore[attr-defined]

    [turn] = [s for s in start_spans if s.parent is None]
    assert turn.name == "invoke_agent support"
    assert attrs(turn)["agent_session.call"] == f"{prefix}start_session"
    assert attrs(turn)["gen_ai.conversation.id"] == str(chat.id)
    below = [s for s in start_spans if s.parent is not None]
    assert [s.name for s in below] == ["chat test-model", "INSERT observe_chats"]
    assert all(s.parent.span_id == turn.context.span_id for s in below)  # type: ignore[union-attr]
    insert = attrs(below[1])
    assert insert["db.operation.name"] == "INSERT"
    assert insert["db.collection.name"] == "observe_chats"
    assert insert["db.system.name"] == system

    turn = spans.one("invoke_agent")
    assert attrs(turn)["agent_session.call"] == f"{prefix}continue_session"
    assert attrs(turn)["gen_ai.conversation.id"] == str(chat.id)
    assert attrs(turn)["agent_session.cost"] == 0.25
    children = spans.children(turn)
    assert [s.name for s in children] == [
        "SELECT observe_chats",
        "chat test-model",
        "UPDATE observe_chats",
    ]
    assert attrs(children[2])["agent_session.written"] is True
    assert attrs(children[1])["gen_ai.usage.input_tokens"] > 0

    spans.exporter.clear()
    async with api.session() as db:
        await api.context(db, chat.id)
    [read] = spans.all()  # a read has no turn span
    assert read.name == "SELECT observe_chats" and read.parent is None


@pytest.mark.parametrize("named_database", ["sqlite", "sqlite+aiosqlite"], indirect=True)
async def test_hooks_on_a_stored_session(named_database: Database, spans: Spans) -> None:
    database = named_database
    database.create_all(Base.metadata)
    api = Api(database, HookedChat, maker=True)
    chat = await api.start(None, "my secret plan")
    assert calls == ["before", "after my [redacted] plan"]
    [row] = joined_rows(database, HookedChat.__table__)
    user = row["context"]["messages"][0]
    assert user["content"] == "my secret plan"  # stored as said; sent redacted
    assert chat.last_output.answer == "my [redacted] plan"


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_streamed_run_has_the_spans_of_an_unstreamed_one(mode: str, spans: Spans) -> None:
    agent = Agent(TestModel(cost=0.5), output_schema=Reply, name="helper")
    if mode == "sync":
        with agent.run("hello", stream=True) as stream:
            events = list(stream)
    else:
        async with await agent.arun("hello", stream=True) as astream:
            events = [event async for event in astream]
        stream = astream  # type: ignore[assignment]
    result = stream.result
    assert result is not None and events[-1].result is result  # type: ignore[attr-defined]
    turn = spans.one("invoke_agent")
    assert attrs(turn)["agent_session.call"] == ("run" if mode == "sync" else "arun")
    [chat] = spans.children(turn)
    assert attrs(chat)["gen_ai.usage.output_tokens"] == result.usage.completion_tokens > 0
    assert attrs(turn)["agent_session.cost"] == 0.5
    assert attrs(turn)["agent_session.model_calls"] == 1


@pytest.mark.parametrize("named_database", ["sqlite", "sqlite+aiosqlite"], indirect=True)
async def test_hooks_on_a_streamed_session_and_a_stop_is_no_error(
    named_database: Database, spans: Spans
) -> None:
    database = named_database
    database.create_all(Base.metadata)
    api = Api(database, HookedChat, maker=True)
    current: list[bool] = []
    if api.is_async:
        stream: Any = await HookedChat.astart_session(api.maker, "my secret plan", stream=True)
        async with stream:
            events = []
            async for event in stream:
                events.append(event)
                current.append(otel_trace.get_current_span().get_span_context().is_valid)
    else:
        stream = HookedChat.start_session(api.maker, "my secret plan", stream=True)
        with stream:
            events = []
            for event in stream:
                events.append(event)
                current.append(otel_trace.get_current_span().get_span_context().is_valid)
    assert not any(current)
    # The model got the request as before_model_call changed it.
    assert calls == ["before", "after my [redacted] plan"]
    assert events[-1].result.output.answer == "my [redacted] plan"
    key = stream.session.id
    assert attrs(spans.one("invoke_agent"))["gen_ai.conversation.id"] == str(key)

    calls.clear()
    if api.is_async:
        stream = await HookedChat.acontinue_session(api.maker, key, "more", stream=True)
        async with stream:
            async for _event in stream:
                break
    else:
        stream = HookedChat.continue_session(api.maker, key, "more", stream=True)
        with stream:
            for _event in stream:
                break
    assert calls == ["before"]  # no after_model_call, and no on_error
    # The turn's spans were current only inside the stream, never in this code.
    assert not otel_trace.get_current_span().get_span_context().is_valid
    [row] = joined_rows(database, HookedChat.__table__)
    assert row["status"] == "failed" and row["context"]["turns"] == 1
    stopped = spans.named("invoke_agent")[-1]
    assert attrs(stopped)["error.type"] == "TurnCancelled"


@pytest.mark.parametrize("named_database", ["sqlite", "sqlite+aiosqlite"], indirect=True)
async def test_a_veto_stores_nothing_and_marks_the_turn_failed(
    named_database: Database, spans: Spans
) -> None:
    database = named_database
    database.create_all(Base.metadata)
    api = Api(database, HookedChat, maker=True)
    veto.append(PermissionError("not for this user"))
    with pytest.raises(ModelCallError) as caught:
        await api.start(None, "first")
    assert isinstance(caught.value.__cause__, PermissionError)
    assert joined_rows(database, HookedChat.__table__) == []
    assert calls == ["before", "error ModelCallError"]

    veto.clear()
    chat = await api.start(None, "first")
    [before] = joined_rows(database, HookedChat.__table__)
    calls.clear()
    spans.exporter.clear()
    veto.append(PermissionError("not now"))
    with pytest.raises(ModelCallError, match="not now") as caught:
        await api.cont(None, chat.id, "second")
    assert isinstance(caught.value.__cause__, PermissionError)
    assert calls == ["before", "error ModelCallError"]
    [after] = joined_rows(database, HookedChat.__table__)
    assert after["status"] == "failed"
    assert after["context"] == before["context"]
    turn = spans.one("invoke_agent")
    assert attrs(turn)["error.type"] == "ModelCallError"
    assert attrs(turn)["agent_session.model_calls"] == 0
    # claim (running), vetoed call, failed status: no model call was made
    assert [s.name for s in spans.children(turn)] == [
        "SELECT observe_hooked_chats",
        "UPDATE observe_hooked_chats",
        "chat function-model",
        "UPDATE observe_hooked_chats",
    ]


@pytest.mark.parametrize("named_database", ["sqlite"], indirect=True)
async def test_a_conflict_is_logged_and_counted(
    named_database: Database, spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    database = named_database
    database.create_all(Base.metadata)
    caplog.set_level(logging.INFO, logger="agent_session")
    api = Api(database, Chat, maker=True)
    chat = await api.start(None, "one")
    spans.exporter.clear()
    caplog.clear()
    table = Chat.__table__
    bumped: list[int] = []

    def concurrent_writer(messages: list[dict[str, Any]]) -> Reply:
        if not bumped:  # another worker writes the row while the model is answering
            with database.sync_engine().begin() as conn:
                conn.execute(sa.update(table).values(context_revision=table.c.context_revision + 1))
            bumped.append(1)
        return Reply(answer="two")

    with plain_agent.override(model=FunctionModel(concurrent_writer)):
        await api.cont(None, chat.id, "two", conflict_retries=1)
    lost = [r for r in caplog.records if "another writer changed the row first" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelno == logging.INFO
    [ended] = [r for r in caplog.records if "continue_session ended" in r.getMessage()]
    assert "1 conflict(s)" in ended.getMessage()
    assert attrs(spans.one("invoke_agent"))["agent_session.conflicts"] == 1
    writes = [attrs(s)["agent_session.written"] for s in spans.named("UPDATE")]
    assert writes == [False, True]


# -- tool calls: the observer for an operation that runs them ------------------------


@dataclass(frozen=True)
class FakeRunTools:
    """The shape of the tool step's operation: the calls, answered with their results."""

    calls: tuple[ToolCall, ...]


def _tool_flow() -> Generator[Any, Any, list[ToolCallResult]]:
    results: list[ToolCallResult] = yield FakeRunTools(
        (ToolCall("lookup", {"q": "a"}, id="c1"), ToolCall("broken", {}, id="c2"))
    )
    return results


def _tool_results(op: FakeRunTools) -> list[ToolCallResult]:
    return [
        ToolCallResult(
            "c1", "lookup", {"q": "a"}, "ok", '"found"', result="found", duration_s=0.01
        ),
        ToolCallResult("c2", "broken", {}, "error", "failed", error="boom", duration_s=0.02),
    ]


@pytest.fixture
def tool_observer() -> Iterator[None]:
    _observe.register(FakeRunTools, _observe.observe_tool_calls)
    try:
        yield
    finally:
        del _observe._observers()[FakeRunTools]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_tool_calls_get_spans_and_on_tool_call(
    tool_observer: None, spans: Spans, kind: str
) -> None:
    seen: list[ToolCallResult] = []

    def on_tool_call(result: ToolCallResult) -> None:
        seen.append(result)

    agent = Agent(
        TestModel(), on_tool_call=on_tool_call if kind == "sync" else _as_async(on_tool_call)
    )
    if kind == "sync":
        results = _observe.drive(agent, _tool_flow(), _tool_results, call="run")
    else:

        async def answer(op: FakeRunTools) -> list[ToolCallResult]:
            return _tool_results(op)

        results = await _observe.adrive(agent, _tool_flow(), answer, call="arun")
    assert seen == results
    turn = spans.one("invoke_agent")
    tools = spans.children(turn)
    assert [s.name for s in tools] == ["execute_tool lookup", "execute_tool broken"]
    first, second = (attrs(s) for s in tools)
    assert first["gen_ai.operation.name"] == "execute_tool"
    assert first["gen_ai.tool.call.id"] == "c1"
    assert first["agent_session.tool.status"] == "ok"
    assert second["error.type"] == "tool_error"
    assert tools[1].status.status_code == otel_trace.StatusCode.ERROR
    assert "q" not in repr(first)  # no arguments in spans


async def test_a_raising_on_tool_call_is_a_tool_execution_error(tool_observer: None) -> None:
    def on_tool_call(result: ToolCallResult) -> None:
        raise ValueError("rejected")

    agent = Agent(TestModel(), on_tool_call=on_tool_call)
    with pytest.raises(ToolExecutionError) as caught:
        _observe.drive(agent, _tool_flow(), _tool_results, call="run")
    assert caught.value.tool_name == "lookup" and caught.value.tool_call_id == "c1"
    assert isinstance(caught.value.__cause__, ValueError)


async def test_a_failed_tool_step_marks_every_call(tool_observer: None, spans: Spans) -> None:
    def failing(op: FakeRunTools) -> list[ToolCallResult]:
        raise ToolExecutionError("lookup raised", tool_name="lookup", tool_call_id="c1")

    with pytest.raises(ToolExecutionError):
        _observe.drive(Agent(TestModel()), _tool_flow(), failing, call="run")
    tools = spans.named("execute_tool")
    assert [attrs(s)["error.type"] for s in tools] == ["ToolExecutionError"] * 2


def test_an_operation_without_an_observer_goes_to_the_handler() -> None:
    def flow() -> Generator[Any, Any, datetime]:
        return (yield datetime(2020, 1, 1))

    assert _observe.drive(
        Agent(TestModel(), on_error=print), flow(), lambda op: op, call="run"
    ) == datetime(2020, 1, 1)


def test_async_hooks_in_sync_code_without_a_running_loop() -> None:
    seen: list[str] = []

    async def after(request: ModelRequest, response: ModelResponse) -> None:
        await asyncio.sleep(0)
        seen.append(response.text)

    assert Agent(TestModel(text="sync"), after_model_call=after).run("hi").output == "sync"
    assert seen == ["sync"]


async def test_a_cancelled_turn_ends_its_spans(
    spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    started = asyncio.Event()

    async def slow(messages: list[dict[str, Any]]) -> str:
        started.set()
        await asyncio.sleep(60)
        return "never"

    agent = Agent(FunctionModel(slow), name="slow")
    task = asyncio.ensure_future(agent.arun("hi"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [s.name for s in spans.all()] == ["invoke_agent slow", "chat function-model"]
    assert "Failed to detach context" not in caplog.text
    assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_real_tool_turn_is_observed(spans: Spans, kind: str) -> None:
    """The tool step of a real turn (``RunTools``) gets its spans and ``on_tool_call``."""
    seen: list[ToolCallResult] = []

    def lookup(order_id: str) -> str:
        """Look up an order."""
        return f"order {order_id}: shipped"

    def on_tool_call(result: ToolCallResult) -> None:
        seen.append(result)

    agent = Agent(TestModel(), tools=[lookup], on_tool_call=on_tool_call)
    if kind == "sync":
        result = agent.run("Where is my order?")
    else:
        result = await agent.arun("Where is my order?")
    assert [r.name for r in seen] == ["lookup"] and seen == list(result.tool_calls)
    assert seen[0].status == "ok"
    turn = spans.one("invoke_agent")
    names = [s.name for s in spans.children(turn)]
    assert names.count("execute_tool lookup") == 1
    assert sum(name.startswith("chat ") for name in names) == 2


def _refund(order_id: str) -> str:
    """Refund an order."""
    return f"refunded {order_id}"


class ApprovalChat(AgentSessionMixin[str], Base):
    __tablename__ = "observe_approval_chats"
    __agent__ = Agent(TestModel(), tools=[Tool(_refund, requires_approval=True)])
    id: Mapped[int] = mapped_column(primary_key=True)


@pytest.mark.parametrize("named_database", ["sqlite", "sqlite+aiosqlite"], indirect=True)
async def test_a_resume_names_its_session(
    named_database: Database, spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    named_database.create_all(Base.metadata)
    api = Api(named_database, ApprovalChat, maker=True)
    chat = await api.start(None, "Refund order 42")
    approvals = {p.tool_call_id: True for p in chat.pending_approvals}
    spans.exporter.clear()
    caplog.set_level(logging.INFO, logger="agent_session")
    await api.resume(None, chat.id, approvals=approvals)
    turn = spans.one("invoke_agent")
    prefix = "a" if api.is_async else ""
    assert attrs(turn)["agent_session.call"] == f"{prefix}resume_session"
    assert attrs(turn)["gen_ai.conversation.id"] == str(chat.id)
    started = [r.getMessage() for r in caplog.records if "resume_session started" in r.getMessage()]
    assert started and "new ApprovalChat session" not in started[0]


# -- secrets echoed by a provider ---------------------------------------------------

API_KEY = "hunter2-not-token-shaped-0451"
"""Not shaped like a token: masked because the agent's model_settings hold it."""
HEADER_TOKEN = "hdr-secret-8c7e2f91d"
SHAPED = ("sk-live-abcdef123456", "sk-proj-zyxwv987654")


def _leaky_chat(server: Any) -> Any:
    class LeakyBase(DeclarativeBase):
        pass

    class LeakyChat(AgentSessionMixin[str], LeakyBase):
        __tablename__ = "observe_leaky_chats"
        __agent__ = Agent(
            "openai/gpt-4o-mini",
            model_settings={
                "api_base": server.base_url,
                "api_key": API_KEY,
                "extra_headers": {"Authorization": f"Bearer {HEADER_TOKEN}"},
            },
            model_retries=0,
        )
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)

    return LeakyChat


async def _frames(api: Api, stream: Any) -> str:
    if api.is_async:
        return "".join([frame async for frame in sse.aencode(stream)])
    return "".join(sse.encode(stream))


async def test_a_key_echoed_by_a_401_is_masked_everywhere(
    database: Database, spans: Spans, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 whose body echoes the key: neither ``str(exc)``, the SSE error frame, the
    library's DEBUG logs nor the spans' exception events show it; nothing is stored."""
    echoed = (
        f"Incorrect API key provided: {API_KEY}. Header token {HEADER_TOKEN} refused; "
        f"also tried Bearer {SHAPED[0]} and {SHAPED[1]}."
    )
    caplog.set_level(logging.DEBUG, logger="agent_session")
    with running_fake_openai() as server:
        cls = _leaky_chat(server)
        database.create_all(cls.metadata)
        api = Api(database, cls, maker=True)
        server.enqueue_error(401, echoed, code="invalid_api_key")
        with pytest.raises(ModelCallError) as info:
            await api.start(None, "hi")
        server.enqueue_error(401, echoed, code="invalid_api_key")
        frames = await _frames(api, await api.start(None, "hi", stream=True))
    assert joined_rows(database, cls.__table__) == []
    message = str(info.value)
    assert info.value.status_code == 401 and "Incorrect API key provided: ****" in message
    assert "event: error" in frames and "Incorrect API key provided: ****" in frames
    formatter = logging.Formatter("%(name)s %(message)s")
    logs = "\n".join(
        formatter.format(r) for r in caplog.records if r.name.startswith("agent_session")
    )
    assert "a streamed turn failed" in logs and "Traceback" in logs
    events = [e for s in spans.all() for e in s.events if e.name == "exception"]
    assert events, "no exception event recorded"
    shown = [
        message,
        frames,
        logs,
        *(str(dict(e.attributes or {})) for e in events),
        *(str(s.status.description) for s in spans.all()),
    ]
    for text in shown:
        for secret in (API_KEY, HEADER_TOKEN, *SHAPED):
            assert secret not in text, (secret, text[:300])
