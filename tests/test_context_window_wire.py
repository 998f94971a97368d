"""A self-hosted model's context window: ``Agent(context_window=N)``, or learned from
the provider's "request too long" error (llama.cpp, vLLM and OpenAI wordings), against
the fake OpenAI-compatible server started with a context size."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import (
    Agent,
    AgentSessionMixin,
    ConfigurationError,
    ContextWindowError,
    LastTurns,
    TokenBudget,
    _turn,
)
from agent_session.history import fitted_window, stated_window
from agent_session.llm import import_litellm
from support.fake_openai import (
    CONTEXT_SERVERS,
    ErrorReply,
    FakeOpenAI,
    context_window_error,
    prompt_tokens,
    running_fake_openai,
)

MODEL = "openai/a-local-model-litellm-does-not-know"
REPLY = "Your order left the warehouse this morning and should arrive by Friday. " * 2


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    import_litellm()
    with running_fake_openai() as server:
        yield server


@pytest.fixture
def server(fake: FakeOpenAI) -> Iterator[FakeOpenAI]:
    fake.requests.clear()
    yield fake
    fake.context_size = None
    assert fake.pending == 0, "a scripted reply was not used"


class Base(DeclarativeBase):
    pass


class LocalChat(AgentSessionMixin[str], Base):
    __tablename__ = "local_chats"
    __agent__ = Agent(MODEL)  # replaced per test
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


@pytest.fixture
def maker(tmp_path: Any) -> Iterator[sessionmaker[Any]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'chats.db'}")
    Base.metadata.create_all(engine)
    yield sessionmaker(engine)
    engine.dispose()


def _agent(fake: FakeOpenAI, **kw: Any) -> Agent[str]:
    settings = {"api_base": fake.base_url, "api_key": "none", "max_tokens": 64}
    return Agent(MODEL, instruction="You help with orders.", model_retries=0,
                 model_settings=settings, **kw)  # fmt: skip


def _refused(fake: FakeOpenAI) -> list[int]:
    """The indexes of the requests the server refused as too long."""
    server, limit = fake.context_size or ("", 0)
    return [
        i
        for i, body in enumerate(fake.bodies)
        if prompt_tokens(body) + (0 if server == "llama.cpp" else body["max_tokens"]) > limit
    ]


# -- the wordings ---------------------------------------------------------------------


@pytest.mark.parametrize("server", CONTEXT_SERVERS)
def test_each_servers_wording_states_its_window(server: str) -> None:
    error = context_window_error(server, 2048, 2078, 64)
    assert error.status == 400
    assert stated_window(error.message) == (2048, 2078)
    assert stated_window("the request is too long") is None


@pytest.mark.parametrize("wording", CONTEXT_SERVERS)
def test_litellm_and_the_library_map_each_wording(fake: FakeOpenAI, wording: str) -> None:
    """LiteLLM raises ``ContextWindowExceededError``, the library ``ContextWindowError``;
    with the user's own window nothing is learned or retried."""
    litellm = import_litellm()
    fake.requests.clear()
    fake.enqueue(context_window_error(wording, 2048, 2078, 64))
    with pytest.raises(Exception) as raw:
        litellm.completion(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            api_base=fake.base_url,
            api_key="none",
            num_retries=0,
        )
    assert type(raw.value).__name__ == "ContextWindowExceededError"

    agent = _agent(fake, history=LastTurns(50))
    fake.enqueue(context_window_error(wording, 2048, 2078, 64))
    with pytest.raises(ContextWindowError) as mapped:
        agent.run("hi")
    assert mapped.value.status_code == 400 and not mapped.value.retryable
    assert len(fake.requests) == 2  # not retried
    assert agent.learned_windows == {}


# -- learned from the error -----------------------------------------------------------


@pytest.mark.parametrize("wording", CONTEXT_SERVERS)
def test_the_default_window_learns_the_window_a_server_states(
    server: FakeOpenAI,
    maker: sessionmaker[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    wording: str,
) -> None:
    agent = _agent(server)
    monkeypatch.setattr(LocalChat, "__agent__", agent)
    server.context_size = (wording, 600)
    turns = 12
    for _ in range(turns):
        server.enqueue_completion(REPLY)
    with caplog.at_level(logging.WARNING, "agent_session.turn"):
        chat = LocalChat.start_session(maker, "Where is order 1?")
        for turn in range(2, turns + 1):
            chat = LocalChat.continue_session(maker, chat.id, f"Where is order {turn}?")

    # One request was refused; its turn was sent again, fitted, and every later turn
    # was sent fitted from the start.
    refused = _refused(server)
    assert len(refused) == 1 and len(server.requests) == turns + 1
    assert prompt_tokens(server.bodies[refused[0] + 1]) < prompt_tokens(server.bodies[refused[0]])
    learned = agent.learned_windows[MODEL]
    assert isinstance(learned, TokenBudget) and learned.max_tokens < 600
    assert _turn.history_window(agent) == learned
    warnings = [r.getMessage() for r in caplog.records if "context window" in r.getMessage()]
    assert len(warnings) == 1 and "600 tokens" in warnings[0]
    # Nothing of the refused request was stored: every turn once, complete.
    context = LocalChat.get_context(maker, chat.id)
    assert [m.content for m in context.messages if m.role == "user"] == [
        f"Where is order {n}?" for n in range(1, turns + 1)
    ]
    assert context.usage.prompt_tokens == 10 * turns  # the fake's usage, refused call excluded
    last = server.bodies[-1]["messages"]
    assert last[0]["role"] == "system" and last[-1]["content"] == f"Where is order {turns}?"
    assert "Where is order 1?" not in str(last)


async def test_an_async_stream_learns_the_window_too(
    server: FakeOpenAI, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = _agent(server)
    monkeypatch.setattr(LocalChat, "__agent__", agent)
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'chats.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    maker = async_sessionmaker(engine)
    for _ in range(7):
        server.enqueue_stream(REPLY)
    try:
        async with await LocalChat.astart_session(maker, "Where is order 1?", stream=True) as s:
            [event async for event in s]
        key = s.session.id
        server.context_size = ("llama.cpp", 300)
        for turn in range(2, 8):
            text = f"Where is order {turn}?"
            async with await LocalChat.acontinue_session(maker, key, text, stream=True) as s:
                events = [event async for event in s]
            assert type(events[-1]).__name__ == "TurnCompleted"
        context = await LocalChat.aget_context(maker, key)
    finally:
        await engine.dispose()
    assert len(_refused(server)) == 1 and MODEL in agent.learned_windows
    assert context.turns == 7 and len(server.requests) == 8


def test_a_second_refusal_in_the_same_turn_is_raised(
    server: FakeOpenAI, maker: sessionmaker[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = _agent(server)
    monkeypatch.setattr(LocalChat, "__agent__", agent)
    for _ in range(4):
        server.enqueue_completion(REPLY)
    chat = LocalChat.start_session(maker, "Where is order 1?")
    for turn in range(2, 5):
        chat = LocalChat.continue_session(maker, chat.id, f"Where is order {turn}?")
    before = LocalChat.get_context(maker, chat.id)
    # The request sent again with the fitted window (without the counts in the
    # message: FITTED_MARGIN of it) is refused too: raised, not retried again.
    too_long = ErrorReply(400, "This model's maximum context length is 200 tokens.")
    server.enqueue(too_long, too_long)
    with pytest.raises(ContextWindowError):
        LocalChat.continue_session(maker, chat.id, "Where is order 5?")
    first, second = server.bodies[-2:]
    assert len(server.requests) == 6 and len(second["messages"]) < len(first["messages"])
    assert agent.learned_windows[MODEL] == TokenBudget(180, reserve_output=58)
    assert LocalChat.get_context(maker, chat.id) == before

    # A window too small to leave room for the reply: nothing to fit, raised at once.
    server.enqueue(context_window_error("llama.cpp", 60, 80))
    with pytest.raises(ContextWindowError, match="available context size"):
        LocalChat.continue_session(maker, chat.id, "Where is order 5?")
    assert len(server.requests) == 7
    assert LocalChat.get_context(maker, chat.id) == before

    # A refusal of a request that a fitted window would not shorten is raised as it is.
    agent = _agent(server)
    server.enqueue(context_window_error("openai", 2048, 9000))
    with pytest.raises(ContextWindowError, match="maximum context length"):
        agent.run("Hi")
    assert len(server.requests) == 8


# -- context_window= ------------------------------------------------------------------


def test_context_window_sizes_the_default_window(server: FakeOpenAI) -> None:
    agent = _agent(server, context_window=2048)
    assert _turn.history_window(agent) == TokenBudget(2048, reserve_output=64)
    known = Agent("openai/gpt-4o-mini", context_window=4096)
    assert _turn.history_window(known) == TokenBudget(4096)  # over LiteLLM's own figure
    # The user's window stays as set: neither context_window nor a learned one applies.
    mine = _agent(server, history=LastTurns(3), context_window=2048)
    mine.learned_windows[MODEL] = TokenBudget(100)
    assert _turn.history_window(mine) == LastTurns(3)
    for bad in (0, -1, 1.5, True, "2048"):
        with pytest.raises(ConfigurationError, match="context_window"):
            Agent(MODEL, context_window=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_tokens"):
        Agent(MODEL, context_window=100, model_settings={"max_tokens": 100})


def test_context_window_keeps_requests_inside_it(
    server: FakeOpenAI, maker: sessionmaker[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = _agent(server, context_window=250)
    monkeypatch.setattr(LocalChat, "__agent__", agent)
    litellm = import_litellm()
    for _ in range(8):
        server.enqueue_completion(REPLY)
    chat = LocalChat.start_session(maker, "Where is order 1?")
    for turn in range(2, 9):
        chat = LocalChat.continue_session(maker, chat.id, f"Where is order {turn}?")
    sizes = [litellm.token_counter(model=MODEL, messages=b["messages"]) for b in server.bodies]
    assert len(sizes) == 8 and max(sizes) <= 250 - 64
    assert "Where is order 1?" not in str(server.bodies[-1]["messages"])


def test_fitted_window_converts_to_our_counter_and_keeps_room_for_the_reply() -> None:
    assert fitted_window(2048, counted=2000, ours=1500, output=64) == TokenBudget(
        1536, reserve_output=48
    )
    assert fitted_window(2048, counted=None, ours=None, output=None) == TokenBudget(
        1843, reserve_output=231
    )
    assert fitted_window(100, counted=None, ours=None, output=200) is None
    # A count far off is not trusted past a halving.
    assert fitted_window(2048, counted=9000, ours=10, output=None) == TokenBudget(
        1024, reserve_output=128
    )
