"""What a model stream yields (``llm.StreamChunk``): defined here, imported by the first
stream, and read as ``agent_session.llm.TextChunk`` (their ``__module__``) and so on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .llm import ModelResponse

__all__ = ["StreamChunk", "StreamEnd", "TextChunk", "ToolCallChunk"]


@dataclass(frozen=True)
class TextChunk:
    """A piece of the reply's text, as it arrived."""

    __module__ = "agent_session.llm"

    text: str


@dataclass(frozen=True)
class ToolCallChunk:
    """A piece of tool call number ``index`` of the reply.

    The first piece of a call carries its ``id`` and ``name``; ``arguments_delta`` is
    the next part of its raw argument text (possibly empty).
    """

    __module__ = "agent_session.llm"

    index: int
    id: str | None
    name: str | None
    arguments_delta: str


@dataclass(frozen=True)
class StreamEnd:
    """The last item of a stream: the whole reply, as ``complete`` returns it."""

    __module__ = "agent_session.llm"

    response: ModelResponse


StreamChunk = TextChunk | ToolCallChunk | StreamEnd
"""What a model stream yields; ``StreamEnd`` comes last, once."""
