"""The pure core of one conversation turn. No I/O happens here.

A turn is:

1. ``validate_input`` -> the validated input and the user message text;
2. ``plan_first_turn`` (validate instruction arguments, render the instruction) or
   ``plan_next_turn`` (take the stored history) -> a ``TurnPlan``;
3. ``model_flow``: a generator that yields ``ModelRequest`` objects and receives
   ``ModelResponse`` objects, parsing and validating the output and re-asking on
   failure, and returns the ``Result``. A failed call that may succeed later (a
   retryable ``ModelCallError`` thrown in at the ``yield``) is retried after a
   ``Sleep`` the driver answers;
4. ``next_document``: the new stored context document.

``_drivers.drive``/``adrive`` run such generators with a sync or async handler for
what they yield; they are the only difference between the sync and async code paths
(re-exported here under their old names).
A reply with tool calls makes ``model_flow`` yield ``RunTools`` (answered with the
results) and ask the model again; a call that needs approval pauses the turn, and
``resumed_turn_flow`` goes on with it once decided.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from ._drivers import ToolScope, adrive, amodel_handler, drive, model_handler
from ._operations import RunTools, Sleep
from ._secrets import get_logger
from ._text import clean_text, encodable, first_unencodable, lone_surrogates
from .context import (
    CONTEXT_VERSION,
    FROM_VERSION,
    Usage,
    chat_messages,
    input_document,
    isoformat,
    stored_usage,
    usage_document,
    utcnow,
)
from .errors import (
    ContextWindowError,
    InputValidationError,
    ModelCallError,
    OutputValidationError,
    TemplateError,
    ToolLoopError,
    TurnTimeoutError,
)
from .history import (
    BudgetLimits,
    Selection,
    TokenBudget,
    Window,
    check_budget,
    fitted_window,
    is_summary,
    output_tokens,
    select_messages,
    stated_window,
)
from .llm import (
    CallBounds,
    ModelRequest,
    ModelResponse,
    OutputMode,
)
from .result import Result
from .tools import Denied, PendingApproval, ToolCall, ToolCallResult, Toolset, replay_arguments

if TYPE_CHECKING:
    from .agent import Agent

T = TypeVar("T")
InputLike = BaseModel | Mapping[str, Any] | str
ArgsLike = BaseModel | Mapping[str, Any] | None

__all__ = [
    "ModelTime",
    "PausedTurn",
    "RunTools",
    "Sleep",
    "ToolScope",
    "TurnCancelled",
    "TurnInput",
    "TurnPlan",
    "adrive",
    "amodel_handler",
    "charged_document",
    "check_approvals",
    "check_first_call_budget",
    "check_turn_budget",
    "compaction_flow",
    "current_instructions",
    "drive",
    "model_flow",
    "model_handler",
    "next_document",
    "pause_document",
    "plan_first_turn",
    "plan_next_turn",
    "plan_resumed_turn",
    "reask_feedback",
    "resumed_turn_flow",
    "retry_delay",
    "session_budget",
    "validate_input",
]

logger = get_logger("agent_session.turn")

RETRY_BASE_DELAY = 0.5
"""Seconds before the first retry of a failed call; doubled for each further one."""
RETRY_MAX_DELAY = 30.0
"""The longest wait before a retry, also when the provider's ``Retry-After`` asks for
more (the wait is cut to this, and a warning logged)."""
FEEDBACK_MAX_ERRORS = 10
"""Validation errors listed in a re-ask; the rest are counted."""
FEEDBACK_MAX_CHARS = 2000
"""Upper bound on the error details in a re-ask message."""


@dataclass(frozen=True)
class TurnInput:
    """A validated input and the user message it becomes."""

    value: BaseModel
    content: str
    stored_input: dict[str, Any] | None = None
    """The input as JSON when ``content`` does not give it back (stored in ``meta.input``)."""


@dataclass
class ModelTime:
    """The model time a turn has spent (its calls and chunks, retries and their
    backoffs, the summary call), bounded by ``Agent.turn_timeout``."""

    spent: float = 0.0


@dataclass(frozen=True)
class TurnPlan:
    """Everything needed to call the model for one turn and store its outcome."""

    input: BaseModel
    user_message: dict[str, Any]
    """The stored form of the new user message (with ``meta``)."""
    history: list[dict[str, Any]]
    """Stored messages before this turn; the system message first when there is one."""
    instruction_args: dict[str, Any] | None
    now: datetime
    limits: BudgetLimits | None = None
    """The budgets of this call (``None``: the agent's)."""
    spent_usage: Usage = field(default_factory=Usage)
    """The session's totals before this turn (finished turns), for the budgets."""
    spent_cost: float | None = None
    model_time: ModelTime = field(default_factory=ModelTime, compare=False)
    """What the turn's model calls have taken so far (``turn_timeout``)."""


# -- step 1 and 2: input, instruction, history -----------------------------------


def validate_input(agent: Agent[Any], input: InputLike) -> TurnInput:
    """Validate ``input`` against the agent's input schema and build the user text."""
    schema = agent.input_schema
    try:
        if isinstance(input, schema):
            value = input
        elif isinstance(input, str):
            if agent.single_input_field is None:
                raise InputValidationError(
                    f"a plain string input needs an input schema with one field; "
                    f"{schema.__name__} has {len(schema.model_fields)}",
                    errors=[],
                )
            value = schema.model_validate({agent.single_input_field: input})
        elif isinstance(input, BaseModel):
            raise InputValidationError(
                f"input must be a {schema.__name__}, a dict or a string; "
                f"got a {type(input).__name__}",
                errors=[],
            )
        elif isinstance(input, Mapping):
            value = schema.model_validate(dict(input))
        else:
            raise InputValidationError(
                f"input must be a {schema.__name__}, a dict or a string; "
                f"got {type(input).__name__}",
                errors=[],
            )
    except ValidationError as exc:
        raise InputValidationError(
            f"invalid input for {schema.__name__}: {exc}",
            errors=exc.errors(include_url=False),
        ) from exc

    field = agent.single_input_field
    single = getattr(value, field) if field is not None else None
    try:
        content = single if isinstance(single, str) else value.model_dump_json()
    except (ValueError, RecursionError) as exc:  # PydanticSerializationError, too deep
        raise InputValidationError(
            f"input must be JSON-serialisable to be sent: {exc}", errors=[]
        ) from exc
    _check_encodable(content, "input")
    limit = agent.max_input_bytes
    if len(content) * 4 > limit and len(content.encode("utf-8")) > limit:
        raise InputValidationError(
            f"input message is {len(content.encode('utf-8'))} bytes; the limit is {limit} "
            f"(Agent(max_input_bytes=...))",
            errors=[],
            source="size",
        )
    stored_input: dict[str, Any] | None = None
    if not isinstance(single, str):
        # The content is the input as JSON: stored again only if it does not read back.
        try:
            as_json = value.model_dump(mode="json")
            if input_document(field, content) != as_json:
                stored_input = as_json
        except (ValueError, RecursionError) as exc:
            raise InputValidationError(f"input cannot be stored: {exc}", errors=[]) from exc
    return TurnInput(value=value, content=content, stored_input=stored_input)


def _check_encodable(text: str, source: str) -> None:
    """``InputValidationError`` for the caller's text that UTF-8 cannot encode (a lone
    surrogate): no database could store it, and it is the caller's to fix."""
    position = first_unencodable(text)
    if position is not None:
        at = f", at position {position}" if source == "input" else ""
        raise InputValidationError(
            f"{source} holds a character that cannot be encoded as UTF-8 (a lone surrogate, "
            f"{text[position]!a}{at})",
            errors=[],
            source=source,
        )


def _instruction_args(
    agent: Agent[Any], args: ArgsLike
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Validate instruction arguments: (values for the template, JSON to store)."""
    values, dump = _instruction_values(agent, args)
    return values, None if dump is None else _storable_args(dump)


def _instruction_values(
    agent: Agent[Any], args: ArgsLike
) -> tuple[dict[str, Any], Callable[[], Any] | None]:
    """Validate instruction arguments: (values for the template, how to dump them for
    storing), so that a turn rendering stored arguments does not encode them again."""
    schema = agent.instruction_schema
    if schema is not None:
        try:
            if isinstance(args, schema):
                model = args
            elif args is None or isinstance(args, Mapping):
                model = schema.model_validate(dict(args or {}))
            else:
                raise InputValidationError(
                    f"instruction_args must be a {schema.__name__} or a dict, "
                    f"got {type(args).__name__}",
                    errors=[],
                    source="instruction_args",
                )
        except ValidationError as exc:
            raise InputValidationError(
                f"invalid instruction_args for {schema.__name__}: {exc}",
                errors=exc.errors(include_url=False),
                source="instruction_args",
            ) from exc
        values = {name: getattr(model, name) for name in type(model).model_fields}
        return values, lambda: model.model_dump(mode="json")
    if args is None:
        return {}, None
    if not isinstance(args, Mapping):
        raise InputValidationError(
            f"instruction_args must be a dict, got {type(args).__name__}",
            errors=[],
            source="instruction_args",
        )
    values = dict(args)
    return values, lambda: to_jsonable_python(values)


def _storable_args(dump: Callable[[], Any]) -> dict[str, Any]:
    """The JSON form of the instruction arguments, which the context stores."""
    try:
        stored: dict[str, Any] = dump()
        text = json.dumps(stored, ensure_ascii=False)
    except (ValueError, RecursionError) as exc:  # PydanticSerializationError, too deep
        raise InputValidationError(
            f"instruction_args must be JSON-serialisable to be stored: {exc}",
            errors=[],
            source="instruction_args",
        ) from exc
    _check_encodable(text, "instruction_args")
    return stored


def _stored(role: str, content: str, **meta: Any) -> dict[str, Any]:
    """A message in the stored (compact) form: ``meta`` keeps what is known, if anything."""
    message: dict[str, Any] = {"role": role, "content": content}
    known = {k: v for k, v in meta.items() if v is not None}
    if known:
        message["meta"] = known
    return message


@dataclass(frozen=True)
class Instructions:
    """Validated instruction arguments: the template's values and their stored JSON."""

    values: dict[str, Any]
    stored: dict[str, Any] | None


def validate_instructions(agent: Agent[Any], instruction_args: ArgsLike) -> Instructions:
    """Validate ``instruction_args`` as the first turn does (``InputValidationError``)."""
    return Instructions(*_instruction_args(agent, instruction_args))


def plan_first_turn(
    agent: Agent[Any],
    input: InputLike | TurnInput,
    instruction_args: ArgsLike | Instructions,
    *,
    now: datetime | None = None,
    limits: BudgetLimits | None = None,
) -> TurnPlan:
    """Plan the first turn: validate everything and render the instruction."""
    now = now or utcnow()
    turn_input = input if isinstance(input, TurnInput) else validate_input(agent, input)
    if not isinstance(instruction_args, Instructions):
        instruction_args = validate_instructions(agent, instruction_args)
    history: list[dict[str, Any]] = []
    if agent.template is not None:
        # Created with the document: no timestamp of its own.
        history.append(_stored("system", agent.template.render(instruction_args.values)))
    return TurnPlan(
        input=turn_input.value,
        user_message=_user_message(turn_input, now),
        history=history,
        instruction_args=instruction_args.stored,
        now=now,
        limits=limits,
    )


def with_instructions(
    agent: Agent[Any], document: Mapping[str, Any], instructions: Instructions
) -> dict[str, Any]:
    """``document`` with new instruction arguments for the turn being planned and the
    ones after it: stored in place of the old ones, the system message rendered again."""
    new = {key: value for key, value in document.items() if key != "instruction_args"}
    if instructions.stored is not None:
        new["instruction_args"] = instructions.stored
    new["messages"] = _with_system(agent, document["messages"], instructions.values)
    return new


def current_instructions(
    agent: Agent[Any], document: dict[str, Any], *, session: str
) -> dict[str, Any]:
    """``document`` with its system message rendered from the agent's current
    ``instruction`` and the stored ``instruction_args``, as the turn sends and stores
    it: an app deployed with a new instruction applies it to the sessions it has.
    The document itself when nothing changed, or when ``agent.pin_instructions``
    keeps the text a session started with.

    Stored arguments the agent's ``instruction_schema`` refuses (or that its template
    cannot render) raise before any model call, saying how to replace them.
    """
    if agent.pin_instructions:
        return document
    try:
        values, _ = _instruction_values(agent, document.get("instruction_args"))
        messages = _with_system(agent, document["messages"], values)
    except (InputValidationError, TemplateError) as exc:
        fix = (
            f"the stored instruction_args of {session} no longer fit the agent's instruction "
            "(was instruction or instruction_schema changed?); pass instruction_args= to "
            "continue_session or resume_session, which replace them; nothing was sent or "
            f"stored: {exc}"
        )
        if isinstance(exc, InputValidationError):
            raise InputValidationError(fix, errors=exc.errors, source=exc.source) from exc
        raise TemplateError(fix) from exc
    if messages is document["messages"]:
        return document
    return {**document, "messages": messages}


def _with_system(
    agent: Agent[Any], messages: list[dict[str, Any]], values: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """``messages`` with the system message the agent's instruction renders from
    ``values`` first; the same list when that changes nothing, and for an agent
    without an instruction (a stored system message is kept, never dropped)."""
    if agent.template is None:
        return messages
    first = messages[0] if messages else None
    has_system = first is not None and first.get("role") == "system" and not is_summary(first)
    content = agent.template.render_cached(values)
    if has_system and first is not None and first.get("content") == content:
        return messages
    rest = messages[1:] if has_system else messages
    return [_stored("system", content), *rest]


def plan_next_turn(
    document: Mapping[str, Any],
    turn_input: TurnInput,
    *,
    now: datetime | None = None,
    limits: BudgetLimits | None = None,
) -> TurnPlan:
    """Plan a later turn on a validated (current-version) stored document."""
    now = now or utcnow()
    return TurnPlan(
        input=turn_input.value,
        user_message=_user_message(turn_input, now),
        history=document["messages"],
        instruction_args=document.get("instruction_args"),
        now=now,
        limits=limits,
        spent_usage=stored_usage(document.get("usage")),
        spent_cost=document.get("cost"),
    )


def _user_message(turn_input: TurnInput, now: datetime) -> dict[str, Any]:
    return _stored(
        "user", turn_input.content, created_at=isoformat(now), input=turn_input.stored_input
    )


# -- step 3: the model call, output validation and re-asks -------------------------


def _request(
    agent: Agent[Any],
    messages: list[dict[str, Any]],
    mode: OutputMode | None,
    left_out: int | None = None,
) -> ModelRequest:
    if mode == "json_schema":
        response_format = agent.response_format
    elif mode == "json_object":
        response_format = {"type": "json_object"}
    else:
        response_format = None
    return ModelRequest(
        model=agent.model_name,
        messages=messages,
        response_format=response_format,
        settings=agent.model_settings,
        output_schema=agent.output_schema,
        tools=agent.toolset.definitions or None,
        left_out=left_out,
    )


def _hint_applies(agent: Agent[Any], mode: OutputMode | None) -> bool:
    return agent.schema_hint is not None and mode in ("json_object", "prompt")


def history_window(agent: Agent[Any]) -> Window | None:
    """The agent's window, or the default: the window learned from the provider, else
    ``context_window``, else the model's input limit when the backend knows it (a
    ``Model`` without ``fits_context_window``, such as a test double, gets everything)."""
    if agent.history is not None:
        return agent.history
    model = agent.model
    if model.fits_context_window:
        learned = agent.learned_windows.get(agent.model_name)
        if learned is not None:
            return learned
        if agent.context_window is not None:  # the reply counts in the same window
            output = output_tokens(agent.model_settings) or 0
            return TokenBudget(agent.context_window, reserve_output=output)
        limit = model.context_window(agent.model_name)
        return None if limit is None else TokenBudget(limit)
    return None


def learn_window(agent: Agent[Any], exc: ContextWindowError, sent: list[dict[str, Any]]) -> bool:
    """Fit the default window to the context window ``exc`` states, if that helps.

    Only for the default window of a model that ``fits_context_window``, when the
    provider's message states its window and the fitted window is smaller than the one
    the request was sent with. The window is remembered on the agent for this model
    (``learned_windows``); returns whether the request should be made again.
    """
    if agent.history is not None or not agent.model.fits_context_window:
        return False
    stated = stated_window(str(exc))
    if stated is None:
        return False
    limit, counted = stated
    count = agent.model.token_counter(agent.model_name, agent.toolset.definitions or None)
    try:
        ours: int | None = count(sent)  # ``sent`` holds the schema hint, if any
    except Exception:  # no count, no calibration: the margin is used
        ours = None
    fitted = fitted_window(
        limit, counted=counted, ours=ours, output=output_tokens(agent.model_settings)
    )
    current = history_window(agent)
    if fitted is None or (isinstance(current, TokenBudget) and fitted.limit >= current.limit):
        return False
    agent.learned_windows[agent.model_name] = fitted
    logger.warning(
        "%s refused the request as longer than its context window of %d tokens; the "
        "default history window is now TokenBudget(%d, reserve_output=%d) for this model, "
        "and the turn is sent again",
        agent.model_name,
        limit,
        fitted.max_tokens,
        fitted.reserve_output,
    )
    return True


def _refit(
    agent: Agent[Any],
    plan: TurnPlan,
    mode: OutputMode | None,
    exc: ContextWindowError,
    sent: list[dict[str, Any]],
    turn: list[dict[str, Any]],
) -> Selection | None:
    """The refused request ``sent`` made again, with the default window fitted to the
    window ``exc`` states (``None`` if nothing was learned, or the newest turn alone
    does not fit it)."""
    if not learn_window(agent, exc, sent):
        return None
    try:
        return select_request(agent, plan, mode, turn)
    except ContextWindowError:
        return None


def _counter(agent: Agent[Any], mode: OutputMode | None) -> Callable[[list[dict[str, Any]]], int]:
    """The model's token counter for the agent's model and tools, plus the schema hint."""
    count = agent.model.token_counter(agent.model_name, agent.toolset.definitions or None)
    hint = agent.schema_hint
    if hint is None or not _hint_applies(agent, mode):
        return count
    extra = agent.model.token_counter(agent.model_name)([{"role": "system", "content": hint}])

    def with_hint(messages: list[dict[str, Any]]) -> int:
        return count(messages) + extra

    return with_hint


def _size_bound(agent: Agent[Any], history: list[dict[str, Any]], new: list[dict[str, Any]]) -> int:
    """An upper bound on the tokens of a request that sends everything: a token of a
    byte-level tokenizer covers at least one byte, and the margins cover the counter's
    per-message and per-request tokens and the tool definitions' formatting."""
    size = 512 + 2 * len(json.dumps(agent.toolset.definitions or [], ensure_ascii=False))
    size += len((agent.schema_hint or "").encode("utf-8"))
    messages = [*history, *new]
    if messages:
        # 16 bytes and its JSON for each message: the list's JSON is the messages' JSON
        # joined by ", " inside "[]" (2 more bytes each), encoded once instead of each.
        encoded = len(json.dumps(messages, ensure_ascii=False).encode("utf-8"))
        size += 16 * len(messages) + encoded - 2 * len(messages)
    return size


def select_request(
    agent: Agent[Any],
    plan: TurnPlan,
    mode: OutputMode | None,
    turn: list[dict[str, Any]] | None = None,
) -> Selection:
    """The history window applied to this request (``ContextWindowError`` if even the
    newest turn does not fit); the schema hint added to the messages if needed."""
    new = turn or [plan.user_message]
    window = history_window(agent)
    if (
        agent.history is None
        and isinstance(window, TokenBudget)
        and _size_bound(agent, plan.history, new) <= window.limit
    ):
        window = None  # the default window, and the whole history surely fits: no counting
    if window is None and not plan.history:
        selection = Selection(chat_messages(new), 0, 0)
    else:
        needs_count = isinstance(window, TokenBudget) and window.counter is None
        count = _counter(agent, mode) if needs_count else None
        selection = select_messages(window, plan.history, new, count=count)
    if selection.overflow is not None:
        raise ContextWindowError(
            f"the request to {agent.model_name} does not fit its history window: "
            f"{selection.overflow}; nothing was sent or stored",
            model=agent.model_name,
        )
    if _hint_applies(agent, mode):
        hint = agent.schema_hint
        messages = selection.messages
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{hint}"}
        else:
            messages.insert(0, {"role": "system", "content": hint})
    return selection


def outgoing_messages(
    agent: Agent[Any],
    plan: TurnPlan,
    mode: OutputMode | None,
    turn: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The chat messages to send: the history the window keeps, this turn's messages
    so far (the user message, then any tool exchange), and the schema hint if needed."""
    return select_request(agent, plan, mode, turn).messages


def reask_feedback(exc: ValidationError | ValueError) -> str:
    """The user message that asks the model to fix invalid output.

    It names what was wrong (type, location, message of each error), never the
    invalid input itself: the model has its reply in the previous message, and a
    long reply repeated here could overflow the context. Its size is bounded.
    """
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        shown = [
            {"type": e["type"], "loc": list(e["loc"]), "msg": _clip(str(e["msg"]), 300)}
            for e in errors[:FEEDBACK_MAX_ERRORS]
        ]
        details = json.dumps(shown, default=str, ensure_ascii=False)
        if len(errors) > FEEDBACK_MAX_ERRORS:
            details += f" (and {len(errors) - FEEDBACK_MAX_ERRORS} more)"
    else:
        details = str(exc)
    return (
        "Your previous answer was not valid for the required output schema.\n"
        f"Validation errors: {_clip(details, FEEDBACK_MAX_CHARS)}\n"
        "Answer again with only a JSON object that matches the schema."
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def retry_delay(
    retry: int,
    retry_after: float | None,
    *,
    base: float | None = None,
    cap: float | None = None,
    jitter: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...) of a failed call.

    The provider's ``Retry-After`` when it sent one, else exponential backoff
    (``base``, doubled per retry) with jitter (between half and all of it); never
    more than ``cap``.
    """
    base = RETRY_BASE_DELAY if base is None else base
    cap = RETRY_MAX_DELAY if cap is None else cap
    if retry_after is not None:
        return max(0.0, min(retry_after, cap))
    backoff: float = min(cap, base * 2.0 ** max(0, retry - 1))
    return backoff * (0.5 + jitter() / 2)


def _truncation_hint(agent: Agent[Any]) -> str:
    for key in ("max_completion_tokens", "max_tokens"):
        if key in agent.model_settings:
            return f"raise model_settings[{key!r}] (now {agent.model_settings[key]!r})"
    return "set a larger model_settings['max_tokens']"


@dataclass
class _TurnState:
    """A turn in progress: its stored messages so far and what it spent."""

    messages: list[dict[str, Any]]
    """This turn's messages in the stored form (user message first, with ``meta``)."""
    usage: Usage
    cost: float | None
    steps: int
    """Model calls answered so far (they count against ``max_tool_steps``)."""
    calls: int = 0
    """Model calls made by this run of the flow, failed and re-asked ones included."""
    earlier_calls: int = 0
    """Model calls of the turn before its pause (a resumed turn), for ``max_model_calls``."""
    tool_calls: list[ToolCallResult] = field(default_factory=list)

    def spend(self, response: ModelResponse) -> None:
        self.usage = self.usage + response.usage
        if response.cost is not None:
            self.cost = (self.cost or 0.0) + response.cost


@dataclass(frozen=True)
class PausedTurn:
    """What ``Agent.resume`` needs to go on with a turn paused for approvals."""

    plan: TurnPlan
    pending: dict[str, Any]
    """The pending part of the document (``Context.pending``), compact."""


def _unlimited(agent: Agent[Any], plan: TurnPlan) -> bool:
    limits = plan.limits or agent.limits
    return (
        limits.max_session_tokens is None
        and limits.max_session_cost is None
        and limits.max_model_calls is None
    )


def check_turn_budget(agent: Agent[Any], plan: TurnPlan, state: _TurnState) -> None:
    """``BudgetExceededError`` if the next model call of this turn must not start."""
    if _unlimited(agent, plan):
        return
    limits = plan.limits or agent.limits
    cost = plan.spent_cost
    if state.cost is not None:
        cost = (cost or 0.0) + state.cost
    check_budget(
        limits,
        spent_tokens=plan.spent_usage.total_tokens + state.usage.total_tokens,
        spent_cost=cost,
        model_calls=state.earlier_calls + state.calls,
    )


def session_budget(agent: Agent[Any], limits: BudgetLimits | None) -> BudgetLimits | None:
    """The session's token and cost limits for this call, if it has any (``max_model_calls``
    left out: it bounds one turn, not the session)."""
    limits = limits or agent.limits
    if limits.max_session_tokens is None and limits.max_session_cost is None:
        return None
    return replace(limits, max_model_calls=None)


def charged_document(
    document: Mapping[str, Any], usage: Usage, cost: float | None
) -> dict[str, Any]:
    """``document`` with ``usage`` and ``cost`` added to its totals, nothing else changed."""
    charged = dict(document)
    charged["usage"] = usage_document(stored_usage(document.get("usage")) + usage)
    if cost is not None:
        charged["cost"] = (document.get("cost") or 0.0) + cost
    return charged


def _model_call(
    agent: Agent[Any], request: ModelRequest, state: _TurnState, plan: TurnPlan
) -> Generator[ModelRequest | Sleep, Any, tuple[ModelResponse, int]]:
    """One model call, retried after a backoff on a retryable ``ModelCallError``.

    The budgets are checked before each call, and each call is handed the time left
    of ``turn_timeout`` (``CallBounds``); the time it takes, its backoff included,
    is added to ``plan.model_time``. Returns the response and how many calls it took.
    """
    retries = 0
    clock = plan.model_time
    while True:
        check_turn_budget(agent, plan, state)
        left = agent.turn_timeout - clock.spent
        if left <= 0:
            raise _turn_timeout(agent, request, state, "before its next call")
        state.calls += 1
        bounds = CallBounds(left, agent.turn_timeout, agent.max_output_bytes)
        started = time.monotonic()
        try:
            response: ModelResponse = storable_response((yield replace(request, bounds=bounds)))
        except ModelCallError as exc:
            exc.attempts = state.calls
            if not exc.retryable or retries >= agent.model_retries:
                raise
            retries += 1
            delay = retry_delay(retries, exc.retry_after)
            if exc.retry_after is not None and exc.retry_after > delay:
                logger.warning(
                    "%s asked to wait %.0fs before retrying; waiting %.0fs (the cap)",
                    agent.model_name,
                    exc.retry_after,
                    delay,
                )
            if delay >= left - (time.monotonic() - started):
                raise _turn_timeout(
                    agent, request, state, f"before a retry in {delay:.2f}s ({exc})"
                ) from exc
            logger.warning("%s; retry %d of %d in %.2fs", exc, retries, agent.model_retries, delay)
            yield Sleep(delay)
            continue
        finally:
            clock.spent += time.monotonic() - started
        return response, retries + 1


def storable_response(response: ModelResponse) -> ModelResponse:
    """The reply with each lone surrogate (text UTF-8 cannot encode, so no database
    can store) replaced by U+FFFD, and a warning; the reply itself when it has none."""
    calls = response.tool_calls
    texts = [response.text, response.model, response.finish_reason or ""]
    texts += [text for call in calls for text in (call.name, call.arguments, call.id)]
    if all(encodable(text) for text in texts):
        return response
    if any(lone_surrogates(text) for text in texts):  # not a pair split across chunks
        logger.warning(
            "the reply of %s holds text that cannot be encoded as UTF-8 (a lone surrogate); "
            "it is kept with U+FFFD in its place",
            response.model or "the model",
        )
    return replace(
        response,
        text=clean_text(response.text),
        model=clean_text(response.model),
        finish_reason=response.finish_reason and clean_text(response.finish_reason),
        tool_calls=tuple(
            ToolCall(clean_text(c.name), clean_text(c.arguments), id=clean_text(c.id))
            for c in calls
        ),
    )


def _turn_timeout(
    agent: Agent[Any], request: ModelRequest, state: _TurnState, when: str
) -> TurnTimeoutError:
    return TurnTimeoutError(
        f"the turn's model time reached turn_timeout={agent.turn_timeout:g}s "
        f"(Agent(turn_timeout=...)) {when}; nothing was stored",
        model=request.model,
        turn_timeout=agent.turn_timeout,
        attempts=state.calls,
    )


def model_flow(
    agent: Agent[Any], plan: TurnPlan, mode: OutputMode | None
) -> Generator[ModelRequest | Sleep | RunTools, Any, Result[Any]]:
    """Call the model, run the tools it asks for, validate its output; return the ``Result``.

    ``mode`` is how structured output is asked for (``None`` for a text agent).
    A retryable ``ModelCallError`` (429, 5xx, timeout, refused connection) thrown
    in at a request is retried after a backoff, up to ``model_retries`` times per
    request; the calls that failed add no usage but count in ``attempts``. A reply
    with tool calls is answered with the tools' results (a ``RunTools``) and the
    model is asked again; a call that needs approval pauses the turn (the ``Result``
    has ``pending_approvals`` and no output).
    """
    state = _first_state(plan)
    return (yield from _turn_loop(agent, plan, mode, state, time.perf_counter()))


def _first_state(plan: TurnPlan, pending: Mapping[str, Any] | None = None) -> _TurnState:
    """A turn before its first model call: new, or a paused one going on (``pending``)."""
    if pending is None:
        return _TurnState(messages=[plan.user_message], usage=Usage(), cost=None, steps=0)
    state = _TurnState(
        messages=[dict(m) for m in pending["messages"]],
        usage=stored_usage(pending.get("usage")),
        cost=pending.get("cost"),
        steps=int(pending.get("steps", 0)),
    )
    state.earlier_calls = state.steps
    return state


def check_first_call_budget(
    agent: Agent[Any], plan: TurnPlan, pending: Mapping[str, Any] | None = None
) -> None:
    """``check_turn_budget`` for the turn's first model call, before the turn starts:
    the session flows check it before they claim the row or run a tool, so a budget
    already spent is refused with nothing written."""
    if pending is None and _unlimited(agent, plan):
        return  # nothing to check: no turn state to build
    check_turn_budget(agent, plan, _first_state(plan, pending))


def resumed_turn_flow(
    agent: Agent[Any],
    plan: TurnPlan,
    pending: Mapping[str, Any],
    approvals: Mapping[str, bool | Denied],
    mode: OutputMode | None,
) -> Generator[ModelRequest | Sleep | RunTools, Any, Result[Any]]:
    """Go on with a paused turn: run the approved calls, deny the others, and loop on.

    ``pending`` is the stored pending part, ``approvals`` already checked with
    ``check_approvals``.
    """
    started = time.perf_counter()
    toolset = agent.toolset
    state = _first_state(plan, pending)
    assistant = _last_tool_calls_message(state.messages)
    waiting = {a["tool_call_id"]: a for a in pending["approvals"]}
    calls = [_stored_call(entry, waiting.get(entry["id"])) for entry in assistant["tool_calls"]]
    approved = [call for call in calls if approvals.get(call.id) is True]
    results: dict[str, ToolCallResult] = {}
    if approved:
        ran: list[ToolCallResult] = yield RunTools(tuple(approved))
        results.update((r.tool_call_id, r) for r in ran)
    for call in calls:
        decision = approvals.get(call.id)
        if decision is not None and decision is not True:
            results[call.id] = toolset.denied(call, decision)
    state.tool_calls.extend(results[c.id] for c in calls if c.id in results)
    _insert_results(state.messages, calls, results)
    return (yield from _turn_loop(agent, plan, mode, state, started))


def _last_tool_calls_message(messages: list[dict[str, Any]]) -> dict[str, Any]:
    for message in reversed(messages):
        if message.get("role") == "assistant" and message.get("tool_calls"):
            found: dict[str, Any] = message
            return found
    raise ValueError("a paused turn without a tool call")  # not a document this library wrote


def _stored_call(entry: Mapping[str, Any], approval: Mapping[str, Any] | None) -> ToolCall:
    """A call of the paused reply. One that waited for a decision runs with the
    arguments the approver was shown (``PendingApproval.arguments``): one source for
    both, never the message's text read a second time."""
    if approval is not None:
        return ToolCall(approval["tool_name"], approval["arguments"], id=entry["id"])
    function = entry["function"]
    return ToolCall(function["name"], function.get("arguments") or "{}", id=entry["id"])


def _insert_results(
    messages: list[dict[str, Any]], calls: list[ToolCall], results: Mapping[str, ToolCallResult]
) -> None:
    """Put the new results among those of the last reply's calls, in call order."""
    start = len(messages)
    while start > 0 and messages[start - 1].get("role") == "tool":
        start -= 1
    existing = {m["tool_call_id"]: m for m in messages[start:]}
    ordered = []
    for call in calls:
        if call.id in existing:
            ordered.append(existing[call.id])
        elif call.id in results:
            ordered.append(results[call.id].to_message())
    messages[start:] = ordered


def _turn_loop(
    agent: Agent[Any],
    plan: TurnPlan,
    mode: OutputMode | None,
    state: _TurnState,
    started: float,
) -> Generator[ModelRequest | Sleep | RunTools, Any, Result[Any]]:
    toolset = agent.toolset
    reasks = 0
    refitted = False
    reask_tail: list[dict[str, Any]] = []
    step_usage, step_cost, step_calls = Usage(), None, 0
    refit: Selection | None = None
    while True:
        selection = refit or select_request(agent, plan, mode, [*state.messages, *reask_tail])
        refit = None
        sent = selection.messages
        request = _request(agent, sent, mode, selection.left_out)
        try:
            response, calls = yield from _model_call(agent, request, state, plan)
        except TurnCancelled as exc:
            if not exc.keep:
                raise
            return _interrupted(agent, plan, state, exc.text, step_usage, step_cost, started)
        except ContextWindowError as exc:
            # The provider stated its window: the request goes again (once per turn)
            # with the default window fitted to it, if that sends less; nothing was
            # received to keep.
            turn = [*state.messages, *reask_tail]
            refit = None if refitted else _refit(agent, plan, mode, exc, sent, turn)
            if refit is None or len(refit.messages) >= len(sent):
                raise
            refitted = True
            continue
        state.spend(response)
        state.steps += 1
        step_usage = step_usage + response.usage
        if response.cost is not None:
            step_cost = (step_cost or 0.0) + response.cost
        step_calls += calls
        if response.tool_calls:
            if state.steps >= agent.max_tool_steps:
                raise ToolLoopError(
                    f"{agent.model_name} still called tools after {state.steps} model call(s) "
                    f"in one turn (max_tool_steps={agent.max_tool_steps}); nothing was stored",
                    max_tool_steps=agent.max_tool_steps,
                    usage=state.usage,
                )
            reask_tail = []
            state.messages.append(_tool_calls_message(response, step_usage, step_cost, step_calls))
            step_usage, step_cost, step_calls = Usage(), None, 0
            pending = [
                found
                for call in response.tool_calls
                if _may_wait(toolset, call) and (found := toolset.pending_approval(call))
            ]
            waiting = {p.tool_call_id for p in pending}
            runnable = tuple(call for call in response.tool_calls if call.id not in waiting)
            ran: list[ToolCallResult] = []
            if runnable:
                try:
                    ran = yield RunTools(runnable)
                except TurnCancelled as exc:
                    if not exc.keep:
                        raise
                    # The calls have no results: keep only what is complete.
                    state.messages.pop()
                    return _interrupted(agent, plan, state, exc.text, Usage(), None, started)
            state.tool_calls.extend(ran)
            state.messages.extend(result.to_message() for result in ran)
            if pending:
                return _paused_result(agent, plan, mode, state, response, pending, started)
            continue
        try:
            output = agent.parse_output(response.text)
        except (ValidationError, ValueError) as exc:
            schema_name = agent.output_schema.__name__ if agent.output_schema else "str"
            errors = exc.errors(include_url=False) if isinstance(exc, ValidationError) else []
            if response.finish_reason == "length":
                raise OutputValidationError(
                    f"output of {agent.model_name} was cut off at the token limit "
                    f"(finish_reason 'length') and is not a valid {schema_name}; a re-ask "
                    f"cannot help: {_truncation_hint(agent)}",
                    raw_text=response.text,
                    errors=errors,
                    attempts=state.calls,
                    usage=state.usage,
                ) from exc
            if reasks >= agent.output_retries:
                raise OutputValidationError(
                    f"output of {agent.model_name} did not match {schema_name} "
                    f"after {state.calls} attempt(s): {exc}",
                    raw_text=response.text,
                    errors=errors,
                    attempts=state.calls,
                    usage=state.usage,
                ) from exc
            reasks += 1
            reask_tail = [
                *reask_tail,
                {"role": "assistant", "content": response.text},
                {"role": "user", "content": reask_feedback(exc)},
            ]
            continue
        model = response.model or agent.model_name
        state.messages.append(
            _stored(
                "assistant",
                response.text,
                model=model,
                usage=usage_document(step_usage),
                cost=step_cost,
                finish_reason=response.finish_reason,
                attempts=step_calls if step_calls != 1 else None,
            )
        )
        return Result(
            output=output,
            text=response.text,
            messages=[
                *sent[: len(sent) - len(reask_tail)],
                {"role": "assistant", "content": response.text},
            ],
            usage=state.usage,
            cost=state.cost,
            model=model,
            finish_reason=response.finish_reason,
            attempts=state.calls,
            duration_s=time.perf_counter() - started,
            input=plan.input,
            tool_calls=list(state.tool_calls),
            stored_messages=state.messages,
        )


def _interrupted(
    agent: Agent[Any],
    plan: TurnPlan,
    state: _TurnState,
    text: str,
    usage: Usage,
    cost: float | None,
    started: float,
) -> Result[Any]:
    """The turn of a consumer that stopped reading a stream with ``on_cancel="keep"``:
    the text it received, as an assistant message marked ``interrupted``, after the
    complete pieces of the turn (a tool step without its results is left out)."""
    model = agent.model_name
    state.messages.append(
        _stored(
            "assistant",
            text,
            model=model,
            usage=usage_document(usage) if usage != Usage() else None,
            cost=cost,
            interrupted=True,
        )
    )
    return Result(
        output=None,
        text=text,
        messages=[*outgoing_messages(agent, plan, None, state.messages)],
        usage=state.usage,
        cost=state.cost,
        model=model,
        finish_reason=None,
        attempts=state.calls,
        duration_s=time.perf_counter() - started,
        input=plan.input,
        tool_calls=list(state.tool_calls),
        stored_messages=state.messages,
        interrupted=True,
    )


def _may_wait(toolset: Toolset, call: ToolCall) -> bool:
    """Whether the call is to a tool that needs approval (checked fully only then)."""
    tool = toolset.tools.get(call.name)
    return tool is not None and tool.requires_approval


def _tool_calls_message(
    response: ModelResponse, usage: Usage, cost: float | None, calls: int
) -> dict[str, Any]:
    """The assistant message with the calls, arguments replayable, raw text in ``meta``."""
    entries = []
    raw: dict[str, str] = {}
    for call in response.tool_calls:
        arguments, kept = replay_arguments(call.arguments)
        if kept is not None:
            raw[call.id] = kept
        entry = call.to_openai()
        entry["function"]["arguments"] = arguments
        entries.append(entry)
    message: dict[str, Any] = {"role": "assistant"}
    if response.text:
        message["content"] = response.text
    message["tool_calls"] = entries
    meta = {
        key: value
        for key, value in (
            ("model", response.model or None),
            ("usage", usage_document(usage)),
            ("cost", cost),
            ("finish_reason", response.finish_reason),
            ("attempts", calls if calls != 1 else None),
            ("raw_arguments", raw or None),
        )
        if value is not None
    }
    message["meta"] = meta
    return message


def _paused_result(
    agent: Agent[Any],
    plan: TurnPlan,
    mode: OutputMode | None,
    state: _TurnState,
    response: ModelResponse,
    pending: list[PendingApproval],
    started: float,
) -> Result[Any]:
    part: dict[str, Any] = {
        "messages": state.messages,
        "approvals": [
            {"tool_call_id": p.tool_call_id, "tool_name": p.tool_name, "arguments": p.arguments}
            for p in pending
        ],
        "steps": state.steps,
        "usage": usage_document(state.usage),
    }
    if state.cost is not None:
        part["cost"] = state.cost
    try:
        sent = outgoing_messages(agent, plan, mode, state.messages)
    except ContextWindowError:  # the results so far no longer fit: the resume will say so
        sent = chat_messages(state.messages)
    return Result(
        output=None,
        text=response.text,
        messages=sent,
        usage=state.usage,
        cost=state.cost,
        model=response.model or agent.model_name,
        finish_reason=response.finish_reason,
        attempts=state.calls,
        duration_s=time.perf_counter() - started,
        input=plan.input,
        tool_calls=list(state.tool_calls),
        pending_approvals=pending,
        stored_messages=state.messages,
        paused_turn=PausedTurn(plan, part),
    )


def check_approvals(
    pending: Mapping[str, Any] | None, approvals: Any, *, name: str = "the turn"
) -> dict[str, bool | Denied]:
    """Check that ``approvals`` decides every pending call exactly, before anything runs.

    ``InputValidationError`` (``source="approvals"``) for a missing or unknown id, a
    decision that is not ``True``, ``False`` or ``Denied``, or nothing pending.
    """
    if pending is None:
        raise InputValidationError(
            f"{name} has no pending approvals: there is nothing to resume",
            errors=[],
            source="approvals",
        )
    if not isinstance(approvals, Mapping):
        raise InputValidationError(
            f"approvals must be a dict of tool_call_id -> True | False | Denied(reason), "
            f"got {type(approvals).__name__}",
            errors=[],
            source="approvals",
        )
    expected = [a["tool_call_id"] for a in pending["approvals"]]
    unknown = sorted(str(k) for k in approvals if k not in expected)
    missing = [k for k in expected if k not in approvals]
    if unknown or missing:
        parts = []
        if missing:
            parts.append(f"missing decisions for {missing}")
        if unknown:
            parts.append(f"unknown tool_call_id(s) {unknown}")
        raise InputValidationError(
            f"approvals must decide every pending call of {name} exactly "
            f"(pending: {expected}): {'; '.join(parts)}",
            errors=[],
            source="approvals",
        )
    for key, decision in approvals.items():
        if not isinstance(decision, bool | Denied):
            raise InputValidationError(
                f"approvals[{key!r}] must be True, False or Denied(reason), "
                f"got {type(decision).__name__}",
                errors=[],
                source="approvals",
            )
        if isinstance(decision, Denied) and decision.reason is not None:
            _check_encodable(decision.reason, "approvals")
    return dict(approvals)


# -- step 4: the new stored document -----------------------------------------------


def next_document(
    plan: TurnPlan, result: Result[Any], previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The context document after this turn. ``previous`` is never modified.

    A finished turn joins ``messages`` (and the pending part, if the turn had paused,
    is gone); a paused one is stored apart, as the pending part (see ``pause_document``).
    """
    if result.paused_turn is not None:
        return pause_document(plan, result, previous)
    now = plan.now
    if previous is None:
        usage, cost, turns, created = result.usage, result.cost, 1, isoformat(now)
    else:
        usage = stored_usage(previous.get("usage")) + result.usage
        before = previous.get("cost")
        cost = before if result.cost is None else (before or 0.0) + result.cost
        turns = int(previous.get("turns", 0)) + 1
        created = previous["created_at"]
    doc = _summary(plan, created, usage, cost, turns, previous)
    doc["messages"] = [*plan.history, *result.stored_messages]
    return doc


def compaction_flow(
    agent: Agent[Any], plan: TurnPlan, document: dict[str, Any], result: Result[Any]
) -> Generator[ModelRequest | Sleep, Any, tuple[dict[str, Any], Result[Any]]]:
    """Summarize older turns of the new ``document`` when ``agent.compaction`` asks for it.

    One more ``ModelRequest`` (the summary call, budgets checked first); its usage and
    cost join the document's totals and the turn's result, and the summary is
    inserted into the document's messages, so the caller writes it with the turn in
    one compare-and-swap. A summary call that fails (``ModelCallError``, retries
    spent) leaves the document as it was: the next turn plans again. A paused turn
    is never compacted.
    """
    summarize = agent.compaction
    if summarize is None or result.paused_turn is not None:
        return document, result
    from ._compaction import apply_summary, plan_compaction, summary_request_messages

    messages = document["messages"]
    window = agent.history
    count = summarize.counter
    if count is None and isinstance(window, TokenBudget):
        count = window.counter
    if count is None:
        count = agent.model.token_counter(agent.model_name)
    compaction = plan_compaction(messages, summarize, count)
    if compaction is None:
        return document, result
    state = _TurnState(
        messages=[], usage=result.usage, cost=result.cost, steps=0, calls=result.attempts
    )
    settings = agent.model_settings
    if summarize.model_settings is not None:
        settings = dict(summarize.model_settings)
    request = ModelRequest(
        model=summarize.model or agent.model_name,
        messages=summary_request_messages(compaction),
        settings=settings,
        purpose="summary",
    )
    try:
        response, calls = yield from _model_call(agent, request, state, plan)
    except ModelCallError as exc:
        logger.warning(
            "the summary call failed (%s); the turn is stored without compaction, which "
            "is tried again next turn",
            type(exc).__name__,
        )
        return document, result
    text = response.text.strip()
    if not text:
        logger.warning("the summary call returned no text; the turn is stored without it")
        return document, result
    meta = {
        key: value
        for key, value in (
            ("created_at", isoformat(plan.now)),
            ("model", response.model or request.model),
            ("usage", usage_document(response.usage)),
            ("cost", response.cost),
            ("attempts", calls if calls != 1 else None),
        )
        if value is not None
    }
    compacted = charged_document(document, response.usage, response.cost)
    compacted["messages"] = apply_summary(messages, compaction, text, meta)
    cost = result.cost
    if response.cost is not None:
        cost = (cost or 0.0) + response.cost
    return compacted, replace(
        result, usage=result.usage + response.usage, cost=cost, attempts=state.calls
    )


def pause_document(
    plan: TurnPlan, result: Result[Any], previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The document of a turn paused for approvals: the history as it was, the turn apart.

    The summary (``turns``, ``usage``, ``cost``) counts finished turns only; the
    pending part holds what the paused turn spent so far.
    """
    assert result.paused_turn is not None
    if previous is None:
        usage, cost, turns, created = Usage(), None, 0, isoformat(plan.now)
    else:
        usage = stored_usage(previous.get("usage"))
        cost = previous.get("cost")
        turns = int(previous.get("turns", 0))
        created = previous["created_at"]
    doc = _summary(plan, created, usage, cost, turns, previous)
    doc["messages"] = list(plan.history)
    doc["pending"] = result.paused_turn.pending
    return doc


_CARRIED = (
    "path",
    "next",
    "summary",
    "last",
    "loaded",
    "rows",
    "keys",
    "started_with",
    FROM_VERSION,
)
"""Keys of the joined document a turn's new document keeps: where its rows are."""


def _summary(
    plan: TurnPlan,
    created: str,
    usage: Usage,
    cost: float | None,
    turns: int,
    previous: Mapping[str, Any] | None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": CONTEXT_VERSION,
        "created_at": created,
        "updated_at": isoformat(plan.now),
        "turns": turns,
        "usage": usage_document(usage),
    }
    if cost is not None:
        doc["cost"] = cost
    if plan.instruction_args is not None:
        doc["instruction_args"] = plan.instruction_args
    if previous is not None:
        doc.update((key, previous[key]) for key in _CARRIED if key in previous)
    return doc


def plan_resumed_turn(
    document: Mapping[str, Any],
    input: BaseModel,
    *,
    now: datetime | None = None,
    limits: BudgetLimits | None = None,
) -> TurnPlan:
    """Plan the rest of a paused turn on a validated stored document."""
    pending = document["pending"]
    return TurnPlan(
        input=input,
        user_message=pending["messages"][0],
        history=document["messages"],
        instruction_args=document.get("instruction_args"),
        now=now or utcnow(),
        limits=limits,
        spent_usage=stored_usage(document.get("usage")),
        spent_cost=document.get("cost"),
    )


# -- drivers ---------------------------------------------------------------------


class TurnCancelled(Exception):
    """Thrown into a flow when the consumer of its stream stopped early; never
    reaches the consumer. With ``keep`` the turn ends with the ``text`` received so
    far (``on_cancel="keep"``); else it fails, and nothing of it is stored."""

    def __init__(self, *, keep: bool = False, text: str = "") -> None:
        super().__init__("the consumer of the stream stopped early")
        self.keep = keep
        self.text = text
