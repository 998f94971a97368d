"""Compaction (``Summarize``): what to summarize, the summary call's messages, and the
stored messages with the summary. Imported by the first ``Summarize`` (read as
``agent_session.history.Summarize``): a turn without compaction does not load it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError
from .history import (
    DEFAULT_SUMMARY_INSTRUCTION,
    Msg,
    TokenCounter,
    Turn,
    _active,
    _head,
    _text_of,
    _whole,
)

__all__ = [
    "CompactionPlan",
    "Summarize",
    "apply_summary",
    "plan_compaction",
    "summary_request_messages",
]

_TEXT_LIMIT = 2000
"""Tool arguments and results longer than this are shortened in a summary request."""


@dataclass(frozen=True, kw_only=True)
class Summarize:
    """Compaction: summarize older turns when the history sent grows past a size.

    When the history a request would send (everything after the newest summary)
    counts more than ``when_tokens_over`` tokens, the complete turns before the last
    ``keep_last_turns`` are summarized by ``model`` (the agent's model when ``None``)
    with ``instruction`` as the system message and ``model_settings`` (the agent's
    when ``None``).
    """

    __module__ = "agent_session.history"

    when_tokens_over: int
    keep_last_turns: int = 2
    model: str | None = None
    model_settings: Mapping[str, Any] | None = None
    instruction: str = DEFAULT_SUMMARY_INSTRUCTION
    counter: TokenCounter | None = field(default=None, compare=False)
    """Counts the history against ``when_tokens_over``; by default the history window's
    counter (a ``TokenBudget`` built with one), else LiteLLM's for the agent's model."""

    def __post_init__(self) -> None:
        if self.counter is not None and not callable(self.counter):
            raise ConfigurationError("Summarize: counter must be a function of a message list")
        for name in ("when_tokens_over", "keep_last_turns"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigurationError(f"Summarize: {name} must be an int >= 0, got {value!r}")
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ConfigurationError(f"Summarize: model must be a model name, got {self.model!r}")
        if self.model_settings is not None and not isinstance(self.model_settings, Mapping):
            raise ConfigurationError("Summarize: model_settings must be a dict")
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise ConfigurationError("Summarize: instruction must be a non-empty string")


@dataclass(frozen=True)
class CompactionPlan:
    """Which stored messages a new summary covers: ``messages[start:end]``.

    ``start`` is the previous summary's index (its text is carried into the new one)
    or the first message after the system message; ``end`` is a turn boundary, where
    the summary message goes. ``length`` is the number of stored messages the plan
    was made for, so it is never applied to another list.
    """

    __module__ = "agent_session.history"

    start: int
    end: int
    length: int
    previous_summary: str | None
    turns: tuple[Turn, ...]
    """The turns to summarize (complete, or malformed ones in the middle)."""
    tokens: int
    """The size counted against ``when_tokens_over``."""
    instruction: str

    @property
    def covers(self) -> int:
        return self.end - self.start


def plan_compaction(
    messages: Sequence[Msg], summarize: Summarize, count_tokens: TokenCounter
) -> CompactionPlan | None:
    """What to summarize now, or ``None`` when the history is small enough or all kept.

    Counts the history a request would send (after the newest summary, without the
    new turn). Never cuts inside a turn; the newest ``keep_last_turns`` complete turns,
    and an unfinished turn at the end, stay verbatim. A malformed turn in the middle is
    summarized as text like the others, so it never blocks compaction.
    """
    system, summary, turns = _active(messages)
    tokens = count_tokens([*_head(system, summary), *_whole([t for t in turns if t.complete])])
    if tokens <= summarize.when_tokens_over:
        return None
    keep_from = len(turns)
    while keep_from > 0 and not turns[keep_from - 1].complete:
        keep_from -= 1  # an unfinished turn at the end is never summarized
    kept = 0
    while keep_from > 0 and kept < summarize.keep_last_turns:
        keep_from -= 1
        if turns[keep_from].complete:
            kept += 1
    covered = tuple(turns[:keep_from])
    if not any(turn.complete for turn in covered):
        return None
    # The new summary covers the previous one (its text carried over) or the beginning.
    first = 0 if system is None else 1
    start = summary.start if summary is not None else first
    return CompactionPlan(
        start=start,
        end=covered[-1].end,
        length=len(messages),
        previous_summary=None if summary is None else _text_of(summary.messages[0].get("content")),
        turns=covered,
        tokens=tokens,
        instruction=summarize.instruction,
    )


def _short(text: str) -> str:
    if len(text) <= _TEXT_LIMIT:
        return text
    return f"{text[:_TEXT_LIMIT]}... ({len(text) - _TEXT_LIMIT} more characters)"


def _render_turn(turn: Turn) -> list[str]:
    lines = []
    for message in turn.messages:
        role = message.get("role")
        text = _text_of(message.get("content"))
        if role == "user":
            lines.append(f"User: {text}")
        elif role == "assistant":
            if text:
                lines.append(f"Assistant: {text}")
            for call in message.get("tool_calls") or []:
                function = (call.get("function") if isinstance(call, Mapping) else None) or {}
                name = function.get("name", "?")
                arguments = _short(str(function.get("arguments", "")))
                lines.append(f"Assistant called {name}({arguments})")
        elif role == "tool":
            name = message.get("name") or message.get("tool_call_id") or "tool"
            lines.append(f"Result of {name}: {_short(text)}")
        else:
            lines.append(f"{str(role).capitalize()}: {text}")
    return lines


def summary_request_messages(plan: CompactionPlan) -> list[Msg]:
    """The messages of the summary call: the instruction, then the covered history as text.

    Tool calls and results are written as lines (long ones shortened), so the
    request carries no tool messages and needs no tool definitions.
    """
    sections = []
    if plan.previous_summary is not None:
        sections.append(f"Previous summary:\n{plan.previous_summary}")
    lines = [line for turn in plan.turns for line in _render_turn(turn)]
    sections.append("Conversation to summarize:\n" + "\n".join(lines))
    return [
        {"role": "system", "content": plan.instruction},
        {"role": "user", "content": "\n\n".join(sections)},
    ]


def apply_summary(
    messages: Sequence[Msg],
    plan: CompactionPlan,
    summary_text: str,
    meta: Mapping[str, Any] | None = None,
) -> list[Msg]:
    """The stored messages with the summary inserted at ``plan.end``; nothing removed.

    ``meta`` is what the flow knows about the summary call (``created_at``, ``model``,
    ``usage``, ``cost``); ``meta.summary.covers`` is added. ``messages`` is not changed.
    """
    if len(messages) != plan.length:
        raise ValueError(
            f"the compaction plan was made for {plan.length} messages, not {len(messages)}"
        )
    summary: Msg = {
        "role": "system",
        "content": summary_text,
        "meta": {**(meta or {}), "summary": {"covers": plan.covers}},
    }
    return [*messages[: plan.end], summary, *messages[plan.end :]]
