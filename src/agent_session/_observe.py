"""Logging, OpenTelemetry spans and user hooks around every operation of a turn.

``drive``/``adrive`` run a flow exactly like ``_drivers.drive``/``_drivers.adrive``. When
something watches (a hook on the agent, an OpenTelemetry tracer provider set by the
application, or an ``agent_session`` logger enabled at the level it logs at), the
turn runs inside an ``invoke_agent`` span and each operation goes through the
*observer* registered for its type in ``_observers()``: a ``chat`` span, the model
hooks and DEBUG logs per ``ModelRequest``, a database span per ``Load``, ``Insert``
and ``Swap``, a span event per ``Sleep``. When nothing watches, they cost a few
cached checks and then run the plain drivers. The observation and the observers are
defined in ``_observing``, imported by the first call something watches.

An observer is a generator, like a flow: it yields the operation itself to have
the handler answer it, or ``HookCall(fn, args)`` to call a user hook, and returns
the operation's result. The sync and async drivers answer both (an async
hook in sync code is run to completion with ``tools.run_awaitable``), so the two
worlds observe the same way.

OpenTelemetry is never imported here: a tracer provider can only be set by code
that imported ``opentelemetry.trace``, so the module is looked up in
``sys.modules`` at call time. Spans follow the GenAI semantic conventions
(``gen_ai.*``) and the database ones (``db.*``); they carry no message contents.
Logs carry message contents only at DEBUG, and never the model settings (API keys)
or tool ``deps``.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from . import _drivers
from ._operations import HookCall
from ._secrets import get_logger
from .errors import ConfigurationError
from .llm import ModelRequest, ModelResponse
from .tools import ToolCallResult, run_awaitable

if TYPE_CHECKING:
    from ._observing import Observation
    from .agent import Agent

__all__ = [
    "HookCall",
    "Hooks",
    "adrive",
    "awith_hooks",
    "drive",
    "observed",
    "with_hooks",
]

T = TypeVar("T")

turn_log = get_logger("agent_session.turn")
model_log = get_logger("agent_session.model")
db_log = get_logger("agent_session.db")
tools_log = get_logger("agent_session.tools")

_WATCHED_LEVELS = (
    (turn_log, logging.INFO),
    (model_log, logging.INFO),
    (tools_log, logging.INFO),
    (db_log, logging.DEBUG),
)
"""Each logger and the lowest level it logs at here: below it, logging watches nothing."""

BeforeModelCall = Callable[[ModelRequest], "ModelRequest | Awaitable[ModelRequest | None] | None"]
AfterModelCall = Callable[[ModelRequest, ModelResponse], object]
OnToolCall = Callable[[ToolCallResult], object]
OnError = Callable[[Exception], object]


@dataclass(frozen=True)
class Hooks:
    """The hooks of one agent; each sync or async, or ``None``."""

    before_model_call: BeforeModelCall | None = None
    after_model_call: AfterModelCall | None = None
    on_tool_call: OnToolCall | None = None
    on_error: OnError | None = None

    @classmethod
    def build(
        cls,
        *,
        before_model_call: BeforeModelCall | None,
        after_model_call: AfterModelCall | None,
        on_tool_call: OnToolCall | None,
        on_error: OnError | None,
    ) -> Hooks | None:
        """Check the hooks given to ``Agent(...)``: ``None`` when there are none."""
        given = {
            "before_model_call": before_model_call,
            "after_model_call": after_model_call,
            "on_tool_call": on_tool_call,
            "on_error": on_error,
        }
        for name, hook in given.items():
            if hook is not None and not callable(hook):
                raise ConfigurationError(
                    f"{name} must be a function (sync or async) or None, got {type(hook).__name__}"
                )
        if all(hook is None for hook in given.values()):
            return None
        return cls(before_model_call, after_model_call, on_tool_call, on_error)


_NO_HOOKS = Hooks()


Steps = Generator[Any, Any, Any]
"""An observer: yields its operation (to be answered) and ``HookCall``s, returns the result."""
Observer = Callable[["Observation", Any], Steps]


# -- OpenTelemetry, looked up at call time ---------------------------------------

_tracer_cache: tuple[Any, Any] | None = None


def _tracer() -> Any:
    """The application's tracer, or ``None`` when no tracer provider is set."""
    global _tracer_cache
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    cached = _tracer_cache
    if cached is not None and cached[0] is provider:
        return cached[1]
    from . import __version__

    tracer = provider.get_tracer("agent_session", __version__)
    _tracer_cache = (provider, tracer)
    return tracer


# -- drivers ------------------------------------------------------------------------


def _watching() -> bool:
    return any(log.isEnabledFor(level) for log, level in _WATCHED_LEVELS)


def _observation(
    agent: Agent[Any], call: str, key: Any, store: Any, *, is_async: bool
) -> Observation | None:
    """An ``Observation`` when anything watches, else ``None`` (run the plain drivers)."""
    hooks: Hooks | None = agent._hooks
    tracer = _tracer()
    if hooks is None and tracer is None and not _watching():
        return None
    from ._observing import Observation

    return Observation(agent, call, key, store, tracer, hooks or _NO_HOOKS, is_async=is_async)


def _call_hook(step: HookCall) -> Any:
    value = step.fn(*step.args)
    if inspect.isawaitable(value):
        value = run_awaitable(value)
    return value


async def _acall_hook(step: HookCall) -> Any:
    value = step.fn(*step.args)
    if inspect.isawaitable(value):
        value = await value
    return value


def observed(
    agent: Agent[Any],
    flow: Generator[Any, Any, T],
    *,
    call: str,
    key: Any = None,
    store: Any = None,
    turn: bool = True,
    is_async: bool,
) -> Generator[Any, Any, T]:
    """The flow as every driver runs it: unchanged when nothing watches, else inside
    the turn's span and logs (``turn=False``, a read: without them), each operation
    through its observer. It may then yield ``HookCall``s: answer them with
    ``call_hook``/``acall_hook`` (``with_hooks``/``awith_hooks`` wrap a handler)."""
    obs = _observation(agent, call, key, store, is_async=is_async)
    if obs is None:
        return flow
    from ._observing import flattened

    steps = flattened(obs, flow)
    return obs.turn(steps) if turn else steps


def with_hooks(handle: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``handle``, also answering the ``HookCall``s of an observed flow."""

    def answer(op: Any) -> Any:
        if isinstance(op, HookCall):
            return _call_hook(op)
        return handle(op)

    return answer


def awith_hooks(handle: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    """Async twin of ``with_hooks``."""

    async def answer(op: Any) -> Any:
        if isinstance(op, HookCall):
            return await _acall_hook(op)
        return await handle(op)

    return answer


# Both drivers close what they drove before returning or raising: a turn cancelled
# (``asyncio.CancelledError``, ``KeyboardInterrupt``) ends its spans here, in the
# caller's context, not whenever the abandoned generator is collected. A streamed
# turn runs the same ``observed`` flow (``_streaming``).


def drive(
    agent: Agent[Any],
    flow: Generator[Any, Any, T],
    handle: Callable[[Any], Any],
    *,
    call: str,
    key: Any = None,
    store: Any = None,
    turn: bool = True,
) -> T:
    """``_drivers.drive``, observed. ``call`` names the API (``run``, ``continue_session``);
    ``turn=False`` (a read) gives no turn span, turn logs or ``on_error``."""
    watched = observed(agent, flow, call=call, key=key, store=store, turn=turn, is_async=False)
    if watched is flow:
        return _drivers.drive(flow, handle)
    try:
        return _drivers.drive(watched, with_hooks(handle))
    finally:
        watched.close()


async def adrive(
    agent: Agent[Any],
    flow: Generator[Any, Any, T],
    handle: Callable[[Any], Awaitable[Any]],
    *,
    call: str,
    key: Any = None,
    store: Any = None,
    turn: bool = True,
) -> T:
    """Async twin of ``drive``."""
    watched = observed(agent, flow, call=call, key=key, store=store, turn=turn, is_async=True)
    if watched is flow:
        return await _drivers.adrive(flow, handle)
    try:
        return await _drivers.adrive(watched, awith_hooks(handle))
    finally:
        watched.close()


def __getattr__(name: str) -> Any:
    # What runs when something watches (``Observation``, the observers, ``register``)
    # is defined in ``_observing``, imported by the first observed call.
    if not name.startswith("__"):
        from . import _observing

        if name in _observing.__dict__:
            return _observing.__dict__[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
