"""agent-session: durable, multi-turn LLM agent conversations on your own SQLAlchemy models.

``Agent`` makes one LLM call with a Jinja instruction and Pydantic-validated input
and output; ``AgentSessionMixin`` stores a whole conversation in a JSON column of
any declarative model. LiteLLM is imported on the first model call, not here.
"""

from .agent import DEFAULT_MAX_INPUT_BYTES, Agent, TextInput
from .context import CONTEXT_VERSION, Context, Message, MessageMeta, Usage
from .errors import (
    AgentSessionError,
    ConfigurationError,
    ContextError,
    InputValidationError,
    ModelCallError,
    OutputValidationError,
    SessionBusyError,
    SessionNotFoundError,
    StaleSessionError,
    StorageError,
    TemplateError,
)
from .llm import LiteLLMModel, Model, ModelRequest, ModelResponse
from .mixin import AgentSessionMixin, SessionStatus
from .result import Result

__version__ = "0.1.0"

__all__ = [
    "CONTEXT_VERSION",
    "DEFAULT_MAX_INPUT_BYTES",
    "Agent",
    "AgentSessionError",
    "AgentSessionMixin",
    "ConfigurationError",
    "Context",
    "ContextError",
    "InputValidationError",
    "LiteLLMModel",
    "Message",
    "MessageMeta",
    "Model",
    "ModelCallError",
    "ModelRequest",
    "ModelResponse",
    "OutputValidationError",
    "Result",
    "SessionBusyError",
    "SessionNotFoundError",
    "SessionStatus",
    "StaleSessionError",
    "StorageError",
    "TemplateError",
    "TextInput",
    "Usage",
    "__version__",
]
