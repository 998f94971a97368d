"""Bounds on what a provider can make a turn spend: ``Agent(turn_timeout=...)`` on the
model time of a whole turn, ``Agent(max_output_bytes=...)`` and ``max_tokens`` on a
streamed reply.

Through the fake OpenAI-compatible server and LiteLLM, on every database: a stream
that never ends (fast, or a chunk every 2 s) is stopped within ``turn_timeout`` plus a
second, a reply past a size limit at once; each raises its ``ModelCallError``
subclass, closes the provider stream and stores nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import (
    Agent,
    AgentSessionMixin,
    ConfigurationError,
    ModelCallError,
    OutputLimitError,
    TurnTimeoutError,
    llm,
)
from agent_session.testing import FunctionModel
from support.databases import Database
from support.fake_openai import FakeOpenAI, running_fake_openai
from support.sessions import Api, stored_rows

MODEL = "openai/gpt-4o-mini"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    llm.import_litellm()
    with running_fake_openai() as server:
        yield server


def _agent(fake: FakeOpenAI, settings: dict[str, Any] | None = None, **kw: Any) -> Agent[str]:
    base = {"api_base": fake.base_url, "api_key": "test-key"}
    return Agent(MODEL, model_settings={**base, **(settings or {})}, **kw)


async def _stopped_turn(
    database: Database, fake: FakeOpenAI, agent: Agent[str], text: str, drip: float = 0.0
) -> tuple[ModelCallError, float]:
    """Start a session, then stream a turn that gets an endless stream of ``text`` (a
    chunk every ``drip`` seconds) to its end; the error it raised, and how long after
    the request reached the server it was raised. The row must be as the first turn
    left it."""

    class Base(DeclarativeBase):
        pass

    class LimitChat(AgentSessionMixin[str], Base):
        __tablename__ = "limit_chats"
        __agent__ = agent
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)

    database.create_all(Base.metadata)
    api = Api(database, LimitChat, maker=True)
    fake.enqueue_completion("Hello!")
    chat = await api.start(None, "hi")
    before = stored_rows(database, LimitChat.__table__)
    fake.enqueue_endless_stream(text, chunk_delay=drip)
    with pytest.raises(ModelCallError) as caught:
        if api.is_async:
            stream = await LimitChat.acontinue_session(api.maker, chat.id, "go on", stream=True)
            async with stream:
                async for _ in stream:
                    pass
        else:
            stream = LimitChat.continue_session(api.maker, chat.id, "go on", stream=True)
            with stream:
                for _ in stream:
                    pass
    took = time.monotonic() - fake.requests[-1].at
    assert stored_rows(database, LimitChat.__table__) == before  # nothing stored
    assert len(fake.requests) == 2  # never retried
    record = fake.streams[-1]
    # The provider stream was closed (an async client closes its socket on the loop).
    assert await asyncio.to_thread(record.wait, 5) and record.client_gone
    return caught.value, took


@pytest.mark.parametrize("drip", [0.0, 2.0], ids=["endless", "slow-drip"])
async def test_a_stream_that_never_ends_is_stopped_at_turn_timeout(
    database: Database, fake: FakeOpenAI, drip: float
) -> None:
    error, took = await _stopped_turn(database, fake, _agent(fake, turn_timeout=1), "x", drip)

    assert isinstance(error, TurnTimeoutError), error
    assert error.turn_timeout == 1.0 and not error.retryable
    assert "turn_timeout=1s" in str(error)
    assert took < 1.0 + 1.0


@pytest.mark.parametrize(
    ("name", "agent_kw", "settings"),
    [
        ("max_output_bytes", {"max_output_bytes": 100}, {}),
        ("max_tokens", {}, {"max_tokens": 10}),
    ],
)
async def test_a_streamed_reply_past_its_size_limit_is_stopped(
    database: Database,
    fake: FakeOpenAI,
    name: str,
    agent_kw: dict[str, Any],
    settings: dict[str, Any],
) -> None:
    agent = _agent(fake, settings, turn_timeout=30, **agent_kw)
    error, took = await _stopped_turn(database, fake, agent, "0123456789")

    assert isinstance(error, OutputLimitError), error
    assert (error.limit_name, error.limit) == (name, 100 if name == "max_output_bytes" else 10)
    assert f"{error.limit_name}={error.limit}" in str(error)
    assert took < 10


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _run(agent: Agent[Any], mode: str) -> Any:
    if mode == "sync":
        return agent.run("hi")
    return await agent.arun("hi")


async def test_an_unstreamed_call_is_bounded_by_turn_timeout(fake: FakeOpenAI, mode: str) -> None:
    fake.enqueue_delay(5.0)
    started = time.monotonic()
    with pytest.raises(TurnTimeoutError):
        await _run(_agent(fake, turn_timeout=1), mode)
    assert time.monotonic() - started < 1.0 + 1.0
    assert len(fake.requests) == 1


async def test_retries_count_against_turn_timeout(mode: str) -> None:
    """Each failed call takes 0.4 s and is retryable: the third ends past the 1 s
    turn_timeout, so no fourth is made, whatever model_retries allows."""

    def fn(messages: list[dict[str, Any]]) -> str:
        time.sleep(0.4)
        raise ModelCallError("HTTP 503", model="function-model", status_code=503)

    model = FunctionModel(fn)
    with pytest.raises(TurnTimeoutError) as caught:
        await _run(Agent(model, turn_timeout=1, model_retries=10), mode)
    assert len(model.requests) == 3
    assert caught.value.attempts == 3
    assert isinstance(caught.value.__cause__, ModelCallError)


@pytest.mark.parametrize(
    "kw",
    [
        {"turn_timeout": 0},
        {"turn_timeout": -1},
        {"turn_timeout": float("nan")},
        {"turn_timeout": float("inf")},
        {"turn_timeout": "10"},
        {"max_output_bytes": 0},
        {"max_output_bytes": 1.5},
        {"max_output_bytes": True},
    ],
)
def test_bad_limits_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(kw))):
        Agent("openai/gpt-4o-mini", **kw)


async def test_a_backoff_past_turn_timeout_is_not_waited(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider asks to retry in 5 s; the turn has 1 s: it fails at once."""
    from agent_session import _turn

    monkeypatch.setattr(_turn, "RETRY_MAX_DELAY", 30.0)

    def fn(messages: list[dict[str, Any]]) -> str:
        raise ModelCallError("HTTP 429", model="function-model", status_code=429, retry_after=5)

    model = FunctionModel(fn)
    started = time.monotonic()
    with pytest.raises(TurnTimeoutError, match=r"before a retry in 5\.00s") as caught:
        await _run(Agent(model, turn_timeout=1), mode)
    assert time.monotonic() - started < 0.5
    assert len(model.requests) == 1
    assert isinstance(caught.value.__cause__, ModelCallError)
