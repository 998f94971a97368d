"""Set-up failures are ``ConfigurationError``, raised at once: never retried, never a
provider failure (``ModelCallError``).

- A module LiteLLM imports during a call is missing (an ``ImportError`` inside
  LiteLLM, as the ``mcp`` import of some LiteLLM releases on a plain install).
- No API key is set for the provider: LiteLLM and the OpenAI SDK refuse before any
  request is sent (the network guard of conftest would refuse the connection, and
  ``litellm.completion`` is counted).
"""

from __future__ import annotations

import asyncio
import importlib.abc
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from agent_session import Agent, AgentSessionMixin, ConfigurationError, ModelCallError, llm
from support.fake_openai import FakeOpenAI, running_fake_openai

HANDLER = "litellm.responses.mcp.chat_completions_handler"
"""The module ``litellm.completion`` imports whenever ``tools`` are passed (it imported
``mcp`` in the LiteLLM 1.106 line)."""

KEY_VARIABLES = ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL")


def get_order(order_id: str) -> str:
    """Look up an order."""
    return "delivered"


class _NoMcp(importlib.abc.MetaPathFinder):
    """Fails the import of ``HANDLER`` as a missing ``mcp`` would, counting attempts."""

    def __init__(self) -> None:
        self.attempts = 0

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == HANDLER:
            self.attempts += 1
            raise ModuleNotFoundError("No module named 'mcp'", name="mcp")
        return None


@pytest.fixture
def no_mcp(monkeypatch: pytest.MonkeyPatch) -> Iterator[_NoMcp]:
    llm.warm_up()
    finder = _NoMcp()
    monkeypatch.delitem(sys.modules, HANDLER, raising=False)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    yield finder


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with running_fake_openai() as server:
        yield server


def run(agent: Agent[Any], how: str) -> Any:
    """One turn of ``agent``: sync or async, whole or streamed."""
    if how == "sync":
        return agent.run("Where is A-1?")
    if how == "stream":
        return list(agent.run("Where is A-1?", stream=True))

    async def arun() -> Any:
        if how == "async":
            return await agent.arun("Where is A-1?")
        return [event async for event in await agent.arun("Where is A-1?", stream=True)]

    return asyncio.run(arun())


HOWS = ["sync", "async", "stream", "astream"]


@pytest.mark.parametrize("how", HOWS)
def test_a_module_missing_inside_litellm_is_a_configuration_error(
    no_mcp: _NoMcp, fake_openai: FakeOpenAI, how: str
) -> None:
    agent = Agent(
        "openai/x",
        tools=[get_order],
        model_retries=3,
        model_settings={"api_base": fake_openai.base_url, "api_key": "k"},
    )
    with pytest.raises(ConfigurationError) as caught:
        run(agent, how)
    message = str(caught.value)
    assert "'mcp'" in message and "pip install mcp" in message, message
    assert not isinstance(caught.value, ModelCallError)
    assert isinstance([*_links(caught.value)][-1], ModuleNotFoundError)
    assert no_mcp.attempts == 1  # not retried
    assert fake_openai.requests == []


def test_an_import_error_that_is_no_missing_module_names_the_upgrade() -> None:
    error = ImportError("cannot import name 'Thing' from 'openai.types'", name="openai.types")
    mapped = llm._setup_error(error, "openai/x")
    assert isinstance(mapped, ConfigurationError)
    assert "pip install --upgrade openai" in str(mapped)
    assert "cannot import name 'Thing'" in str(mapped)


def _links(exc: BaseException) -> Iterator[BaseException]:
    link: BaseException | None = exc
    while link is not None:
        yield link
        link = link.__cause__ or link.__context__


# -- no API key ----------------------------------------------------------------------


@pytest.fixture
def counted_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No provider key in the environment; every ``litellm.(a)completion`` is counted."""
    litellm = llm.import_litellm()
    for name in (*KEY_VARIABLES, "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    calls: list[str] = []
    completion, acompletion = litellm.completion, litellm.acompletion

    def counted(**kwargs: Any) -> Any:
        calls.append(kwargs["model"])
        return completion(**kwargs)

    async def acounted(**kwargs: Any) -> Any:
        calls.append(kwargs["model"])
        return await acompletion(**kwargs)

    monkeypatch.setattr(litellm, "completion", counted)
    monkeypatch.setattr(litellm, "acompletion", acounted)
    return calls


@pytest.mark.parametrize("how", HOWS)
def test_a_missing_api_key_is_a_configuration_error_naming_the_variable(
    counted_calls: list[str], how: str
) -> None:
    agent = Agent("openai/gpt-4o-mini", model_retries=3)
    with pytest.raises(ConfigurationError) as caught:
        run(agent, how)
    message = str(caught.value)
    assert "set OPENAI_API_KEY in the environment, or api_key in model_settings" in message
    assert counted_calls == ["openai/gpt-4o-mini"]  # once: not retried


def test_a_compatible_server_without_a_key(
    counted_calls: list[str], fake_openai: FakeOpenAI
) -> None:
    """The OpenAI SDK wants a key even for a server that checks none: any value will do."""
    agent = Agent(
        "openai/local", model_retries=3, model_settings={"api_base": fake_openai.base_url}
    )
    with pytest.raises(ConfigurationError, match=r"OPENAI_API_KEY .*\(any value, for a server"):
        agent.run("hi")
    assert counted_calls == ["openai/local"]
    assert fake_openai.requests == []


def test_another_provider_names_its_own_variable(counted_calls: list[str]) -> None:
    agent = Agent("anthropic/claude-3-5-sonnet-20240620", model_retries=3)
    with pytest.raises(ConfigurationError, match="set ANTHROPIC_API_KEY in the environment"):
        agent.run("hi")
    assert len(counted_calls) == 1


def test_a_rejected_key_stays_a_model_call_error(fake_openai: FakeOpenAI) -> None:
    """A key the provider refuses (HTTP 401) is a ``ModelCallError``, as before."""
    fake_openai.enqueue_error(401, "Incorrect API key provided", error_type="invalid_request_error")
    agent = Agent("openai/x", model_settings={"api_base": fake_openai.base_url, "api_key": "bad"})
    with pytest.raises(ModelCallError) as caught:
        agent.run("hi")
    assert caught.value.status_code == 401
    assert len(fake_openai.requests) == 1


class Base(DeclarativeBase):
    pass


class Chat(AgentSessionMixin, Base):
    __tablename__ = "setup_error_chats"
    __agent__ = Agent("openai/gpt-4o-mini", model_retries=3)
    id: Mapped[int] = mapped_column(primary_key=True)


def test_a_session_turn_without_a_key_stores_nothing(
    counted_calls: list[str], tmp_path: Path
) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'chats.sqlite3'}")
    Base.metadata.create_all(engine)
    with Session(engine) as db:
        with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
            Chat.start_session(db, "hi")
        db.rollback()
        assert db.scalar(sa.select(sa.func.count()).select_from(Chat)) == 0
    engine.dispose()
    assert len(counted_calls) == 1
