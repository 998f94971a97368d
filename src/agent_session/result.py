"""The result of one agent turn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from .context import Usage

if TYPE_CHECKING:
    from .tools import PendingApproval, ToolCallResult

__all__ = ["Result"]

OutputT = TypeVar("OutputT")


@dataclass(frozen=True)
class Result(Generic[OutputT]):
    """What one turn produced.

    ``messages`` is what was sent plus the assistant reply, in OpenAI chat format,
    with the turn's tool exchange (assistant ``tool_calls`` messages and ``tool``
    results); re-ask exchanges are not in it, but their tokens are in ``usage`` and
    their cost in ``cost``, summed over every model call of the turn.

    A turn paused for approvals has ``pending_approvals`` and ``output`` ``None``;
    ``Agent.resume`` (or ``resume_session`` for a stored one) finishes it.
    """

    output: OutputT
    """The parsed output: an ``output_schema`` instance, or the text."""
    text: str
    """The raw assistant text."""
    messages: list[dict[str, Any]]
    usage: Usage
    cost: float | None
    """USD via LiteLLM's price map, summed over attempts; ``None`` when unknown."""
    model: str
    finish_reason: str | None
    attempts: int
    duration_s: float
    input: BaseModel
    """The validated input."""
    tool_calls: list[ToolCallResult] = field(default_factory=list)
    """The calls that ran (or were denied) in this call, in order: name, arguments,
    result or error, duration."""
    pending_approvals: list[PendingApproval] = field(default_factory=list)
    """The calls waiting for a decision; empty unless the turn paused."""
    stored_messages: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """This turn's messages in their stored form (the user message first, with ``meta``)."""
    paused_turn: Any = field(default=None, repr=False, compare=False)
    """What ``Agent.resume`` needs to go on with a paused turn (opaque)."""
    interrupted: bool = False
    """The consumer of a streamed turn stopped early and it was stored as far as it
    went (``on_cancel="keep"``): ``output`` is ``None``, ``text`` what was received."""

    @property
    def output_json(self) -> Any:
        """The output as JSON-compatible data."""
        if isinstance(self.output, BaseModel):
            return self.output.model_dump(mode="json")
        return self.output
