"""The async API mirrors the sync API exactly."""

from __future__ import annotations

import inspect

from agent_session import Agent, AgentSessionMixin
from agent_session._store import AsyncStore, SyncStore


def _public(cls: type) -> dict[str, object]:
    return {name: getattr(cls, name) for name in dir(cls) if not name.startswith("_")}


def _same_parameters(sync: object, twin: object) -> None:
    sync_params = list(inspect.signature(sync).parameters.values())  # type: ignore[arg-type]
    async_params = list(inspect.signature(twin).parameters.values())  # type: ignore[arg-type]
    assert [(p.name, p.kind, p.default) for p in sync_params[1:]] == [
        (p.name, p.kind, p.default) for p in async_params[1:]
    ], (sync, twin)


def test_every_mixin_classmethod_has_an_async_twin() -> None:
    methods = {
        name: member
        for name, member in _public(AgentSessionMixin).items()
        if inspect.ismethod(member) and not name.startswith("a")
    }
    assert set(methods) == {
        "start_session",
        "continue_session",
        "resume_session",
        "get_context",
        "get_messages",
        "import_session",
        "regenerate_session",
        "edit_session",
        "switch_branch",
        "rewind_session",
        "list_sessions",
    }
    for name, sync in methods.items():
        twin = getattr(AgentSessionMixin, f"a{name}")
        assert inspect.iscoroutinefunction(twin), name
        assert not inspect.iscoroutinefunction(sync), name
        _same_parameters(sync, twin)
        assert twin.__doc__ and sync.__doc__


def test_every_async_method_has_a_sync_twin() -> None:
    for name, member in _public(AgentSessionMixin).items():
        if inspect.iscoroutinefunction(member):
            assert hasattr(AgentSessionMixin, name[1:]), name


def test_agent_run_and_arun_match() -> None:
    assert inspect.iscoroutinefunction(Agent.arun)
    _same_parameters(Agent.run, Agent.arun)
    assert inspect.iscoroutinefunction(Agent.aresume)
    _same_parameters(Agent.resume, Agent.aresume)


def test_every_session_classmethod_takes_deps() -> None:
    for name in (
        "start_session",
        "continue_session",
        "resume_session",
        "regenerate_session",
        "edit_session",
    ):
        for method in (getattr(AgentSessionMixin, name), getattr(AgentSessionMixin, f"a{name}")):
            deps = inspect.signature(method).parameters["deps"]
            assert deps.kind is deps.KEYWORD_ONLY and deps.default is None, name
    for method in (Agent.run, Agent.arun, Agent.resume, Agent.aresume):
        assert inspect.signature(method).parameters["deps"].default is None


def test_every_turn_of_an_existing_session_takes_an_idempotency_key() -> None:
    for name in ("continue_session", "resume_session", "regenerate_session", "edit_session"):
        for method in (getattr(AgentSessionMixin, name), getattr(AgentSessionMixin, f"a{name}")):
            key = inspect.signature(method).parameters["idempotency_key"]
            assert key.kind is key.KEYWORD_ONLY and key.default is None, name


def test_stores_answer_the_same_operations() -> None:
    sync_methods = {n for n in vars(SyncStore) if not n.startswith("__") or n == "__call__"}
    async_methods = {n for n in vars(AsyncStore) if not n.startswith("__") or n == "__call__"}
    assert sync_methods == async_methods
    for name in sync_methods - {"__init__"}:
        sync, twin = getattr(SyncStore, name), getattr(AsyncStore, name)
        assert inspect.iscoroutinefunction(twin), name
        _same_parameters(sync, twin)


def test_turn_streams_are_twins() -> None:
    from agent_session import AsyncTurnStream, TurnStream
    from agent_session._streaming import arun_stream, run_stream

    sync = set(_public(TurnStream))
    twin = set(_public(AsyncTurnStream))
    assert sync - {"close"} == twin - {"aclose"}
    for name in ("result", "session", "usage", "done"):
        assert isinstance(getattr(TurnStream, name), property), name
        assert isinstance(getattr(AsyncTurnStream, name), property), name
    assert inspect.isasyncgenfunction(AsyncTurnStream.text_deltas)
    assert inspect.iscoroutinefunction(AsyncTurnStream.aclose)
    assert {"__iter__", "__next__", "__enter__", "__exit__"} <= set(dir(TurnStream))
    assert {"__aiter__", "__anext__", "__aenter__", "__aexit__"} <= set(dir(AsyncTurnStream))
    _same_parameters(TurnStream.__init__, AsyncTurnStream.__init__)
    assert inspect.iscoroutinefunction(arun_stream)
    _same_parameters(run_stream, arun_stream)


def test_model_stream_and_astream_match() -> None:
    from agent_session import LiteLLMModel, Model
    from agent_session.testing import FunctionModel, TestModel

    for cls in (Model, LiteLLMModel, TestModel, FunctionModel):
        assert inspect.isgeneratorfunction(cls.stream), cls
        assert inspect.isasyncgenfunction(cls.astream), cls
        _same_parameters(cls.stream, cls.astream)


def test_every_turn_classmethod_takes_per_call_budgets() -> None:
    for name in (
        "start_session",
        "continue_session",
        "resume_session",
        "regenerate_session",
        "edit_session",
    ):
        for method in (getattr(AgentSessionMixin, name), getattr(AgentSessionMixin, f"a{name}")):
            parameters = inspect.signature(method).parameters
            for budget in ("max_session_tokens", "max_session_cost"):
                assert parameters[budget].kind is inspect.Parameter.KEYWORD_ONLY, name
                assert parameters[budget].default is None, name


def test_usage_and_cost_are_properties_of_the_mixin() -> None:
    assert isinstance(AgentSessionMixin.usage, property)
    assert isinstance(AgentSessionMixin.cost, property)
