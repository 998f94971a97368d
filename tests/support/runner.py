"""Run an agent through ``agent.run`` or ``await agent.arun`` with one call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from agent_session import Agent, Result

Run = Callable[..., Awaitable[Result[Any]]]


async def call_sync(agent: Agent[Any], input: Any, **kwargs: Any) -> Result[Any]:
    return agent.run(input, **kwargs)


async def call_async(agent: Agent[Any], input: Any, **kwargs: Any) -> Result[Any]:
    return await agent.arun(input, **kwargs)
