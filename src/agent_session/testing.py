"""Test doubles for agents: no network, same code path as a real model.

``TestModel`` replies from a script, or builds output that matches the agent's
``output_schema``, after calling each of the request's tools once;
``FunctionModel(fn)`` lets a test compute each reply, tool calls included. Both are
``Model`` implementations, so parsing, validation and re-asks run exactly as with
LiteLLM, and both record every request they receive::

    model = TestModel(replies=['{"answer": "42"}'])
    with agent.override(model=model):
        result = agent.run({"message": "hi"})
    assert model.requests[0].messages[-1]["content"] == "hi"

Both stream too (``stream``/``astream``): the reply's text comes word by word and
each tool call as a first chunk (id, name) and its arguments in pieces, then the
same ``ModelResponse`` that ``complete`` returns, so streaming code is tested offline.
"""

from __future__ import annotations

import inspect
import json
import math
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from .context import Usage
from .llm import Model, ModelRequest, ModelResponse, StreamChunk, response_chunks
from .tools import ToolCall, run_awaitable

__all__ = ["FunctionModel", "TestModel", "sample_from_schema"]

Reply = str | dict[str, Any] | list[Any] | BaseModel | ModelResponse | ToolCall
"""A scripted reply; a ``ToolCall`` or a non-empty list of them is a reply with tool calls."""


def _words(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "").split()) for m in messages)


def _to_response(
    reply: Reply, request: ModelRequest, name: str, cost: float | None
) -> ModelResponse:
    if isinstance(reply, ModelResponse):
        return reply
    calls = _as_tool_calls(reply)
    if calls is not None:
        text = ""
        completion = sum(len(f"{call.name} {call.arguments}".split()) for call in calls)
    else:
        if isinstance(reply, BaseModel):
            text = reply.model_dump_json()
        elif isinstance(reply, dict | list):
            text = json.dumps(reply, ensure_ascii=False)
        else:
            text = str(reply)
        completion = len(text.split())
    prompt = _words(request.messages)
    return ModelResponse(
        text=text,
        usage=Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        ),
        cost=cost,
        model=name,
        finish_reason="stop" if calls is None else "tool_calls",
        tool_calls=calls or (),
    )


def _as_tool_calls(reply: Reply) -> tuple[ToolCall, ...] | None:
    if isinstance(reply, ToolCall):
        return (reply,)
    if isinstance(reply, list) and reply and any(isinstance(item, ToolCall) for item in reply):
        if not all(isinstance(item, ToolCall) for item in reply):
            raise TypeError("a reply list mixes ToolCall objects with other values")
        return tuple(reply)
    return None


class _RecordingModel(Model):
    def __init__(self, name: str, cost: float | None, structured: bool) -> None:
        self.name = name
        self.cost = cost
        self.structured = structured
        self.requests: list[ModelRequest] = []
        self._lock = threading.Lock()

    def supports_structured_output(self, model: str) -> bool:
        return self.structured

    def _record(self, request: ModelRequest) -> int:
        with self._lock:
            self.requests.append(request)
            return len(self.requests)

    @property
    def last_request(self) -> ModelRequest:
        """The most recent request (``IndexError`` if none)."""
        return self.requests[-1]

    def stream(self, request: ModelRequest) -> Generator[StreamChunk, None, None]:
        """The reply of ``complete``, word by word, then ``StreamEnd`` with it."""
        yield from response_chunks(self.complete(request))

    async def astream(self, request: ModelRequest) -> AsyncGenerator[StreamChunk, None]:
        """Async twin of ``stream``."""
        for chunk in response_chunks(await self.acomplete(request)):
            yield chunk


class TestModel(_RecordingModel):
    """A scripted model.

    With ``replies``, each call returns the next one (a string, a dict or list sent
    as JSON, a Pydantic model, a ``ToolCall`` or a list of them, or a full
    ``ModelResponse``); running out raises ``AssertionError``. Without, it returns
    ``text`` for plain-text agents and a value generated from the output JSON schema
    for structured ones. Token usage is a word count, so it is deterministic;
    ``cost`` is reported per call if given.

    Tools: without ``replies``, a request that carries tools and does not end with
    tool results is answered with one call of each tool ``call_tools`` selects
    (``"all"``, a list of names, or ``"none"``), with arguments generated from the
    tool's schema; the request after the results gets the answer. With ``replies``,
    the script decides alone.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        replies: Iterable[Reply] | None = None,
        *,
        text: str = "ok",
        name: str = "test-model",
        cost: float | None = None,
        structured: bool = True,
        call_tools: Literal["all", "none"] | Sequence[str] = "all",
    ) -> None:
        super().__init__(name, cost, structured)
        self.replies: list[Reply] | None = list(replies) if replies is not None else None
        self.text = text
        if isinstance(call_tools, str) and call_tools not in ("all", "none"):
            raise ValueError(f"call_tools must be 'all', 'none' or a list of names: {call_tools!r}")
        self.call_tools: str | list[str] = (
            call_tools if isinstance(call_tools, str) else list(call_tools)
        )

    def _reply(self, request: ModelRequest) -> ModelResponse:
        index = self._record(request) - 1
        if self.replies is not None:
            if index >= len(self.replies):
                raise AssertionError(
                    f"TestModel got call #{index + 1} but has only {len(self.replies)} replies"
                )
            reply: Reply = self.replies[index]
        elif calls := self._tool_calls(request):
            reply = calls
        elif request.output_schema is not None:
            reply = sample_from_schema(request.output_schema.model_json_schema())
        else:
            reply = self.text
        return _to_response(reply, request, self.name, self.cost)

    def _tool_calls(self, request: ModelRequest) -> list[ToolCall]:
        """One call per selected tool, unless the request already ends with tool results."""
        if not request.tools or self.call_tools == "none":
            return []
        if request.messages and request.messages[-1].get("role") == "tool":
            return []
        functions = {tool["function"]["name"]: tool["function"] for tool in request.tools}
        if self.call_tools == "all":
            names = list(functions)
        else:
            names = list(self.call_tools)
            unknown = [n for n in names if n not in functions]
            if unknown:
                raise AssertionError(
                    f"TestModel(call_tools=...) names tools the request does not carry: {unknown}"
                )
        return [
            ToolCall(
                name,
                json.dumps(sample_from_schema(functions[name].get("parameters", {}))),
            )
            for name in names
        ]

    def complete(self, request: ModelRequest) -> ModelResponse:
        return self._reply(request)

    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        return self._reply(request)


class FunctionModel(_RecordingModel):
    """A model whose replies come from ``fn(messages)`` or ``fn(messages, request)``.

    ``fn`` may be sync or async and returns what ``TestModel`` accepts as a reply:
    a ``ToolCall`` or a list of them scripts a reply with tool calls. It may raise,
    e.g. ``ModelCallError``, to simulate a provider failure; a retryable one (429,
    5xx, or no status: a timeout) is retried up to the agent's ``model_retries``
    times, as with LiteLLM.
    """

    def __init__(
        self,
        fn: Callable[[list[dict[str, Any]]], Reply | Awaitable[Reply]]
        | Callable[[list[dict[str, Any]], ModelRequest], Reply | Awaitable[Reply]],
        *,
        name: str = "function-model",
        cost: float | None = None,
        structured: bool = True,
    ) -> None:
        super().__init__(name, cost, structured)
        self.fn: Callable[..., Reply | Awaitable[Reply]] = fn
        try:
            params = inspect.signature(fn).parameters.values()
            positional = [
                p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
            self._wants_request = varargs or len(positional) >= 2
        except (TypeError, ValueError):
            self._wants_request = False

    def _call(self, request: ModelRequest) -> Reply | Awaitable[Reply]:
        self._record(request)
        messages = [dict(m) for m in request.messages]
        return self.fn(messages, request) if self._wants_request else self.fn(messages)

    def complete(self, request: ModelRequest) -> ModelResponse:
        reply = self._call(request)
        if inspect.isawaitable(reply):
            reply = run_awaitable(reply)
        return _to_response(reply, request, self.name, self.cost)

    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        reply = self._call(request)
        if inspect.isawaitable(reply):
            reply = await reply
        return _to_response(reply, request, self.name, self.cost)


def sample_from_schema(schema: dict[str, Any]) -> Any:
    """Build a value that matches a Pydantic JSON schema (objects, arrays, enums, refs)."""
    return _sample(schema, schema.get("$defs", {}), depth=0)


_SHALLOW = 12
"""Past this nesting depth, prefer ``null`` options and empty lists (recursive models)."""


def _sample(node: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
    if depth > 60:
        return None
    if "$ref" in node:
        return _sample(defs[node["$ref"].rsplit("/", 1)[-1]], defs, depth + 1)
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return node["enum"][0]
    if "default" in node:
        return node["default"]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in node:
            options = node[combinator]
            nulls = [o for o in options if o.get("type") == "null"]
            if depth > _SHALLOW and nulls:
                return None
            options = [o for o in options if o.get("type") != "null"] or options
            return _sample(options[0], defs, depth + 1)
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in node:
        props = node.get("properties", {})
        return {name: _sample(sub, defs, depth + 1) for name, sub in props.items()}
    if kind == "array":
        if "prefixItems" in node:
            return [_sample(sub, defs, depth + 1) for sub in node["prefixItems"]]
        least = int(node.get("minItems", 0))
        count = least if depth > _SHALLOW else max(1, least)
        if "maxItems" in node:
            count = min(count, int(node["maxItems"]))
        item = node.get("items", {})
        return [_sample(item, defs, depth + 1) for _ in range(count)]
    if kind == "string":
        return _sample_string(node)
    if kind == "integer":
        return _sample_number(node, integer=True)
    if kind == "number":
        return _sample_number(node, integer=False)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "a"


def _sample_string(node: dict[str, Any]) -> str:
    fmt = node.get("format")
    by_format = {
        "date-time": "2026-01-01T00:00:00Z",
        "date": "2026-01-01",
        "time": "00:00:00",
        "email": "user@example.com",
        "uri": "https://example.com/",
        "uuid": "00000000-0000-4000-8000-000000000000",
        "duration": "P1D",
    }
    if fmt in by_format:
        return by_format[fmt]
    if isinstance(fmt, str) and fmt[:4] == "uuid" and fmt[4:].isdigit():  # uuid1 ... uuid8
        return f"00000000-0000-{fmt[4:]}000-8000-000000000000"
    length = max(1, int(node.get("minLength", 1)))
    text = "a" * length
    if "maxLength" in node:
        text = text[: int(node["maxLength"])]
    return text


def _sample_number(node: dict[str, Any], *, integer: bool) -> int | float:
    """1 when allowed, else a value inside the bounds that is a multiple of ``multipleOf``."""
    low, low_open = _bound(node, "minimum", "exclusiveMinimum", max)
    high, high_open = _bound(node, "maximum", "exclusiveMaximum", min)
    step: float | None = node.get("multipleOf")

    def allowed(value: float) -> bool:
        if low is not None and (value < low or (low_open and value == low)):
            return False
        if high is not None and (value > high or (high_open and value == high)):
            return False
        if step:
            ratio = value / step
            return abs(ratio - round(ratio)) <= 1e-9 * max(1.0, abs(ratio))
        return True

    guesses: list[float] = [1, 0]
    if low is not None and high is not None:
        guesses.append((low + high) / 2)
    for bound, away in ((low, 1), (high, -1)):
        if bound is not None:
            guesses += [bound, bound + away, bound + away * (step or 1)]
    candidates: list[float] = []
    for guess in guesses:
        near = (
            [math.ceil(guess / step) * step, math.floor(guess / step) * step] if step else [guess]
        )
        for value in near:
            candidates += [math.ceil(value), math.floor(value)] if integer else [value]
    for value in candidates:
        if allowed(value):
            return int(value) if integer else float(value)
    fallback = low if low is not None else high if high is not None else 1
    return int(fallback) if integer else float(fallback)


def _bound(
    node: dict[str, Any], inclusive: str, exclusive: str, tighter: Callable[..., float]
) -> tuple[float | None, bool]:
    """The tighter of an inclusive and an exclusive bound, and whether it is exclusive."""
    found = [(node[key], key == exclusive) for key in (inclusive, exclusive) if key in node]
    if not found:
        return None, False
    value = tighter(v for v, _ in found)
    return value, any(v == value and is_open for v, is_open in found)
