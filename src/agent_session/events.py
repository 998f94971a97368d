"""What a streamed turn tells its consumer, event by event.

A ``TurnStream`` (``AsyncTurnStream``) yields these as the turn runs. Each is a
frozen dataclass with a ``kind`` string (the ``event:`` name of its server-sent
event, see ``agent_session.sse``) and a ``data()`` method giving its JSON form:

- ``TextDelta(text)``: the next piece of the model's reply;
- ``OutputDelta(partial)``: with an ``output_schema``, the object parsed so far from
  the reply's JSON (Pydantic's partial JSON parsing), sent only when it changed;
- ``ToolCallDelta``: the next piece of a tool call the model is writing;
- ``ToolCallStarted`` / ``ToolCallFinished``: a tool call runs, and what it gave;
- ``ApprovalRequired(pending)``: the turn paused for a person's decision;
- ``AttemptDiscarded``: the reply streamed so far is not the answer (it was invalid
  and the model is asked again, the call failed and is retried, or the turn is run
  again after a lost race): a UI clears the deltas it showed since the last request;
- ``TurnCompleted(result)``: the turn finished (and was stored); always the last
  event of a finished turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic_core import from_json, to_jsonable_python

if TYPE_CHECKING:
    from .result import Result
    from .tools import PendingApproval

if TYPE_CHECKING:
    # Unparameterized ``TurnCompleted`` and ``StreamEvent`` mean ``[Any]`` (PEP 696).
    from typing_extensions import TypeVar as _TypeVar

    OutputT = _TypeVar("OutputT", default=Any)
else:
    OutputT = TypeVar("OutputT")

__all__ = [
    "ApprovalRequired",
    "AttemptDiscarded",
    "OutputDelta",
    "PartialOutput",
    "StreamEvent",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallFinished",
    "ToolCallStarted",
    "TurnCompleted",
    "parse_partial",
]


@dataclass(frozen=True)
class TextDelta:
    """The next piece of the model's reply text."""

    kind: ClassVar[str] = "text_delta"
    text: str

    def data(self) -> dict[str, Any]:
        return {"text": self.text}


@dataclass(frozen=True)
class OutputDelta:
    """The output parsed so far (a dict or list, fields still missing), when it changed."""

    kind: ClassVar[str] = "output_delta"
    partial: Any

    def data(self) -> dict[str, Any]:
        return {"partial": self.partial}


@dataclass(frozen=True)
class ToolCallDelta:
    """The next piece of tool call number ``index`` the model is writing; its first
    piece names the call (``id``, ``name``)."""

    kind: ClassVar[str] = "tool_call_delta"
    index: int
    id: str | None
    name: str | None
    arguments_delta: str

    def data(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "id": self.id,
            "name": self.name,
            "arguments_delta": self.arguments_delta,
        }


@dataclass(frozen=True)
class ToolCallStarted:
    """A tool call starts running."""

    kind: ClassVar[str] = "tool_call_started"
    tool_call_id: str
    name: str
    arguments: str
    """The raw argument text the model sent."""

    def data(self) -> dict[str, Any]:
        return {"tool_call_id": self.tool_call_id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True)
class ToolCallFinished:
    """A tool call ran: its ``result``, or the ``error`` the model is sent."""

    kind: ClassVar[str] = "tool_call_finished"
    tool_call_id: str
    name: str
    arguments: Any
    """The validated arguments (a dict)."""
    status: str = "ok"
    """``"ok"``, ``"error"`` or ``"denied"``."""
    result: Any = None
    error: str | None = None

    def data(self) -> dict[str, Any]:
        return {
            "tool_call_id": self.tool_call_id,
            "name": self.name,
            "arguments": _jsonable(self.arguments),
            "status": self.status,
            "result": _jsonable(self.result),
            "error": self.error,
        }


@dataclass(frozen=True)
class ApprovalRequired:
    """The turn paused: these calls wait for a person's decision."""

    kind: ClassVar[str] = "approval_required"
    pending: tuple[PendingApproval, ...]

    def data(self) -> dict[str, Any]:
        return {
            "pending": [
                {
                    "tool_call_id": p.tool_call_id,
                    "tool_name": p.tool_name,
                    "arguments": _jsonable(p.arguments),
                }
                for p in self.pending
            ]
        }


@dataclass(frozen=True)
class AttemptDiscarded:
    """The deltas since the last request are not the answer: clear them.

    ``reason`` is ``"invalid_output"`` (the model is asked again), ``"retry"`` (the
    call failed mid-way and is made again) or ``"rerun"`` (the turn's write lost a
    race and the turn runs again on the newer history); ``attempt`` counts the model
    calls of the turn so far.
    """

    kind: ClassVar[str] = "attempt_discarded"
    reason: str
    attempt: int

    def data(self) -> dict[str, Any]:
        return {"reason": self.reason, "attempt": self.attempt}


@dataclass(frozen=True)
class TurnCompleted(Generic[OutputT]):
    """The turn finished (and, in a session, was stored): its ``Result``, typed with
    the stream's output type (``TurnStream[Reply, ...]`` yields ``TurnCompleted[Reply]``)."""

    kind: ClassVar[str] = "turn_completed"
    result: Result[OutputT]

    def data(self) -> dict[str, Any]:
        result = self.result
        return {
            "output": _jsonable(result.output_json),
            "text": result.text,
            "usage": result.usage.model_dump(),
            "cost": result.cost,
            "model": result.model,
            "finish_reason": result.finish_reason,
            "attempts": result.attempts,
        }


StreamEvent = (
    TextDelta
    | OutputDelta
    | ToolCallDelta
    | ToolCallStarted
    | ToolCallFinished
    | ApprovalRequired
    | AttemptDiscarded
    | TurnCompleted[OutputT]
)
"""Every event a turn stream yields (``StreamEvent[Reply]``: its ``TurnCompleted``
holds a ``Result[Reply]``)."""


def _jsonable(value: Any) -> Any:
    return to_jsonable_python(value, fallback=repr)


# -- partial structured output -------------------------------------------------------

_NOTHING: Any = object()


def parse_partial(text: str) -> Any:
    """The JSON value that the reply ``text`` so far starts, or ``None`` if none yet.

    Unfinished strings are kept as far as they go, so a long field grows as it
    arrives; a leading Markdown code fence (```` ```json ````) is skipped. Only an
    object or an array counts: a reply that is not JSON gives ``None``.
    """
    body = text.lstrip()
    if body.startswith("```"):
        newline = body.find("\n")
        if newline < 0:
            return None
        body = body[newline + 1 :].lstrip()
    if not body or body[0] not in "{[":
        return None
    try:
        value = from_json(body, allow_partial="trailing-strings")
    except ValueError:
        return None
    return value if isinstance(value, dict | list) else None


class PartialOutput:
    """Tracks the partial output of one reply: ``feed`` the text so far, get the new
    partial value when it changed, else ``None``."""

    __slots__ = ("_last", "_text")

    def __init__(self) -> None:
        self._text: list[str] = []
        self._last: Any = _NOTHING

    def feed(self, delta: str) -> OutputDelta | None:
        """Add ``delta`` to the reply; an ``OutputDelta`` if the parsed value changed."""
        self._text.append(delta)
        value = parse_partial("".join(self._text))
        if value is None or (self._last is not _NOTHING and value == self._last):
            return None
        self._last = value
        return OutputDelta(value)
