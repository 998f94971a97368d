"""The model seam: what a turn sends, what comes back, and the LiteLLM backend.

This is the only module that touches LiteLLM, and it imports it lazily, on the
first call, because ``import litellm`` costs seconds. Test doubles
(``agent_session.testing``) implement the same ``Model`` interface, so parsing,
validation and re-asks run the same code for real and fake models.

Offline price map: at import LiteLLM fetches its model price map over the network
unless ``LITELLM_LOCAL_MODEL_COST_MAP`` is true; on a network that hangs this
stalls the first call. Before the lazy import the library sets that variable to
``True`` (and ``LITELLM_OFFLINE_MODE`` likewise) **only when the user has not set
it**, so LiteLLM uses the price map bundled with the installed release. Set
``LITELLM_LOCAL_MODEL_COST_MAP=False`` to get the remote map.

Quiet: the library's calls print nothing. LiteLLM's "Give Feedback / Get Help"
banner on failed calls is switched off (``litellm.suppress_debug_info``) when it is
imported; diagnostics go through ``logging``, under the ``agent_session`` logger.

Streaming: ``Model.stream`` / ``Model.astream`` give the reply as it arrives, as
``TextChunk`` and ``ToolCallChunk`` items, and end with one ``StreamEnd`` holding the
assembled ``ModelResponse`` (the same one ``complete`` would have returned: text,
tool calls with their raw argument text, finish reason, usage and cost). They are
generators, so ``close()`` / ``aclose()`` stops one early; ``LiteLLMModel`` then
closes the provider's HTTP stream at once, so no more tokens are generated and paid
for. A model that does not stream gives its whole reply as one ``StreamEnd``.

Bounds: a turn hands each request the model time it has left (``CallBounds``). The
drivers call the model through ``complete_within`` / ``stream_within`` and their
async twins, which stop a call or stream that runs out of time (``TurnTimeoutError``)
and a streamed reply that passes ``max_tokens`` or ``max_output_bytes``
(``OutputLimitError``), closing the stream. In blocking code the deadline is checked
between chunks, and ``LiteLLMModel`` passes the time left as the provider's
``timeout``, which bounds each read; in async code ``asyncio.timeout`` bounds the
call and each chunk.

Retries: LiteLLM's own (``num_retries``) and the OpenAI SDK's (``max_retries``) are
always switched off; failed calls are retried by the turn itself
(``Agent(model_retries=...)``), so each retry is counted, logged and backed off
without blocking an event loop.

Set-up failures are not provider failures: a module LiteLLM imports on a call that
is not installed (an ``ImportError`` from inside LiteLLM), or a provider's API key
that is not set, is a ``ConfigurationError`` naming what to install or which
environment variable to set. Both are seen before any request is sent, and never
retried.
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import math
import os
import re
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NoReturn

from pydantic import BaseModel

from ._lazy import LazyModule, lazy_compile
from ._secrets import get_logger, mask, secret_values
from .context import Usage
from .errors import (
    RETRYABLE_STATUS_CODES,
    ConfigurationError,
    ContextWindowError,
    ModelCallError,
    OutputLimitError,
    TurnTimeoutError,
)
from .tools import ToolCall

if TYPE_CHECKING:
    import asyncio

    from .history import TokenBudget, TokenCounter
else:
    asyncio = LazyModule("asyncio")  # imported by the first async call: a sync app never is

__all__ = [
    "CallBounds",
    "LiteLLMModel",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "OutputMode",
    "StreamChunk",
    "StreamEnd",
    "TextChunk",
    "ToolCallChunk",
    "acomplete_within",
    "aprepare",
    "astream_within",
    "awarm_up",
    "complete_within",
    "default_window",
    "litellm_token_counter",
    "prepare",
    "resolve_output_mode",
    "response_chunks",
    "stream_within",
    "warm_up",
]

logger: logging.Logger = get_logger("agent_session.llm")

OutputMode = Literal["json_schema", "json_object", "prompt"]
"""How a structured output is asked for: ``response_format`` with the JSON schema,
``response_format`` ``{"type": "json_object"}`` plus the schema in the prompt, or the
schema in the prompt only."""


@dataclass(frozen=True)
class CallBounds:
    """What one call may spend: ``timeout`` seconds (what is left of the turn's
    ``turn_timeout``), and, streamed, ``max_output_bytes`` of reply."""

    timeout: float
    turn_timeout: float
    max_output_bytes: int | None = None


@dataclass(frozen=True)
class ModelRequest:
    """One call to a model: the messages and everything needed to send them."""

    model: str
    messages: list[dict[str, Any]]
    response_format: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    output_schema: type[BaseModel] | None = None
    """The schema the output must match (for test doubles; not sent)."""
    tools: list[dict[str, Any]] | None = None
    """Tool definitions (OpenAI function-tool form), sent as ``tools`` when set."""
    left_out: int | None = field(default=None, compare=False)
    """How many stored messages the history window left out of this request (not sent;
    ``None`` when unknown, as for a function window)."""
    purpose: Literal["turn", "summary"] = field(default="turn", compare=False)
    """``"summary"`` for the summary call of a compaction (its text is not the turn's
    reply: a streaming driver answers it whole, without deltas); not sent."""
    bounds: CallBounds | None = field(default=None, compare=False)
    """The time and output this call may spend (set by the turn for each call; not sent,
    but ``LiteLLMModel`` bounds the provider's ``timeout`` by ``bounds.timeout``)."""


@dataclass(frozen=True)
class ModelResponse:
    """What one call returned."""

    text: str
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None
    model: str = ""
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    """The calls the model asked for, arguments as the raw text it sent."""


@dataclass(frozen=True)
class TextChunk:
    """A piece of the reply's text, as it arrived."""

    text: str


@dataclass(frozen=True)
class ToolCallChunk:
    """A piece of tool call number ``index`` of the reply.

    The first piece of a call carries its ``id`` and ``name``; ``arguments_delta`` is
    the next part of its raw argument text (possibly empty).
    """

    index: int
    id: str | None
    name: str | None
    arguments_delta: str


@dataclass(frozen=True)
class StreamEnd:
    """The last item of a stream: the whole reply, as ``complete`` returns it."""

    response: ModelResponse


StreamChunk = TextChunk | ToolCallChunk | StreamEnd
"""What a model stream yields; ``StreamEnd`` comes last, once."""

_WORDS = lazy_compile(r"\s*\S+\s*|\s+")


def response_chunks(response: ModelResponse, *, split: bool = True) -> Iterator[StreamChunk]:
    """A whole reply as a stream: its text word by word (or in one piece when ``split``
    is false), each tool call as a first chunk with id and name and then its arguments
    in a few pieces, and ``StreamEnd(response)``."""
    if response.text:
        pieces = _WORDS.findall(response.text) if split else [response.text]
        for piece in pieces:
            yield TextChunk(piece)
    for index, call in enumerate(response.tool_calls):
        yield ToolCallChunk(index, call.id, call.name, "")
        arguments = _WORDS.findall(call.arguments) if split else [call.arguments]
        for piece in arguments:
            yield ToolCallChunk(index, None, None, piece)
    yield StreamEnd(response)


class Model(ABC):
    """A chat model backend: LiteLLM in production, a test double in tests."""

    name: str = "model"

    @abstractmethod
    def complete(self, request: ModelRequest) -> ModelResponse:
        """Call the model (blocking)."""

    @abstractmethod
    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        """Call the model (async)."""

    def stream(self, request: ModelRequest) -> Generator[StreamChunk, None, None]:
        """Call the model and yield the reply as it arrives, ``StreamEnd`` last.

        This default calls ``complete`` and gives the whole reply at once; close the
        generator to stop early.
        """
        yield from response_chunks(self.complete(request), split=False)

    async def astream(self, request: ModelRequest) -> AsyncGenerator[StreamChunk, None]:
        """Async twin of ``stream``; ``aclose()`` it to stop early."""
        response = await self.acomplete(request)
        for chunk in response_chunks(response, split=False):
            yield chunk

    def supports_structured_output(self, model: str) -> bool:
        """Whether ``response_format`` with a JSON schema may be sent for ``model``."""
        return True

    fits_context_window: ClassVar[bool] = False
    """Whether a turn without a history window fits its requests to the model's context
    window: the one a refusal stated (learned), else ``Agent(context_window=...)``, else
    ``context_window(model)``. Off for test doubles, which are sent everything."""

    def context_window(self, model: str) -> int | None:
        """The input limit of ``model`` in tokens, if the backend knows it."""
        return None

    def token_counter(self, model: str, tools: list[dict[str, Any]] | None = None) -> TokenCounter:
        """The token counter for requests to ``model`` (tool definitions counted too),
        used where no counter is configured. LiteLLM's by default."""
        return litellm_token_counter(model, tools)

    def warm_up(self) -> None:
        """Do the slow one-time work of the first call now (nothing by default)."""
        return None

    async def awarm_up(self) -> None:
        """Async twin of ``warm_up``, called before an async turn; it must not block
        the event loop (nothing by default)."""
        return None


_litellm: ModuleType | None = None
_import_lock = threading.Lock()
_prepared = False


def import_litellm() -> ModuleType:
    """Import LiteLLM once, with its offline price map unless the user chose otherwise."""
    global _litellm
    if _litellm is None:
        with _import_lock:
            if _litellm is None:
                os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                os.environ.setdefault("LITELLM_OFFLINE_MODE", "True")
                import litellm

                # No "Give Feedback / Get Help" banner on stdout for failed calls.
                litellm.suppress_debug_info = True
                _litellm = litellm
    return _litellm


def warm_up() -> None:
    """Do the slow one-time work of the first model call now, e.g. in an app's
    start-up hook: import LiteLLM, and the modules it and the OpenAI SDK load on
    their first call (a mocked LiteLLM call and an unused OpenAI client, which make
    no network request). Calling it again costs next to nothing.
    """
    started = time.perf_counter()
    litellm = import_litellm()
    with _import_lock:
        global _prepared
        if _prepared:
            return
        try:
            litellm.completion(
                model="openai/gpt-4o-mini",
                messages=[{"role": "user", "content": "ping"}],
                mock_response="pong",
                api_key="unused",
                **{"no-log": True},  # not reported to the application's LiteLLM callbacks
            )
            import httpcore
            import openai

            with openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1") as client:
                _ = client.chat.completions
            _ = (openai.resources.chat.AsyncCompletions, httpcore.AsyncConnectionPool)
        except Exception:  # a warm-up only: the first real call does the rest
            logger.debug("warming up LiteLLM's first call failed", exc_info=True)
        _prepared = True
    logger.debug("prepared the first model call in %.2fs", time.perf_counter() - started)


async def awarm_up() -> None:
    """``warm_up()`` for async start-up hooks: runs it in a thread, so the event
    loop is not blocked while LiteLLM is imported. The first ``acomplete`` calls it
    too, so an async app's loop never stalls on that import."""
    if not _prepared:
        await asyncio.to_thread(warm_up)


def prepare() -> None:
    """Deprecated (removed in 1.0): ``warm_up()``."""
    warnings.warn(
        "agent_session.prepare() is deprecated: use agent_session.warm_up()",
        DeprecationWarning,
        stacklevel=2,
    )
    warm_up()


async def aprepare() -> None:
    """Deprecated (removed in 1.0): ``awarm_up()``."""
    warnings.warn(
        "agent_session.aprepare() is deprecated: use agent_session.awarm_up()",
        DeprecationWarning,
        stacklevel=2,
    )
    await awarm_up()


def litellm_token_counter(
    model: str, tools: Sequence[Mapping[str, Any]] | None = None
) -> TokenCounter:
    """LiteLLM's token counter for ``model`` (tool definitions counted too), imported lazily."""

    def count(messages: list[dict[str, Any]]) -> int:
        litellm = import_litellm()
        kwargs: dict[str, Any] = {"model": model, "messages": messages}
        if tools:
            kwargs["tools"] = list(tools)
        return int(litellm.token_counter(**kwargs))

    return count


@functools.cache
def _max_input_tokens(model: str) -> int | None:
    litellm = import_litellm()
    try:
        info = litellm.get_model_info(model)
    except Exception:  # LiteLLM raises a bare Exception for a model it does not know
        return None
    limit = info.get("max_input_tokens") if isinstance(info, Mapping) else None
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return limit
    return None


def default_window(model: str) -> TokenBudget | None:
    """The window used when none is configured: the model's input limit, if LiteLLM knows it.

    ``TokenBudget(max_input_tokens)`` for a model LiteLLM knows, else ``None`` (send
    everything). Looked up once per model name.
    """
    from .history import TokenBudget

    limit = _max_input_tokens(model)
    return None if limit is None else TokenBudget(limit)


OPENAI_COMPATIBLE_PROVIDERS = frozenset(
    {"hosted_vllm", "ollama_chat", "ollama", "lm_studio", "llamafile", "openai_like", "xinference"}
)
"""LiteLLM providers that are OpenAI-compatible servers run by the user: they accept
``response_format`` with a JSON schema, whatever the model's name."""

_API_BASE_KEYS = ("api_base", "base_url")
_OPENAI_BASE_ENV = ("OPENAI_API_BASE", "OPENAI_BASE_URL")


def reaches_openai_compatible_server(model: str, settings: Mapping[str, Any]) -> bool:
    """Whether ``model`` is served by an OpenAI-compatible server (not OpenAI itself).

    ``openai/<name>`` counts when an ``api_base`` is given (in the settings, or in
    ``OPENAI_API_BASE``/``OPENAI_BASE_URL``); the providers in
    ``OPENAI_COMPATIBLE_PROVIDERS`` always do. Decided without importing LiteLLM.
    """
    provider, slash, _ = model.partition("/")
    if not slash:
        return False
    if provider in OPENAI_COMPATIBLE_PROVIDERS:
        return True
    if provider in ("openai", "text-completion-openai"):
        if any(settings.get(key) for key in _API_BASE_KEYS):
            return True
        return any(os.environ.get(name) for name in _OPENAI_BASE_ENV)
    return False


def resolve_output_mode(
    requested: str, model: Model, model_name: str, settings: Mapping[str, Any]
) -> OutputMode:
    """Decide how structured output is asked for (``Agent(structured_output=...)``).

    ``"auto"`` sends the JSON schema as ``response_format`` when the model is
    reached through an OpenAI-compatible server, or when the backend says the
    model supports it (LiteLLM's capability table); otherwise the schema goes in
    the prompt.
    """
    if requested in ("json_schema", "json_object", "prompt"):
        return requested  # type: ignore[return-value]
    if isinstance(model, LiteLLMModel) and reaches_openai_compatible_server(model_name, settings):
        return "json_schema"
    return "json_schema" if model.supports_structured_output(model_name) else "prompt"


class LiteLLMModel(Model):
    """Calls any provider through ``litellm.completion`` / ``litellm.acompletion``."""

    name = "litellm"
    fits_context_window = True

    def context_window(self, model: str) -> int | None:
        return _max_input_tokens(model)

    def warm_up(self) -> None:
        warm_up()  # the module's function: LiteLLM imported and its first use paid

    async def awarm_up(self) -> None:
        await awarm_up()

    def supports_structured_output(self, model: str) -> bool:
        litellm = import_litellm()
        try:
            return bool(litellm.supports_response_schema(model=model))
        except Exception:
            return False

    def _kwargs(self, request: ModelRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": request.model, "messages": request.messages}
        if request.response_format is not None:
            kwargs["response_format"] = request.response_format
        if request.tools:
            kwargs["tools"] = request.tools
        kwargs.update(request.settings)
        bounds = request.bounds
        if bounds is not None:
            # Each read waits at most what is left of the turn's model time.
            given = kwargs.get("timeout")
            if given is None or isinstance(given, int | float):
                kwargs["timeout"] = min(bounds.timeout, given or math.inf)
        # The turn retries failed calls itself (Agent(model_retries=...)): neither
        # LiteLLM nor the OpenAI SDK under it may retry on their own.
        kwargs["num_retries"] = 0
        kwargs["max_retries"] = 0
        return kwargs

    def complete(self, request: ModelRequest) -> ModelResponse:
        litellm = import_litellm()
        try:
            raw = litellm.completion(**self._kwargs(request))
        except Exception as exc:
            raise _model_call_error(exc, request) from exc
        return _to_response(litellm, raw, request.model)

    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        await awarm_up()
        litellm = import_litellm()
        try:
            raw = await litellm.acompletion(**self._kwargs(request))
        except Exception as exc:
            raise _model_call_error(exc, request) from exc
        return _to_response(litellm, raw, request.model)

    def _stream_kwargs(self, request: ModelRequest) -> dict[str, Any]:
        kwargs = self._kwargs(request)
        kwargs["stream"] = True
        # The last chunk carries the usage, so a streamed call costs what an unstreamed one does.
        kwargs["stream_options"] = {"include_usage": True}
        return kwargs

    def stream(self, request: ModelRequest) -> Generator[StreamChunk, None, None]:
        """``litellm.completion(..., stream=True)``, chunk by chunk.

        Closing the generator early closes LiteLLM's stream and the HTTP response under
        it at once. Errors are mapped as ``complete`` maps them, also mid-stream.
        """
        litellm = import_litellm()
        try:
            raw = litellm.completion(**self._stream_kwargs(request))
        except Exception as exc:
            raise _model_call_error(exc, request) from exc
        assembly = _Assembly(request)
        try:
            while True:
                try:
                    piece = next(raw)
                except StopIteration:
                    break
                except Exception as exc:
                    raise _model_call_error(exc, request) from exc
                yield from assembly.feed(piece)
        finally:
            _close_stream(raw)
        yield StreamEnd(assembly.response(litellm))

    async def astream(self, request: ModelRequest) -> AsyncGenerator[StreamChunk, None]:
        """Async twin of ``stream``: ``aclose()`` (or cancelling the task) closes the
        HTTP stream at once."""
        await awarm_up()
        litellm = import_litellm()
        try:
            raw = await litellm.acompletion(**self._stream_kwargs(request))
        except Exception as exc:
            raise _model_call_error(exc, request) from exc
        assembly = _Assembly(request)
        try:
            while True:
                try:
                    piece = await raw.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    raise _model_call_error(exc, request) from exc
                for chunk in assembly.feed(piece):
                    yield chunk
        finally:
            await _aclose_stream(raw)
        yield StreamEnd(assembly.response(litellm))


# -- bounded calls -----------------------------------------------------------------


def _max_tokens(settings: Mapping[str, Any]) -> tuple[str, int] | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = settings.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return name, value
    return None


class _Bounds:
    """The limits of one call while it runs: its deadline, and for a stream the
    reply's size (pieces of text or tool arguments, each at least one token, and
    UTF-8 bytes)."""

    __slots__ = ("bounds", "deadline", "max_tokens", "pieces", "request", "size")

    def __init__(self, request: ModelRequest, now: float) -> None:
        self.request = request
        self.bounds = request.bounds
        self.deadline = math.inf if self.bounds is None else now + self.bounds.timeout
        self.max_tokens = _max_tokens(request.settings)
        self.pieces = 0
        self.size = 0

    def timed_out(self, now: float) -> bool:
        # A read the provider's timeout ended may end a hair before the deadline.
        return now >= self.deadline - 0.05

    def timeout_error(self, what: str) -> TurnTimeoutError:
        assert self.bounds is not None
        limit = self.bounds.turn_timeout
        return TurnTimeoutError(
            f"{what} of {self.request.model} passed the turn's model time, turn_timeout="
            f"{limit:g}s (Agent(turn_timeout=...)); it was stopped and nothing was stored",
            model=self.request.model,
            turn_timeout=limit,
        )

    def reraise(self, exc: ModelCallError, now: float, what: str) -> NoReturn:
        """Raise the error of a call: a provider's timeout that ended the call at the
        deadline is the turn's (``TurnTimeoutError``); any other error as it is."""
        if isinstance(exc, TurnTimeoutError | OutputLimitError) or not self.timed_out(now):
            raise exc
        raise self.timeout_error(what) from exc

    def check(self, chunk: StreamChunk, now: float) -> None:
        """Raise if ``chunk`` arrived past the deadline (``now``) or takes the stream past
        a size limit."""
        if self.timed_out(now):
            raise self.timeout_error("the stream")
        if isinstance(chunk, TextChunk):
            piece = chunk.text
        elif isinstance(chunk, ToolCallChunk):
            piece = chunk.arguments_delta
        else:
            piece = ""
        if piece:
            self.pieces += 1
            self.size += len(piece) if piece.isascii() else len(piece.encode("utf-8", "replace"))
            limit = self.bounds.max_output_bytes if self.bounds is not None else None
            if limit is not None and self.size > limit:
                self._over("max_output_bytes", limit, "Agent(max_output_bytes=...)")
            if self.max_tokens is not None and self.pieces > self.max_tokens[1]:
                name, value = self.max_tokens
                self._over(name, value, "model_settings")

    def _over(self, name: str, limit: int, where: str) -> None:
        model = self.request.model
        raise OutputLimitError(
            f"the streamed reply of {model} passed {name}={limit} ({where}); the stream "
            "was stopped and nothing was stored",
            model=model,
            limit_name=name,
            limit=limit,
        )


def complete_within(model: Model, request: ModelRequest) -> ModelResponse:
    """``model.complete(request)``; a call that the provider's timeout (bounded by
    what is left of ``turn_timeout``) ended at the deadline is a ``TurnTimeoutError``."""
    started = time.monotonic()
    try:
        return model.complete(request)
    except ModelCallError as exc:
        _Bounds(request, started).reraise(exc, time.monotonic(), "the call")


async def acomplete_within(model: Model, request: ModelRequest) -> ModelResponse:
    """Async twin of ``complete_within``: ``asyncio.timeout`` bounds the call."""
    if request.bounds is None:
        return await model.acomplete(request)
    loop = asyncio.get_running_loop()
    bounds = _Bounds(request, loop.time())
    try:
        async with asyncio.timeout_at(bounds.deadline):
            return await model.acomplete(request)
    except TimeoutError as exc:
        raise bounds.timeout_error("the call") from exc
    except ModelCallError as exc:
        bounds.reraise(exc, loop.time(), "the call")


def stream_within(model: Model, request: ModelRequest) -> Generator[StreamChunk, None, None]:
    """``model.stream(request)`` within the request's bounds: the deadline checked as
    each chunk arrives (a blocked read ends at the provider's timeout), the reply's
    size as it grows. Past a limit, the model's stream is closed and the error raised."""
    bounds = _Bounds(request, time.monotonic())
    stream = model.stream(request)
    try:
        for chunk in stream:
            bounds.check(chunk, time.monotonic())
            yield chunk
    except ModelCallError as exc:
        bounds.reraise(exc, time.monotonic(), "the stream")
    finally:
        stream.close()


async def astream_within(model: Model, request: ModelRequest) -> AsyncGenerator[StreamChunk, None]:
    """Async twin of ``stream_within``: ``asyncio.timeout`` bounds the wait for each chunk
    by the deadline, so a stream that drips or stalls ends on time, and the deadline is
    checked as each chunk arrives, so does a fast one."""
    loop = asyncio.get_running_loop()
    bounds = _Bounds(request, loop.time())
    deadline = None if request.bounds is None else bounds.deadline
    stream = model.astream(request)
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                raise bounds.timeout_error("the stream") from exc
            # Chunks read from a buffer never suspend, so the timeout cannot fire: check.
            bounds.check(chunk, loop.time())
            yield chunk
    except ModelCallError as exc:
        bounds.reraise(exc, loop.time(), "the stream")
    finally:
        await stream.aclose()


def _close_stream(raw: Any) -> None:
    """Close LiteLLM's stream wrapper and the provider stream (HTTP response) under it."""
    inner = getattr(raw, "completion_stream", None)
    try:
        close = getattr(inner, "close", None)
        if callable(close):
            close()
    except Exception:
        logger.debug("closing a model stream failed", exc_info=True)


async def _aclose_stream(raw: Any) -> None:
    """Async twin of ``_close_stream`` (LiteLLM's ``aclose`` shields itself from
    cancellation, so the connection is released in a cancelled task too)."""
    try:
        aclose = getattr(raw, "aclose", None)
        if callable(aclose):
            await aclose()
        else:
            _close_stream(raw)
    except Exception:
        logger.debug("closing a model stream failed", exc_info=True)


class _Assembly:
    """Turns LiteLLM's stream chunks into ``StreamChunk`` items and the final response."""

    __slots__ = ("calls", "finish_reason", "model", "raw", "request", "text", "usage")

    def __init__(self, request: ModelRequest) -> None:
        self.request = request
        self.text: list[str] = []
        self.calls: dict[int, list[Any]] = {}
        """index -> [id, name, argument pieces]"""
        self.finish_reason: str | None = None
        self.usage: Any = None
        self.model: str | None = None
        self.raw: list[Any] = []
        """The chunks the cost is computed from."""

    def feed(self, piece: Any) -> list[StreamChunk]:
        out: list[StreamChunk] = []
        try:
            usage = getattr(piece, "usage", None)
            if usage is not None:
                self.usage = usage
                self.raw.append(piece)
            elif not self.raw:
                self.raw.append(piece)  # the first chunk: id, model, provider
            if self.model is None:
                self.model = getattr(piece, "model", None)
            choices = piece.choices
            if not choices:
                return out
            choice = choices[0]
            delta = choice.delta
            content = delta.content
            if content:
                self.text.append(content)
                out.append(TextChunk(content))
            tool_calls = getattr(delta, "tool_calls", None)
            if tool_calls:
                for position, call in enumerate(tool_calls):
                    out.append(self._call_piece(position, call))
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
                if usage is None:
                    self.raw.append(piece)
        except (AttributeError, IndexError, TypeError) as exc:
            model = self.request.model
            raise ModelCallError(
                f"unexpected stream chunk from {model}: {exc}", model=model, retryable=False
            ) from exc
        return out

    def _call_piece(self, position: int, call: Any) -> ToolCallChunk:
        index = call.index if isinstance(call.index, int) else position
        function = call.function
        name = getattr(function, "name", None) or None
        arguments = getattr(function, "arguments", None) or ""
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        entry = self.calls.get(index)
        if entry is None:
            entry = self.calls[index] = [None, None, []]
        if call.id and entry[0] is None:
            entry[0] = call.id
        if name and entry[1] is None:
            entry[1] = name
        entry[2].append(arguments)
        return ToolCallChunk(index, call.id or None, name, arguments)

    def response(self, litellm: ModuleType) -> ModelResponse:
        usage = _usage(self.usage)
        calls = tuple(
            ToolCall(str(name or ""), "".join(pieces), id=call_id or None)
            for call_id, name, pieces in (self.calls[i] for i in sorted(self.calls))
        )
        # The cost as for an unstreamed call: LiteLLM prices the response it rebuilds
        # from the chunks with the same function. Only the chunks that carry what is
        # priced are kept (the first, the finish and the usage); rebuilding from every
        # text chunk costs some 50 µs a chunk.
        try:
            built = litellm.stream_chunk_builder(self.raw, messages=self.request.messages)
            cost: float | None = float(litellm.completion_cost(completion_response=built))
        except Exception:
            cost = None
        return ModelResponse(
            text="".join(self.text),
            usage=usage,
            cost=cost,
            model=str(self.model or self.request.model),
            finish_reason=self.finish_reason,
            tool_calls=calls,
        )


def _usage(usage: Any) -> Usage:
    """The token counts of a LiteLLM ``usage`` object (zeros for what it lacks)."""
    return Usage(
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        total_tokens=int(getattr(usage, "total_tokens", 0) or 0),
    )


def _to_response(litellm: ModuleType, raw: Any, model: str) -> ModelResponse:
    try:
        choice = raw.choices[0]
        text = choice.message.content or ""
        finish_reason = choice.finish_reason
        tool_calls = _tool_calls(choice.message)
        usage = _usage(getattr(raw, "usage", None))
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        raise ModelCallError(
            f"unexpected response shape from {model}: {exc}", model=model, retryable=False
        ) from exc
    try:
        cost: float | None = float(litellm.completion_cost(completion_response=raw))
    except Exception:
        cost = None
    return ModelResponse(
        text=text,
        usage=usage,
        cost=cost,
        model=str(getattr(raw, "model", None) or model),
        finish_reason=finish_reason,
        tool_calls=tool_calls,
    )


def _tool_calls(message: Any) -> tuple[ToolCall, ...]:
    """The message's tool calls; their arguments stay the raw text, valid JSON or not."""
    calls = []
    for raw in getattr(message, "tool_calls", None) or ():
        function = raw.function
        arguments = function.arguments
        if arguments is None:
            arguments = ""
        elif not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append(ToolCall(str(function.name), arguments, id=raw.id or None))
    return tuple(calls)


_NO_RESPONSE_KINDS = frozenset(
    {
        # LiteLLM and the OpenAI SDK
        "Timeout",
        "APITimeoutError",
        "APIConnectionError",
        # httpx, under the SDKs and LiteLLM's own handlers
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
    }
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its cause (or context), and so on (at most 20 links, no cycle)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < 20:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _no_response_cause(exc: BaseException) -> BaseException | None:
    """The link of ``exc``'s chain that says no HTTP response arrived, if any.

    LiteLLM re-raises some transport failures as HTTP errors it makes up: a refused
    connection to an OpenAI-compatible server becomes ``InternalServerError`` with
    ``status_code`` 500. The transport error stays in the chain, so look there.
    """
    for link in _chain(exc):
        if type(link).__name__ in _NO_RESPONSE_KINDS or isinstance(
            link, TimeoutError | ConnectionError
        ):
            return link
    return None


_CONTEXT_WINDOW_PHRASES = lazy_compile(
    r"maximum context length|context[ _]length[ _]exceeded|context window"
    r"|exceeds the (available )?context|prompt is too long|too many tokens",
    re.IGNORECASE,
)
"""How providers word "the request is too long" (OpenAI: "maximum context length";
llama.cpp: "the request exceeds the available context size"; ...)."""


def _retry_after(exc: BaseException) -> float | None:
    """The ``Retry-After`` the provider sent with the error, in seconds, if any."""
    for headers in (
        getattr(exc, "litellm_response_headers", None),
        getattr(getattr(exc, "response", None), "headers", None),
        getattr(exc, "headers", None),
    ):
        if headers is None:
            continue
        try:
            raw = headers.get("retry-after-ms")
            if raw is not None:
                return _plausible(float(raw) / 1000.0)
            raw = headers.get("retry-after") or headers.get("Retry-After")
        except (AttributeError, TypeError, ValueError):
            continue
        if raw is not None:
            return parse_retry_after(str(raw))
    return None


def parse_retry_after(value: str, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` value: a number of seconds or an HTTP date."""
    value = value.strip()
    try:
        return _plausible(float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    return _plausible(moment.timestamp() - (time.time() if now is None else now), floor=True)


def _plausible(seconds: float, *, floor: bool = False) -> float | None:
    """A usable number of seconds (the turn caps long waits), or ``None``."""
    if not math.isfinite(seconds):
        return None
    if seconds < 0:
        return 0.0 if floor else None
    return seconds


def _is_context_window(exc: BaseException, status: int | None, message: str) -> bool:
    if type(exc).__name__ == "ContextWindowExceededError":
        return True
    return status in (400, 413) and _CONTEXT_WINDOW_PHRASES.search(message) is not None


_MISSING_KEY_PHRASES = lazy_compile(
    r"missing credentials|api_key client option must be set|missing \w+ api key"
    r"|no (api )?key is set",
    re.IGNORECASE,
)
"""How LiteLLM and the OpenAI SDK say that no API key is set, before any request:
"Missing credentials. Please pass an `api_key` ... or set the `OPENAI_API_KEY` ...",
"The api_key client option must be set ...", "Missing Anthropic API Key ..."."""

_KEY_VARIABLE = lazy_compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*_(?:API_KEY|KEY|TOKEN)\b")


def _setup_error(exc: BaseException, model: str) -> ConfigurationError | None:
    """A ``ConfigurationError`` when the installation or the configuration, not the
    provider, failed the call: a module LiteLLM imports is missing, or no API key is
    set. ``None`` otherwise."""
    for link in _chain(exc):
        if isinstance(link, ImportError):
            module = (link.name or "").partition(".")[0]
            if isinstance(link, ModuleNotFoundError) and module:
                return ConfigurationError(
                    f"model call to {model} failed: LiteLLM imports the module {module!r}, "
                    f"which is not installed; install it (pip install {module})"
                )
            hint = f"pip install --upgrade {module}" if module else "check the installation"
            return ConfigurationError(
                f"model call to {model} failed: LiteLLM could not import what it needs "
                f"({link}); {hint}"
            )
    if _no_response_cause(exc) is None and _MISSING_KEY_PHRASES.search(str(exc)):
        names = " or ".join(_key_variables(exc, model)) or "the provider's API key variable"
        any_value = ""
        if model.startswith("openai/"):
            any_value = " (any value, for a server that checks none)"
        return ConfigurationError(
            f"model call to {model} failed: no API key is set: set {names} in the "
            f"environment, or api_key in model_settings{any_value}"
        )
    return None


def _key_variables(exc: BaseException, model: str) -> list[str]:
    """The environment variables LiteLLM reads the model's key from (as its
    ``validate_environment`` says), else those the error message names."""
    try:
        missing = import_litellm().validate_environment(model=model).get("missing_keys") or []
    except Exception:
        missing = []
    names = [str(name) for name in missing if _KEY_VARIABLE.fullmatch(str(name))]
    return names or list(dict.fromkeys(_KEY_VARIABLE.findall(str(exc))))


def _model_call_error(exc: Exception, request: ModelRequest) -> ModelCallError | ConfigurationError:
    """Map a LiteLLM (or transport) exception to ``ModelCallError``; the provider's
    text is quoted with the request's secrets masked (a 401 may echo the key). A
    set-up failure (``_setup_error``) is a ``ConfigurationError`` instead."""
    model = request.model
    setup = _setup_error(exc, model)
    if setup is not None:
        return setup
    kind = type(exc).__name__
    transport = _no_response_cause(exc)
    status = None if transport is not None else getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = None
    message = mask(str(exc).strip() or kind, secret_values(request.settings))
    where = f"HTTP {status}" if status is not None else type(transport or exc).__name__
    text = f"model call to {model} failed ({where}): {message}"
    retry_after = _retry_after(exc) if transport is None else None
    if transport is None and _is_context_window(exc, status, message):
        return ContextWindowError(
            f"{text} (the request is longer than the model's context window)",
            model=model,
            status_code=status,
            retry_after=retry_after,
        )
    # Timeouts and refused connections are worth another try, like 429 and 5xx;
    # an error with neither a response nor a transport failure behind it is not.
    retryable = transport is not None or (status is not None and status in RETRYABLE_STATUS_CODES)
    return ModelCallError(
        text, model=model, status_code=status, retryable=retryable, retry_after=retry_after
    )
