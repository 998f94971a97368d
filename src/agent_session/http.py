"""The library's errors as HTTP responses: RFC 9457 problem documents, no web framework.

``problem(exc)`` returns ``(status, headers, body)`` for any exception: ``body`` is a
problem document (``type``, ``title``, ``status``, ``detail`` and a few extension
members), ``headers`` holds its ``Content-Type`` (``application/problem+json``) and,
when the model provider asked for a wait, ``Retry-After``. With FastAPI or Starlette::

    @app.exception_handler(AgentSessionError)
    async def problem_response(request: Request, exc: AgentSessionError) -> JSONResponse:
        status, headers, body = problem(exc)
        return JSONResponse(body, status_code=status, headers=headers)

Each error class has a stable ``type``: ``PROBLEM_BASE`` followed by a name of its
own (``https://agent-session.dev/problems/session-not-found``); ``PROBLEM_TYPES``
lists them. The statuses:

- 404: ``SessionNotFoundError`` (no such session, or not the caller's under ``where=``)
- 409: ``StaleSessionError``, ``SessionBusyError`` (``"retryable": true``),
  ``ApprovalPendingError`` (``"pending"``: the ids and tool names to decide),
  ``IdempotencyKeyReusedError`` (the key came with another request)
- 422: ``InputValidationError`` (``"source"``, and ``"errors"``: Pydantic's
  locations, messages and types, never the input itself), ``ContextWindowError``
- 429: ``BudgetExceededError`` (``"kind"``, ``"limit"``, ``"spent"``)
- 502: model failures (the provider refused or failed, the connection failed,
  ``OutputLimitError``, ``OutputValidationError``, ``ToolLoopError``); 503: the
  provider was rate limited or overloaded (its 429, 503, 529); 504: it timed out
  (``TurnTimeoutError`` too). ``"retryable"`` says whether another try may succeed;
  ``"retry_after"`` (and the ``Retry-After`` header, in whole seconds) is the wait
  the provider asked for, when it asked.
- 500: ``ConfigurationError``, ``TemplateError``, ``ContextError``, ``StorageError``,
  ``ToolExecutionError``, and any exception that is not the library's
  (``type`` ``about:blank``).

What reaches the client: for a 4xx, ``detail`` is the first line of the error's
message (secrets are masked in every message; the first line never quotes the input,
which Pydantic shows on the lines after it). For a 5xx, ``detail`` is a fixed
sentence per type: those messages speak of the server (tables, drivers, the
provider's own words, a tool's exception) and belong in its log, not in a response.
``ContextWindowError`` (a 422 that quotes the provider) has a fixed detail too. No
stack trace, no message content, no tool arguments, no model name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._secrets import mask
from .errors import (
    AgentSessionError,
    ApprovalPendingError,
    BudgetExceededError,
    ConfigurationError,
    ContextError,
    ContextWindowError,
    IdempotencyKeyReusedError,
    InputValidationError,
    ModelCallError,
    OutputLimitError,
    OutputValidationError,
    SessionBusyError,
    SessionNotFoundError,
    StaleSessionError,
    StorageError,
    TemplateError,
    ToolExecutionError,
    ToolLoopError,
    TurnTimeoutError,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .agent import Agent
    from .context import Message

__all__ = [
    "MEDIA_TYPE",
    "PROBLEM_BASE",
    "PROBLEM_TYPES",
    "ProblemType",
    "message_view",
    "problem",
    "transcript",
]

MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://agent-session.dev/problems/"
"""Every problem ``type`` of the library is this base followed by the type's name."""

MAX_DETAIL_CHARS = 500
"""A longer first line is cut (with ``...``): a detail is a sentence, not a dump."""


@dataclass(frozen=True)
class ProblemType:
    """How one error class is answered: its ``type`` name, title and usual status.

    ``detail`` is the fixed detail of a server error (5xx) or of an error whose
    message quotes the provider; ``None`` for the other client errors (4xx), whose
    detail is the first line of the error's message.
    """

    name: str
    title: str
    status: int
    detail: str | None = None

    @property
    def uri(self) -> str:
        return PROBLEM_BASE + self.name


_MODEL_DETAIL = "the model provider did not answer the turn; nothing was stored"

PROBLEM_TYPES: dict[type[AgentSessionError], ProblemType] = {
    SessionNotFoundError: ProblemType("session-not-found", "Session not found", 404),
    StaleSessionError: ProblemType("stale-session", "Session changed by another request", 409),
    SessionBusyError: ProblemType("session-busy", "Session busy", 409),
    ApprovalPendingError: ProblemType("approval-pending", "Approval pending", 409),
    InputValidationError: ProblemType("invalid-input", "Invalid input", 422),
    IdempotencyKeyReusedError: ProblemType(
        "idempotency-key-reused", "Idempotency key used with another request", 409
    ),
    BudgetExceededError: ProblemType("budget-exceeded", "Budget exceeded", 429),
    ContextWindowError: ProblemType(
        "context-window-exceeded",
        "Conversation too long for the model",
        422,
        "the conversation is longer than the model's context window; nothing was stored",
    ),
    ModelCallError: ProblemType("model-call-failed", "Model call failed", 502, _MODEL_DETAIL),
    TurnTimeoutError: ProblemType(
        "turn-timeout",
        "Model timed out",
        504,
        "the model did not finish the turn in time; nothing was stored",
    ),
    OutputLimitError: ProblemType(
        "output-limit",
        "Model reply too long",
        502,
        "the model's reply passed its size limit and was stopped; nothing was stored",
    ),
    OutputValidationError: ProblemType(
        "invalid-model-output",
        "Invalid model output",
        502,
        "the model's reply did not have the expected form; nothing was stored",
    ),
    ToolLoopError: ProblemType(
        "tool-loop",
        "Too many tool steps",
        502,
        "the model called tools more times than a turn allows; nothing was stored",
    ),
    ToolExecutionError: ProblemType(
        "tool-failed", "Tool failed", 500, "a tool failed during the turn; nothing was stored"
    ),
    ConfigurationError: ProblemType(
        "configuration", "Server misconfigured", 500, "the server is not configured correctly"
    ),
    TemplateError: ProblemType(
        "template", "Instruction failed", 500, "the server could not build the model's instruction"
    ),
    ContextError: ProblemType(
        "unreadable-session", "Stored session unreadable", 500, "the stored session cannot be read"
    ),
    StorageError: ProblemType(
        "storage",
        "Database error",
        500,
        "the database failed; nothing was written",
    ),
    AgentSessionError: ProblemType(
        "agent-session-error", "Internal Server Error", 500, "the request could not be completed"
    ),
}
"""The answer to each error class. A subclass the table does not name (an app's own)
is answered as its nearest listed base class."""

_UNKNOWN = ProblemType("", "Internal Server Error", 500, "the request could not be completed")


def problem(exc: BaseException) -> tuple[int, dict[str, str], dict[str, Any]]:
    """``(status, headers, body)``: ``exc`` as an RFC 9457 problem document.

    Any exception is accepted; one that is not the library's is a 500 with
    ``type`` ``about:blank`` and a generic detail (it says nothing of ``exc``).
    """
    headers = {"Content-Type": MEDIA_TYPE}
    if not isinstance(exc, AgentSessionError):
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": _UNKNOWN.title,
            "status": 500,
            "detail": _UNKNOWN.detail,
        }
        return 500, headers, body
    kind = _problem_type(type(exc))
    status = kind.status
    extensions: dict[str, Any] = {}
    if isinstance(exc, ModelCallError):
        status = _model_status(exc, kind)
        extensions["retryable"] = exc.retryable
        if exc.retry_after is not None:
            seconds = max(0, math.ceil(exc.retry_after))
            extensions["retry_after"] = seconds
            headers["Retry-After"] = str(seconds)
    else:
        extend = _EXTENSIONS.get(type(exc)) or next(
            (fn for cls, fn in _EXTENSIONS.items() if isinstance(exc, cls)), None
        )
        if extend is not None:
            extensions.update(extend(exc))
    body = {
        "type": kind.uri,
        "title": kind.title,
        "status": status,
        "detail": kind.detail if kind.detail is not None else _first_line(exc),
        **extensions,
    }
    return status, headers, body


def _problem_type(cls: type[AgentSessionError]) -> ProblemType:
    for base in cls.__mro__:
        kind = PROBLEM_TYPES.get(base)
        if kind is not None:
            return kind
    raise AssertionError("unreachable: AgentSessionError is in the table")


def _model_status(exc: ModelCallError, kind: ProblemType) -> int:
    """The status of a model failure: the table's for the subclasses; for a plain
    ``ModelCallError``, 503 when the provider was rate limited or overloaded, 504
    when it (or the connection to it) timed out, 502 otherwise."""
    if kind is not PROBLEM_TYPES[ModelCallError]:
        return kind.status
    code = exc.status_code
    if code in (429, 503, 529):
        return 503
    if code in (408, 504) or (code is None and _timed_out(exc)):
        return 504
    return 502


def _timed_out(exc: BaseException) -> bool:
    seen: set[int] = set()
    link: BaseException | None = exc.__cause__ or exc.__context__
    while link is not None and id(link) not in seen and len(seen) < 20:
        seen.add(id(link))
        if isinstance(link, TimeoutError) or "Timeout" in type(link).__name__:
            return True
        link = link.__cause__ or link.__context__
    return False


def _first_line(exc: BaseException) -> str:
    text = mask(str(exc))  # masked when raised; masked again for subclasses of the app's
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(first) > MAX_DETAIL_CHARS:
        first = first[: MAX_DETAIL_CHARS - 3] + "..."
    return first


def _input_errors(exc: Any) -> dict[str, Any]:
    errors = [
        {
            "loc": [part for part in error.get("loc", ()) if isinstance(part, str | int)],
            "msg": mask(str(error.get("msg", ""))),
            "type": str(error.get("type", "")),
        }
        for error in exc.errors
        if isinstance(error, dict)
    ]
    return {"source": exc.source, "errors": errors}


def _pending(exc: Any) -> dict[str, Any]:
    return {
        "pending": [
            {"tool_call_id": item.tool_call_id, "tool_name": item.tool_name} for item in exc.pending
        ]
    }


def _budget(exc: Any) -> dict[str, Any]:
    return {"kind": exc.kind, "limit": exc.limit, "spent": exc.spent}


def _retryable(exc: Any) -> dict[str, Any]:
    return {"retryable": True}


_EXTENSIONS: dict[type[AgentSessionError], Callable[[Any], dict[str, Any]]] = {
    InputValidationError: _input_errors,
    ApprovalPendingError: _pending,
    BudgetExceededError: _budget,
    StaleSessionError: _retryable,
    SessionBusyError: _retryable,
}


# -- transcripts for API clients ---------------------------------------------------


def message_view(message: Message, agent: Agent[Any] | None = None) -> dict[str, Any]:
    """One stored message as an API client shows it: its ``id`` (what the edit and
    regenerate buttons send back), the ``role``, and

    - a user message: ``text`` (the input's text as the user wrote it);
    - an assistant reply: ``output``, the reply parsed by ``agent`` as JSON data (the
      stored ``text`` when no agent is given, when the agent's output schema no longer
      reads it, or when the reply was interrupted: then ``interrupted: true``), and
      ``tool_calls`` summarized as ``id``, ``name`` and ``arguments`` (a JSON string);
    - a tool result: ``tool_call_id`` and ``text``;
    - a system message (the instruction or a compaction summary): ``text``.

    Nothing else of ``meta`` (usage, cost, model) is shown.
    """
    view: dict[str, Any] = {"id": message.id, "role": message.role}
    if message.role == "assistant":
        if message.tool_calls:
            view["tool_calls"] = [_call_view(call) for call in message.tool_calls]
        if message.meta.interrupted:
            view["interrupted"] = True
            view["text"] = message.content
        elif message.content:
            view.update(_reply_view(message, agent))
    elif message.role == "tool":
        view["tool_call_id"] = message.tool_call_id
        view["text"] = message.content
    else:
        view["text"] = message.content
    return view


def transcript(
    messages: Iterable[Message], agent: Agent[Any] | None = None, *, system: bool = False
) -> list[dict[str, Any]]:
    """``message_view`` of each message, without system messages (the instruction and
    compaction summaries) unless ``system=True``: what a chat UI lists, from
    ``get_messages`` or ``get_context(...).messages``."""
    return [
        message_view(message, agent) for message in messages if system or message.role != "system"
    ]


def _call_view(call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    function = function if isinstance(function, dict) else {}
    return {
        "id": call.get("id") if isinstance(call, dict) else None,
        "name": function.get("name"),
        "arguments": function.get("arguments"),
    }


def _reply_view(message: Message, agent: Agent[Any] | None) -> dict[str, Any]:
    if agent is None:
        return {"text": message.content}
    try:
        output = message.parse_output(agent)
    except ValueError:  # a reply the current output schema no longer reads
        return {"text": message.content}
    if hasattr(output, "model_dump"):
        return {"output": output.model_dump(mode="json")}
    return {"output": output}
