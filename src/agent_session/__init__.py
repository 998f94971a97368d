"""agent-session: durable, multi-turn LLM agent conversations on your own SQLAlchemy models.

``Agent`` makes one LLM call with a Jinja instruction and Pydantic-validated input
and output; ``AgentSessionMixin`` stores a whole conversation in a JSON column of
any declarative model. LiteLLM is imported on the first model call, not here.
"""

import logging as _logging
import typing as _typing

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

if _typing.TYPE_CHECKING:
    from .agent import DEFAULT_MAX_INPUT_BYTES, Agent, TextInput
    from .context import CONTEXT_VERSION, Context, Message, MessageMeta, Usage
    from .events import (
        ApprovalRequired,
        AttemptDiscarded,
        OutputDelta,
        StreamEvent,
        TextDelta,
        ToolCallDelta,
        ToolCallFinished,
        ToolCallStarted,
        TurnCompleted,
    )
    from .history import LastTurns, Summarize, TokenBudget
    from .listing import SessionPage, SessionSummary
    from .llm import (
        LiteLLMModel,
        Model,
        ModelRequest,
        ModelResponse,
        StreamChunk,
        StreamEnd,
        TextChunk,
        ToolCallChunk,
        aprepare,
        awarm_up,
        prepare,
        warm_up,
    )
    from .mixin import AgentSessionMixin, SessionStatus
    from .result import Result
    from .streams import AsyncTurnStream, TurnStream
    from .tools import Denied, PendingApproval, Tool, ToolCall, ToolCallResult, ToolContext

# The rest of the public names are imported on first use (PEP 562), so that
# ``import agent_session`` stays cheap and ``from agent_session import Agent``
# does not load the SQLAlchemy ORM. Static type checkers see the imports above.
_LAZY = {
    "AsyncTurnStream": "streams",
    "TurnStream": "streams",
    "ApprovalRequired": "events",
    "AttemptDiscarded": "events",
    "OutputDelta": "events",
    "StreamEvent": "events",
    "TextDelta": "events",
    "ToolCallDelta": "events",
    "ToolCallFinished": "events",
    "ToolCallStarted": "events",
    "TurnCompleted": "events",
    "StreamChunk": "llm",
    "StreamEnd": "llm",
    "TextChunk": "llm",
    "ToolCallChunk": "llm",
    "DEFAULT_MAX_INPUT_BYTES": "agent",
    "Agent": "agent",
    "TextInput": "agent",
    "CONTEXT_VERSION": "context",
    "Context": "context",
    "Message": "context",
    "MessageMeta": "context",
    "Usage": "context",
    "LastTurns": "history",
    "Summarize": "history",
    "TokenBudget": "history",
    "LiteLLMModel": "llm",
    "Model": "llm",
    "ModelRequest": "llm",
    "ModelResponse": "llm",
    "aprepare": "llm",
    "awarm_up": "llm",
    "prepare": "llm",
    "warm_up": "llm",
    "AgentSessionMixin": "mixin",
    "SessionStatus": "mixin",
    "Result": "result",
    "SessionPage": "listing",
    "SessionSummary": "listing",
    "Denied": "tools",
    "PendingApproval": "tools",
    "Tool": "tools",
    "ToolCall": "tools",
    "ToolCallResult": "tools",
    "ToolContext": "tools",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

# Diagnostics (retries, ...) go through ``logging`` under "agent_session"; without
# a handler configured by the application, nothing is printed.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__all__ = [
    "CONTEXT_VERSION",
    "DEFAULT_MAX_INPUT_BYTES",
    "Agent",
    "AgentSessionError",
    "AgentSessionMixin",
    "ApprovalPendingError",
    "ApprovalRequired",
    "AsyncTurnStream",
    "AttemptDiscarded",
    "BudgetExceededError",
    "ConfigurationError",
    "Context",
    "ContextError",
    "ContextWindowError",
    "Denied",
    "IdempotencyKeyReusedError",
    "InputValidationError",
    "LastTurns",
    "LiteLLMModel",
    "Message",
    "MessageMeta",
    "Model",
    "ModelCallError",
    "ModelRequest",
    "ModelResponse",
    "OutputDelta",
    "OutputLimitError",
    "OutputValidationError",
    "PendingApproval",
    "Result",
    "SessionBusyError",
    "SessionNotFoundError",
    "SessionPage",
    "SessionStatus",
    "SessionSummary",
    "StaleSessionError",
    "StorageError",
    "StreamChunk",
    "StreamEnd",
    "StreamEvent",
    "Summarize",
    "TemplateError",
    "TextChunk",
    "TextDelta",
    "TextInput",
    "TokenBudget",
    "Tool",
    "ToolCall",
    "ToolCallChunk",
    "ToolCallDelta",
    "ToolCallFinished",
    "ToolCallResult",
    "ToolCallStarted",
    "ToolContext",
    "ToolExecutionError",
    "ToolLoopError",
    "TurnCompleted",
    "TurnStream",
    "TurnTimeoutError",
    "Usage",
    "__version__",
    "aprepare",
    "awarm_up",
    "prepare",
    "warm_up",
]
