"""The drivers: the loops that run a flow and answer what it yields.

``drive`` / ``adrive`` run a flow generator, sending each operation's answer back (or
throwing its error in). ``model_handler`` / ``amodel_handler`` answer the operations
that are not the database's: ``ModelRequest`` (the model), ``RunTools`` (the tools,
through a ``ToolScope``) and ``Sleep``. ``Agent.run`` drives its flow with one of them
alone; the stores (``_store``) answer ``Load``, ``Insert`` and ``Swap`` and hand
everything else to one; streamed turns (``_streaming``) answer ``ModelRequest`` by
streaming and the rest the same way. The sync and async twins differ only in how
they call and wait.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ._lazy import LazyModule
from ._operations import RunTools, Sleep
from .llm import Model, ModelRequest, acomplete_within, complete_within

if TYPE_CHECKING:
    import asyncio

    from .agent import Agent
    from .tools import ToolCallResult, Toolset
else:
    asyncio = LazyModule("asyncio")  # imported by the first async call: a sync app never is

__all__ = ["ToolScope", "adrive", "amodel_handler", "drive", "model_handler"]

T = TypeVar("T")


@dataclass(frozen=True)
class ToolScope:
    """What a handler gives the tools it runs: the caller's ``deps``, the session's
    key and the agent. Held by the handler, never by an operation, so ``deps`` is
    neither stored nor seen by anything that looks at operations."""

    toolset: Toolset
    deps: Any = None
    session_key: Any = None
    agent: Agent[Any] | None = None

    def run(self, op: RunTools) -> list[ToolCallResult]:
        """Sync code: the calls one after the other."""
        return self.toolset.run_calls(
            op.calls, deps=self.deps, session_key=self.session_key, agent=self.agent
        )

    async def arun(self, op: RunTools) -> list[ToolCallResult]:
        """Async code: the calls concurrently, results in call order."""
        return await self.toolset.arun_calls(
            op.calls, deps=self.deps, session_key=self.session_key, agent=self.agent
        )


def model_handler(model: Model, tools: ToolScope | None = None) -> Callable[[Any], Any]:
    """The handler of what is not a database operation: ``ModelRequest`` (the model,
    within the request's bounds), ``RunTools`` (``tools``) and ``Sleep`` (blocking).
    Alone it drives the flows that need no database (``Agent.run``); the stores hand
    it every operation that is not theirs."""

    def handle(op: Any) -> Any:
        if isinstance(op, ModelRequest):
            return complete_within(model, op)
        if isinstance(op, RunTools):
            assert tools is not None
            return tools.run(op)
        if isinstance(op, Sleep):
            time.sleep(op.seconds)
            return None
        raise TypeError(f"unknown operation {op!r}")

    return handle


def amodel_handler(model: Model, tools: ToolScope | None = None) -> Callable[[Any], Awaitable[Any]]:
    """Async twin of ``model_handler`` (``Sleep`` awaits: the event loop is never blocked)."""

    async def handle(op: Any) -> Any:
        if isinstance(op, ModelRequest):
            return await acomplete_within(model, op)
        if isinstance(op, RunTools):
            assert tools is not None
            return await tools.arun(op)
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)
            return None
        raise TypeError(f"unknown operation {op!r}")

    return handle


def drive(flow: Generator[Any, Any, T], handle: Callable[[Any], Any]) -> T:
    """Run a flow, answering each yielded operation with ``handle`` (blocking)."""
    try:
        op = next(flow)
        while True:
            try:
                value = handle(op)
            except Exception as exc:
                op = flow.throw(exc)
            else:
                op = flow.send(value)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def adrive(flow: Generator[Any, Any, T], handle: Callable[[Any], Awaitable[Any]]) -> T:
    """Run a flow, answering each yielded operation with ``await handle(op)``."""
    try:
        op = next(flow)
        while True:
            try:
                value = await handle(op)
            except Exception as exc:
                op = flow.throw(exc)
            else:
                op = flow.send(value)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
