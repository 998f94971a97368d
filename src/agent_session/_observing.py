"""What runs when something watches a turn (``_observe``): the ``Observation`` of one
call, its OpenTelemetry spans, logs and hooks, and the observer of each operation.
Imported by the first observed call (a hook, a tracer provider, an enabled logger): a
turn nobody watches does not load it. Its names are also read as ``_observe`` names."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import traceback
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from . import _turn
from ._observe import (
    BeforeModelCall,
    HookCall,
    Hooks,
    Observer,
    Steps,
    db_log,
    model_log,
    tools_log,
    turn_log,
)
from ._operations import Insert, Load, RunTools, Sleep, Swap
from ._secrets import mask
from .errors import ConfigurationError, ModelCallError, ToolExecutionError, show_key
from .llm import ModelRequest, ModelResponse
from .tools import ToolCall, ToolCallResult

if TYPE_CHECKING:
    from .agent import Agent

__all__ = [
    "Observation",
    "flattened",
    "observe_model_call",
    "observe_sleep",
    "observe_tool_calls",
    "register",
]

T = TypeVar("T")


class _NoSpan:
    """Stands in for a span when nothing is traced."""

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        return None


_NO_SPAN = _NoSpan()


def _error_type(exc: BaseException) -> str:
    return type(exc).__qualname__


def _provider_name(model: str) -> str | None:
    """``openai`` for ``openai/gpt-4o-mini``: LiteLLM's provider prefix, if there is one."""
    provider, slash, _ = model.partition("/")
    return provider if slash and provider else None


_REQUEST_SETTINGS = (
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("seed", "gen_ai.request.seed"),
)
"""The numeric settings a ``chat`` span records; no other setting is ever read."""


def _db_system(store: Any) -> str | None:
    """``db.system.name`` of the database a store writes to, when it can be told."""
    try:
        session = getattr(store, "session", None)
        if session is not None:
            bind = getattr(session, "sync_session", session).get_bind(store.cls)
        else:
            bind = store.maker.kw.get("bind")
        dialect = bind.dialect
    except Exception:
        return None
    name: str = dialect.name
    if name == "mysql" and getattr(dialect, "is_mariadb", False):
        return "mariadb"
    return name


# -- one observed call --------------------------------------------------------------


class Observation:
    """What one observed call (a turn, or a read) has seen so far, and its spans."""

    def __init__(
        self,
        agent: Agent[Any],
        call: str,
        key: Any,
        store: Any,
        tracer: Any,
        hooks: Hooks,
        *,
        is_async: bool,
    ) -> None:
        self.agent = agent
        self.call = call
        self.key = key
        self.store = store
        self.tracer = tracer
        self.trace: Any = sys.modules["opentelemetry.trace"] if tracer is not None else None
        """The ``opentelemetry.trace`` module, when there is a tracer."""
        self.hooks = hooks
        self.is_async = is_async
        self.turn_span: Any = _NO_SPAN
        self.model_calls = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost: float | None = None
        self.response_model: str | None = None
        self.conflicts = 0
        self.waits = 0
        self.left_out: int | None = None
        self.summary_calls = 0
        """Answered summary calls of a compaction in this turn."""
        """Stored messages the history window left out of the turn's last request."""
        self._db_system: tuple[str | None] | None = None

    # -- naming

    @property
    def session(self) -> str:
        """How logs name what runs: ``Chat session 42``, ``new Chat session``, ``agent 'x'``."""
        if self.store is None:
            return f"agent {self.agent.name!r}"
        name = self.store.cls.__name__
        return f"new {name} session" if self.key is None else f"{name} session {show_key(self.key)}"

    @property
    def table(self) -> str:
        """The session table's name (``db.collection.name``)."""
        cls = self.store.cls
        name: str | None = getattr(getattr(cls, "__table__", None), "name", None)
        return name or cls.__name__

    def db_system(self) -> str | None:
        """``db.system.name``, worked out once (after a first statement)."""
        if self._db_system is None:
            self._db_system = (_db_system(self.store),)
        return self._db_system[0]

    # -- spans

    def span(self, name: str, attributes: Mapping[str, Any], *, client: bool = True) -> Any:
        """A context manager opening a span as the current one (a stand-in without a tracer).

        An error that leaves it is recorded as OpenTelemetry would, its text masked
        (``_secrets``): a provider's message or its traceback may quote a key.
        """
        if self.tracer is None:
            return _NO_SPAN
        kind = self.trace.SpanKind.CLIENT if client else self.trace.SpanKind.INTERNAL
        opened = self.tracer.start_as_current_span(
            name,
            kind=kind,
            attributes=dict(attributes),
            record_exception=False,
            set_status_on_exception=False,
        )
        return _masked_errors(opened, self.trace)

    def start_span(self, name: str, attributes: Mapping[str, Any], start_ns: int) -> Any:
        """A span that is not made current, started at ``start_ns``; the caller ends it."""
        return self.tracer.start_span(
            name,
            kind=self.trace.SpanKind.INTERNAL,
            attributes=dict(attributes),
            start_time=start_ns,
        )

    # -- the turn

    def turn(self, flow: Generator[Any, Any, T]) -> Generator[Any, Any, T]:
        """The flow, inside the turn's span and logs; ``on_error`` sees its error."""
        agent = self.agent
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent.name,
            "gen_ai.request.model": agent.model_name,
            "agent_session.call": self.call,
        }
        provider = _provider_name(agent.model_name)
        if provider is not None:
            attributes["gen_ai.provider.name"] = provider
        if self.key is not None:
            attributes["gen_ai.conversation.id"] = _conversation_id(self.key)
        started = time.perf_counter()
        turn_log.info(
            "%s started: %s, model %s",
            self.call,
            self.session,
            agent.model_name,
            extra={"agent_session": {"call": self.call, "model": agent.model_name}},
        )
        with self.span(f"invoke_agent {agent.name}", attributes, client=False) as span:
            self.turn_span = span
            try:
                result = yield from flow
            except Exception as exc:
                elapsed = time.perf_counter() - started
                span.set_attribute("error.type", _error_type(exc))
                self._record_totals(span)
                # The caller gets the error: INFO, like the end of a turn that succeeded.
                turn_log.info(
                    "%s failed: %s, model %s, after %.3fs and %d model call(s): %s",
                    self.call,
                    self.session,
                    agent.model_name,
                    elapsed,
                    self.model_calls,
                    _error_type(exc),
                    extra={"agent_session": self._summary(elapsed, error=_error_type(exc))},
                )
                # The message may quote the input (a validation error does): DEBUG only.
                turn_log.debug("%s error: %s", self.call, exc)
                on_error = self.hooks.on_error
                # A reader that stopped a stream early is no error of the turn's.
                if on_error is not None and not isinstance(exc, _turn.TurnCancelled):
                    try:
                        yield HookCall(on_error, (exc,))
                    except Exception:
                        turn_log.warning(
                            "the on_error hook raised; the turn's own error is raised",
                            exc_info=True,
                        )
                raise
            elapsed = time.perf_counter() - started
            self._record_totals(span)
            cost = "unknown" if self.cost is None else f"{self.cost:.6f}"
            turn_log.info(
                "%s ended: %s, model %s, in %.3fs: %d model call(s), %d input + %d output "
                "tokens, cost %s%s%s%s",
                self.call,
                self.session,
                self.response_model or agent.model_name,
                elapsed,
                self.model_calls,
                self.input_tokens,
                self.output_tokens,
                cost,
                f", {self.conflicts} conflict(s)" if self.conflicts else "",
                f", window left out {self.left_out} stored message(s)" if self.left_out else "",
                ", history compacted" if self.summary_calls else "",
                extra={"agent_session": self._summary(elapsed)},
            )
            return result

    def _summary(self, elapsed: float, *, error: str | None = None) -> dict[str, Any]:
        """The numbers of the turn, for log handlers that keep structured fields."""
        summary: dict[str, Any] = {
            "call": self.call,
            "model": self.response_model or self.agent.model_name,
            "duration_s": elapsed,
            "model_calls": self.model_calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost": self.cost,
            "conflicts": self.conflicts,
            "window_left_out": self.left_out,
            "summary_calls": self.summary_calls,
        }
        if self.key is not None:
            summary["session"] = _conversation_id(self.key)
        if error is not None:
            summary["error"] = error
        return summary

    def _record_totals(self, span: Any) -> None:
        span.set_attribute("gen_ai.usage.input_tokens", self.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", self.output_tokens)
        span.set_attribute("agent_session.model_calls", self.model_calls)
        if self.cost is not None:
            span.set_attribute("agent_session.cost", self.cost)
        if self.response_model:
            span.set_attribute("gen_ai.response.model", self.response_model)
        if self.conflicts:
            span.set_attribute("agent_session.conflicts", self.conflicts)
        if self.waits:
            span.set_attribute("agent_session.waits", self.waits)
        if self.left_out is not None:
            span.set_attribute("agent_session.window.left_out", self.left_out)
        if self.key is not None:
            span.set_attribute("gen_ai.conversation.id", _conversation_id(self.key))


@contextmanager
def _masked_errors(opened: Any, trace: Any) -> Iterator[Any]:
    """``opened`` (a span's context manager), recording an error's event and status
    with their text masked."""
    with opened as span:
        try:
            yield span
        except Exception as exc:
            if span.is_recording():
                stacktrace = "".join(traceback.format_exception(exc))
                span.record_exception(
                    exc,
                    attributes={
                        "exception.message": mask(str(exc)),
                        "exception.stacktrace": mask(stacktrace),
                    },
                )
                description = mask(f"{type(exc).__name__}: {exc}")
                span.set_status(trace.Status(trace.StatusCode.ERROR, description))
            raise


def _conversation_id(key: Any) -> str:
    return show_key(key)


# -- observers, one per operation type ----------------------------------------------


def observe_model_call(obs: Observation, request: ModelRequest) -> Steps:
    """A ``chat`` span, ``before_model_call``/``after_model_call`` and the DEBUG logs."""
    hooks = obs.hooks
    with obs.span(f"chat {request.model}", {"gen_ai.operation.name": "chat"}) as span:
        try:
            if hooks.before_model_call is not None:
                request = yield from _before_model_call(hooks.before_model_call, request)
            _request_attributes(span, request)
            if request.purpose != "turn":
                span.set_attribute("agent_session.request.purpose", request.purpose)
            if request.left_out is not None:
                obs.left_out = request.left_out
                span.set_attribute("agent_session.window.left_out", request.left_out)
            if model_log.isEnabledFor(logging.DEBUG):
                model_log.debug(
                    "request to %s: %d message(s): %s",
                    request.model,
                    len(request.messages),
                    json.dumps(request.messages, ensure_ascii=False, default=str),
                )
            started = time.perf_counter()
            try:
                response: ModelResponse = yield request
            except Exception as exc:
                model_log.info(
                    "call to %s failed after %.3fs: %s",
                    request.model,
                    time.perf_counter() - started,
                    _error_type(exc),
                )
                raise
            elapsed = time.perf_counter() - started
            obs.model_calls += 1
            if request.purpose == "summary":
                obs.summary_calls += 1
            obs.input_tokens += response.usage.prompt_tokens
            obs.output_tokens += response.usage.completion_tokens
            if response.cost is not None:
                obs.cost = (obs.cost or 0.0) + response.cost
            obs.response_model = response.model or request.model
            span.set_attribute("gen_ai.response.model", obs.response_model)
            span.set_attribute("gen_ai.usage.input_tokens", response.usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", response.usage.completion_tokens)
            if response.finish_reason is not None:
                span.set_attribute("gen_ai.response.finish_reasons", [response.finish_reason])
            if response.cost is not None:
                span.set_attribute("agent_session.cost", response.cost)
            model_log.debug(
                "%s answered in %.3fs: %d input + %d output tokens, finish_reason %s",
                obs.response_model,
                elapsed,
                response.usage.prompt_tokens,
                response.usage.completion_tokens,
                response.finish_reason,
            )
            if model_log.isEnabledFor(logging.DEBUG):
                model_log.debug("reply from %s: %s", obs.response_model, response.text)
            if hooks.after_model_call is not None:
                try:
                    yield HookCall(hooks.after_model_call, (request, response))
                except Exception as exc:
                    raise _hook_failed("the after_model_call hook raised", request, exc) from exc
            return response
        except Exception as exc:
            span.set_attribute("error.type", _error_type(exc))
            raise


def _before_model_call(
    hook: BeforeModelCall, request: ModelRequest
) -> Generator[HookCall, Any, ModelRequest]:
    """Call ``before_model_call``: its request (or the same one); raising vetoes the call."""
    try:
        changed = yield HookCall(hook, (request,))
    except Exception as exc:
        refused = f"the before_model_call hook refused the call to {request.model}"
        raise _hook_failed(refused, request, exc) from exc
    if changed is None:
        return request
    if not isinstance(changed, ModelRequest):
        raise ConfigurationError(
            f"before_model_call must return a ModelRequest or None, got {type(changed).__name__}"
        )
    if changed.bounds is not request.bounds:  # the turn's time and output limits stay
        changed = dataclasses.replace(changed, bounds=request.bounds)
    return changed


def _hook_failed(what: str, request: ModelRequest, exc: Exception) -> ModelCallError:
    """The error of a turn whose model hook raised: never retried, ``exc`` its cause."""
    return ModelCallError(f"{what}: {exc!r}", model=request.model, retryable=False)


def _request_attributes(span: Any, request: ModelRequest) -> None:
    span.set_attribute("gen_ai.request.model", request.model)
    provider = _provider_name(request.model)
    if provider is not None:
        span.set_attribute("gen_ai.provider.name", provider)
    span.set_attribute("gen_ai.output.type", "text" if request.response_format is None else "json")
    settings = request.settings
    for key, attribute in _REQUEST_SETTINGS:
        value = settings.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            span.set_attribute(attribute, value)


def observe_sleep(obs: Observation, op: Sleep) -> Steps:
    """A wait (a retry's backoff, a conflict's, a busy row's): an event on the turn's span."""
    obs.waits += 1
    obs.turn_span.add_event("agent_session.wait", {"agent_session.wait.seconds": op.seconds})
    turn_log.debug("%s: waiting %.3fs", obs.session, op.seconds)
    return (yield op)


def _database_observer(operation: str) -> Observer:
    """The observer of one kind of database operation (``SELECT``, ``INSERT``, ``UPDATE``)."""

    def observe(obs: Observation, op: Any) -> Steps:
        table = obs.table
        attributes = {"db.operation.name": operation, "db.collection.name": table}
        started = time.perf_counter()
        with obs.span(f"{operation} {table}", attributes) as span:
            try:
                value = yield op
            except Exception as exc:
                span.set_attribute("error.type", _error_type(exc))
                db_log.debug("%s %s failed: %s", operation, table, _error_type(exc))
                raise
            # After the first statement: a dialect knows it speaks to MariaDB only then.
            system = obs.db_system()
            if system is not None:
                span.set_attribute("db.system.name", system)
            if operation == "UPDATE":
                span.set_attribute("agent_session.written", bool(value))
                if value is False:
                    obs.conflicts += 1
                    turn_log.info(
                        "%s: another writer changed the row first (revision %d); "
                        "nothing was written",
                        obs.session,
                        op.seen_revision,
                    )
            elif operation == "INSERT" and obs.key is None:
                from ._keys import identity

                obs.key = identity(value)
        db_log.debug("%s %s in %.3fs", operation, table, time.perf_counter() - started)
        return value

    return observe


def observe_tool_calls(obs: Observation, op: Any) -> Steps:
    """An operation that runs tool calls (``op.calls``, answered with one
    ``ToolCallResult`` per call, in call order): an ``execute_tool`` span and an
    ``on_tool_call`` hook per result.

    The calls run inside the handler, so their spans are recorded afterwards from
    each result's ``duration_s``: one after the other in sync code, all from the
    start in async code, which runs them concurrently.
    """
    calls: Sequence[ToolCall] = tuple(op.calls)
    start_ns = time.time_ns()
    try:
        results: Sequence[ToolCallResult] = yield op
    except Exception as exc:
        if obs.tracer is not None:
            end_ns = time.time_ns()
            for call in calls:
                _tool_span(obs, call.name, call.id, start_ns, end_ns, error=_error_type(exc))
        tools_log.info("tool calls %s failed: %s", [c.name for c in calls], _error_type(exc))
        raise
    at = start_ns
    for result in results:
        duration_ns = int(result.duration_s * 1e9)
        if obs.tracer is not None:
            error = "tool_error" if result.status == "error" else None
            _tool_span(
                obs, result.name, result.tool_call_id, at, at + duration_ns, error, result.status
            )
        if not obs.is_async:
            at += duration_ns
        tools_log.info(
            "tool %s (%s): %s in %.3fs",
            result.name,
            result.tool_call_id,
            result.status,
            result.duration_s,
        )
        if tools_log.isEnabledFor(logging.DEBUG):
            tools_log.debug(
                "tool %s (%s) arguments %s, sent back: %s",
                result.name,
                result.tool_call_id,
                json.dumps(result.arguments, ensure_ascii=False, default=str),
                result.content,
            )
    hook = obs.hooks.on_tool_call
    if hook is not None:
        for result in results:
            try:
                yield HookCall(hook, (result,))
            except Exception as exc:
                raise ToolExecutionError(
                    f"the on_tool_call hook raised for {result.name}: {exc!r}",
                    tool_name=result.name,
                    tool_call_id=result.tool_call_id,
                ) from exc
    return results


def _tool_span(
    obs: Observation,
    name: str,
    call_id: str,
    start_ns: int,
    end_ns: int,
    error: str | None = None,
    status: str | None = None,
) -> None:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": "function",
    }
    if status is not None:
        attributes["agent_session.tool.status"] = status
    if error is not None:
        attributes["error.type"] = error
    span = obs.start_span(f"execute_tool {name}", attributes, start_ns)
    if error is not None:
        span.set_status(obs.trace.Status(obs.trace.StatusCode.ERROR, error))
    span.end(end_time=max(end_ns, start_ns))


_OBSERVERS: dict[type, Observer] = {}


def _observers() -> dict[type, Observer]:
    """The observer of each operation type, filled on first use."""
    if not _OBSERVERS:
        _OBSERVERS.update(
            {
                ModelRequest: observe_model_call,
                Sleep: observe_sleep,
                Load: _database_observer("SELECT"),
                Insert: _database_observer("INSERT"),
                Swap: _database_observer("UPDATE"),
                RunTools: observe_tool_calls,
            }
        )
    return _OBSERVERS


def register(op_type: type, observer: Observer) -> None:
    """Observe operations of ``op_type`` with ``observer`` (for new operation types)."""
    _observers()[op_type] = observer


def flattened(obs: Observation, flow: Generator[Any, Any, T]) -> Generator[Any, Any, T]:
    """``flow`` with each operation passed through its observer: yields the
    operations to answer (as the observers hand them on, a model request possibly
    changed by ``before_model_call``) and the ``HookCall``s to make, so that any
    driver (``drive``, a turn stream) answers an observed flow like a plain one."""
    observers = _observers()
    try:
        op = next(flow)
        while True:
            observer = observers.get(type(op))
            try:
                if observer is None:
                    value = yield op
                else:
                    value = yield from observer(obs, op)
            except Exception as exc:
                op = flow.throw(exc)
            else:
                op = flow.send(value)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        flow.close()
