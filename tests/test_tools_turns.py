"""Tool turns without a database: the loop, errors sent back, limits, approvals.

``Agent.run``/``arun`` (the ``run`` fixture runs each test both ways) drive the same
``model_flow`` as the sessions, with a handler that runs tools in order (sync) or
concurrently (async).
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from pydantic import BaseModel

from agent_session import (
    Agent,
    ConfigurationError,
    Denied,
    InputValidationError,
    ModelCallError,
    Tool,
    ToolCall,
    ToolContext,
    ToolExecutionError,
    ToolLoopError,
    Usage,
    _turn,
)
from agent_session.testing import FunctionModel, TestModel
from support.invariants import check_document, check_history
from support.runner import Run


class Answer(BaseModel):
    answer: str


def get_order(order_id: str) -> dict[str, str]:
    """Look up an order by id."""
    return {"order_id": order_id, "status": "shipped"}


def get_weather(city: str, days: int = 1) -> str:
    """Forecast the weather."""
    return f"sunny in {city} for {days} day(s)"


REFUNDS: list[tuple[str, float, str]] = []


def refund(ctx: ToolContext[dict[str, str]], order_id: str, amount: float) -> str:
    """Refund part of an order."""
    REFUNDS.append((order_id, amount, ctx.tool_call_id))
    return f"refunded {amount} on {order_id} for {ctx.deps['shop']}"


@pytest.fixture(autouse=True)
def no_refunds() -> None:
    REFUNDS.clear()


def _tool_messages(request_messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in request_messages if m["role"] == "tool"]


# -- the loop ---------------------------------------------------------------------------


async def test_a_turn_calls_every_tool_then_answers(run: Run) -> None:
    model = TestModel(cost=0.25)
    agent = Agent(model, output_schema=Answer, tools=[get_order, get_weather])

    result = await run(agent, "Where is my order?")

    assert len(model.requests) == 2
    assert all(r.tools == agent.toolset.definitions for r in model.requests)
    assert isinstance(result.output, Answer)
    assert [c.name for c in result.tool_calls] == ["get_order", "get_weather"]
    assert all(c.status == "ok" for c in result.tool_calls)
    assert result.tool_calls[0].result == {"order_id": "a", "status": "shipped"}
    assert result.pending_approvals == []
    # What was sent the second time: the user message, the calls, the results in order.
    second = model.requests[1].messages
    assert [m["role"] for m in second] == ["user", "assistant", "tool", "tool"]
    assert [m["tool_call_id"] for m in second[2:]] == [c["id"] for c in second[1]["tool_calls"]]
    assert result.messages == [*second, {"role": "assistant", "content": result.text}]
    # Usage and cost of both calls.
    assert result.attempts == 2
    assert result.cost == pytest.approx(0.5)
    first_usage = Usage(prompt_tokens=3, completion_tokens=6, total_tokens=9)
    assert result.usage.total_tokens > first_usage.total_tokens
    stored = result.stored_messages
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "tool", "assistant"]
    check_history(stored, where="result")


async def test_tools_and_no_tools_requests(run: Run) -> None:
    model = TestModel()
    await run(Agent(model), "hi")
    assert model.requests[0].tools is None


def test_bad_tools_are_configuration_errors_when_the_agent_is_built() -> None:
    def bad(*args: Any) -> None:
        """Varargs."""

    with pytest.raises(ConfigurationError, match="args"):
        Agent(TestModel(), tools=[bad])
    with pytest.raises(ConfigurationError, match="two tools"):
        Agent(TestModel(), tools=[get_order, Tool(get_weather, name="get_order")])
    with pytest.raises(ConfigurationError, match="list"):
        Agent(TestModel(), tools="get_order")  # type: ignore[arg-type]
    for steps in (0, -1, True, 2.5):
        with pytest.raises(ConfigurationError, match="max_tool_steps"):
            Agent(TestModel(), tools=[get_order], max_tool_steps=steps)  # type: ignore[arg-type]


async def test_deps_session_key_and_agent_reach_the_tool(run: Run) -> None:
    seen: list[ToolContext[Any]] = []

    def whoami(ctx: ToolContext[Any]) -> str:
        """Who calls."""
        seen.append(ctx)
        return "you"

    deps = object()
    agent = Agent(TestModel(), tools=[whoami])
    await run(agent, "hi", deps=deps)
    assert seen[0].deps is deps and seen[0].agent is agent and seen[0].session_key is None
    assert seen[0].tool_call_id.startswith("call_")


def test_async_tools_of_one_reply_run_concurrently_results_in_call_order() -> None:
    both = asyncio.Event()
    started: list[str] = []

    async def slow(label: str) -> str:
        """Waits for the other call."""
        started.append(label)
        if len(started) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 5)
        if label == "first":
            await asyncio.sleep(0.01)  # finishes last, still answered first
        return label

    model = TestModel(
        replies=[
            [ToolCall("slow", {"label": "first"}), ToolCall("slow", {"label": "second"})],
            "ok",
        ]
    )
    result = asyncio.run(Agent(model, tools=[slow]).arun("go"))
    assert [m["content"] for m in _tool_messages(model.requests[1].messages)] == [
        "first",
        "second",
    ]
    assert [c.result for c in result.tool_calls] == ["first", "second"]


def test_sync_code_runs_the_calls_one_after_the_other() -> None:
    threads: list[int] = []
    order: list[str] = []

    def note(label: str) -> str:
        """Note."""
        threads.append(threading.get_ident())
        order.append(label)
        return label

    model = TestModel(
        replies=[[ToolCall("note", {"label": "a"}), ToolCall("note", {"label": "b"})], "ok"]
    )
    Agent(model, tools=[note]).run("go")
    assert order == ["a", "b"] and set(threads) == {threading.get_ident()}


async def test_mistakes_go_back_to_the_model_as_error_results(run: Run) -> None:
    def explode(n: int) -> int:
        """Fails."""
        raise RuntimeError(f"boom {n}")

    model = TestModel(
        replies=[
            [
                ToolCall("get_order", {"order_id": 5}, id="bad_args"),  # int for str
                ToolCall("nope", {}, id="unknown"),
                ToolCall("explode", {"n": 1}, id="raised"),
                ToolCall("get_order", '{"order_id": "A-', id="cut_off"),
            ],
            "done",
        ]
    )
    result = await run(Agent(model, tools=[get_order, explode]), "go")

    results = {m["tool_call_id"]: m["content"] for m in _tool_messages(model.requests[1].messages)}
    assert "invalid arguments for get_order" in results["bad_args"]
    assert "unknown tool 'nope'" in results["unknown"]
    assert "explode raised RuntimeError: boom 1" in results["raised"]
    assert "not valid JSON" in results["cut_off"]
    assert [c.status for c in result.tool_calls] == ["error"] * 4
    # The cut-off call is replayed with {} and its raw text kept in meta.
    sent_calls = model.requests[1].messages[1]["tool_calls"]
    assert sent_calls[3]["function"]["arguments"] == "{}"
    assistant = result.stored_messages[1]
    assert assistant["meta"]["raw_arguments"] == {"cut_off": '{"order_id": "A-'}
    assert result.output == "done"


async def test_on_error_raise_fails_the_turn(run: Run) -> None:
    def explode() -> None:
        """Fails."""
        raise KeyError("gone")

    model = TestModel(replies=[ToolCall("explode", {}), "never"])
    agent = Agent(model, tools=[Tool(explode, on_error="raise")])
    with pytest.raises(ToolExecutionError, match="explode") as info:
        await run(agent, "go")
    assert isinstance(info.value.__cause__, KeyError)
    assert len(model.requests) == 1


async def test_more_than_max_tool_steps_is_a_tool_loop_error(run: Run) -> None:
    ran: list[int] = []

    def again(n: int) -> int:
        """Again."""
        ran.append(n)
        return n

    model = FunctionModel(lambda messages: ToolCall("again", {"n": len(messages)}))
    agent = Agent(model, tools=[again], max_tool_steps=3)
    with pytest.raises(ToolLoopError, match="max_tool_steps=3") as info:
        await run(agent, "go")
    assert len(model.requests) == 3
    assert len(ran) == 2  # the third reply's calls never run
    assert info.value.max_tool_steps == 3 and info.value.usage.total_tokens > 0


async def test_a_final_reply_at_the_limit_is_fine(run: Run) -> None:
    model = TestModel(replies=[ToolCall("get_order", {"order_id": "1"}), "done"])
    result = await run(Agent(model, tools=[get_order], max_tool_steps=2), "go")
    assert result.output == "done"


async def test_invalid_output_after_tools_is_re_asked_and_not_kept(run: Run) -> None:
    model = TestModel(
        replies=[ToolCall("get_order", {"order_id": "1"}), "not json", '{"answer": "shipped"}']
    )
    result = await run(Agent(model, output_schema=Answer, tools=[get_order]), "go")
    assert result.output == Answer(answer="shipped")
    assert model.requests[2].messages[-2:] == [
        {"role": "assistant", "content": "not json"},
        model.requests[2].messages[-1],
    ]
    assert [m["role"] for m in result.stored_messages] == ["user", "assistant", "tool", "assistant"]
    assert result.stored_messages[-1]["meta"]["attempts"] == 2
    assert result.attempts == 3


async def test_a_failed_call_in_a_tool_turn_is_retried(run: Run) -> None:
    calls = {"n": 0}

    def flaky(messages: list[dict[str, Any]]) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ModelCallError("HTTP 503", model="m", status_code=503)
        if messages[-1]["role"] == "user":
            return ToolCall("get_order", {"order_id": "1"})
        return "done"

    result = await run(Agent(FunctionModel(flaky), tools=[get_order]), "go")
    assert result.output == "done" and result.attempts == 3
    assert result.stored_messages[-1]["meta"]["attempts"] == 2


# -- approvals without a database ---------------------------------------------------------


def _refund_agent(model: Any) -> Agent[Any]:
    return Agent(model, tools=[get_order, Tool(refund, requires_approval=True)])


async def test_run_pauses_for_approval_and_resume_finishes(run: Run) -> None:
    model = TestModel(
        replies=[
            [
                ToolCall("get_order", {"order_id": "42"}, id="look"),
                ToolCall("refund", {"order_id": "42", "amount": 20}, id="pay"),
            ],
            "Refunded.",
        ]
    )
    agent = _refund_agent(model)
    paused = await run(agent, "refund 20 on 42", deps={"shop": "Acme"})

    assert paused.output is None
    assert [(p.tool_call_id, p.tool_name, p.arguments) for p in paused.pending_approvals] == [
        ("pay", "refund", {"order_id": "42", "amount": 20.0})
    ]
    assert [c.tool_call_id for c in paused.tool_calls] == ["look"]  # ran before the pause
    assert REFUNDS == [] and len(model.requests) == 1

    if run.__name__ == "call_sync":
        done = agent.resume(paused, approvals={"pay": True}, deps={"shop": "Acme"})
    else:
        done = await agent.aresume(paused, approvals={"pay": True}, deps={"shop": "Acme"})

    assert done.output == "Refunded." and done.pending_approvals == []
    assert REFUNDS == [("42", 20.0, "pay")]
    sent = model.requests[1].messages
    assert [m.get("tool_call_id") for m in sent if m["role"] == "tool"] == ["look", "pay"]
    assert "refunded 20.0 on 42 for Acme" in sent[-1]["content"]
    check_history(sent, where="resumed request")
    assert [c.tool_call_id for c in done.tool_calls] == ["pay"]
    assert done.usage.total_tokens > paused.usage.total_tokens


@pytest.mark.parametrize("decision", [False, Denied(), Denied("over the limit")])
def test_a_denied_call_tells_the_model(decision: Any) -> None:
    model = TestModel(replies=[ToolCall("refund", {"order_id": "1", "amount": 5}, id="pay"), "ok"])
    agent = _refund_agent(model)
    paused = agent.run("refund", deps={"shop": "Acme"})
    done = agent.resume(paused, approvals={"pay": decision})
    [denial] = _tool_messages(model.requests[1].messages)
    assert denial["content"].startswith("The call to refund was denied by the user")
    if isinstance(decision, Denied) and decision.reason:
        assert decision.reason in denial["content"]
    assert REFUNDS == [] and done.tool_calls[0].status == "denied"


@pytest.mark.parametrize(
    ("approvals", "match"),
    [
        ({}, "missing decisions for \\['pay'\\]"),
        ({"pay": True, "other": True}, "unknown tool_call_id"),
        ({"other": True}, "missing"),
        ({"pay": "yes"}, "True, False or Denied"),
        (["pay"], "must be a dict"),
    ],
)
def test_bad_approvals_are_input_errors_and_nothing_runs(approvals: Any, match: str) -> None:
    model = TestModel(replies=[ToolCall("refund", {"order_id": "1", "amount": 5}, id="pay"), "ok"])
    agent = _refund_agent(model)
    paused = agent.run("refund", deps={"shop": "Acme"})
    with pytest.raises(InputValidationError, match=match) as info:
        agent.resume(paused, approvals=approvals)
    assert info.value.source == "approvals"
    assert REFUNDS == [] and len(model.requests) == 1


def test_resuming_a_result_with_nothing_pending_is_an_input_error() -> None:
    agent = _refund_agent(TestModel(replies=["plain"]))
    result = agent.run("hi")
    with pytest.raises(InputValidationError, match="no pending approvals"):
        agent.resume(result, approvals={})


def test_a_call_with_invalid_arguments_never_waits_for_approval() -> None:
    model = TestModel(replies=[ToolCall("refund", {"order_id": "1"}, id="pay"), "ok"])
    result = _refund_agent(model).run("refund")
    assert result.pending_approvals == [] and result.output == "ok"
    assert "invalid arguments" in result.tool_calls[0].content


def test_a_resumed_turn_may_pause_again() -> None:
    model = TestModel(
        replies=[
            ToolCall("refund", {"order_id": "1", "amount": 5}, id="one"),
            ToolCall("refund", {"order_id": "2", "amount": 6}, id="two"),
            "both done",
        ]
    )
    agent = _refund_agent(model)
    first = agent.run("refund both", deps={"shop": "A"})
    second = agent.resume(first, approvals={"one": True}, deps={"shop": "A"})
    assert [p.tool_call_id for p in second.pending_approvals] == ["two"]
    done = agent.resume(second, approvals={"two": True}, deps={"shop": "A"})
    assert done.output == "both done" and [r[2] for r in REFUNDS] == ["one", "two"]
    roles = [m["role"] for m in done.stored_messages]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]


# -- the invariant check itself --------------------------------------------------------------


def test_the_invariant_check_catches_orphans() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    orphan_call = {"messages": [{"role": "assistant", "tool_calls": [call]}]}
    orphan_result = {"messages": [{"role": "tool", "tool_call_id": "c1", "content": "x"}]}
    bad_arguments = {
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [{**call, "function": {"name": "f", "arguments": "{"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "x"},
        ]
    }
    for document in (orphan_call, orphan_result, bad_arguments):
        with pytest.raises(AssertionError):
            check_document(document, where="test")
    paused = {
        "messages": [],
        "pending": {
            "messages": [{"role": "user", "content": "x"}, orphan_call["messages"][0]],
            "approvals": [{"tool_call_id": "c1", "tool_name": "f", "arguments": {}}],
        },
    }
    check_document(paused, where="test")  # an unresolved call, but pending: fine
    with pytest.raises(AssertionError):
        check_document({**paused, "pending": {**paused["pending"], "approvals": []}}, where="t")


def test_the_paused_document_of_agent_run_keeps_the_invariant() -> None:
    model = TestModel(replies=[ToolCall("refund", {"order_id": "1", "amount": 5}, id="pay")])
    agent = _refund_agent(model)
    paused = agent.run("refund")
    plan = paused.paused_turn.plan
    document = _turn.next_document(plan, paused, None)
    assert document["messages"] == [] and document["turns"] == 0
    assert json.loads(json.dumps(document)) == document
    check_document(document, where="paused")
