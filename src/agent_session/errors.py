"""Errors raised by agent-session.

Every error derives from one root, so ``except AgentSessionError`` catches all of
them. Errors that wrap a failure of another library (Pydantic, Jinja, LiteLLM,
SQLAlchemy) are raised ``from`` that exception, so the original stays on
``__cause__``::

    AgentSessionError
    ├── ConfigurationError         the Agent, the model class or the set-up (key, module) is wrong
    ├── TemplateError              the instruction failed to render at run time
    ├── InputValidationError       input or instruction arguments are invalid (also ValueError)
    │   └── IdempotencyKeyReusedError  a retry's key came first with another input
    ├── ModelCallError             the LLM call failed: auth, rate limit, timeout, 5xx, ...
    │   ├── ContextWindowError     the request is longer than the model's context window
    │   ├── TurnTimeoutError       the turn's model time passed turn_timeout; nothing stored
    │   └── OutputLimitError       a streamed reply passed max_tokens or max_output_bytes
    ├── OutputValidationError      the model's output stayed invalid after every re-ask
    ├── ContextError               a stored context is not a valid context document
    ├── SessionNotFoundError       no row has that primary key (also LookupError)
    ├── StaleSessionError          another writer changed the session first; nothing written
    ├── SessionBusyError           the session is marked running by another worker
    ├── StorageError               the database failed (connection lost, ...); nothing written
    ├── ToolExecutionError         a tool built with on_error="raise" raised; nothing written
    ├── ToolLoopError              a turn made more than max_tool_steps model calls
    ├── ApprovalPendingError       the session waits for approvals; resume it instead
    └── BudgetExceededError        a token, cost or model-call limit was reached; nothing written

The first is a mistake in the code that uses the library; the others are failures
of one run that the caller may handle, retry or report.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any

from ._secrets import mask
from ._text import clean_text

if TYPE_CHECKING:
    from .context import Usage
    from .tools import PendingApproval

__all__ = [
    "AgentSessionError",
    "ApprovalPendingError",
    "BudgetExceededError",
    "ConfigurationError",
    "ContextError",
    "ContextWindowError",
    "IdempotencyKeyReusedError",
    "InputValidationError",
    "ModelCallError",
    "OutputLimitError",
    "OutputValidationError",
    "SessionBusyError",
    "SessionNotFoundError",
    "StaleSessionError",
    "StorageError",
    "TemplateError",
    "ToolExecutionError",
    "ToolLoopError",
    "TurnTimeoutError",
]


def show_key(key: Any) -> str:
    """A primary key as its user writes it, for error messages.

    ``3fa85f64-5717-4562-b3fc-2c963f66afa6`` (not ``UUID('3fa85f64-...')``), ``42``,
    ``abc``; a composite key as ``(1, 'a')``. The exceptions keep the real value in
    their ``key`` attribute.
    """
    if isinstance(key, tuple):
        parts = [repr(part) if isinstance(part, str) else show_key(part) for part in key]
        return f"({parts[0]},)" if len(parts) == 1 else f"({', '.join(parts)})"
    if isinstance(key, uuid.UUID | int | str):
        return str(key)
    return repr(key)


class AgentSessionError(Exception):
    """Root of every error raised by agent-session.

    Its message never shows a secret: the keys of the agents' ``model_settings``, and
    anything shaped like an API token (``sk-...``, ``Bearer ...``), are masked as
    ``****``, also in text quoted from a provider.
    """

    def __init__(self, *args: Any) -> None:
        # Text UTF-8 cannot encode (quoted from a bad key, say) would break a log handler.
        super().__init__(*(mask(clean_text(a)) if isinstance(a, str) else a for a in args))


class ConfigurationError(AgentSessionError):
    """The ``Agent`` or a model class using the mixin is defined wrongly, or the set-up
    lacks what a model call needs (the provider's API key, a module LiteLLM imports):
    raised at once, never retried."""


class TemplateError(AgentSessionError):
    """The instruction template failed to render (missing variable, sandbox, filter)."""


class InputValidationError(AgentSessionError, ValueError):
    """The input (or the instruction arguments) did not validate.

    ``errors`` holds Pydantic's error list; ``source`` says which value failed:
    ``"input"``, ``"instruction_args"`` or ``"size"``.
    """

    def __init__(self, message: str, *, errors: list[Any], source: str = "input") -> None:
        super().__init__(message)
        self.errors: list[Any] = errors
        self.source: str = source


class IdempotencyKeyReusedError(InputValidationError):
    """A retried request is not the request that used its key first: the
    ``idempotency_key`` (or, for ``start_session``, the primary key the client chose)
    was used by a request with another input, approvals or operation. Nothing was run."""

    def __init__(self, message: str, *, key: Hashable = None, idempotency_key: str | None = None):
        super().__init__(message, errors=[], source="idempotency_key")
        self.key: Hashable = key
        """The session's primary key (a tuple for a composite key)."""
        self.idempotency_key: str | None = idempotency_key
        """The key given (``None``: a start retried with its chosen primary key)."""


RETRYABLE_STATUS_CODES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
"""HTTP statuses worth another try: timeouts, conflicts, rate limits and server errors."""


class ModelCallError(AgentSessionError):
    """The call to the LLM provider failed.

    ``status_code`` is the HTTP status when there was one (401, 429, 500, ...),
    ``None`` for timeouts and connection failures; ``model`` is the model string.
    ``retryable`` says whether another try may succeed (429, 5xx, 408, timeouts and
    connection failures; by default derived from ``status_code``); ``retry_after``
    is the wait in seconds the provider asked for (its ``Retry-After`` header), if
    any; ``attempts`` how many model calls the turn made, this failed one included.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str,
        status_code: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.model: str = model
        self.status_code: int | None = status_code
        if retryable is None:
            retryable = status_code is None or status_code in RETRYABLE_STATUS_CODES
        self.retryable: bool = retryable
        self.retry_after: float | None = retry_after
        self.attempts: int = attempts


class ContextWindowError(ModelCallError):
    """The provider refused the request as longer than the model's context window.

    Never retried as it was: the same request would fail again. With the default
    history window and a message that states the window, the turn is sent once
    more with the window fitted to it (``Agent.learned_windows``). Else shorten the
    history or the input, lower ``max_tokens``, or use a model with a larger window.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str,
        status_code: int | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(
            message,
            model=model,
            status_code=status_code,
            retryable=False,
            retry_after=retry_after,
            attempts=attempts,
        )


class TurnTimeoutError(ModelCallError):
    """The turn's model time (its calls, chunks, re-asks, retries and their backoffs)
    passed ``Agent(turn_timeout=...)``: the call or stream was stopped and closed, and
    nothing of the turn was stored. Never retried. ``turn_timeout`` is the limit, in
    seconds."""

    def __init__(self, message: str, *, model: str, turn_timeout: float, attempts: int = 1) -> None:
        super().__init__(message, model=model, retryable=False, attempts=attempts)
        self.turn_timeout: float = turn_timeout


class OutputLimitError(ModelCallError):
    """A streamed reply passed a limit on its size and was stopped (the provider stream
    closed); nothing of the turn was stored. Never retried.

    ``limit_name`` is ``"max_tokens"`` (``model_settings``; also
    ``"max_completion_tokens"``), counted as the reply's pieces of text or tool
    arguments (each at least one token), or ``"max_output_bytes"`` (``Agent``), its
    UTF-8 bytes; ``limit`` is the value.
    """

    def __init__(
        self, message: str, *, model: str, limit_name: str, limit: int, attempts: int = 1
    ) -> None:
        super().__init__(message, model=model, retryable=False, attempts=attempts)
        self.limit_name: str = limit_name
        self.limit: int = limit


class OutputValidationError(AgentSessionError):
    """The model's output did not validate, even after every re-ask.

    ``raw_text`` is the last text the model returned, ``errors`` the validation
    errors for it, ``attempts`` how many model calls were made.
    """

    def __init__(
        self,
        message: str,
        *,
        raw_text: str,
        errors: list[Any],
        attempts: int,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message)
        self.raw_text: str = raw_text
        self.errors: list[Any] = errors
        self.attempts: int = attempts
        self.usage: Usage | None = usage
        """The tokens of every call the turn made, the re-asks included."""


class ContextError(AgentSessionError):
    """A stored context is not a valid context document (corrupt, hand-edited, newer)."""

    def __init__(self, message: str, *, key: Hashable = None) -> None:
        super().__init__(message)
        self.key: Hashable = key
        """The session's primary key (a tuple for a composite key; ``None`` if unknown)."""


class SessionNotFoundError(AgentSessionError, LookupError):
    """No session row has the given primary key."""

    def __init__(self, message: str, *, key: Hashable = None) -> None:
        super().__init__(message)
        self.key: Hashable = key
        """The session's primary key (a tuple for a composite key; ``None`` if unknown)."""


class StaleSessionError(AgentSessionError):
    """Another writer committed a turn first; this turn wrote nothing."""

    def __init__(self, message: str, *, key: Hashable = None) -> None:
        super().__init__(message)
        self.key: Hashable = key
        """The session's primary key (a tuple for a composite key; ``None`` if unknown)."""


class SessionBusyError(AgentSessionError):
    """The session is marked ``running`` by another worker."""

    def __init__(self, message: str, *, key: Hashable = None) -> None:
        super().__init__(message)
        self.key: Hashable = key
        """The session's primary key (a tuple for a composite key; ``None`` if unknown)."""


class StorageError(AgentSessionError):
    """The database failed while reading or writing a session; nothing was written."""

    def __init__(self, message: str, *, key: Hashable = None) -> None:
        super().__init__(message)
        self.key: Hashable = key
        """The session's primary key (a tuple for a composite key; ``None`` if unknown)."""


class ToolExecutionError(AgentSessionError):
    """A tool built with ``on_error="raise"`` raised (its exception is the cause).

    ``tool_name`` and ``tool_call_id`` name the call; the turn stored nothing.
    """

    def __init__(self, message: str, *, tool_name: str, tool_call_id: str | None = None) -> None:
        super().__init__(message)
        self.tool_name: str = tool_name
        self.tool_call_id: str | None = tool_call_id


class ToolLoopError(AgentSessionError):
    """A turn needed more than ``max_tool_steps`` model calls; nothing was stored.

    ``max_tool_steps`` is the limit that was hit; ``usage`` the tokens spent on it.
    """

    def __init__(self, message: str, *, max_tool_steps: int, usage: Usage | None = None) -> None:
        super().__init__(message)
        self.max_tool_steps: int = max_tool_steps
        self.usage: Usage | None = usage


class ApprovalPendingError(AgentSessionError):
    """The session's last turn waits for approvals: resume it, do not continue it.

    ``pending`` lists the ``PendingApproval`` objects still to decide.
    """

    def __init__(
        self, message: str, *, key: Hashable = None, pending: Iterable[PendingApproval] = ()
    ) -> None:
        super().__init__(message)
        self.key: Hashable = key
        """The session's primary key."""
        self.pending: list[PendingApproval] = list(pending)


class BudgetExceededError(AgentSessionError):
    """A limit was reached before a model call; the turn stored nothing.

    ``kind`` says which: ``"tokens"`` (``max_session_tokens``), ``"cost"``
    (``max_session_cost``, USD) or ``"model_calls"`` (``max_model_calls`` of one
    turn); ``limit`` is that limit and ``spent`` what was spent when the call was
    refused.
    """

    def __init__(self, message: str, *, kind: str, limit: float, spent: float) -> None:
        super().__init__(message)
        self.kind: str = kind
        self.limit: float = limit
        self.spent: float = spent
