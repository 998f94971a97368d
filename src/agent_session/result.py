"""The result of one agent turn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from .context import Usage

__all__ = ["Result"]

OutputT = TypeVar("OutputT")


@dataclass(frozen=True)
class Result(Generic[OutputT]):
    """What one turn produced.

    ``messages`` is what was sent plus the assistant reply, in OpenAI chat format;
    re-ask exchanges are not in it, but their tokens are in ``usage`` and their
    cost in ``cost``.
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

    @property
    def output_json(self) -> Any:
        """The output as JSON-compatible data."""
        if isinstance(self.output, BaseModel):
            return self.output.model_dump(mode="json")
        return self.output
