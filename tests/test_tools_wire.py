"""Tools on the wire: real LiteLLM against the fake server, OpenAI and Anthropic forms.

Requests go through ``LiteLLMModel``, ``litellm.completion``/``acompletion`` and a
real HTTP connection to ``fake_openai`` on 127.0.0.1, which answers in OpenAI's chat
completions form on ``/v1/chat/completions`` and in Anthropic's Messages form on
``/v1/messages``. Each behaviour runs twice, sync and async.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent_session import ModelCallError, ModelRequest, ModelResponse, ToolCall
from agent_session.llm import LiteLLMModel, import_litellm
from agent_session.tools import ToolCallResult, Toolset, replay_arguments
from support.fake_openai import FakeOpenAI, running_fake_openai

OPENAI_MODEL = "openai/gpt-4o-mini"
ANTHROPIC_MODEL = "anthropic/claude-3-5-sonnet-20240620"

Complete = Callable[[ModelRequest], ModelResponse]


def get_order(order_id: str) -> dict[str, str]:
    """Look up an order by id."""
    return {"order_id": order_id, "status": "shipped"}


def get_weather(city: str, days: int = 1) -> str:
    """Forecast the weather for a city."""
    return f"sunny in {city} for {days} day(s)"


TOOLS = Toolset([get_order, get_weather])


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with running_fake_openai() as server:
        yield server


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    import_litellm()  # imported here, outside every test body
    mode: str = request.param
    return mode


@pytest.fixture
def complete(mode: str) -> Complete:
    model = LiteLLMModel()
    if mode == "sync":
        return model.complete
    return lambda request: asyncio.run(model.acomplete(request))


def openai_request(fake: FakeOpenAI, messages: list[dict[str, Any]], **kw: Any) -> ModelRequest:
    settings = {"api_base": fake.base_url, "api_key": "test-key", "num_retries": 0}
    return ModelRequest(model=OPENAI_MODEL, messages=messages, settings=settings, **kw)


def anthropic_request(fake: FakeOpenAI, messages: list[dict[str, Any]], **kw: Any) -> ModelRequest:
    settings = {"api_base": fake.anthropic_base_url, "api_key": "test-key", "num_retries": 0}
    return ModelRequest(model=ANTHROPIC_MODEL, messages=messages, settings=settings, **kw)


def run_tools(mode: str, calls: tuple[ToolCall, ...]) -> list[ToolCallResult]:
    if mode == "sync":
        return TOOLS.run_calls(list(calls))
    return asyncio.run(TOOLS.arun_calls(list(calls)))


def tool_turn_history(calls: tuple[ToolCall, ...], results: list[ToolCallResult]) -> list[Any]:
    """The assistant ``tool_calls`` message and the ``tool`` messages, as they are stored."""
    stored_calls = []
    for call in calls:
        entry = call.to_openai()
        entry["function"]["arguments"], _ = replay_arguments(call.arguments)
        stored_calls.append(entry)
    return [
        {"role": "assistant", "content": None, "tool_calls": stored_calls},
        *(result.to_message() for result in results),
    ]


# -- OpenAI form ------------------------------------------------------------------------


def test_tools_are_sent_and_tool_calls_come_back(fake: FakeOpenAI, complete: Complete) -> None:
    made = fake.enqueue_tool_calls(
        [
            ("get_order", '{"order_id": "A-1"}', "call_a"),
            ("get_weather", {"city": "Zürich"}),
            ("get_order", '{"order_id": "A-'),  # cut off: not JSON
        ]
    )

    response = complete(
        openai_request(fake, [{"role": "user", "content": "hi"}], tools=TOOLS.definitions)
    )

    assert fake.bodies[0]["tools"] == TOOLS.definitions
    assert response.finish_reason == "tool_calls"
    assert response.text == ""
    assert response.tool_calls == (
        ToolCall("get_order", '{"order_id": "A-1"}', id="call_a"),
        ToolCall("get_weather", json.dumps({"city": "Zürich"}), id=made[1].id),
        ToolCall("get_order", '{"order_id": "A-', id=made[2].id),
    )
    assert response.usage.total_tokens == 15


def test_no_tools_no_tools_key(fake: FakeOpenAI, complete: Complete) -> None:
    fake.enqueue_completion("plain")

    response = complete(openai_request(fake, [{"role": "user", "content": "hi"}]))

    assert "tools" not in fake.bodies[0]
    assert (response.text, response.tool_calls) == ("plain", ())


def test_a_tool_round_trip_by_hand(fake: FakeOpenAI, complete: Complete, mode: str) -> None:
    fake.enqueue_tool_calls(
        [("get_order", {"order_id": "A-1"}, "c1"), ("get_weather", '{"city": ', "c2")],
        content="Checking.",
    )
    fake.enqueue_completion("Order A-1 has shipped.")
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Where is A-1?"}]

    first = complete(openai_request(fake, messages, tools=TOOLS.definitions))
    results = run_tools(mode, first.tool_calls)
    history = messages + tool_turn_history(first.tool_calls, results)
    history[1]["content"] = first.text
    final = complete(openai_request(fake, history, tools=TOOLS.definitions))

    assert final.text == "Order A-1 has shipped."
    assert [r.status for r in results] == ["ok", "error"]
    assert results[1].raw_arguments == '{"city": '
    sent = fake.bodies[1]["messages"]
    assert sent == history
    assert sent[1]["tool_calls"][1]["function"]["arguments"] == "{}"  # replayed as valid JSON
    assert sent[2] == {
        "role": "tool",
        "tool_call_id": "c1",
        "name": "get_order",
        "content": '{"order_id":"A-1","status":"shipped"}',
    }
    assert sent[3]["tool_call_id"] == "c2"
    assert sent[3]["content"].startswith("Error: the arguments of get_weather are not valid JSON")


# -- Anthropic form ---------------------------------------------------------------------


def test_anthropic_tool_use_comes_back_as_tool_calls(fake: FakeOpenAI, complete: Complete) -> None:
    fake.enqueue_tool_calls(
        [("get_order", {"order_id": "A-1"}, "toolu_01")],
        content="Let me look.",
        model="claude-3-5-sonnet-20240620",
    )

    response = complete(
        anthropic_request(fake, [{"role": "user", "content": "hi"}], tools=TOOLS.definitions)
    )

    request = fake.requests[0]
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == "test-key"
    assert request.body["tools"][0] == {
        "name": "get_order",
        "description": "Look up an order by id.",
        "input_schema": TOOLS["get_order"].parameters,
        "type": "custom",
    }
    assert response.text == "Let me look."
    assert [(c.id, c.name, json.loads(c.arguments)) for c in response.tool_calls] == [
        ("toolu_01", "get_order", {"order_id": "A-1"})
    ]
    assert response.finish_reason == "tool_calls"


def test_anthropic_accepts_a_stored_tool_turn(fake: FakeOpenAI, complete: Complete) -> None:
    calls = (
        ToolCall("get_order", '{"order_id": "A-1"}', id="call_a"),
        ToolCall("get_weather", '{"city": "Oslo"}', id="call_b"),
    )
    results = TOOLS.run_calls(list(calls))
    history = [
        {"role": "system", "content": "You help with orders."},
        {"role": "user", "content": "Where is A-1, and the weather in Oslo?"},
        *tool_turn_history(calls, results),
        {"role": "assistant", "content": "Shipped; sunny."},
        {"role": "user", "content": "Thanks!"},
    ]
    fake.enqueue_completion("You're welcome.", model="claude-3-5-sonnet-20240620")

    response = complete(anthropic_request(fake, history, tools=TOOLS.definitions))

    assert response.text == "You're welcome."
    body = fake.bodies[0]
    assert body["system"] == [{"type": "text", "text": "You help with orders."}]
    sent = body["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_a", "name": "get_order", "input": {"order_id": "A-1"}},
            {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
    }
    # Both results in one user message, in call order, right after the calls.
    assert sent[2]["role"] == "user"
    assert [
        (block["type"], block["tool_use_id"], block["content"]) for block in sent[2]["content"]
    ] == [
        ("tool_result", "call_a", '{"order_id":"A-1","status":"shipped"}'),
        ("tool_result", "call_b", "sunny in Oslo for 1 day(s)"),
    ]


def test_invalid_json_arguments_poison_an_anthropic_history_unless_replayed(
    fake: FakeOpenAI, complete: Complete
) -> None:
    cut_off = ToolCall("get_order", '{"order_id": "A-', id="call_a")
    [result] = TOOLS.run_calls([cut_off])
    raw_history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [cut_off.to_openai()]},
        result.to_message(),
    ]
    fake.enqueue_completion("ok", model="claude-3-5-sonnet-20240620")

    with pytest.raises(ModelCallError) as caught:
        complete(anthropic_request(fake, raw_history))
    assert caught.value.status_code == 400
    assert "tool call arguments" in str(caught.value)
    assert fake.requests == []  # LiteLLM refused before sending anything

    replayed = [raw_history[0], *tool_turn_history((cut_off,), [result])]
    response = complete(anthropic_request(fake, replayed))

    assert response.text == "ok"
    assert fake.bodies[0]["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_a", "name": "get_order", "input": {}}
    ]
    assert fake.bodies[0]["messages"][2]["content"][0]["content"].startswith("Error: ")


def test_anthropic_errors_have_the_anthropic_shape(fake: FakeOpenAI, complete: Complete) -> None:
    fake.enqueue_error(429, "slow down", error_type="rate_limit_error")

    with pytest.raises(ModelCallError) as caught:
        complete(anthropic_request(fake, [{"role": "user", "content": "hi"}]))

    assert caught.value.status_code == 429
    assert "slow down" in str(caught.value)
    assert len(fake.requests) == 1
