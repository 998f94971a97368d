"""History windows, compaction planning and budget checks (pure functions, no database).

The property-based tests run with ``derandomize=True`` and no example database: every
run (and CI) checks the same examples, and nothing is written to the working tree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_session import (
    AgentSessionError,
    BudgetExceededError,
    ConfigurationError,
    LastTurns,
    Summarize,
    TokenBudget,
)
from agent_session.history import (
    SUMMARY_HEADER,
    BudgetLimits,
    CompactionPlan,
    Selection,
    apply_summary,
    check_budget,
    check_request,
    default_window,
    is_summary,
    litellm_token_counter,
    plan_compaction,
    select_messages,
    split_turns,
    summary_request_messages,
)

DATA = Path(__file__).parent / "data"
Msg = dict[str, Any]

PROPERTIES = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- building histories --------------------------------------------------------------


def system(text: str = "You are helpful.") -> Msg:
    return {"role": "system", "content": text}


def user(text: str) -> Msg:
    return {"role": "user", "content": text, "meta": {"created_at": "2026-08-09T12:00:00Z"}}


def reply(text: str) -> Msg:
    return {"role": "assistant", "content": text, "meta": {"model": "m", "finish_reason": "stop"}}


def step(ids: list[str]) -> list[Msg]:
    """An assistant message calling one tool per id, then the results in call order."""
    calls = [
        {
            "id": i,
            "type": "function",
            "function": {"name": "lookup", "arguments": f'{{"q": "{i}"}}'},
        }
        for i in ids
    ]
    results = [
        {"role": "tool", "content": f"result of {i}", "name": "lookup", "tool_call_id": i}
        for i in ids
    ]
    return [{"role": "assistant", "content": None, "tool_calls": calls}, *results]


def turn(text: str, steps: Sequence[list[str]] = ()) -> list[Msg]:
    messages = [user(text)]
    for ids in steps:
        messages += step(ids)
    return [*messages, reply(f"answer to {text}")]


def summary(text: str, covers: int) -> Msg:
    return {"role": "system", "content": text, "meta": {"summary": {"covers": covers}}}


def sent(messages: list[Msg]) -> list[Msg]:
    return [{k: v for k, v in m.items() if k != "meta"} for m in messages]


def count(messages: list[Msg]) -> int:
    """A deterministic stand-in for a token counter: a constant per call, as LiteLLM's."""
    return 3 + sum(4 + len(json.dumps(m, sort_keys=True)) // 8 for m in messages)


# -- turns -------------------------------------------------------------------------


def test_split_turns_of_the_tool_calls_golden_file() -> None:
    stored = json.loads((DATA / "context_v2_tool_calls.json").read_text(encoding="utf-8"))
    head, turns = split_turns(stored["messages"])

    assert head == stored["messages"][0]
    assert [(t.start, t.end, t.complete) for t in turns] == [(1, 5, True)]
    assert [m["role"] for m in turns[0].messages] == ["user", "assistant", "tool", "assistant"]


def test_split_turns_without_system_message_and_with_a_summary() -> None:
    messages = [*turn("a"), summary("about a", 2), *turn("b", [["c1", "c2"], ["c3"]])]
    head, turns = split_turns(messages)

    assert head is None
    assert [(t.start, t.is_summary, t.complete) for t in turns] == [
        (0, False, True),
        (2, True, False),
        (3, False, True),
    ]


def test_a_history_cut_off_mid_turn_is_split_and_never_sent() -> None:
    """Stored histories never end mid-turn (a paused turn is kept apart); should one
    come in, its unfinished turn is marked incomplete and no window sends it."""
    cut = [system(), *turn("a"), user("b"), *step(["c1", "c2"])[:2]]  # one result missing
    head, turns = split_turns(cut)
    assert head is not None
    assert [t.complete for t in turns] == [True, False]

    new = [user("c")]
    for window in (None, LastTurns(5), TokenBudget(10_000, counter=count)):
        selection = select_messages(window, cut, new)
        assert check_request(selection.messages) is None
        assert selection.messages == sent([system(), *turn("a"), *new])


def test_a_system_message_in_the_middle_is_never_sent() -> None:
    stored = [system(), *turn("a"), system("stray"), *turn("b")]
    _, turns = split_turns(stored)
    assert [(t.start, t.complete, t.is_summary) for t in turns] == [
        (1, True, False),
        (3, False, False),
        (4, True, False),
    ]
    selection = select_messages(LastTurns(5), stored, [user("c")])
    assert selection.messages == sent([system(), *turn("a"), *turn("b"), user("c")])
    not_a_summary = {"role": "user", "content": "x", "meta": {"summary": {"covers": 1}}}
    assert not is_summary(not_a_summary)


def test_the_default_window_sends_exactly_the_complete_turns() -> None:
    """Without a window, every complete turn after the newest summary is sent, and
    only those: each way a turn can be incomplete leaves out that turn alone."""
    calls = step(["c1", "c2"])
    broken = {
        "no reply": [user("x"), *calls],
        "a result missing": [user("x"), *calls[:2], reply("r")],
        "a result without its call": [user("x"), calls[1], reply("r")],
        "a result twice": [user("x"), *calls, calls[2], reply("r")],
        "calls without ids": [user("x"), {**calls[0], "tool_calls": [{}]}, reply("r")],
        "an unknown role": [user("x"), {"role": "developer", "content": "d"}],
        "a tool result first": [calls[1], user("x"), reply("r")],
    }
    new = [user("new")]
    for name, bad in broken.items():
        for stored in (
            [system(), *turn("a"), *bad, *turn("b", [["c3"]])],
            [*turn("a"), summary("about a", 2), *bad, *turn("b")],
            [*bad, *turn("b")],
        ):
            _, segments = split_turns(stored)
            first = _first_after_summary(stored)
            complete = [t for t in segments if t.complete and t.start >= first]
            selection = select_messages(None, stored, new)
            body = [m for t in complete for m in sent(list(t.messages))]
            assert selection.messages[-1] == sent(new)[0], name
            assert selection.messages[len(selection.messages) - 1 - len(body) : -1] == body, name
            assert selection.turns == len(complete), name
            assert selection.left_out == len(stored) - first - len(body), name
    whole = [system(), *turn("a"), *turn("b", [["c1", "c2"], ["c3"]])]
    selection = select_messages(None, whole, new)
    assert (selection.messages, selection.turns, selection.left_out) == (sent([*whole, *new]), 2, 0)


def test_messages_before_the_first_user_message_are_not_a_turn() -> None:
    messages = [system(), reply("Hello, how can I help?"), *turn("a")]
    _, turns = split_turns(messages)
    assert [(t.start, t.complete) for t in turns] == [(1, False), (2, True)]
    assert select_messages(None, messages, [user("b")]).messages == sent(
        [system(), *turn("a"), user("b")]
    )


# -- the request invariants ----------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        ([], "no messages"),
        ([system()], "does not start"),
        ([user("a"), system()], "only the first message"),
        ([*turn("a"), reply("again")], "does not end with the new user message"),
        ([reply("cut"), user("b")], "does not start"),
        ([*step(["c1"])[1:], user("b")], "does not start"),
        ([user("a"), *step(["c1", "c2"])[:2], reply("x"), user("b")], "without their results"),
        ([user("a"), *step(["c1"]), step(["c2"])[1], reply("x"), user("b")], "answers no open"),
        ([user("a"), step(["c1"])[1], reply("x"), user("b")], "without its call"),
        ([user("a"), *step(["c1"]), user("b")], "is cut"),
        ([user("a"), {"role": "developer", "content": "x"}], "unknown role"),
    ],
)
def test_check_request_says_what_is_wrong(messages: list[Msg], reason: str) -> None:
    problem = check_request(messages)
    assert problem is not None
    assert reason in problem


def test_check_request_accepts_a_tool_loop_and_a_reask_in_progress() -> None:
    history = [system(), *turn("a", [["c1", "c2"]])]
    assert check_request([*history, user("b")]) is None
    assert check_request([*history, user("b"), *step(["c3"])]) is None
    assert check_request([*history, user("b"), reply("not json"), user("fix it")]) is None


# -- windows -----------------------------------------------------------------------


HISTORY = [system(), *turn("a"), *turn("b", [["c1", "c2"], ["c3"]]), *turn("c")]


def test_last_turns_keeps_the_system_message_and_the_newest_turns() -> None:
    new = [user("d")]
    assert LastTurns(1).select(HISTORY, new).messages == sent([system(), *turn("c"), *new])
    two = LastTurns(2).select(HISTORY, new)
    assert two.messages == sent([system(), *turn("b", [["c1", "c2"], ["c3"]]), *turn("c"), *new])
    assert (two.turns, two.left_out) == (2, 2)
    assert LastTurns(0).select(HISTORY, new).messages == sent([system(), *new])
    for more in (3, 4, 5, 9):
        assert LastTurns(more).select(HISTORY, new).messages == sent([*HISTORY, *new])


def test_the_new_turn_is_sent_whole_during_a_tool_loop() -> None:
    new = [user("d"), *step(["c9"])]
    selection = LastTurns(1).select(HISTORY, new)
    assert selection.messages == sent([system(), *turn("c"), *new])
    assert check_request(selection.messages) is None


def test_a_summary_is_sent_with_the_system_message_and_the_turns_after_it() -> None:
    stored = [system("Be brief."), *turn("a"), summary("They said a.", 2), *turn("b")]
    selection = select_messages(None, stored, [user("c")])
    assert selection.messages == [
        {"role": "system", "content": f"Be brief.\n\n{SUMMARY_HEADER}\nThey said a."},
        *sent([*turn("b"), user("c")]),
    ]
    alone = select_messages(LastTurns(3), stored[1:], [user("c")]).messages
    assert alone[0] == {"role": "system", "content": f"{SUMMARY_HEADER}\nThey said a."}
    assert check_request(alone) is None


def test_token_budget_drops_whole_oldest_turns() -> None:
    new = [user("d")]
    everything = count(sent([*HISTORY, *new]))
    assert TokenBudget(everything, counter=count).select(HISTORY, new).left_out == 0

    without_c = count(sent([system(), *new]))
    only_c = count(sent([system(), *turn("c"), *new]))
    budget = TokenBudget(only_c + 5, reserve_output=5, counter=count)
    selection = budget.select(HISTORY, new)
    assert selection.messages == sent([system(), *turn("c"), *new])
    assert selection.tokens == only_c <= budget.limit
    assert (selection.turns, selection.left_out) == (1, 9)
    assert without_c < only_c


def test_token_budget_reports_when_the_newest_turn_does_not_fit() -> None:
    new = [user("d" * 400)]
    selection = TokenBudget(50, reserve_output=10, counter=count).select(HISTORY, new)
    assert selection.overflow is not None
    assert "the window allows 40" in selection.overflow
    assert selection.messages == sent([system(), *new])
    assert selection.tokens is not None and selection.tokens > 40


def test_token_budget_counts_with_the_counter_given_to_select() -> None:
    calls: list[int] = []

    def counting(messages: list[Msg]) -> int:
        calls.append(len(messages))
        return count(messages)

    selection = select_messages(TokenBudget(10_000), HISTORY, [user("d")], count=counting)
    assert (selection.turns, selection.left_out) == (3, 0)
    assert calls  # the counter of the call was used
    with pytest.raises(ConfigurationError, match="token counter"):
        select_messages(TokenBudget(10_000), HISTORY, [user("d")])


def test_a_callable_window_gets_the_history_and_its_result_is_checked() -> None:
    seen: list[list[Msg]] = []

    def last_user_turns(history: list[Msg]) -> list[Msg]:
        seen.append(history)
        return [history[0], *history[-2:]]

    selection = select_messages(last_user_turns, HISTORY, [user("d")])
    assert selection.messages == sent([system(), *turn("c"), user("d")])
    assert seen[0] == HISTORY  # copies of the stored messages, meta included
    assert seen[0][1] is not HISTORY[1]

    def drops_a_result(history: list[Msg]) -> list[Msg]:
        return [m for m in history if m.get("tool_call_id") != "c2"]

    with pytest.raises(ConfigurationError, match=r"drops_a_result.*without their results"):
        select_messages(drops_a_result, HISTORY, [user("d")])
    with pytest.raises(ConfigurationError, match="must return a list"):
        select_messages(lambda history: None, HISTORY, [user("d")])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="history must be"):
        select_messages(42, HISTORY, [user("d")])  # type: ignore[arg-type]


def test_the_new_turn_must_start_with_its_user_message() -> None:
    with pytest.raises(ValueError, match="start with its user message"):
        LastTurns(1).select(HISTORY, [reply("x")])


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: LastTurns(-1), "n must be"),
        (lambda: LastTurns(True), "n must be"),
        (lambda: TokenBudget(0), "leaves no room"),
        (lambda: TokenBudget(100, reserve_output=100), "leaves no room"),
        (lambda: TokenBudget(-5), "max_tokens must be"),
        (lambda: TokenBudget(100, counter=3), "counter must be"),  # type: ignore[arg-type]
        (lambda: Summarize(when_tokens_over=-1), "when_tokens_over must be"),
        (lambda: Summarize(when_tokens_over=10, keep_last_turns=1.5), "keep_last_turns"),  # type: ignore[arg-type]
        (lambda: Summarize(when_tokens_over=10, model=""), "model must be"),
        (lambda: Summarize(when_tokens_over=10, instruction=" "), "instruction must be"),
        (lambda: Summarize(when_tokens_over=10, model_settings=[]), "model_settings"),  # type: ignore[arg-type]
        (lambda: BudgetLimits(max_session_tokens=-1), "max_session_tokens"),
        (lambda: BudgetLimits(max_session_cost=float("nan")), "max_session_cost"),
        (lambda: BudgetLimits(max_model_calls="3"), "max_model_calls"),  # type: ignore[arg-type]
    ],
)
def test_bad_configuration_is_refused(build: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        build()


def test_default_window_uses_the_input_limit_litellm_knows() -> None:
    known = default_window("openai/gpt-4o-mini")
    assert isinstance(known, TokenBudget)
    assert known.max_tokens > 100_000
    assert known.reserve_output == 0
    assert default_window("openai/a-local-model-nobody-knows") is None
    assert default_window("openai/gpt-4o-mini") == known


def test_token_budget_counts_with_litellm_for_the_model() -> None:
    counter = litellm_token_counter("openai/gpt-4o-mini")
    new = [user("d")]
    only_c = counter(sent([system(), *turn("c"), *new]))
    selection = select_messages(TokenBudget(only_c), HISTORY, new, model="openai/gpt-4o-mini")
    assert selection.messages == sent([system(), *turn("c"), *new])
    assert selection.tokens == only_c


def test_litellm_token_counter_counts_messages_and_tools() -> None:
    counter = litellm_token_counter("openai/gpt-4o-mini")
    short = counter(sent([system(), user("hi")]))
    longer = counter(sent(HISTORY))
    assert 0 < short < longer
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    with_tools = litellm_token_counter("openai/gpt-4o-mini", tools=[tool])
    assert with_tools(sent(HISTORY)) > longer


# -- compaction ------------------------------------------------------------------------


def test_plan_compaction_covers_the_older_turns_and_keeps_the_newest() -> None:
    summarize = Summarize(when_tokens_over=10, keep_last_turns=1)
    assert plan_compaction(HISTORY, Summarize(when_tokens_over=10_000), count) is None

    plan = plan_compaction(HISTORY, summarize, count)
    assert isinstance(plan, CompactionPlan)
    assert (plan.start, plan.end, plan.covers, plan.previous_summary) == (1, 10, 9, None)
    assert [t.start for t in plan.turns] == [1, 3]
    assert plan.tokens == count(sent(HISTORY))

    request = summary_request_messages(plan)
    assert request[0] == {"role": "system", "content": summarize.instruction}
    text = request[1]["content"]
    assert "User: a\nAssistant: answer to a\nUser: b\n" in text
    assert 'Assistant called lookup({"q": "c1"})' in text
    assert "Result of lookup: result of c3" in text
    assert "answer to c" not in text
    assert check_request(request) is None

    stored = apply_summary(HISTORY, plan, "They asked a and b.", {"model": "small"})
    assert stored[10] == {
        "role": "system",
        "content": "They asked a and b.",
        "meta": {"model": "small", "summary": {"covers": 9}},
    }
    assert [*stored[:10], *stored[11:]] == HISTORY
    after = select_messages(None, stored, [user("d")]).messages
    assert after == [
        {"role": "system", "content": f"You are helpful.\n\n{SUMMARY_HEADER}\nThey asked a and b."},
        *sent([*turn("c"), user("d")]),
    ]


def test_a_new_summary_covers_from_the_previous_one() -> None:
    stored = [system(), *turn("a"), summary("They said a.", 2), *turn("b"), *turn("c")]
    plan = plan_compaction(stored, Summarize(when_tokens_over=0, keep_last_turns=1), count)
    assert plan is not None
    assert (plan.start, plan.end, plan.previous_summary) == (3, 6, "They said a.")
    text = summary_request_messages(plan)[1]["content"]
    assert text.startswith("Previous summary:\nThey said a.\n\nConversation to summarize:\nUser: b")
    new = apply_summary(stored, plan, "They said a and b.")
    assert new[6]["meta"] == {"summary": {"covers": 3}}
    assert [m for i, m in enumerate(new) if i != 6] == stored


def test_nothing_to_compact_when_every_turn_is_kept() -> None:
    summarize = Summarize(when_tokens_over=0, keep_last_turns=3)
    assert plan_compaction(HISTORY, summarize, count) is None
    assert plan_compaction([system()], Summarize(when_tokens_over=0), count) is None


def test_compaction_is_not_blocked_by_a_malformed_turn() -> None:
    """An orphaned call in an old turn is summarized as text; an unfinished last turn
    is never summarized."""
    orphan = [user("x"), *step(["c1", "c2"])[:2], reply("gave up")]
    stored = [system(), *orphan, *turn("a"), *turn("b"), user("y"), *step(["c5"])[:1]]
    plan = plan_compaction(stored, Summarize(when_tokens_over=0, keep_last_turns=1), count)
    assert plan is not None
    assert [t.start for t in plan.turns] == [1, 5]
    assert plan.end == 7
    assert "Assistant called lookup" in summary_request_messages(plan)[1]["content"]

    kept_none = plan_compaction(stored, Summarize(when_tokens_over=0, keep_last_turns=0), count)
    assert kept_none is not None and kept_none.end == 9  # the unfinished turn stays


def test_a_plan_applies_only_to_the_messages_it_was_made_for() -> None:
    plan = plan_compaction(HISTORY, Summarize(when_tokens_over=0, keep_last_turns=1), count)
    assert plan is not None
    with pytest.raises(ValueError, match="made for 12 messages, not 13"):
        apply_summary([*HISTORY, user("late")], plan, "s")


def test_long_tool_results_are_shortened_in_the_summary_request() -> None:
    big = turn("a", [["c1"]])
    big[2] = {**big[2], "content": "z" * 5000}
    plan = plan_compaction(
        [*big, *turn("b")], Summarize(when_tokens_over=0, keep_last_turns=1), count
    )
    assert plan is not None
    text = summary_request_messages(plan)[1]["content"]
    assert "(3000 more characters)" in text
    assert "z" * 2001 not in text


# -- budgets -----------------------------------------------------------------------


def test_check_budget_lets_calls_start_below_the_limits() -> None:
    limits = BudgetLimits(max_session_tokens=1000, max_session_cost=0.5, max_model_calls=3)
    check_budget(limits, spent_tokens=999, spent_cost=0.49, model_calls=2)
    check_budget(limits, spent_tokens=900, spent_cost=None, next_call_tokens=100)
    check_budget(BudgetLimits(), spent_tokens=10**9, spent_cost=10.0, model_calls=99)


@pytest.mark.parametrize(
    ("spent", "kind", "limit", "amount"),
    [
        ({"spent_tokens": 1000, "spent_cost": 0.0}, "tokens", 1000, 1000),
        ({"spent_tokens": 901, "spent_cost": 0.0, "next_call_tokens": 100}, "tokens", 1000, 901),
        ({"spent_tokens": 0, "spent_cost": 0.5}, "cost", 0.5, 0.5),
        ({"spent_tokens": 0, "spent_cost": None, "model_calls": 3}, "model_calls", 3, 3),
    ],
)
def test_check_budget_refuses_the_call_that_would_start_past_a_limit(
    spent: dict[str, Any], kind: str, limit: float, amount: float
) -> None:
    limits = BudgetLimits(max_session_tokens=1000, max_session_cost=0.5, max_model_calls=3)
    with pytest.raises(BudgetExceededError) as raised:
        check_budget(limits, **spent)
    error = raised.value
    assert isinstance(error, AgentSessionError)
    assert (error.kind, error.limit, error.spent) == (kind, limit, amount)
    assert str(limit) in str(error) or f"{limit:.6g}" in str(error)


# -- properties over random histories ---------------------------------------------------


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Msg], list[Msg]]:
    """A stored history (system message or not; plain turns, tool turns with several
    calls per step and several steps; summaries between turns; sometimes a turn cut
    off at the end) and a new turn, which may be inside its tool loop."""
    ids = iter(range(10**6))
    messages: list[Msg] = [system()] if draw(st.booleans()) else []
    segment_start = len(messages)
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["plain", "tools", "summary"]))
        if kind == "summary" and len(messages) > segment_start:
            messages.append(summary(f"summary {next(ids)}", len(messages) - segment_start))
            segment_start = len(messages) - 1
            continue
        steps = []
        if kind == "tools":
            sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
            steps = [[f"call_{next(ids)}" for _ in range(size)] for size in sizes]
        words = draw(st.text(alphabet="abc xyz", min_size=0, max_size=40))
        messages += turn(f"{next(ids)} {words}", steps)
    if draw(st.integers(0, 4)) == 0:
        # Cut off inside a turn: stored histories never are, but nothing may break.
        messages += [user(f"cut {next(ids)}"), *step([f"call_{next(ids)}", "x"])[:2]]
    new = [user(f"new {next(ids)}")]
    for size in draw(st.lists(st.integers(1, 3), max_size=2)):
        new += step([f"call_{next(ids)}" for _ in range(size)])
    return messages, new


def _active_turns(messages: list[Msg]) -> list[list[Msg]]:
    _, turns = split_turns(messages)
    after = turns
    for position, segment in enumerate(turns):
        if segment.is_summary:
            after = turns[position + 1 :]
    return [sent(list(t.messages)) for t in after if t.complete]


def _first_after_summary(messages: list[Msg]) -> int:
    first = 1 if messages and messages[0]["role"] == "system" and not is_summary(messages[0]) else 0
    for position in range(len(messages) - 1, first - 1, -1):
        if is_summary(messages[position]):
            return position + 1
    return first


def _check_window(stored: list[Msg], new: list[Msg], selection: Selection) -> list[list[Msg]]:
    """The invariants every window keeps; returns the turns it sent, in order."""
    messages = selection.messages
    assert check_request(messages) is None, check_request(messages)
    assert messages[len(messages) - len(new) :] == sent(new)  # the newest turn, whole, last
    if stored and stored[0]["role"] == "system":
        assert messages[0]["content"].startswith(stored[0]["content"])
    body = messages[1 if messages[0]["role"] == "system" else 0 : len(messages) - len(new)]
    turns = _active_turns(stored)
    # What is sent is the newest turns, in stored order: a suffix of the turns.
    kept = 0
    while sum(len(t) for t in turns[len(turns) - kept :]) < len(body):
        kept += 1
    chosen = turns[len(turns) - kept :] if kept else []
    assert [m for t in chosen for m in t] == body
    if selection.turns is not None:
        assert selection.turns == kept
        after = len(stored) - _first_after_summary(stored)
        assert selection.left_out == after - len(body)
    return chosen


@PROPERTIES
@given(histories())
def test_split_turns_cuts_the_messages_into_turns(history: tuple[list[Msg], list[Msg]]) -> None:
    stored, _ = history
    head, turns = split_turns(stored)
    first = 0 if head is None else 1
    assert [m for t in turns for m in t.messages] == stored[first:]
    assert [t.start for t in turns] == [first, *[t.end for t in turns]][: len(turns)]
    for t in turns:
        roles = [m["role"] for m in t.messages]
        assert t.is_summary or roles.count("user") <= 1
        assert "user" not in roles[1:] and ("system" not in roles or len(roles) == 1)
        if t.complete:
            assert check_request([*sent(list(t.messages)), user("next")]) is None


@PROPERTIES
@given(histories(), st.integers(0, 10))
def test_every_last_turns_window_is_a_valid_request(
    history: tuple[list[Msg], list[Msg]], n: int
) -> None:
    stored, new = history
    chosen = _check_window(stored, new, LastTurns(n).select(stored, new))
    assert len(chosen) == min(n, len(_active_turns(stored)))


@PROPERTIES
@given(histories(), st.integers(1, 3000), st.integers(0, 200))
def test_every_token_budget_window_is_a_valid_request_that_fits(
    history: tuple[list[Msg], list[Msg]], max_tokens: int, reserve: int
) -> None:
    stored, new = history
    budget = TokenBudget(max_tokens + reserve, reserve_output=reserve, counter=count)
    selection = budget.select(stored, new)
    assert selection.tokens == count(selection.messages)
    if selection.overflow is not None:
        assert selection.tokens > max_tokens
        assert "alone needs" in selection.overflow
        return
    assert selection.tokens <= max_tokens
    chosen = _check_window(stored, new, selection)
    turns = _active_turns(stored)
    if len(chosen) < len(turns):
        # The window is as large as the budget allows: the next older turn does not fit.
        older = turns[len(turns) - len(chosen) - 1]
        body_size = sum(len(t) for t in chosen)
        head = selection.messages[: len(selection.messages) - len(new) - body_size]
        larger = [*head, *older, *[m for t in chosen for m in t], *sent(new)]
        assert count(larger) > max_tokens


@PROPERTIES
@given(histories())
def test_the_default_and_callable_windows_are_valid_requests(
    history: tuple[list[Msg], list[Msg]],
) -> None:
    stored, new = history
    everything = _check_window(stored, new, select_messages(None, stored, new))
    assert len(everything) == len(_active_turns(stored))
    same = select_messages(lambda h: h, stored, new)
    assert same.messages == select_messages(None, stored, new).messages


@PROPERTIES
@given(histories(), st.integers(0, 4), st.integers(0, 400))
def test_compaction_never_splits_a_turn_and_keeps_every_message(
    history: tuple[list[Msg], list[Msg]], keep: int, threshold: int
) -> None:
    stored, new = history
    summarize = Summarize(when_tokens_over=threshold, keep_last_turns=keep)
    plan = plan_compaction(stored, summarize, count)
    if plan is None:
        return
    _, segments = split_turns(stored)
    boundaries = {s.start for s in segments} | {len(stored)}
    assert plan.start in boundaries and plan.end in boundaries
    assert plan.tokens > threshold
    assert all(not t.is_summary and plan.start <= t.start < t.end <= plan.end for t in plan.turns)
    newest = [s for s in segments if s.complete][-keep:] if keep else []
    assert all(s.start >= plan.end for s in newest)
    if not segments[-1].complete:
        assert segments[-1].start >= plan.end  # an unfinished turn is never summarized

    compacted = apply_summary(stored, plan, "the summary", {"model": "small"})
    assert is_summary(compacted[plan.end])
    assert compacted[: plan.end] + compacted[plan.end + 1 :] == stored
    after = select_messages(None, compacted, new)
    _check_window(compacted, new, after)
    assert SUMMARY_HEADER in after.messages[0]["content"]
    kept_turns = [s for s in segments if s.complete and s.start >= plan.end]
    assert after.messages[1 : len(after.messages) - len(new)] == [
        m for t in kept_turns for m in sent(list(t.messages))
    ]
    # Every window on the compacted history is still a valid request.
    _check_window(compacted, new, LastTurns(keep).select(compacted, new))
