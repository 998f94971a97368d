"""Tools: Python functions a model may call, their JSON schemas, and running the calls.

A tool is a plain function (sync or async) or a ``Tool(fn, ...)``. Its parameters
become a Pydantic model, built once from the signature, so the JSON schema sent to
the model and the validation of the model's arguments are the same thing:

- type hints give the types (an unannotated parameter is ``Any``, schema ``{}``);
  defaults make parameters optional; ``Annotated[..., Field(description=...)]`` is
  honoured; other arguments are refused (``additionalProperties: false``);
- the docstring's first paragraph is the tool's description, and an ``Args:``
  (Google), ``Parameters`` (NumPy) or ``:param x:`` (Sphinx) section describes the
  parameters that ``Field`` does not;
- a first parameter typed ``ToolContext`` (or ``ToolContext[Deps]``) is not part of
  the schema: it receives the caller's ``deps``, the call's id, the session's key
  and the agent.

A bad definition is a ``ConfigurationError`` when the tool is built.

Running calls never raises for the model's mistakes: unparsable or invalid
arguments, an unknown tool name, an exception in the tool and a result that is not
JSON-safe all become an error result the model can react to. Only a tool built with
``on_error="raise"`` turns its own exception (or an unsafe result) into
``ToolExecutionError``.

Sync and async: ``run_calls`` (sync code) runs the calls one after the other, and
runs an async tool to completion on an event loop of its own. ``arun_calls`` (async
code) runs the calls of one reply concurrently: async tools on the running loop,
sync tools in worker threads (``asyncio.to_thread``) so a blocking tool does not
stall the loop. Results come back in call order either way.

Building a tool's arguments model, ``ToolContext`` and ``PreparedCall`` are defined in
``_tooling`` (read here by name), imported by the first tool: an agent without tools
does not load them.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from ._lazy import LazyModule, lazy_compile
from ._secrets import get_logger
from ._text import clean_json, clean_text, encodable
from .errors import ConfigurationError, ToolExecutionError

if TYPE_CHECKING:
    import asyncio

    from . import _tooling
    from ._tooling import PreparedCall, ToolContext
    from .agent import Agent
else:
    # Defining and running a tool: imported by the first tool (or the first import of
    # ``ToolContext``). An agent without tools does not load it.
    _tooling = LazyModule("agent_session._tooling")
    asyncio = LazyModule("asyncio")  # imported by the first async call: a sync app never is

__all__ = [
    "Denied",
    "PendingApproval",
    "PreparedCall",
    "Tool",
    "ToolCall",
    "ToolCallResult",
    "ToolContext",
    "Toolset",
    "as_tool",
    "replay_arguments",
    "run_awaitable",
]

logger: logging.Logger = get_logger("agent_session.tools")

DepsT = TypeVar("DepsT")
T = TypeVar("T")

NAME_PATTERN = lazy_compile(r"^[a-zA-Z0-9_-]{1,64}$")
"""What OpenAI (and Anthropic) accept as a tool name."""

MAX_ERROR_CHARS = 2000
"""Cap on an error result's text: the model gets the gist, never a huge echo."""
MAX_LISTED_ERRORS = 10
"""At most this many validation errors are listed in an error result."""


# -- the public value types ----------------------------------------------------------


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True, init=False)
class ToolCall:
    """One call a model asked for: a tool name and its arguments.

    ``arguments`` is the raw JSON text the model sent (kept as it is, even when it is
    not valid JSON); a mapping given here is encoded to JSON. ``id`` is the model's
    call id; one is made up when not given.
    """

    name: str
    arguments: str
    id: str

    def __init__(
        self,
        name: str,
        arguments: str | Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
    ) -> None:
        if arguments is None:
            text = "{}"
        elif isinstance(arguments, str):
            text = arguments
        else:
            text = json.dumps(dict(arguments), ensure_ascii=False)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "arguments", text)
        object.__setattr__(self, "id", id if id is not None else _new_call_id())

    def to_openai(self) -> dict[str, Any]:
        """The call as an entry of an assistant message's ``tool_calls``, arguments raw."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class PendingApproval:
    """A call that waits for a person's decision: its id, tool and validated arguments."""

    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Denied:
    """A decision that refuses a pending call; the model is told, with ``reason`` if given."""

    reason: str | None = None


@dataclass(frozen=True)
class ToolCallResult:
    """What became of one call: the record behind ``result.tool_calls``.

    ``status`` is ``"ok"``, ``"error"`` (the model is sent ``error``) or ``"denied"``.
    ``arguments`` are the validated arguments (the parsed ones, or ``{}``, when they
    did not validate); ``raw_arguments`` keeps the model's text when it was not a JSON
    object, since the call is replayed with ``replay_arguments``. ``result`` is the
    tool's return value made JSON-safe; ``content`` is the text of the ``tool``
    message sent back to the model.
    """

    tool_call_id: str
    name: str
    arguments: dict[str, Any]
    status: Literal["ok", "error", "denied"]
    content: str
    result: Any = None
    error: str | None = None
    raw_arguments: str | None = None
    duration_s: float = 0.0

    def to_message(self) -> dict[str, Any]:
        """The OpenAI ``tool`` message that answers the call."""
        return {
            "role": "tool",
            "tool_call_id": self.tool_call_id,
            "name": self.name,
            "content": self.content,
        }


def replay_arguments(raw: str) -> tuple[str, str | None]:
    """The arguments text to store and replay for ``raw``, and ``raw`` if it was replaced.

    A provider refuses a history whose calls do not carry a JSON object (a real server
    answered every later request with HTTP 500), so such a call is replayed with
    ``"{}"`` and the raw text is returned for keeping beside it. Blank text (some
    providers send ``""`` for a call without arguments) becomes ``"{}"`` as well.
    """
    if not raw.strip():
        return "{}", None
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        return "{}", raw
    if not isinstance(parsed, dict):
        return "{}", raw
    return raw, None


# -- building a tool ----------------------------------------------------------------


class Tool(Generic[DepsT]):
    """A function the model may call.

    ``name`` defaults to the function's ``__name__`` and must match
    ``^[a-zA-Z0-9_-]{1,64}$``; ``description`` defaults to the docstring's first
    paragraph. ``requires_approval=True`` makes a turn pause for a person's decision
    before the call runs. ``on_error="return"`` (the default) sends an exception
    raised by the tool back to the model as an error result; ``on_error="raise"``
    raises ``ToolExecutionError`` from it instead.
    """

    fn: Callable[..., Any]
    name: str
    description: str | None
    requires_approval: bool
    on_error: Literal["return", "raise"]
    takes_context: bool
    is_async: bool
    parameters: dict[str, Any]
    """The JSON schema of the arguments."""
    arguments_model: type[BaseModel]

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        requires_approval: bool = False,
        on_error: Literal["return", "raise"] = "return",
    ) -> None:
        if isinstance(fn, Tool):
            raise ConfigurationError("Tool() takes a function, not another Tool")
        if not callable(fn):
            raise ConfigurationError(f"a tool must be callable, got {type(fn).__name__}")
        if on_error not in ("return", "raise"):
            raise ConfigurationError(f"on_error must be 'return' or 'raise', got {on_error!r}")
        if not isinstance(requires_approval, bool):
            raise ConfigurationError("requires_approval must be True or False")
        tool_name = name if name is not None else getattr(fn, "__name__", None)
        if not isinstance(tool_name, str) or not NAME_PATTERN.match(tool_name):
            raise ConfigurationError(
                f"tool name {tool_name!r} must match {NAME_PATTERN.pattern}"
                + ("" if name is not None else "; pass name=...")
            )
        self.fn = fn
        self.name = tool_name
        self.requires_approval = requires_approval
        self.on_error = on_error
        self.is_async = _is_async_callable(fn)

        summary, param_docs = _tooling.parse_docstring(inspect.getdoc(fn))
        self.description = description if description is not None else summary
        self.takes_context, self._params, self.arguments_model = _tooling.arguments_model(
            fn, tool_name, param_docs
        )
        try:
            self.parameters = self.arguments_model.model_json_schema(
                schema_generator=_tooling.NoTitles
            )
        except Exception as exc:
            raise ConfigurationError(
                f"tool {tool_name!r}: its parameters have no JSON schema: {exc}"
            ) from exc

    @classmethod
    def from_function(
        cls,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        requires_approval: bool = False,
        on_error: Literal["return", "raise"] = "return",
    ) -> Tool[Any]:
        """The same as ``Tool(fn, ...)``."""
        return cls(
            fn,
            name=name,
            description=description,
            requires_approval=requires_approval,
            on_error=on_error,
        )

    def __repr__(self) -> str:
        return f"Tool({self.name!r}, requires_approval={self.requires_approval})"

    @property
    def definition(self) -> dict[str, Any]:
        """The entry of a request's ``tools`` list (OpenAI's function-tool form)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}

    def validate_arguments(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments validated and converted (``ValidationError`` if they are not)."""
        model = self.arguments_model.model_validate(dict(arguments))
        return {param.name: getattr(model, param.field) for param in self._params}

    def _invoke(self, arguments: Mapping[str, Any], context: ToolContext[Any]) -> Any:
        positional: list[Any] = [context] if self.takes_context else []
        keywords: dict[str, Any] = {}
        for param in self._params:
            if param.positional_only:
                positional.append(arguments[param.name])
            else:
                keywords[param.name] = arguments[param.name]
        return self.fn(*positional, **keywords)


def as_tool(obj: Tool[Any] | Callable[..., Any]) -> Tool[Any]:
    """``obj`` if it is a ``Tool``, else ``Tool(obj)``: a plain function is accepted."""
    return obj if isinstance(obj, Tool) else Tool(obj)


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an instance with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


# -- a set of tools and running calls ------------------------------------------------


class Toolset:
    """The tools of an agent, by name: definitions to send, and running calls.

    Built once with the agent; a duplicate name is a ``ConfigurationError``.
    """

    def __init__(self, tools: Iterable[Tool[Any] | Callable[..., Any]] = ()) -> None:
        if isinstance(tools, str | bytes | Mapping) or not isinstance(tools, Iterable):
            raise ConfigurationError("tools must be a list of functions or Tool objects")
        self.tools: dict[str, Tool[Any]] = {}
        for item in tools:
            tool = as_tool(item)
            if tool.name in self.tools:
                raise ConfigurationError(f"two tools are named {tool.name!r}")
            self.tools[tool.name] = tool
        self.definitions: list[dict[str, Any]] = [tool.definition for tool in self.tools.values()]
        """The request's ``tools`` list, in the order the tools were given."""

    def __bool__(self) -> bool:
        return bool(self.tools)

    def __len__(self) -> int:
        return len(self.tools)

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def __getitem__(self, name: str) -> Tool[Any]:
        return self.tools[name]

    # -- checking calls (pure) --------------------------------------------------

    def prepare(self, call: ToolCall) -> _tooling.PreparedCall:
        """Parse and validate a call's arguments; errors become the call's result."""
        from ._tooling import PreparedCall

        tool = self.tools.get(call.name)
        parsed: Any = {}
        invalid: ValueError | None = None
        if call.arguments.strip():  # blank text (some providers send "") means {}
            try:
                parsed = json.loads(call.arguments)
            except ValueError as exc:
                invalid = exc
            except RecursionError:
                invalid = ValueError("nested too deeply")
        # What ``replay_arguments`` keeps: the raw text of arguments that are not an object.
        raw_kept = None if invalid is None and isinstance(parsed, dict) else call.arguments
        if tool is None:
            available = ", ".join(self.tools) or "(none)"
            message = f"unknown tool {_preview(call.name)}; available tools: {available}"
            return PreparedCall(call, None, {}, raw_kept, _error(call, {}, raw_kept, message))
        if invalid is not None:
            message = f"the arguments of {tool.name} are not valid JSON ({invalid}); nothing ran"
            return PreparedCall(call, tool, {}, raw_kept, _error(call, {}, raw_kept, message))
        if not isinstance(parsed, dict):
            message = (
                f"the arguments of {tool.name} must be a JSON object,"
                f" got {type(parsed).__name__}; nothing ran"
            )
            return PreparedCall(call, tool, {}, raw_kept, _error(call, {}, raw_kept, message))
        try:
            arguments = tool.validate_arguments(parsed)
        except ValidationError as exc:
            message = _validation_message(tool.name, exc)
            safe = _json_safe_or_empty(parsed)
            return PreparedCall(call, tool, safe, raw_kept, _error(call, safe, raw_kept, message))
        return PreparedCall(call, tool, arguments, raw_kept, None)

    def pending_approval(self, call: ToolCall) -> PendingApproval | None:
        """A ``PendingApproval`` if the call needs one and its arguments are valid.

        A call with invalid arguments never waits for a person: its error result goes
        back to the model at once.
        """
        prepared = self.prepare(call)
        if prepared.error is not None or prepared.tool is None:
            return None
        if not prepared.tool.requires_approval:
            return None
        return PendingApproval(
            tool_call_id=call.id,
            tool_name=call.name,
            arguments=_json_safe_or_empty(prepared.arguments),
        )

    def denied(self, call: ToolCall, decision: Denied | bool) -> ToolCallResult:
        """The result sent to the model for a call a person refused."""
        reason = decision.reason if isinstance(decision, Denied) else None
        content = f"The call to {call.name} was denied by the user" + (
            f": {reason}" if reason else "."
        )
        prepared = self.prepare(call)
        return ToolCallResult(
            tool_call_id=call.id,
            name=call.name,
            arguments=_json_safe_or_empty(prepared.arguments),
            status="denied",
            content=content,
            error=reason,
            raw_arguments=prepared.raw_arguments,
        )

    # -- running calls ----------------------------------------------------------

    def run_calls(
        self,
        calls: Sequence[ToolCall],
        *,
        deps: Any = None,
        session_key: Any = None,
        agent: Agent[Any] | None = None,
    ) -> list[ToolCallResult]:
        """Run the calls one after the other (sync code); results in call order."""
        return [
            self.run_call(call, deps=deps, session_key=session_key, agent=agent) for call in calls
        ]

    async def arun_calls(
        self,
        calls: Sequence[ToolCall],
        *,
        deps: Any = None,
        session_key: Any = None,
        agent: Agent[Any] | None = None,
    ) -> list[ToolCallResult]:
        """Run the calls concurrently (async code); results in call order.

        Every call runs to its end; if calls with ``on_error="raise"`` failed, the
        ``ToolExecutionError`` of the first of them in call order is raised after.
        """
        outcomes = await asyncio.gather(
            *(
                self.arun_call(call, deps=deps, session_key=session_key, agent=agent)
                for call in calls
            ),
            return_exceptions=True,
        )
        results: list[ToolCallResult] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        return results

    def run_call(
        self,
        call: ToolCall,
        *,
        deps: Any = None,
        session_key: Any = None,
        agent: Agent[Any] | None = None,
    ) -> ToolCallResult:
        """Run one call from sync code (an async tool runs on a loop of its own)."""
        prepared = self.prepare(call)
        if prepared.error is not None or prepared.tool is None:
            return _checked_error(prepared)
        tool = prepared.tool
        context = _tooling.ToolContext(deps, call.id, session_key, agent)
        started = time.perf_counter()
        try:
            value = tool._invoke(prepared.arguments, context)
            if inspect.isawaitable(value):
                value = run_awaitable(value)
        except Exception as exc:
            return _failure(prepared, tool, exc, time.perf_counter() - started)
        return _success(prepared, tool, value, time.perf_counter() - started)

    async def arun_call(
        self,
        call: ToolCall,
        *,
        deps: Any = None,
        session_key: Any = None,
        agent: Agent[Any] | None = None,
    ) -> ToolCallResult:
        """Run one call from async code (a sync tool runs in a worker thread)."""
        prepared = self.prepare(call)
        if prepared.error is not None or prepared.tool is None:
            return _checked_error(prepared)
        tool = prepared.tool
        context = _tooling.ToolContext(deps, call.id, session_key, agent)
        started = time.perf_counter()
        try:
            if tool.is_async:
                value = tool._invoke(prepared.arguments, context)
            else:
                value = await asyncio.to_thread(tool._invoke, prepared.arguments, context)
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            return _failure(prepared, tool, exc, time.perf_counter() - started)
        return _success(prepared, tool, value, time.perf_counter() - started)


def _checked_error(prepared: PreparedCall) -> ToolCallResult:
    assert prepared.error is not None
    return prepared.error


def _error(
    call: ToolCall, arguments: dict[str, Any], raw: str | None, message: str
) -> ToolCallResult:
    text = clean_text(_bounded(message))  # an exception's text may quote anything
    return ToolCallResult(
        tool_call_id=call.id,
        name=call.name,
        arguments=arguments,
        status="error",
        content=f"Error: {text}",
        error=text,
        raw_arguments=raw,
    )


def _failure(
    prepared: PreparedCall, tool: Tool[Any], exc: Exception, duration: float
) -> ToolCallResult:
    call = prepared.call
    if tool.on_error == "raise":
        raise ToolExecutionError(
            f"tool {tool.name!r} raised {type(exc).__name__}: {_bounded(str(exc), 500)}",
            tool_name=tool.name,
            tool_call_id=call.id,
        ) from exc
    detail = str(exc)
    message = f"{tool.name} raised {type(exc).__name__}" + (f": {detail}" if detail else "")
    result = _error(call, _json_safe_or_empty(prepared.arguments), prepared.raw_arguments, message)
    return replace(result, duration_s=duration)


def _success(
    prepared: PreparedCall, tool: Tool[Any], value: Any, duration: float
) -> ToolCallResult:
    call = prepared.call
    arguments = _json_safe_or_empty(prepared.arguments)
    try:
        safe, content = tool_output(value)
        if not encodable(content):
            logger.warning(
                "the result of tool %s holds text that cannot be encoded as UTF-8 (a lone "
                "surrogate); it is kept with U+FFFD in its place",
                tool.name,
            )
            safe, content = tool_output(clean_json(safe))
    except (TypeError, ValueError, RecursionError) as exc:
        if tool.on_error == "raise":
            raise ToolExecutionError(
                f"tool {tool.name!r} returned a value that is not JSON-safe: {exc}",
                tool_name=tool.name,
                tool_call_id=call.id,
            ) from exc
        message = f"{tool.name} returned a value that cannot be sent back: {exc}"
        failed = _error(call, arguments, prepared.raw_arguments, message)
        return replace(failed, duration_s=duration)
    return ToolCallResult(
        tool_call_id=call.id,
        name=call.name,
        arguments=arguments,
        status="ok",
        content=content,
        result=safe,
        raw_arguments=prepared.raw_arguments,
        duration_s=duration,
    )


def tool_output(value: Any) -> tuple[Any, str]:
    """A tool's return value as JSON-safe data and as the ``tool`` message's text.

    A string is sent as it is; anything else as compact JSON (Pydantic models,
    dataclasses, datetimes, UUIDs, enums, sets ... through Pydantic; NaN and
    infinities become ``null``, as in Pydantic's JSON). ``TypeError`` if the value
    has no JSON form.
    """
    if isinstance(value, str):
        return value, value
    try:
        safe = to_jsonable_python(value, inf_nan_mode="null")
    except PydanticSerializationError as exc:
        raise TypeError(f"{type(value).__name__} has no JSON form ({exc})") from exc
    return safe, json.dumps(safe, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _json_safe_or_empty(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments as storable JSON: a JSON escape such as ``"\\ud83d"`` in the
    model's arguments parses to a lone surrogate, which becomes U+FFFD here."""
    try:
        safe = to_jsonable_python(dict(arguments), inf_nan_mode="null")
    except ValueError:  # PydanticSerializationError, or nested too deeply
        return {clean_text(k): clean_text(repr(v)[:200]) for k, v in arguments.items()}
    return clean_json(safe) if isinstance(safe, dict) else {}


def _validation_message(tool_name: str, exc: ValidationError) -> str:
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    lines = []
    for error in errors[:MAX_LISTED_ERRORS]:
        where = ".".join(str(part) for part in error["loc"]) or "(arguments)"
        where = where if len(where) <= 100 else where[:100] + "..."
        lines.append(f"- {where}: {error['msg']}")
    if len(errors) > MAX_LISTED_ERRORS:
        lines.append(f"- ... and {len(errors) - MAX_LISTED_ERRORS} more")
    return f"invalid arguments for {tool_name}; nothing ran:\n" + "\n".join(lines)


def _preview(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more chars)"


# -- running an awaitable from sync code --------------------------------------------


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def run_awaitable(awaitable: Awaitable[T]) -> T:
    """Run an awaitable to completion from sync code, even inside a running event loop.

    Without a running loop it gets one of its own (``asyncio.run``); inside one, which
    ``asyncio.run`` refuses to nest, it runs on a loop in a worker thread.
    """
    coroutine: Coroutine[Any, Any, T] = _await(awaitable)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def __getattr__(name: str) -> Any:
    if name in ("PreparedCall", "ToolContext"):
        return getattr(_tooling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "PreparedCall", "ToolContext"})
