"""``Agent``: one LLM call with a templated instruction and validated input and output.

An ``Agent`` is configuration: the model, the instruction template and the schemas.
Everything that can be computed once (the compiled template, the output JSON
schema, the ``response_format``) is computed here, when the agent is built. The
turn itself lives in ``_turn`` (pure) and is driven by ``run``/``arun``, which only
perform the model call.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from pydantic import BaseModel

from . import _drivers, _observe, _turn
from ._observe import AfterModelCall, BeforeModelCall, OnError, OnToolCall
from ._secrets import remember
from .errors import ConfigurationError, InputValidationError
from .history import BudgetLimits, LastTurns, TokenBudget, Window, output_tokens
from .llm import (
    LiteLLMModel,
    Model,
    OutputMode,
    reaches_openai_compatible_server,
    resolve_output_mode,
)
from .result import Result
from .templates import InstructionTemplate
from .tools import Denied, Tool, Toolset

if TYPE_CHECKING:
    from typing import Required, TypedDict, Unpack

    from ._compaction import Summarize
    from .streams import AsyncTurnStream, TurnStream

    class _AgentOptions(TypedDict, total=False):
        """The keywords of ``Agent()`` but ``output_schema``, for its overloads."""

        instruction: str | None
        instruction_schema: type[BaseModel] | None
        input_schema: type[BaseModel] | None
        output_retries: int | None
        model_retries: int
        structured_output: StructuredOutput
        model_settings: Mapping[str, Any] | None
        max_input_bytes: int
        name: str | None
        tools: Iterable[Tool[Any] | Callable[..., Any]]
        max_tool_steps: int
        before_model_call: BeforeModelCall | None
        after_model_call: AfterModelCall | None
        on_tool_call: OnToolCall | None
        on_error: OnError | None
        history: Window | None
        context_window: int | None
        compaction: Summarize | None
        max_session_tokens: int | None
        max_session_cost: float | None
        max_model_calls: int | None
        turn_timeout: float
        max_output_bytes: int
        max_retries: int | None
        pin_instructions: bool

    class _CallOptions(TypedDict, total=False):
        """The keywords of every turn method, for its ``stream=`` overloads."""

        deps: Any
        model: str | Model | None
        model_settings: Mapping[str, Any] | None

    class _RunOptions(_CallOptions, total=False):
        instruction_args: BaseModel | Mapping[str, Any] | None

    class _ResumeOptions(_CallOptions, total=False):
        approvals: Required[Mapping[str, bool | Denied]]


__all__ = [
    "DEFAULT_MAX_INPUT_BYTES",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEFAULT_MAX_TOOL_STEPS",
    "DEFAULT_TURN_TIMEOUT",
    "Agent",
    "StructuredOutput",
    "TextInput",
]

StructuredOutput = Literal["auto", "json_schema", "json_object", "prompt"]
"""How an output schema is asked for; see ``Agent(structured_output=...)``."""
_STRUCTURED_OUTPUT_CHOICES = ("auto", "json_schema", "json_object", "prompt")

REFUSED_SETTINGS: dict[str, str] = {
    "messages": "the messages are built from the instruction, the history and the input",
    "model": "pass the model as the Agent's first argument (or model= to a turn method)",
    "stream": "the library makes each call and needs the whole reply",
    "tools": "tool calls are not configured through model_settings",
    "tool_choice": "tool calls are not configured through model_settings",
    "response_format": "use output_schema= (and structured_output= to choose how it is sent)",
    "max_retries": (
        "use Agent(model_retries=...) for retries of failed calls "
        "(Agent(output_retries=...) is re-asks after invalid output)"
    ),
    "num_retries": "use Agent(model_retries=...) for retries of failed calls",
}
"""``model_settings`` keys the library owns, or that would break a turn, and what to use."""

OutputT = TypeVar("OutputT")
SchemaT = TypeVar("SchemaT", bound=BaseModel)

DEFAULT_MAX_INPUT_BYTES = 8 * 1024 * 1024
"""Default cap on one user message (UTF-8 bytes): generous, but bounded."""

DEFAULT_MAX_TOOL_STEPS = 10
"""Default cap on the model calls of one turn that uses tools."""

DEFAULT_TURN_TIMEOUT = 600.0
"""Default bound on the model time of one turn, in seconds (``Agent(turn_timeout=...)``)."""

DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
"""Default cap on one streamed reply (UTF-8 bytes of its text and tool arguments)."""
"""Default cap on the model calls of one turn that uses tools."""

_LITELLM = LiteLLMModel()


class TextInput(BaseModel):
    """The default input schema: one free-text message."""

    message: str


class Agent(Generic[OutputT]):
    """An LLM call with a Jinja instruction, an input schema and an output schema.

    ``model`` is a LiteLLM model string (``"openai/gpt-4o-mini"``) or a ``Model``
    instance (a test double). ``model_settings`` are forwarded to LiteLLM
    (``temperature``, ``max_tokens``, ``api_base``, ``api_key``, ``timeout``, ...);
    the keys in ``REFUSED_SETTINGS`` are refused, with the option to use instead.

    ``output_retries`` (default 2) is how many times invalid output is re-asked
    (``max_retries``, its former name, still works until 1.0, with a
    ``DeprecationWarning``); ``model_retries``
    how many times a failed call (429, 5xx, timeout, refused connection) is retried,
    with exponential backoff and the provider's ``Retry-After``. No other layer
    retries. ``structured_output`` chooses how an ``output_schema`` is asked for:
    ``"json_schema"`` (``response_format`` with the schema), ``"json_object"``
    (JSON mode, the schema in the prompt), ``"prompt"`` (the schema in the prompt
    only) or ``"auto"``: ``"json_schema"`` for an OpenAI-compatible server
    (``openai/...`` with an ``api_base``, ``hosted_vllm/...``, ``ollama_chat/...``,
    ``lm_studio/...``) or a model LiteLLM knows supports it, else ``"prompt"``.

    ``tools`` are functions (or ``Tool(fn, ...)``) the model may call; a turn loops
    model -> tools -> model until a reply without calls, at most ``max_tool_steps``
    model calls (then ``ToolLoopError``). A call to a tool with
    ``requires_approval=True`` pauses the turn (see ``resume``).
    Hooks, each a function or an async function (see docs/observability.md):
    ``before_model_call(request)`` may return a changed ``ModelRequest`` (``None``
    keeps it); raising vetoes the call and the turn fails with ``ModelCallError``
    (the hook's exception as ``__cause__``), nothing stored.
    ``after_model_call(request, response)``, ``on_tool_call(result)`` (a
    ``ToolCallResult``) and ``on_error(error)`` (the error a turn raises) observe.

    Long conversations (see ``agent_session.history``): ``history`` decides what each
    request sends of the stored history (``LastTurns(n)``, ``TokenBudget(max_tokens,
    reserve_output=...)``, a function over the stored messages, or ``None``: the
    model's context window when LiteLLM knows it, else everything);
    ``context_window`` (tokens) gives the default window that size for a model
    LiteLLM does not know (a self-hosted one). Without it, a provider that refuses a
    request as too long and states its window teaches the agent that window: the
    turn is retried once with the default window fitted to it, and later turns use
    it. ``compaction``
    (``Summarize(...)``) stores a summary of older turns once the history grows past
    a size. ``max_session_tokens``/``max_session_cost`` (USD) bound a session's
    totals and ``max_model_calls`` the model calls of one turn (re-asks, tool steps
    and the summary call together): ``BudgetExceededError`` before the call, nothing
    stored.

    Hostile or broken providers: ``turn_timeout`` (seconds, default 600) bounds the
    model time of a whole turn, every call, chunk, re-ask, retry and backoff
    together, and ``max_output_bytes`` (default 1 MiB) a streamed reply, which is
    also stopped once it passes ``model_settings["max_tokens"]`` when that is set:
    ``TurnTimeoutError`` / ``OutputLimitError``, the provider stream closed, nothing
    stored.

    A stored session renders its system message at every turn from the current
    ``instruction`` and its stored ``instruction_args``, so a deployed change of the
    instruction reaches the sessions already stored; ``pin_instructions=True`` keeps
    the text each session has instead. Every turn method also takes ``model=`` and
    ``model_settings=`` (merged over these) for that call only.
    """

    @overload
    def __init__(
        self: Agent[str],
        model: str | Model,
        *,
        output_schema: None = None,
        **options: Unpack[_AgentOptions],
    ) -> None: ...

    @overload
    def __init__(
        self: Agent[SchemaT],
        model: str | Model,
        *,
        output_schema: type[SchemaT],
        **options: Unpack[_AgentOptions],
    ) -> None: ...

    def __init__(
        self,
        model: str | Model,
        *,
        instruction: str | None = None,
        instruction_schema: type[BaseModel] | None = None,
        input_schema: type[BaseModel] | None = None,
        output_schema: type[BaseModel] | None = None,
        output_retries: int | None = None,
        model_retries: int = 2,
        structured_output: StructuredOutput = "auto",
        model_settings: Mapping[str, Any] | None = None,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        name: str | None = None,
        tools: Iterable[Tool[Any] | Callable[..., Any]] = (),
        max_tool_steps: int = DEFAULT_MAX_TOOL_STEPS,
        before_model_call: BeforeModelCall | None = None,
        after_model_call: AfterModelCall | None = None,
        on_tool_call: OnToolCall | None = None,
        on_error: OnError | None = None,
        history: Window | None = None,
        context_window: int | None = None,
        compaction: Summarize | None = None,
        max_session_tokens: int | None = None,
        max_session_cost: float | None = None,
        max_model_calls: int | None = None,
        turn_timeout: float = DEFAULT_TURN_TIMEOUT,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        max_retries: int | None = None,
        pin_instructions: bool = False,
    ) -> None:
        if isinstance(model, str):
            if not model.strip():
                raise ConfigurationError("Agent model must be a non-empty LiteLLM model string")
            self.model_name: str = model
            self._model: Model = _LITELLM
        elif isinstance(model, Model):
            self.model_name = model.name
            self._model = model
        else:
            raise ConfigurationError(
                f"Agent model must be a LiteLLM model string or a Model, got {type(model).__name__}"
            )
        for label, schema in (
            ("instruction_schema", instruction_schema),
            ("input_schema", input_schema),
            ("output_schema", output_schema),
        ):
            if schema is not None and not (
                isinstance(schema, type) and issubclass(schema, BaseModel)
            ):
                raise ConfigurationError(f"{label} must be a Pydantic model class, got {schema!r}")
        output_retries = _output_retries(output_retries, max_retries)
        for label, count in (("output_retries", output_retries), ("model_retries", model_retries)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ConfigurationError(f"{label} must be an int >= 0, got {count!r}")
        if isinstance(max_tool_steps, bool) or not isinstance(max_tool_steps, int):
            raise ConfigurationError(f"max_tool_steps must be an int >= 1, got {max_tool_steps!r}")
        if max_tool_steps < 1:
            raise ConfigurationError(f"max_tool_steps must be an int >= 1, got {max_tool_steps!r}")
        self.toolset: Toolset = Toolset(tools)
        """The agent's tools, built once (a bad tool is a ``ConfigurationError`` here)."""
        self.max_tool_steps: int = max_tool_steps
        if structured_output not in _STRUCTURED_OUTPUT_CHOICES:
            choices = ", ".join(map(repr, _STRUCTURED_OUTPUT_CHOICES))
            raise ConfigurationError(
                f"structured_output must be one of {choices}, got {structured_output!r}"
            )
        settings = _checked_settings(model_settings)
        if max_input_bytes <= 0:
            raise ConfigurationError("max_input_bytes must be positive")
        if (
            isinstance(turn_timeout, bool)
            or not isinstance(turn_timeout, int | float)
            or not turn_timeout > 0  # also refuses NaN
            or turn_timeout == float("inf")
        ):
            raise ConfigurationError(
                f"turn_timeout must be a positive number of seconds, got {turn_timeout!r}"
            )
        if (
            isinstance(max_output_bytes, bool)
            or not isinstance(max_output_bytes, int)
            or max_output_bytes <= 0
        ):
            raise ConfigurationError(
                f"max_output_bytes must be a positive int, got {max_output_bytes!r}"
            )
        self.turn_timeout: float = float(turn_timeout)
        """The longest model time of one turn, in seconds."""
        self.max_output_bytes: int = max_output_bytes
        """The largest streamed reply, in UTF-8 bytes."""
        if instruction is not None and not isinstance(instruction, str):
            raise ConfigurationError("instruction must be a string (a Jinja template)")
        if not isinstance(pin_instructions, bool):
            raise ConfigurationError(f"pin_instructions must be a bool, got {pin_instructions!r}")
        self.pin_instructions = pin_instructions
        """Keep the system message a session started with (or last got from new
        ``instruction_args``) instead of rendering the current ``instruction`` each turn."""

        if not (history is None or isinstance(history, LastTurns | TokenBudget)) and not callable(
            history
        ):
            raise ConfigurationError(
                "history must be None, LastTurns(n), TokenBudget(max_tokens, ...) or a "
                f"function over the stored messages; got {history!r}"
            )
        if compaction is not None:
            from ._compaction import Summarize  # imported by whoever built a Summarize

            if not isinstance(compaction, Summarize):
                raise ConfigurationError(
                    f"compaction must be None or Summarize(...), got {compaction!r}"
                )
        self.history: Window | None = history
        """What a request sends of the stored history (``None``: the model's window)."""
        self.context_window: int | None = _checked_context_window(context_window, settings)
        """The model's context window in tokens, for the default window (``None``:
        LiteLLM's figure, if it knows the model)."""
        self.learned_windows: dict[str, TokenBudget] = {}
        """Default windows fitted, per model name, to the context window a provider
        stated when it refused a request as too long."""
        self.compaction: Summarize | None = compaction
        # Their secrets are masked in every error message, log record, SSE frame and span.
        remember(settings)
        if compaction is not None:
            remember(compaction.model_settings)
        self.limits: BudgetLimits = BudgetLimits(
            max_session_tokens, max_session_cost, max_model_calls
        )
        """The session budgets and the per-turn model call limit."""

        self._hooks = _observe.Hooks.build(
            before_model_call=before_model_call,
            after_model_call=after_model_call,
            on_tool_call=on_tool_call,
            on_error=on_error,
        )
        self.name: str = name or "agent"
        self.instruction: str | None = instruction
        self.template: InstructionTemplate | None = (
            InstructionTemplate(instruction) if instruction is not None else None
        )
        self.instruction_schema: type[BaseModel] | None = instruction_schema
        self.input_schema: type[BaseModel] = input_schema or TextInput
        self.output_schema: type[BaseModel] | None = output_schema
        self.output_retries: int = output_retries
        """How many times invalid output is re-asked."""
        self.model_retries: int = model_retries
        """How many times a failed call is retried."""
        self.structured_output: StructuredOutput = structured_output
        self.model_settings: dict[str, Any] = settings
        self._output_modes: weakref.WeakKeyDictionary[Model, dict[tuple[str, bool], OutputMode]] = (
            weakref.WeakKeyDictionary()
        )
        self.max_input_bytes: int = max_input_bytes

        fields = list(self.input_schema.model_fields)
        self.single_input_field: str | None = fields[0] if len(fields) == 1 else None
        self.response_format: dict[str, Any] | None = None
        self.schema_hint: str | None = None
        if output_schema is not None:
            try:
                schema_json = output_schema.model_json_schema()
            except Exception as exc:
                raise ConfigurationError(
                    f"output_schema {output_schema.__name__} has no JSON schema: {exc}"
                ) from exc
            self.response_format = {
                "type": "json_schema",
                "json_schema": {"name": output_schema.__name__, "schema": schema_json},
            }
            self.schema_hint = (
                "Answer with only a JSON object, no prose and no code fences, that matches "
                "this JSON schema:\n" + json.dumps(schema_json, separators=(",", ":"))
            )
        self._override: ContextVar[Model | None] = ContextVar(
            f"agent_session_override_{id(self)}", default=None
        )

    @property
    def max_retries(self) -> int:
        """Deprecated: ``output_retries``."""
        warnings.warn(
            "Agent.max_retries is deprecated: use Agent.output_retries",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.output_retries

    def __repr__(self) -> str:
        out = self.output_schema.__name__ if self.output_schema else "str"
        return f"Agent(model={self.model_name!r}, output={out})"

    # -- model selection -------------------------------------------------

    @property
    def model(self) -> Model:
        """The model in effect: an override if one is active, else the configured one."""
        return self._override.get() or self._model

    @contextmanager
    def override(self, *, model: Model) -> Iterator[None]:
        """Use ``model`` instead of the configured one inside the ``with`` block.

        The override is held in a context variable, so it applies to code run in
        the block, sync or async (tasks created inside it inherit it). Threads
        started inside it do not: build the agent with the double for those.
        """
        if not isinstance(model, Model):
            raise ConfigurationError(f"override needs a Model, got {type(model).__name__}")
        token = self._override.set(model)
        try:
            yield
        finally:
            self._override.reset(token)

    @property
    def structured_output_mode(self) -> OutputMode | None:
        """How the configured model (or the active override) is asked for the output
        schema: ``"json_schema"``, ``"json_object"`` or ``"prompt"``; ``None`` for a
        text agent. ``structured_output="auto"`` is resolved here, once per model."""
        return self.output_mode(self.model)

    def output_mode(self, model: Model) -> OutputMode | None:
        """``structured_output_mode`` for ``model``: decided once and remembered.

        Deciding ``"auto"`` may consult LiteLLM's capability table (and import
        LiteLLM), except for an OpenAI-compatible server, which needs no table.
        """
        if self.output_schema is None:
            return None
        # Per model name too: a call's model= may name another model of the same backend.
        key = (
            self.model_name,
            reaches_openai_compatible_server(self.model_name, self.model_settings),
        )
        try:
            modes = self._output_modes.setdefault(model, {})
        except TypeError:  # a Model that cannot be weakly referenced or hashed
            modes = {}
        cached = modes.get(key)
        if cached is None:
            cached = resolve_output_mode(
                self.structured_output, model, self.model_name, self.model_settings
            )
            modes[key] = cached
        return cached

    def _for_call(
        self, model: str | Model | None, model_settings: Mapping[str, Any] | None
    ) -> Agent[OutputT]:
        """This agent with one call's ``model`` and ``model_settings`` (merged over the
        agent's and checked as they are); itself when neither is given. Everything else
        (tools, hooks, windows, budgets, learned windows) is the agent's. An active
        ``override`` still answers: tests never reach a provider."""
        if model is None and model_settings is None:
            return self
        call = copy.copy(self)
        if isinstance(model, str) and model.strip():
            call.model_name, call._model = model, _LITELLM
        elif isinstance(model, Model):
            call.model_name, call._model = model.name, model
        elif model is not None:
            raise InputValidationError(
                f"model must be a LiteLLM model string or a Model, got {model!r}",
                errors=[],
                source="model",
            )
        if model_settings is not None:
            try:
                settings = {**self.model_settings, **_checked_settings(model_settings)}
                call.context_window = _checked_context_window(self.context_window, settings)
            except ConfigurationError as exc:
                raise InputValidationError(str(exc), errors=[], source="model_settings") from exc
            remember(settings)
            call.model_settings = settings
        return call

    # -- running ----------------------------------------------------------

    @overload
    def run(
        self,
        input: BaseModel | Mapping[str, Any] | str,
        *,
        stream: Literal[False] = ...,
        **options: Unpack[_RunOptions],
    ) -> Result[OutputT]: ...

    @overload
    def run(
        self,
        input: BaseModel | Mapping[str, Any] | str,
        *,
        stream: Literal[True],
        **options: Unpack[_RunOptions],
    ) -> TurnStream[OutputT, None]: ...

    @overload
    def run(
        self,
        input: BaseModel | Mapping[str, Any] | str,
        *,
        stream: bool,
        **options: Unpack[_RunOptions],
    ) -> Result[OutputT] | TurnStream[OutputT, None]: ...

    def run(
        self,
        input: BaseModel | Mapping[str, Any] | str,
        *,
        instruction_args: BaseModel | Mapping[str, Any] | None = None,
        deps: Any = None,
        model: str | Model | None = None,
        model_settings: Mapping[str, Any] | None = None,
        stream: bool = False,
    ) -> Result[OutputT] | TurnStream[OutputT, None]:
        """Validate, render, call the model (running its tool calls, re-asking on
        invalid output) and parse. ``deps`` is handed to the tools (``ToolContext``).

        A call that needs approval pauses the turn: the ``Result`` then has
        ``pending_approvals`` and ``output`` ``None``; finish it with ``resume``.
        ``stream=True`` returns a ``TurnStream`` of the turn's events instead
        (validated before it returns); its ``result`` is the ``Result``.
        ``model`` (a LiteLLM model string or a ``Model``) and ``model_settings``
        (merged over the agent's) apply to this call only.
        """
        agent = self._for_call(model, model_settings)
        plan = _turn.plan_first_turn(agent, input, instruction_args)
        backend = agent.model
        flow = _turn.model_flow(agent, plan, agent.output_mode(backend))
        if stream:
            from ._streaming import flow_stream

            return flow_stream(agent, flow, deps, call="run")
        return _observe.drive(
            agent, flow, _drivers.model_handler(backend, self._tool_scope(deps)), call="run"
        )

    @overload
    async def arun(
        self,
        input: BaseModel | Mapping[str, Any] | str,
        *,
        stream: Literal[False] = ...,
        **options: Unpack[_RunOptions],
    ) -> Result[OutputT]: ...

    @overload
    async def arun(
        self,
        input: BaseModel | Mapping[str, Any] | str,
        *,
        stream: Literal[True],
        **options: Unpack[_RunOptions],
    ) -> AsyncTurnStream[OutputT, None]: ...

    @overload
    async def arun(
        self,
        input: BaseModel | Mapping[str, Any] | str,
        *,
        stream: bool,
        **options: Unpack[_RunOptions],
    ) -> Result[OutputT] | AsyncTurnStream[OutputT, None]: ...

    async def arun(
        self,
        input: BaseModel | Mapping[str, Any] | str,
        *,
        instruction_args: BaseModel | Mapping[str, Any] | None = None,
        deps: Any = None,
        model: str | Model | None = None,
        model_settings: Mapping[str, Any] | None = None,
        stream: bool = False,
    ) -> Result[OutputT] | AsyncTurnStream[OutputT, None]:
        """Async twin of ``run`` (the calls of one reply run concurrently);
        ``await agent.arun(..., stream=True)`` gives an ``AsyncTurnStream``."""
        agent = self._for_call(model, model_settings)
        plan = _turn.plan_first_turn(agent, input, instruction_args)
        backend = agent.model
        await backend.awarm_up()  # e.g. the first import of LiteLLM, off the event loop
        flow = _turn.model_flow(agent, plan, agent.output_mode(backend))
        if stream:
            from ._streaming import aflow_stream

            return await aflow_stream(agent, flow, deps, call="arun")
        return await _observe.adrive(
            agent, flow, _drivers.amodel_handler(backend, self._tool_scope(deps)), call="arun"
        )

    @overload
    def resume(
        self,
        result: Result[OutputT],
        *,
        stream: Literal[False] = ...,
        **options: Unpack[_ResumeOptions],
    ) -> Result[OutputT]: ...

    @overload
    def resume(
        self, result: Result[OutputT], *, stream: Literal[True], **options: Unpack[_ResumeOptions]
    ) -> TurnStream[OutputT, None]: ...

    @overload
    def resume(
        self, result: Result[OutputT], *, stream: bool, **options: Unpack[_ResumeOptions]
    ) -> Result[OutputT] | TurnStream[OutputT, None]: ...

    def resume(
        self,
        result: Result[OutputT],
        *,
        approvals: Mapping[str, bool | Denied],
        deps: Any = None,
        model: str | Model | None = None,
        model_settings: Mapping[str, Any] | None = None,
        stream: bool = False,
    ) -> Result[OutputT] | TurnStream[OutputT, None]:
        """Finish a turn that ``run`` returned paused, without a database.

        ``approvals`` decides every pending call by its ``tool_call_id``: ``True``
        runs it, ``False`` or ``Denied(reason)`` sends the model a denial. A missing
        or unknown id, or a result with nothing pending, is an ``InputValidationError``.
        The turn goes on to its end, or to the next pause (``stream=True``: as a
        ``TurnStream``). ``model`` and ``model_settings`` as in ``run``.
        """
        paused, decided = self._paused(result, approvals)
        agent = self._for_call(model, model_settings)
        backend = agent.model
        flow = _turn.resumed_turn_flow(
            agent, paused.plan, paused.pending, decided, agent.output_mode(backend)
        )
        if stream:
            from ._streaming import flow_stream

            return flow_stream(agent, flow, deps, call="resume")
        return _observe.drive(
            agent, flow, _drivers.model_handler(backend, self._tool_scope(deps)), call="resume"
        )

    @overload
    async def aresume(
        self,
        result: Result[OutputT],
        *,
        stream: Literal[False] = ...,
        **options: Unpack[_ResumeOptions],
    ) -> Result[OutputT]: ...

    @overload
    async def aresume(
        self, result: Result[OutputT], *, stream: Literal[True], **options: Unpack[_ResumeOptions]
    ) -> AsyncTurnStream[OutputT, None]: ...

    @overload
    async def aresume(
        self, result: Result[OutputT], *, stream: bool, **options: Unpack[_ResumeOptions]
    ) -> Result[OutputT] | AsyncTurnStream[OutputT, None]: ...

    async def aresume(
        self,
        result: Result[OutputT],
        *,
        approvals: Mapping[str, bool | Denied],
        deps: Any = None,
        model: str | Model | None = None,
        model_settings: Mapping[str, Any] | None = None,
        stream: bool = False,
    ) -> Result[OutputT] | AsyncTurnStream[OutputT, None]:
        """Async twin of ``resume``."""
        paused, decided = self._paused(result, approvals)
        agent = self._for_call(model, model_settings)
        backend = agent.model
        await backend.awarm_up()
        flow = _turn.resumed_turn_flow(
            agent, paused.plan, paused.pending, decided, agent.output_mode(backend)
        )
        if stream:
            from ._streaming import aflow_stream

            return await aflow_stream(agent, flow, deps, call="aresume")
        return await _observe.adrive(
            agent, flow, _drivers.amodel_handler(backend, self._tool_scope(deps)), call="aresume"
        )

    def _paused(
        self, result: Result[Any], approvals: Any
    ) -> tuple[_turn.PausedTurn, dict[str, bool | Denied]]:
        paused = getattr(result, "paused_turn", None)
        if not isinstance(result, Result):
            raise InputValidationError(
                f"resume takes the Result of run(), got {type(result).__name__}",
                errors=[],
                source="approvals",
            )
        pending = paused.pending if isinstance(paused, _turn.PausedTurn) else None
        decided = _turn.check_approvals(pending, approvals, name="this result")
        assert isinstance(paused, _turn.PausedTurn)
        return paused, decided

    def _tool_scope(self, deps: Any, session_key: Any = None) -> _drivers.ToolScope:
        return _drivers.ToolScope(self.toolset, deps, session_key, self)

    def parse_output(self, text: str) -> Any:
        """Parse and validate model text into the output (``ValidationError`` if invalid)."""
        if self.output_schema is None:
            return text
        return self.output_schema.model_validate_json(_strip_code_fence(text))

    def output_from_json(self, data: Any) -> OutputT:
        """Rebuild the output from its JSON form (``Result.output_json``)."""
        if self.output_schema is None:
            return data  # type: ignore[no-any-return]
        return self.output_schema.model_validate(data)  # type: ignore[return-value]


def _output_retries(output_retries: int | None, max_retries: int | None) -> int:
    """``output_retries``, or the deprecated ``max_retries`` (not both); default 2."""
    if max_retries is None:
        return 2 if output_retries is None else output_retries
    if output_retries is not None:
        raise ConfigurationError(
            "output_retries= and max_retries= are the same setting: pass only output_retries="
        )
    warnings.warn(
        "Agent(max_retries=...) is deprecated and will be removed in 1.0: use "
        "Agent(output_retries=...) (re-asks after invalid output)",
        DeprecationWarning,
        stacklevel=3,
    )
    return max_retries


def _checked_settings(model_settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """Copy ``model_settings``, refusing keys the library owns and checking common types."""
    if model_settings is None:
        return {}
    if not isinstance(model_settings, Mapping):
        raise ConfigurationError(
            f"model_settings must be a mapping, got {type(model_settings).__name__}"
        )
    settings = dict(model_settings)
    for key in settings:
        if not isinstance(key, str):
            raise ConfigurationError(f"model_settings keys must be strings, got {key!r}")
        reason = REFUSED_SETTINGS.get(key)
        if reason is not None:
            raise ConfigurationError(f"model_settings may not set {key!r}: {reason}")
    if "timeout" in settings:
        timeout = settings["timeout"]
        httpx = sys.modules.get("httpx")  # an httpx.Timeout implies httpx is imported
        is_httpx_timeout = httpx is not None and isinstance(timeout, httpx.Timeout)
        if not (is_httpx_timeout or timeout is None or _positive_number(timeout)):
            raise ConfigurationError(
                f"model_settings['timeout'] must be a number of seconds > 0, got {timeout!r}"
            )
    if "temperature" in settings and not _number(settings["temperature"], minimum=0.0):
        raise ConfigurationError(
            f"model_settings['temperature'] must be a number >= 0, got {settings['temperature']!r}"
        )
    for key in ("max_tokens", "max_completion_tokens"):
        value = settings.get(key)
        if key in settings and not (
            value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)
        ):
            raise ConfigurationError(f"model_settings[{key!r}] must be an int > 0, got {value!r}")
    return settings


def _checked_context_window(context_window: Any, settings: Mapping[str, Any]) -> int | None:
    if context_window is None:
        return None
    if (
        isinstance(context_window, bool)
        or not isinstance(context_window, int)
        or context_window < 1
    ):
        raise ConfigurationError(
            f"context_window must be a number of tokens > 0, got {context_window!r}"
        )
    output = output_tokens(settings)
    if output is not None and output >= context_window:
        raise ConfigurationError(
            f"model_settings max_tokens ({output}) leaves no room for the request within "
            f"context_window ({context_window})"
        )
    return context_window


def _number(value: Any, *, minimum: float) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= minimum
    )


def _positive_number(value: Any) -> bool:
    return _number(value, minimum=0.0) and value > 0


def _strip_code_fence(text: str) -> str:
    """Tolerate a reply wrapped in a Markdown code fence (```json ... ```)."""
    stripped = text.strip()
    if not (stripped.startswith("```") and stripped.endswith("```") and len(stripped) >= 6):
        return stripped
    body = stripped[3:-3]
    first, newline, rest = body.partition("\n")
    if newline and (first.strip() == "" or first.strip().isalnum()):
        body = rest  # the language tag line
    return body.strip()
