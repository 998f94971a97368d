"""Server-sent events from a streamed turn, with no web framework dependency.

``encode(stream)`` (an iterator of ``str``) and ``aencode(stream)`` (an async
iterator) turn a ``TurnStream`` / ``AsyncTurnStream`` into ``text/event-stream``
frames: one per event, ``event: <kind>`` and ``data: <one JSON object>``, then a
final ``completed`` frame whose data is ``{"session_key": ...}``, the stored
session's primary key (``null`` for an agent run). An error mid-stream becomes an
``error`` frame, ``{"type": ..., "message": ...}``, and ends the stream: no stack
trace goes to the client (the error is logged under ``agent_session.sse``).

When the server stops reading (the client went away, the response task is
cancelled), the stream is closed, which closes the model's HTTP stream and stores
nothing. With Starlette or FastAPI::

    return StreamingResponse(sse.aencode(stream), media_type="text/event-stream")
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic_core import to_json

from ._secrets import get_logger, mask

if TYPE_CHECKING:
    from .events import StreamEvent
    from .streams import AsyncTurnStream, TurnStream

__all__ = ["MEDIA_TYPE", "aencode", "encode", "frame"]

logger: logging.Logger = get_logger("agent_session.sse")

MEDIA_TYPE = "text/event-stream"


def frame(kind: str, data: Mapping[str, Any]) -> str:
    """One server-sent event: ``event: <kind>``, ``data: <JSON on one line>``, a blank line."""
    return f"event: {kind}\ndata: {to_json(data, fallback=repr).decode()}\n\n"


def _event(event: StreamEvent) -> str:
    return frame(event.kind, event.data())


def _error(exc: Exception) -> str:
    logger.warning("a streamed turn failed", exc_info=exc)
    # The library's errors are masked already; any other exception's text is masked here.
    return frame("error", {"type": type(exc).__name__, "message": mask(str(exc))})


def _completed(session: Any) -> str:
    return frame("completed", {"session_key": session_key(session)})


def session_key(instance: Any) -> Any:
    """The primary key of a stored instance (a list for a composite key), or ``None``."""
    if instance is None:
        return None
    from ._keys import identity

    key = identity(instance)
    return list(key) if isinstance(key, tuple) else key


def encode(stream: TurnStream[Any, Any]) -> Iterator[str]:
    """The frames of ``stream``; stopping early closes it (nothing is stored)."""
    with stream:
        try:
            for event in stream:
                yield _event(event)
        except Exception as exc:
            yield _error(exc)
            return
        yield _completed(stream.session)


async def aencode(stream: AsyncTurnStream[Any, Any]) -> AsyncIterator[str]:
    """Async twin of ``encode``."""
    async with stream:
        try:
            async for event in stream:
                yield _event(event)
        except Exception as exc:
            yield _error(exc)
            return
        yield _completed(stream.session)
