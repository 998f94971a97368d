"""Streamed turns: run a flow, answering its model requests chunk by chunk.

``TurnStream`` and ``AsyncTurnStream`` are drivers, like ``_drivers.drive`` and
``_drivers.adrive``: they run a flow generator and answer what it yields. A
``ModelRequest`` is answered by ``model.stream(request)`` (``astream``): every chunk
becomes an event handed to the consumer as it arrives, and the flow receives the
assembled ``ModelResponse``, so validation, re-asks, tool steps and the final write
run the same code as an unstreamed turn. Everything else (``Load``, ``Swap``,
``Insert``, ``Sleep``, tool operations) goes to the handler the caller gives, the
same one ``drive`` would use.

The call that creates a stream runs the flow up to its first write or model request
(or tool step): the reads and every check before them happen there, so an error known
before the model is called (no such session, invalid input, a paused session, a spent
budget, a busy row) is raised by that call itself, before the stream exists. Only what
happens from there on is reported while iterating; a stream that is never read has
written nothing, and needs no clean-up.

Stopping early (``break`` and ``close()``, leaving the ``with`` block, ``aclose()``,
a cancelled task) closes the model's stream at once and throws ``TurnCancelled``
into the flow at the operation it waits on. The flow's own failure path runs: a
session flow with a status column yields its ``failed`` status ``Swap``, which the
driver answers, and nothing else is written. The consumer never sees
``TurnCancelled``; a cancelled task gets its ``CancelledError`` back.

A failure (the model's stream broke, the write lost a race...) is raised to the
consumer as unstreamed, with ``usage`` set to the tokens spent so far when the error
does not carry its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Sequence,
)
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from . import _drivers, _observe
from ._flows import _LAST_RESULT
from ._observe import HookCall
from ._operations import Insert, RunTools, Sleep, Swap
from ._secrets import get_logger
from ._text import clean_text
from ._turn import TurnCancelled
from .context import Usage
from .errors import InputValidationError, ModelCallError
from .events import (
    ApprovalRequired,
    AttemptDiscarded,
    PartialOutput,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallFinished,
    ToolCallStarted,
    TurnCompleted,
)
from .llm import (
    Model,
    ModelRequest,
    ModelResponse,
    StreamEnd,
    TextChunk,
    ToolCallChunk,
    astream_within,
    stream_within,
)
from .result import Result
from .tools import ToolCall, ToolCallResult

if TYPE_CHECKING:
    from .agent import Agent

__all__ = [
    "AsyncTurnStream",
    "OnCancel",
    "TurnCancelled",
    "TurnStream",
    "arun_stream",
    "astream_session",
    "run_stream",
    "stream_session",
]

logger = get_logger("agent_session.streaming")

OutputT = TypeVar("OutputT")
SessionT = TypeVar("SessionT")

OnCancel = Literal["discard", "keep"]
"""What a stream stopped early stores: nothing (``discard``), or what was received."""

_CLEANUPS: set[asyncio.Future[None]] = set()
"""Clean-ups of cancelled async turns that are still running (kept from the GC)."""

CLEANUP_OPERATIONS = 20
"""At most this many operations are answered after a cancellation (the status write)."""


class _Turn:
    """The bookkeeping of one streamed turn, shared by the sync and async drivers."""

    __slots__ = (
        "agent",
        "calls",
        "context",
        "discard",
        "done",
        "flow",
        "keep",
        "model",
        "partial",
        "reading",
        "received",
        "result",
        "session",
        "shown",
        "usage",
    )

    def __init__(
        self,
        agent: Agent[Any],
        flow: Generator[Any, Any, Any],
        model: Model,
        on_cancel: OnCancel = "discard",
    ) -> None:
        if on_cancel not in ("discard", "keep"):
            raise InputValidationError(
                f'on_cancel must be "discard" or "keep", got {on_cancel!r}',
                errors=[],
                source="on_cancel",
            )
        self.agent = agent
        self.flow = flow
        self.model = model
        self.keep = on_cancel == "keep"
        self.context = contextvars.copy_context()
        """The flow runs in a context of its own: what it makes current (the turn's
        spans) stays there between events, whichever task steps it, and never leaks
        into the consumer's code."""
        self.received: list[str] = []
        """The text of the current reply handed out so far."""
        self.usage = Usage()
        self.calls = 0
        self.shown = False
        """Deltas of the current reply were handed out."""
        self.discard: str | None = None
        """Why the deltas of the last reply are void, once the next request shows it."""
        self.partial: PartialOutput | None = None
        self.result: Result[Any] | None = None
        self.session: Any = None
        self.done = False
        self.reading = False
        """The consumer asked for the first event (the stream went past its start)."""

    def request(self) -> AttemptDiscarded | None:
        """A new model request: announce the previous reply's deltas as void if they are."""
        event = AttemptDiscarded(self.discard, self.calls) if self.discard else None
        self.calls += 1
        self.discard = None
        self.shown = False
        self.received = []
        self.partial = PartialOutput() if self.agent.output_schema is not None else None
        return event

    def text(self, chunk: TextChunk) -> Sequence[StreamEvent]:
        self.shown = True
        text = clean_text(chunk.text)  # the flow warns once, on the whole reply
        self.received.append(text)
        delta = TextDelta(text)
        if self.partial is None:
            return (delta,)
        output = self.partial.feed(text)
        return (delta,) if output is None else (delta, output)

    def tool_delta(self, chunk: ToolCallChunk) -> ToolCallDelta:
        self.shown = True
        id, name = chunk.id, chunk.name
        return ToolCallDelta(
            chunk.index,
            id and clean_text(id),
            name and clean_text(name),
            clean_text(chunk.arguments_delta),
        )

    def response(self, response: ModelResponse) -> None:
        self.usage = self.usage + response.usage
        if not response.tool_calls and self.shown:
            # If the flow asks again, this reply was not valid: its deltas are void.
            self.discard = "invalid_output"

    def failed(self) -> None:
        if self.shown:
            self.discard = "retry"

    def operation(self, op: Any) -> None:
        """An operation other than a tool step (a write, a wait, a load) came between
        a final reply and the next request: the reply was not re-asked, the whole turn
        runs again (its write lost the race; ``conflict_retries``). A hook call is
        no such operation."""
        if self.discard == "invalid_output" and not isinstance(op, HookCall):
            self.discard = "rerun"

    def cancelled(self) -> TurnCancelled:
        """What is thrown into the flow when the consumer stopped early."""
        # Closed before it was read: nothing was received, there is nothing to keep.
        return TurnCancelled(keep=self.keep and self.reading, text="".join(self.received))

    def finish(self, value: Any) -> None:
        self.done = True
        if isinstance(value, Result):
            self.result = value
        else:
            self.session = value
            self.result = getattr(value, _LAST_RESULT, None)

    def final_events(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        result = self.result
        if result is None:
            return events
        pending = tuple(result.pending_approvals)
        if pending:
            events.append(ApprovalRequired(pending))
        events.append(TurnCompleted(result))
        return events

    def cleanup(self) -> Generator[Any, Any, None]:
        """Throw ``TurnCancelled`` into the flow and run it to its end: a flow itself,
        whose operations (the status write) ``_drivers.drive`` / ``adrive`` answer with
        the stream's handler. Model requests are refused, waits skipped, and at most
        ``CLEANUP_OPERATIONS`` operations are answered."""
        flow = self.flow
        step = self.context.run
        if inspect.getgeneratorstate(flow) != inspect.GEN_SUSPENDED:
            step(flow.close)
            return
        try:
            op = step(flow.throw, self.cancelled())
            for _ in range(CLEANUP_OPERATIONS):
                if isinstance(op, ModelRequest):
                    op = step(flow.throw, TurnCancelled())
                    continue
                if isinstance(op, Sleep):
                    op = step(flow.send, None)
                    continue
                try:
                    value = yield op
                except Exception as exc:
                    op = step(flow.throw, exc)
                    continue
                op = step(flow.send, value)
            step(flow.close)
        except TurnCancelled:
            pass
        except StopIteration as stop:  # the flow kept the turn (on_cancel="keep")
            self.finish(stop.value)
        except Exception:
            logger.warning("cleaning up a cancelled turn failed", exc_info=True)

    def attach_usage(self, exc: BaseException) -> None:
        if isinstance(exc, Exception) and getattr(exc, "usage", None) is None:
            with suppress(AttributeError, TypeError):
                exc.usage = self.usage  # type: ignore[attr-defined]


def _started(op: Any) -> list[StreamEvent]:
    """``ToolCallStarted`` for an operation that runs tool calls (it has ``calls``)."""
    calls = getattr(op, "calls", None)
    if not isinstance(calls, list | tuple):
        return []
    return [
        ToolCallStarted(call.id, call.name, call.arguments)
        for call in calls
        if isinstance(call, ToolCall)
    ]


def _finished(answer: Any) -> list[StreamEvent]:
    """``ToolCallFinished`` for each ``ToolCallResult`` an operation was answered with."""
    if not isinstance(answer, list | tuple):
        return []
    return [
        ToolCallFinished(r.tool_call_id, r.name, r.arguments, r.status, r.result, r.error)
        for r in answer
        if isinstance(r, ToolCallResult)
    ]


def _streamed(op: Any) -> bool:
    """Where a stream starts: at the first write (the claim of the row, an insert),
    model request or tool step. What comes before (reads, waits, hooks) is answered
    by the call that creates the stream."""
    return isinstance(op, ModelRequest | RunTools | Swap | Insert)


def _stream_ended(request: ModelRequest) -> ModelCallError:
    return ModelCallError(
        f"the stream of {request.model} ended without a complete reply",
        model=request.model,
        retryable=False,
    )


class _TurnStreamState(Generic[OutputT, SessionT]):
    """What ``TurnStream`` and ``AsyncTurnStream`` tell of their turn, read from its
    ``_Turn``."""

    _turn: _Turn

    @property
    def result(self) -> Result[OutputT] | None:
        """The turn's ``Result`` once the stream is exhausted, else ``None``."""
        return self._turn.result

    @property
    def session(self) -> SessionT | None:
        """The stored instance once the stream is exhausted (``None`` for an agent run)."""
        session: SessionT | None = self._turn.session
        return session

    @property
    def usage(self) -> Usage:
        """Tokens of the model calls that completed so far."""
        return self._turn.usage

    @property
    def done(self) -> bool:
        """The turn finished (and, in a session, was stored)."""
        return self._turn.done


class TurnStream(_TurnStreamState[OutputT, SessionT]):
    """A turn whose events arrive as the model writes (blocking code).

    ::

        with stream:
            for event in stream:
                ...
        stream.result  # the turn's Result, once the stream is exhausted

    ``session`` is the stored instance once the stream is exhausted (``None`` for an
    agent run); ``usage`` the tokens spent so far, also after an early stop or a
    failure.
    """

    def __init__(
        self,
        agent: Agent[Any],
        flow: Generator[Any, Any, Any],
        handle: Callable[[Any], Any],
        model: Model,
        *,
        on_cancel: OnCancel = "discard",
    ) -> None:
        self._turn = _Turn(agent, flow, model, on_cancel)
        self._handle = handle
        self._events = self._run()

    def _start(self) -> None:
        """Run the flow up to where the stream starts (``_streamed``): what fails
        before is raised here."""
        next(self._events)

    def __iter__(self) -> Iterator[StreamEvent[OutputT]]:
        return self

    def __next__(self) -> StreamEvent[OutputT]:
        event = next(self._events)
        while event is None:  # the start marker, of a stream made without ``_start``
            event = next(self._events)
        return event

    def __enter__(self) -> TurnStream[OutputT, SessionT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop: close the model's stream and end the turn without storing it."""
        self._events.close()

    def text_deltas(self) -> Iterator[str]:
        """Only the text, piece by piece (the other events are passed over)."""
        for event in self:
            if isinstance(event, TextDelta):
                yield event.text

    def _run(self) -> Generator[StreamEvent | None, None, None]:
        turn = self._turn
        flow = turn.flow
        step = turn.context.run
        try:
            try:
                op = step(next, flow)
                while True:
                    if not turn.reading and _streamed(op):
                        yield None  # the start: ``_start`` returns, the stream exists
                        turn.reading = True
                    if isinstance(op, ModelRequest) and op.purpose != "summary":
                        # A compaction's summary call is answered unstreamed, below:
                        # its text is not part of the reply the reader sees.
                        discarded = turn.request()
                        if discarded is not None:
                            yield discarded
                        response: ModelResponse | None = None
                        stream = stream_within(turn.model, op)
                        try:
                            for chunk in stream:
                                if isinstance(chunk, TextChunk):
                                    yield from turn.text(chunk)
                                elif isinstance(chunk, ToolCallChunk):
                                    yield turn.tool_delta(chunk)
                                elif isinstance(chunk, StreamEnd):
                                    response = chunk.response
                            if response is None:
                                raise _stream_ended(op)
                        except Exception as exc:
                            turn.failed()
                            op = step(flow.throw, exc)
                            continue
                        finally:
                            stream.close()
                        turn.response(response)
                        op = step(flow.send, response)
                    else:
                        turn.operation(op)
                        yield from _started(op)
                        try:
                            value = self._handle(op)
                        except Exception as exc:
                            op = step(flow.throw, exc)
                            continue
                        yield from _finished(value)
                        op = step(flow.send, value)
            except StopIteration as stop:
                turn.finish(stop.value)
        except GeneratorExit:
            self._cancel()
            raise
        except BaseException as exc:
            turn.attach_usage(exc)
            raise
        if not turn.reading:  # the flow ended before any model request
            yield None
        yield from turn.final_events()

    def _cancel(self) -> None:
        """Throw ``TurnCancelled`` into the flow and answer its clean-up operations."""
        _drivers.drive(self._turn.cleanup(), self._handle)


class AsyncTurnStream(_TurnStreamState[OutputT, SessionT]):
    """Async twin of ``TurnStream``: ``async with stream: async for event in stream``."""

    def __init__(
        self,
        agent: Agent[Any],
        flow: Generator[Any, Any, Any],
        handle: Callable[[Any], Awaitable[Any]],
        model: Model,
        *,
        on_cancel: OnCancel = "discard",
    ) -> None:
        self._turn = _Turn(agent, flow, model, on_cancel)
        self._handle = handle
        self._events = self._run()

    async def _start(self) -> None:
        """Run the flow up to where the stream starts (``_streamed``): what fails
        before is raised here."""
        await self._events.__anext__()

    def __aiter__(self) -> AsyncIterator[StreamEvent[OutputT]]:
        return self

    async def __anext__(self) -> StreamEvent[OutputT]:
        event = await self._events.__anext__()
        while event is None:  # the start marker, of a stream made without ``_start``
            event = await self._events.__anext__()
        return event

    async def __aenter__(self) -> AsyncTurnStream[OutputT, SessionT]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: close the model's stream and end the turn without storing it."""
        await self._events.aclose()

    async def text_deltas(self) -> AsyncIterator[str]:
        """Only the text, piece by piece (the other events are passed over)."""
        async for event in self:
            if isinstance(event, TextDelta):
                yield event.text

    async def _run(self) -> AsyncGenerator[StreamEvent | None, None]:
        turn = self._turn
        flow = turn.flow
        step = turn.context.run
        try:
            try:
                op = step(next, flow)
                while True:
                    if not turn.reading and _streamed(op):
                        yield None  # the start: ``_start`` returns, the stream exists
                        turn.reading = True
                    if isinstance(op, ModelRequest) and op.purpose != "summary":
                        # A compaction's summary call is answered unstreamed, below:
                        # its text is not part of the reply the reader sees.
                        discarded = turn.request()
                        if discarded is not None:
                            yield discarded
                        response: ModelResponse | None = None
                        stream = astream_within(turn.model, op)
                        try:
                            async for chunk in stream:
                                if isinstance(chunk, TextChunk):
                                    for event in turn.text(chunk):
                                        yield event
                                elif isinstance(chunk, ToolCallChunk):
                                    yield turn.tool_delta(chunk)
                                elif isinstance(chunk, StreamEnd):
                                    response = chunk.response
                            if response is None:
                                raise _stream_ended(op)
                        except Exception as exc:
                            turn.failed()
                            op = step(flow.throw, exc)
                            continue
                        finally:
                            await stream.aclose()
                        turn.response(response)
                        op = step(flow.send, response)
                    else:
                        turn.operation(op)
                        for event in _started(op):
                            yield event
                        try:
                            value = await self._handle(op)
                        except Exception as exc:
                            op = step(flow.throw, exc)
                            continue
                        for event in _finished(value):
                            yield event
                        op = step(flow.send, value)
            except StopIteration as stop:
                turn.finish(stop.value)
        except (GeneratorExit, asyncio.CancelledError):
            await self._cancel_shielded()
            raise
        except BaseException as exc:
            turn.attach_usage(exc)
            raise
        if not turn.reading:  # the flow ended before any model request
            yield None
        for event in turn.final_events():
            yield event

    async def _cancel_shielded(self) -> None:
        """Run ``_cancel`` in a task of its own, shielded: under a cancel scope that
        cancels every ``await`` of the cancelled task (anyio, so Starlette when the
        client disconnects), the status write still runs to its end."""
        task = asyncio.ensure_future(self._cancel())
        _CLEANUPS.add(task)
        task.add_done_callback(_CLEANUPS.discard)
        await asyncio.shield(task)

    async def _cancel(self) -> None:
        """Throw ``TurnCancelled`` into the flow and answer its clean-up operations."""
        await _drivers.adrive(self._turn.cleanup(), self._handle)


# -- a turn, streamed -------------------------------------------------------------
#
# Every streamed turn runs its flow through ``_observe.observed``, the same wrapper
# ``_observe.drive`` uses: hooks, spans and logs see a streamed turn as an unstreamed
# one (the ``chat`` span lasts from the request to the last chunk).


def stream_session(
    agent: Agent[Any],
    flow: Generator[Any, Any, Any],
    store: Any,
    *,
    call: str,
    key: Any = None,
    on_cancel: OnCancel = "discard",
) -> TurnStream[Any, Any]:
    """A session flow as a stream: its database operations answered by ``store``
    (a ``SyncStore``), its model requests by ``store.model.stream``."""
    watched = _observe.observed(agent, flow, call=call, key=key, store=store, is_async=False)
    handle = store if watched is flow else _observe.with_hooks(store)
    stream: TurnStream[Any, Any] = TurnStream(
        agent, watched, handle, store.model, on_cancel=on_cancel
    )
    stream._start()
    return stream


async def astream_session(
    agent: Agent[Any],
    flow: Generator[Any, Any, Any],
    store: Any,
    *,
    call: str,
    key: Any = None,
    on_cancel: OnCancel = "discard",
) -> AsyncTurnStream[Any, Any]:
    """Async twin of ``stream_session`` (``store`` an ``AsyncStore``)."""
    await store.model.awarm_up()  # e.g. the first import of LiteLLM, off the event loop
    watched = _observe.observed(agent, flow, call=call, key=key, store=store, is_async=True)
    handle = store if watched is flow else _observe.awith_hooks(store)
    stream: AsyncTurnStream[Any, Any] = AsyncTurnStream(
        agent, watched, handle, store.model, on_cancel=on_cancel
    )
    await stream._start()
    return stream


def run_stream(
    agent: Agent[OutputT],
    input: Any,
    *,
    instruction_args: Any = None,
    deps: Any = None,
) -> TurnStream[OutputT, None]:
    """``agent.run(..., stream=True)``: validated before it returns, no database."""
    return agent.run(input, instruction_args=instruction_args, deps=deps, stream=True)


async def arun_stream(
    agent: Agent[OutputT],
    input: Any,
    *,
    instruction_args: Any = None,
    deps: Any = None,
) -> AsyncTurnStream[OutputT, None]:
    """Async twin of ``run_stream``."""
    return await agent.arun(input, instruction_args=instruction_args, deps=deps, stream=True)


def flow_stream(
    agent: Agent[OutputT], flow: Generator[Any, Any, Any], deps: Any, *, call: str
) -> TurnStream[OutputT, None]:
    """An agent's turn ``flow`` (``run``, ``resume``) as a stream, without a database."""
    model = agent.model
    handle = _drivers.model_handler(model, agent._tool_scope(deps))
    watched = _observe.observed(agent, flow, call=call, is_async=False)
    if watched is not flow:
        handle = _observe.with_hooks(handle)
    stream: TurnStream[OutputT, None] = TurnStream(agent, watched, handle, model)
    stream._start()
    return stream


async def aflow_stream(
    agent: Agent[OutputT], flow: Generator[Any, Any, Any], deps: Any, *, call: str
) -> AsyncTurnStream[OutputT, None]:
    """Async twin of ``flow_stream`` (LiteLLM already imported by the caller)."""
    model = agent.model
    handle = _drivers.amodel_handler(model, agent._tool_scope(deps))
    watched = _observe.observed(agent, flow, call=call, is_async=True)
    if watched is not flow:
        handle = _observe.awith_hooks(handle)
    stream: AsyncTurnStream[OutputT, None] = AsyncTurnStream(agent, watched, handle, model)
    await stream._start()
    return stream
