"""History windows, compaction planning and budgets, as pure functions.

The stored history always stays complete; a *window* decides which part of it a
request sends. Everything here works on stored message dicts (OpenAI chat messages
plus ``meta``, see ``context``) and does no I/O: the flows call these functions and
yield the model calls themselves.

Turns. A turn is a ``user`` message, then assistant messages (some with
``tool_calls``), the ``tool`` messages answering every call (``tool_call_id``), and a
final assistant message without calls. The first message may be the system message,
which belongs to no turn. ``split_turns`` cuts the messages into turns.

Summaries. A compaction stores its summary as one more message, inserted just before
the first turn it keeps verbatim::

    {"role": "system", "content": "<summary text>",
     "meta": {"summary": {"covers": 7}, "model": "...", "usage": {...}, ...}}

``covers`` is how many stored messages directly before it the summary stands for: a
previous summary (whose text the new one builds on) and the turns after it, or every
message after the system message. The covered messages stay stored. Requests start
from the newest summary: they send the system message with the summary appended to
it (under ``SUMMARY_HEADER``), then the turns after the summary. The ``system`` role
is used because no other code reads a system message as a user input or a model
output (``Message.parse_input``/``parse_output`` would reject a summary stored as a
user or assistant message), and folding it into the leading system message keeps
every request in the one shape all chat templates accept: one system message first,
then alternating turns.

Windows. ``LastTurns(n)``, ``TokenBudget(max_tokens, reserve_output=0)``, any
callable over the stored messages, or ``None`` (everything); ``select_messages``
applies one and returns a ``Selection``. Every request it returns passes
``check_request``.

Compaction (``Summarize``, ``plan_compaction``, ``summary_request_messages``,
``apply_summary``) is defined in ``_compaction`` and read here by name: a turn
without compaction does not import it.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeAlias

from ._lazy import lazy_compile
from .errors import BudgetExceededError, ConfigurationError

if TYPE_CHECKING:
    from ._compaction import (
        CompactionPlan,
        Summarize,
        apply_summary,
        plan_compaction,
        summary_request_messages,
    )

__all__ = [
    "DEFAULT_SUMMARY_INSTRUCTION",
    "SUMMARY_HEADER",
    "BudgetLimits",
    "CompactionPlan",
    "LastTurns",
    "Selection",
    "Summarize",
    "TokenBudget",
    "Turn",
    "Window",
    "apply_summary",
    "check_budget",
    "check_request",
    "fitted_window",
    "is_summary",
    "output_tokens",
    "plan_compaction",
    "select_messages",
    "split_turns",
    "stated_window",
    "summary_request_messages",
]

Msg: TypeAlias = dict[str, Any]
TokenCounter: TypeAlias = Callable[[list[Msg]], int]
"""Counts the tokens of a list of chat messages (as they are sent)."""

SUMMARY_HEADER = "Summary of the earlier conversation:"
"""The line between the instruction and the summary in the system message sent."""

DEFAULT_SUMMARY_INSTRUCTION = (
    "You summarize a conversation between a user and an assistant so that the assistant "
    "can continue it without the full history. Keep every fact, decision, open question, "
    "name, number and identifier that may matter later, and what tools returned that the "
    "assistant relied on. If a previous summary is given, merge it into the new one. "
    "Answer with the summary only, as plain text."
)


# -- turns -------------------------------------------------------------------------


def is_summary(message: Mapping[str, Any]) -> bool:
    """Whether a stored message is a compaction summary (``meta.summary`` is set)."""
    meta = message.get("meta")
    return (
        message.get("role") == "system"
        and isinstance(meta, Mapping)
        and meta.get("summary") is not None
    )


@dataclass(frozen=True)
class Turn:
    """A run of stored messages: one turn, or one summary message.

    ``start`` is the index of its first message in the stored list. A turn is
    ``complete`` when it starts with a user message, ends with an assistant message
    without calls, and every call in it has exactly one result right after its
    assistant message. Stored histories hold only complete turns; ``split_turns``
    still accepts others (a history cut off mid-turn, messages before the first user
    message) and marks them incomplete, and windows never send them.
    """

    start: int
    messages: tuple[Msg, ...]

    @property
    def end(self) -> int:
        """The index after its last message."""
        return self.start + len(self.messages)

    @property
    def is_summary(self) -> bool:
        return len(self.messages) == 1 and is_summary(self.messages[0])

    @property
    def complete(self) -> bool:
        if self.is_summary or not self.messages or self.messages[0].get("role") != "user":
            return False
        last = self.messages[-1]
        if last.get("role") != "assistant" or last.get("tool_calls"):
            return False
        return _pairing_problem(list(self.messages), 0) is None


def _system_of(messages: Sequence[Msg]) -> Msg | None:
    first = messages[0] if messages else None
    if first is not None and first.get("role") == "system" and not is_summary(first):
        return first
    return None


def _segments_from_newest(messages: Sequence[Msg], first: int) -> Iterator[Turn]:
    """The turns of ``messages[first:]``, newest first, read back from the end only as
    far as the caller goes (a window costs what it sends, not the whole history)."""
    end = len(messages)
    for position in range(len(messages) - 1, first - 1, -1):
        role = messages[position].get("role")
        if role == "system":
            if end > position + 1:
                yield Turn(position + 1, tuple(messages[position + 1 : end]))
            yield Turn(position, (messages[position],))
            end = position
        elif role == "user":
            yield Turn(position, tuple(messages[position:end]))
            end = position
    if end > first:
        yield Turn(first, tuple(messages[first:end]))


def split_turns(messages: Sequence[Msg]) -> tuple[Msg | None, list[Turn]]:
    """The system message (if the first message is one) and the turns that follow.

    A turn starts at every ``user`` message; a summary message (or any other system
    message after the first) is a segment of its own. Never raises: malformed parts
    come back as incomplete turns.
    """
    system = _system_of(messages)
    turns = list(_segments_from_newest(messages, 0 if system is None else 1))
    turns.reverse()
    return system, turns


@dataclass(frozen=True)
class _History:
    """Where requests start: the system message, the newest summary, and the index of
    the first message after both (``first``)."""

    system: Msg | None
    summary: Turn | None
    first: int

    def newest(self, messages: Sequence[Msg]) -> Iterator[Turn]:
        """The complete turns after the summary, newest first."""
        return (turn for turn in _segments_from_newest(messages, self.first) if turn.complete)


def _history(messages: Sequence[Msg]) -> _History:
    system = _system_of(messages)
    first = 0 if system is None else 1
    for position in range(len(messages) - 1, first - 1, -1):
        message = messages[position]
        if message.get("role") == "system" and is_summary(message):
            return _History(system, Turn(position, (message,)), position + 1)
    return _History(system, None, first)


def _active(messages: Sequence[Msg]) -> tuple[Msg | None, Turn | None, list[Turn]]:
    """System message, newest summary, and the turns after that summary."""
    history = _history(messages)
    turns = list(_segments_from_newest(messages, history.first))
    turns.reverse()
    return history.system, history.summary, turns


_NOT_SENT = frozenset({"meta", "id", "parent"})
"""Keys of a stored message dict that are the library's, never sent to a model."""


def _send_form(message: Mapping[str, Any]) -> Msg:
    return {key: value for key, value in message.items() if key not in _NOT_SENT}


def _head(system: Msg | None, summary: Turn | None) -> list[Msg]:
    """The leading system message as sent: the instruction, then the summary."""
    if summary is None:
        return [] if system is None else [_send_form(system)]
    text = f"{SUMMARY_HEADER}\n{_text_of(summary.messages[0].get('content'))}"
    if system is None:
        return [{"role": "system", "content": text}]
    head = _send_form(system)
    content = head.get("content")
    if isinstance(content, list):
        head["content"] = [*content, {"type": "text", "text": text}]
    elif content:
        head["content"] = f"{content}\n\n{text}"
    else:
        head["content"] = text
    return [head]


# -- the request invariants ----------------------------------------------------------


def _pairing_problem(messages: list[Msg], offset: int) -> str | None:
    """Every call answered right after its assistant message, every result by a call."""
    position = 0
    while position < len(messages):
        message = messages[position]
        role = message.get("role")
        if role == "tool":
            return (
                f"message {offset + position} is a tool result "
                f"({message.get('tool_call_id')!r}) without its call right before it"
            )
        calls = message.get("tool_calls") if role == "assistant" else None
        position += 1
        if not calls:
            continue
        wanted: list[Any] = [
            call.get("id") if isinstance(call, Mapping) else None for call in calls
        ]
        if None in wanted or len(set(wanted)) != len(wanted):
            return f"message {offset + position - 1} has tool calls without distinct ids"
        answered: set[Any] = set()
        while position < len(messages) and messages[position].get("role") == "tool":
            call_id = messages[position].get("tool_call_id")
            if call_id not in wanted or call_id in answered:
                return (
                    f"message {offset + position} is a tool result ({call_id!r}) that answers "
                    "no open call of the assistant message before it"
                )
            answered.add(call_id)
            position += 1
        missing = [call_id for call_id in wanted if call_id not in answered]
        if missing:
            return (
                f"message {offset + position - len(answered) - 1} has tool calls without "
                f"their results: {missing}"
            )
    return None


def check_request(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """Why ``messages`` is not a valid request, or ``None`` when it is one.

    A valid request: at most one system message, first; then whole turns, each
    starting with a user message, every earlier turn ending with an assistant reply
    without calls; every tool call answered by exactly one result right after its
    assistant message and no result without its call; the current turn last, ending
    with its user message or with tool results (or a re-ask's user message).
    """
    sent = [dict(message) for message in messages]
    if not sent:
        return "the request has no messages"
    for position, message in enumerate(sent):
        role = message.get("role")
        if role not in {"system", "user", "assistant", "tool"}:
            return f"message {position} has an unknown role {role!r}"
        if role == "system" and position != 0:
            return f"message {position} is a system message; only the first message may be one"
    body_start = 1 if sent[0].get("role") == "system" else 0
    body = sent[body_start:]
    if not body or body[0].get("role") != "user":
        return "the request does not start (after the system message) with a user message"
    if sent[-1].get("role") not in {"user", "tool"}:
        return "the request does not end with the new user message or tool results"
    problem = _pairing_problem(body, body_start)
    if problem is not None:
        return problem
    _, turns = split_turns(sent)
    for turn in turns[:-1]:
        last = turn.messages[-1]
        if last.get("role") != "assistant" or last.get("tool_calls"):
            return (
                f"the turn at message {turn.start} is cut: it does not end with an assistant reply"
            )
    return None


# -- windows -----------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """What a window chose to send.

    ``messages`` are ready to send (no ``meta``; a summary folded into the system
    message). ``turns`` is how many stored turns were sent and ``left_out`` how many
    stored messages after the newest summary were not (``None`` for a function
    window); ``tokens`` is the counted size when the window counted it. When even the
    newest turn does not fit, ``overflow`` says why and ``messages`` is the smallest
    request there is (which does not fit): the caller raises ``ContextWindowError``
    with that reason.
    """

    messages: list[Msg]
    turns: int | None = None
    left_out: int | None = None
    tokens: int | None = None
    overflow: str | None = None


def _selection(
    history: _History,
    stored: Sequence[Msg],
    kept: Sequence[Turn],
    new: Sequence[Msg],
    tokens: int | None = None,
) -> Selection:
    """The request: head, the kept turns (oldest first), the new turn."""
    messages = [*_head(history.system, history.summary), *_whole(kept), *_new_turn(new)]
    sent = sum(len(turn.messages) for turn in kept)
    return Selection(messages, len(kept), len(stored) - history.first - sent, tokens)


def _new_turn(new: Sequence[Mapping[str, Any]]) -> list[Msg]:
    sent = [_send_form(message) for message in new]
    if not sent or sent[0].get("role") != "user":
        raise ValueError("the new turn's messages must start with its user message")
    return sent


def _whole(turns: Sequence[Turn]) -> list[Msg]:
    return [_send_form(message) for turn in turns for message in turn.messages]


@dataclass(frozen=True)
class LastTurns:
    """Send the system message, the last ``n`` complete turns, and the new turn.

    With a summary stored, only the turns after it count, and the summary is sent
    with the system message.
    """

    n: int

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 0:
            raise ConfigurationError(f"LastTurns(n): n must be an int >= 0, got {self.n!r}")

    def select(self, stored: Sequence[Msg], new: Sequence[Msg]) -> Selection:
        history = _history(stored)
        kept = list(itertools.islice(history.newest(stored), self.n))
        kept.reverse()
        return _selection(history, stored, kept, new)


@dataclass(frozen=True)
class TokenBudget:
    """Send as many of the newest complete turns as fit in ``max_tokens - reserve_output``.

    Tokens are counted with ``counter`` (a function of a message list), by default
    LiteLLM's token counter for the agent's model. Whole turns are dropped, oldest
    first; the system message, the summary and the new turn are always sent, and when
    they alone do not fit the selection reports an ``overflow``.
    """

    max_tokens: int
    reserve_output: int = 0
    counter: TokenCounter | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("max_tokens", "reserve_output"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigurationError(f"TokenBudget: {name} must be an int >= 0, got {value!r}")
        if self.reserve_output >= self.max_tokens:
            raise ConfigurationError(
                f"TokenBudget: reserve_output ({self.reserve_output}) leaves no room for the "
                f"request within max_tokens ({self.max_tokens})"
            )
        if self.counter is not None and not callable(self.counter):
            raise ConfigurationError("TokenBudget: counter must be a function of a message list")

    @property
    def limit(self) -> int:
        """The most tokens a request may have."""
        return self.max_tokens - self.reserve_output

    def select(
        self, stored: Sequence[Msg], new: Sequence[Msg], count: TokenCounter | None = None
    ) -> Selection:
        count = self.counter or count
        if count is None:
            raise ConfigurationError("TokenBudget needs a token counter (or a model to count for)")
        history = _history(stored)
        head, tail = _head(history.system, history.summary), _new_turn(new)
        base = count([*head, *tail])
        if base > self.limit:
            return replace(
                _selection(history, stored, [], new, base),
                overflow=(
                    f"the newest turn alone needs {base} tokens (system message and summary "
                    f"included); the window allows {self.limit} (max_tokens {self.max_tokens} "
                    f"- reserve_output {self.reserve_output})"
                ),
            )
        # Counting each turn apart costs what the window sends, not the whole history;
        # counters add a constant per call, so the sum errs on the safe side. Counts of
        # the whole request then confirm it, or drop or add turns.
        newest = history.newest(stored)
        looked_at: list[Turn] = []  # newest first
        room, taken = self.limit - base, 0
        for turn in newest:
            looked_at.append(turn)
            size = count(_whole([turn]))
            if size > room:
                break
            room -= size
            taken += 1

        def request(n: int) -> list[Msg]:
            return [*head, *_whole(looked_at[:n][::-1]), *tail]

        tokens = count(request(taken)) if taken else base
        shrunk = False
        while tokens > self.limit:
            taken, shrunk = taken - 1, True
            tokens = count(request(taken)) if taken else base
        # The estimate errs on the safe side: take older turns while the whole fits.
        while not shrunk:
            if taken == len(looked_at):
                older = next(newest, None)
                if older is None:
                    break
                looked_at.append(older)
            more = count(request(taken + 1))
            if more > self.limit:
                break
            taken, tokens = taken + 1, more
        return _selection(history, stored, looked_at[:taken][::-1], new, tokens)


Window: TypeAlias = LastTurns | TokenBudget | Callable[[list[Msg]], list[Msg]]
"""What ``Agent(history=...)`` accepts (``None`` means the default window)."""


def select_messages(
    window: Window | None,
    stored: Sequence[Msg],
    new: Sequence[Msg],
    *,
    count: TokenCounter | None = None,
    model: str | None = None,
) -> Selection:
    """Apply ``window`` to the stored messages and the new turn's messages.

    ``None`` sends everything after the newest summary. A callable receives the
    history a request may send, as stored message dicts (copies): the system message
    with the summary folded in, then the turns after the newest summary; it returns
    the history messages to send, and the new turn is appended. Its result must make
    a valid request (``check_request``), else ``ConfigurationError`` says why.
    ``count`` is the token counter for a ``TokenBudget`` built without one; when it is
    not given either, LiteLLM's counter for ``model`` is used.
    """
    if isinstance(window, LastTurns):
        return window.select(stored, new)
    if isinstance(window, TokenBudget):
        if count is None and model is not None:
            from .llm import litellm_token_counter

            count = litellm_token_counter(model)
        return window.select(stored, new, count)
    history = _history(stored)
    complete = list(history.newest(stored))
    complete.reverse()
    if window is None:
        return _selection(history, stored, complete, new)
    if not callable(window):
        raise ConfigurationError(
            f"history must be LastTurns, TokenBudget, a function or None; got {window!r}"
        )
    offered: list[Msg] = []
    system = history.system
    if system is not None or history.summary is not None:
        head = _head(system, history.summary)[0]
        if system is not None and "meta" in system:
            head["meta"] = dict(system["meta"])
        offered.append(head)
    offered.extend(dict(message) for turn in complete for message in turn.messages)
    chosen = window(offered)
    name = getattr(window, "__qualname__", repr(window))
    if not isinstance(chosen, list) or not all(isinstance(m, dict) for m in chosen):
        raise ConfigurationError(
            f"the history window {name} must return a list of message dicts, "
            f"got {type(chosen).__name__}"
        )
    messages = [*[_send_form(message) for message in chosen], *_new_turn(new)]
    problem = check_request(messages)
    if problem is not None:
        raise ConfigurationError(
            f"the history window {name} returned messages that are not a valid request: {problem}"
        )
    return Selection(messages)


def output_tokens(settings: Mapping[str, Any]) -> int | None:
    """The reply's token limit that model settings ask for (``max_completion_tokens``
    or ``max_tokens``), if any."""
    value = settings.get("max_completion_tokens") or settings.get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_STATED_LIMIT = lazy_compile(
    r"maximum context length is (\d+) tokens"  # OpenAI, vLLM
    r"|available context size \((\d+) tokens\)"  # llama.cpp
)
_STATED_PROMPT = lazy_compile(
    r"(\d+) in the messages"  # OpenAI, vLLM: "you requested N tokens (M in the messages, ...)"
    r"|messages resulted in (\d+) tokens"  # OpenAI
    r"|request \((\d+) tokens\)"  # llama.cpp
)


def stated_window(message: str) -> tuple[int, int | None] | None:
    """The context window a provider's "too long" message states, and the prompt
    tokens it counted if it says (``None`` when the message states no window).

    llama.cpp: "request (2078 tokens) exceeds the available context size (2048
    tokens)"; vLLM and OpenAI: "This model's maximum context length is 2048 tokens.
    However, you requested 2100 tokens (2000 in the messages, 100 in the completion)".
    """
    limit = _STATED_LIMIT.search(message)
    if limit is None:
        return None
    prompt = _STATED_PROMPT.search(message)
    counted = next((int(g) for g in prompt.groups() if g), None) if prompt else None
    return int(next(g for g in limit.groups() if g)), counted


FITTED_MARGIN = 0.9
"""Of a learned window, the share the default window fills when the provider did not
say how many tokens it counted (so the two counters' difference is unknown)."""


def fitted_window(
    limit: int, *, counted: int | None, ours: int | None, output: int | None
) -> TokenBudget | None:
    """The default window fitted to a context window of ``limit`` tokens a provider
    stated (``stated_window``), in the units of our token counter.

    ``counted``/``ours``: the prompt tokens of the refused request as the provider and
    as our counter counted them; their ratio (between 0.5 and 1) converts the limit to
    our units (our counter only approximates the server's tokenizer), else
    ``FITTED_MARGIN`` of it is used. ``output``: the reply's ``max_tokens`` setting,
    kept free (else an eighth of the window: a server such as llama.cpp counts the
    reply in the same window).
    ``None`` when no request can fit.
    """
    # A ratio far off (the count is of something else) is bounded: at most a halving.
    scale = max(0.5, min(1.0, ours / counted)) if counted and ours else FITTED_MARGIN
    budget = math.floor(limit * scale)
    reserve = math.ceil((output if output is not None else limit // 8) * scale)
    if reserve >= budget:
        return None
    return TokenBudget(budget, reserve_output=reserve)


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                kind = part.get("type", "part") if isinstance(part, Mapping) else "part"
                parts.append(f"[{kind}]")
        return " ".join(parts)
    return json.dumps(content, ensure_ascii=False, default=str)


# -- budgets -----------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetLimits:
    """Per-session token and cost limits, and the per-turn model call limit."""

    max_session_tokens: int | None = None
    max_session_cost: float | None = None
    max_model_calls: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_session_tokens", "max_model_calls"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise ConfigurationError(f"{name} must be an int >= 0 or None, got {value!r}")
        cost = self.max_session_cost
        if cost is not None and (
            not isinstance(cost, int | float)
            or isinstance(cost, bool)
            or not math.isfinite(cost)
            or cost < 0
        ):
            raise ConfigurationError(f"max_session_cost must be a number >= 0, got {cost!r}")


def check_budget(
    limits: BudgetLimits,
    *,
    spent_tokens: int,
    spent_cost: float | None,
    model_calls: int = 0,
    next_call_tokens: int = 0,
) -> None:
    """Raise ``BudgetExceededError`` if the next model call must not start.

    ``spent_tokens``/``spent_cost`` are the session's totals so far, this turn's calls
    included (an unknown cost counts as 0); ``model_calls`` is how many calls this turn
    has made; ``next_call_tokens`` an estimate of the next call's prompt, if known.
    The call may start while the totals are below the limits; it is refused once they
    are reached, or when the estimate says it would start past them.
    """
    tokens_limit = limits.max_session_tokens
    if tokens_limit is not None and (
        spent_tokens >= tokens_limit or spent_tokens + next_call_tokens > tokens_limit
    ):
        raise BudgetExceededError(
            f"the session has spent {spent_tokens} tokens"
            + (f" (+{next_call_tokens} for the next call)" if next_call_tokens else "")
            + f"; its limit is {tokens_limit} (max_session_tokens)",
            kind="tokens",
            limit=tokens_limit,
            spent=spent_tokens,
        )
    cost_limit = limits.max_session_cost
    cost = spent_cost or 0.0
    if cost_limit is not None and cost >= cost_limit:
        raise BudgetExceededError(
            f"the session has cost {cost:.6g} USD; its limit is {cost_limit:.6g} "
            "(max_session_cost)",
            kind="cost",
            limit=cost_limit,
            spent=cost,
        )
    calls_limit = limits.max_model_calls
    if calls_limit is not None and model_calls >= calls_limit:
        raise BudgetExceededError(
            f"this turn has made {model_calls} model calls; its limit is {calls_limit} "
            "(max_model_calls: re-asks, tool steps and compaction together)",
            kind="model_calls",
            limit=calls_limit,
            spent=model_calls,
        )


_COMPACTION = frozenset(
    {"CompactionPlan", "Summarize", "apply_summary", "plan_compaction", "summary_request_messages"}
)


def __getattr__(name: str) -> Any:
    # Compaction is defined in ``_compaction``, imported by the first ``Summarize`` (or
    # the first import of one of these names): a turn without it does not load it.
    if name in _COMPACTION:
        from . import _compaction

        return getattr(_compaction, name)
    # LiteLLM's counter and the default window moved to ``llm`` (the only module that
    # imports LiteLLM); their old names here still work.
    if name in ("default_window", "litellm_token_counter"):
        from . import llm

        return getattr(llm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_COMPACTION, "default_window", "litellm_token_counter"})
