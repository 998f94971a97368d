"""``Agent``: configuration, input, output, re-asks, results and model overrides.

Every behaviour is checked through ``agent.run`` and ``await agent.arun`` (the
``run`` fixture), with the test doubles standing in for the provider.
"""

from __future__ import annotations

import asyncio
import json
from enum import StrEnum
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_session import (
    DEFAULT_MAX_INPUT_BYTES,
    Agent,
    ConfigurationError,
    ContextWindowError,
    InputValidationError,
    LiteLLMModel,
    ModelCallError,
    ModelResponse,
    OutputValidationError,
    Result,
    TextInput,
    Usage,
)
from agent_session.testing import FunctionModel, TestModel
from support.runner import Run


class Mood(StrEnum):
    HAPPY = "happy"
    SAD = "sad"


class Question(BaseModel):
    topic: str
    urgency: int = Field(ge=1, le=5)


class Detail(BaseModel):
    label: str
    score: float


class Answer(BaseModel):
    answer: str
    mood: Mood
    details: list[Detail] = Field(default_factory=list)


MEGABYTE = 1024 * 1024
GOOD = '{"answer": "Grüße 🙂", "mood": "happy", "details": [{"label": "x", "score": 0.5}]}'
GOOD_OUTPUT = Answer(answer="Grüße 🙂", mood=Mood.HAPPY, details=[Detail(label="x", score=0.5)])


def _usage(prompt: int, completion: int) -> Usage:
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": ""}, "non-empty"),
        ({"model": "   "}, "non-empty"),
        ({"model": 42}, "got int"),
        ({"model": TestModel(), "input_schema": dict}, "input_schema"),
        ({"model": TestModel(), "output_schema": Answer(answer="a", mood="sad")}, "output_schema"),
        ({"model": TestModel(), "instruction_schema": str}, "instruction_schema"),
        ({"model": TestModel(), "output_retries": -1}, "output_retries"),
        ({"model": TestModel(), "output_retries": True}, "output_retries"),
        ({"model": TestModel(), "output_retries": 1.5}, "output_retries"),
        ({"model": TestModel(), "model_retries": -1}, "model_retries"),
        ({"model": TestModel(), "model_retries": False}, "model_retries"),
        ({"model": TestModel(), "model_retries": "2"}, "model_retries"),
        ({"model": TestModel(), "structured_output": "json"}, "structured_output"),
        ({"model": TestModel(), "structured_output": None}, "structured_output"),
        ({"model": TestModel(), "model_settings": [("temperature", 0)]}, "mapping"),
        ({"model": TestModel(), "model_settings": {1: 2}}, "strings"),
        ({"model": TestModel(), "max_input_bytes": 0}, "max_input_bytes"),
        ({"model": TestModel(), "instruction": b"bytes"}, "instruction"),
    ],
)
def test_configuration_errors(kwargs: dict[str, Any], match: str) -> None:
    model = kwargs.pop("model")
    with pytest.raises(ConfigurationError, match=match):
        Agent(model, **kwargs)


class Opaque:
    """A value Pydantic accepts as an arbitrary type but cannot turn into JSON."""


class OpaqueModel(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    label: str = "x"
    thing: Opaque


def test_an_output_schema_without_json_schema_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="OpaqueModel has no JSON schema") as info:
        Agent(TestModel(), output_schema=OpaqueModel)
    assert info.value.__cause__ is not None


async def test_input_that_cannot_be_sent_as_json_is_an_input_error(run: Run) -> None:
    model = TestModel()
    with pytest.raises(InputValidationError, match="JSON") as info:
        await run(Agent(model, input_schema=OpaqueModel), {"thing": Opaque()})
    assert info.value.source == "input"
    assert model.requests == []


def test_a_model_string_is_not_resolved_when_the_agent_is_built() -> None:
    agent = Agent("openai/gpt-4o-mini", output_schema=Answer)
    assert agent.model_name == "openai/gpt-4o-mini"
    assert isinstance(agent.model, LiteLLMModel)
    assert repr(agent) == "Agent(model='openai/gpt-4o-mini', output=Answer)"


def test_what_is_computed_when_the_agent_is_built() -> None:
    model = TestModel(name="double")
    agent = Agent(model, output_schema=Answer, model_settings={"temperature": 0.2}, name="helper")
    assert agent.model is model
    assert agent.model_name == "double"
    assert agent.name == "helper"
    assert agent.input_schema is TextInput
    assert agent.single_input_field == "message"
    assert agent.output_retries == 2
    assert agent.model_retries == 2
    assert agent.structured_output == "auto"
    assert agent.structured_output_mode == "json_schema"
    assert agent.max_input_bytes == DEFAULT_MAX_INPUT_BYTES
    assert agent.model_settings == {"temperature": 0.2}
    assert agent.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "Answer", "schema": Answer.model_json_schema()},
    }
    assert agent.schema_hint is not None
    schema_text = agent.schema_hint.split("\n", 1)[1]
    assert json.loads(schema_text) == Answer.model_json_schema()
    assert repr(Agent(model)) == "Agent(model='double', output=str)"


def test_plain_text_agents_have_no_schema() -> None:
    agent = Agent(TestModel())
    assert agent.structured_output_mode is None
    assert agent.response_format is None
    assert agent.schema_hint is None
    assert agent.parse_output('  {"a": 1} ') == '  {"a": 1} '


REFUSED = {
    "messages": "built from the instruction",
    "model": "first argument",
    "stream": "whole reply",
    "tools": "tool calls",
    "tool_choice": "tool calls",
    "response_format": "output_schema=",
    "max_retries": r"model_retries=.*re-asks",
    "num_retries": "model_retries=",
}


@pytest.mark.parametrize("key", list(REFUSED))
def test_model_settings_the_library_owns_are_refused(key: str) -> None:
    with pytest.raises(ConfigurationError, match=f"may not set '{key}': .*{REFUSED[key]}"):
        Agent("openai/gpt-4o-mini", model_settings={key: 0, "temperature": 0.5})


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"timeout": "30"}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.5}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"temperature": "0.2"}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": "100"}, "max_tokens"),
        ({"max_completion_tokens": -5}, "max_completion_tokens"),
    ],
)
def test_model_settings_of_the_wrong_type_are_refused(settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Agent(TestModel(), model_settings=settings)


def test_model_settings_of_the_right_type_are_kept() -> None:
    import httpx

    settings = {
        "timeout": 2,
        "temperature": 0,
        "max_tokens": 100,
        "api_base": "http://127.0.0.1:8080/v1",
        "seed": 7,
    }
    assert Agent(TestModel(), model_settings=settings).model_settings == settings
    for timeout in (0.5, None, httpx.Timeout(5.0)):
        assert Agent(TestModel(), model_settings={"timeout": timeout}).model_settings == {
            "timeout": timeout
        }


def test_model_settings_are_copied() -> None:
    settings = {"temperature": 0}
    agent = Agent(TestModel(), model_settings=settings)
    settings["temperature"] = 1
    assert agent.model_settings == {"temperature": 0}


# -- input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["Hello 🙂", {"message": "Hello 🙂"}, TextInput(message="Hello 🙂")],
    ids=["str", "dict", "instance"],
)
async def test_default_input_forms(run: Run, value: Any) -> None:
    model = TestModel()
    result = await run(Agent(model), value)

    assert model.requests[0].messages == [{"role": "user", "content": "Hello 🙂"}]
    assert result.input == TextInput(message="Hello 🙂")


async def test_single_field_schema_sends_that_field(run: Run) -> None:
    class Ask(BaseModel):
        text: str = Field(min_length=1)

    model = TestModel()
    result = await run(Agent(model, input_schema=Ask), "What now?")
    assert model.requests[0].messages[-1]["content"] == "What now?"
    assert result.input == Ask(text="What now?")


async def test_multi_field_schema_sends_compact_json(run: Run) -> None:
    model = TestModel()
    result = await run(Agent(model, input_schema=Question), {"topic": "Straße 🚧", "urgency": "4"})
    sent = model.requests[0].messages[-1]["content"]
    assert sent == '{"topic":"Straße 🚧","urgency":4}'
    assert sent == result.input.model_dump_json()
    assert result.input == Question(topic="Straße 🚧", urgency=4)


async def test_single_non_string_field_sends_json(run: Run) -> None:
    class Count(BaseModel):
        n: int

    model = TestModel()
    await run(Agent(model, input_schema=Count), "5")
    assert model.requests[0].messages[-1]["content"] == '{"n":5}'


INVALID_INPUTS = {
    "missing_field": {"topic": "x"},
    "out_of_range": {"topic": "x", "urgency": 9},
    "wrong_type": {"topic": ["x"], "urgency": 1},
}


@pytest.mark.parametrize("value", list(INVALID_INPUTS.values()), ids=list(INVALID_INPUTS))
async def test_invalid_input_is_an_error_and_no_model_call(run: Run, value: Any) -> None:
    model = TestModel()
    agent = Agent(model, input_schema=Question)

    with pytest.raises(InputValidationError) as info:
        await run(agent, value)

    error = info.value
    assert isinstance(error, ValueError)
    assert error.source == "input"
    assert error.errors
    assert all({"loc", "msg", "type"} <= set(e) for e in error.errors)
    assert isinstance(error.__cause__, ValidationError)
    assert "Question" in str(error)
    assert model.requests == []


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("plain text", "one field"),
        (TextInput(message="x"), "got a TextInput"),
        (42, "got int"),
        (["topic", "x"], "got list"),
        (None, "got NoneType"),
    ],
    ids=["str_for_two_fields", "other_model", "int", "list", "none"],
)
async def test_input_of_the_wrong_kind(run: Run, value: Any, match: str) -> None:
    model = TestModel()
    with pytest.raises(InputValidationError, match=match) as info:
        await run(Agent(model, input_schema=Question), value)
    assert info.value.source == "input"
    assert model.requests == []


async def test_an_oversized_message_is_refused_before_the_call(run: Run) -> None:
    model = TestModel()
    agent = Agent(model, max_input_bytes=1000)

    await run(agent, "x" * 1000)
    with pytest.raises(InputValidationError) as info:
        await run(agent, "x" * 1001)

    assert info.value.source == "size"
    assert isinstance(info.value, ValueError)
    assert "1001 bytes" in str(info.value)
    assert len(model.requests) == 1


async def test_the_size_limit_counts_utf8_bytes(run: Run) -> None:
    model = TestModel()
    agent = Agent(model, max_input_bytes=12)
    await run(agent, "🙂🙂🙂")  # 12 bytes
    with pytest.raises(InputValidationError) as info:
        await run(agent, "ééééééé")  # 7 characters, 14 bytes
    assert info.value.source == "size"


async def test_the_size_limit_applies_to_json_input(run: Run) -> None:
    agent = Agent(TestModel(), input_schema=Question, max_input_bytes=30)
    with pytest.raises(InputValidationError) as info:
        await run(agent, {"topic": "t" * 30, "urgency": 1})
    assert info.value.source == "size"


async def test_a_one_megabyte_message_passes_with_the_default_limit(run: Run) -> None:
    model = TestModel()
    unit = "Grüße 🙂 "
    message = unit * (MEGABYTE // len(unit.encode()) + 1)
    assert MEGABYTE < len(message.encode()) < MEGABYTE + 64

    result = await run(Agent(model), message)

    assert model.requests[0].messages[-1]["content"] == message
    assert result.input == TextInput(message=message)


# -- output ------------------------------------------------------------------------


async def test_structured_output_sends_response_format(run: Run) -> None:
    model = TestModel(replies=[GOOD])
    agent = Agent(model, instruction="Be nice.", output_schema=Answer)

    result = await run(agent, "hi")

    request = model.requests[0]
    assert request.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "Answer", "schema": Answer.model_json_schema()},
    }
    assert request.messages[0] == {"role": "system", "content": "Be nice."}
    assert request.output_schema is Answer
    assert result.output == GOOD_OUTPUT


async def test_without_structured_output_the_schema_goes_in_the_system_message(run: Run) -> None:
    model = TestModel(replies=[GOOD], structured=False)
    agent = Agent(model, instruction="Be nice.", output_schema=Answer)

    result = await run(agent, "hi")

    request = model.requests[0]
    assert request.response_format is None
    system = request.messages[0]
    assert system["role"] == "system"
    assert system["content"] == f"Be nice.\n\n{agent.schema_hint}"
    assert json.dumps(Answer.model_json_schema(), separators=(",", ":")) in system["content"]
    assert result.output == GOOD_OUTPUT
    assert result.messages[0] == system


async def test_without_instruction_a_system_message_carries_the_hint(run: Run) -> None:
    model = TestModel(replies=[GOOD], structured=False)
    agent = Agent(model, output_schema=Answer)

    await run(agent, "hi")

    assert model.requests[0].messages == [
        {"role": "system", "content": agent.schema_hint},
        {"role": "user", "content": "hi"},
    ]


async def test_plain_text_agents_never_send_a_schema(run: Run) -> None:
    for model in (TestModel(), TestModel(structured=False)):
        await run(Agent(model), "hi")
        assert model.requests[0].response_format is None
        assert model.requests[0].messages == [{"role": "user", "content": "hi"}]


FENCED = {
    "json_fence": f"```json\n{GOOD}\n```",
    "bare_fence": f"```\n{GOOD}\n```",
    "upper_language": f"  ```JSON\n{GOOD}\n```\n",
    "crlf": f"```json\r\n{GOOD}\r\n```",
    "one_line": f"```{GOOD}```",
    "whitespace": f"\n\n  {GOOD}  \n",
}


@pytest.mark.parametrize("reply", list(FENCED.values()), ids=list(FENCED))
async def test_code_fences_are_tolerated(run: Run, reply: str) -> None:
    model = TestModel(replies=[reply])
    result = await run(Agent(model, output_schema=Answer), "hi")
    assert result.output == GOOD_OUTPUT
    assert result.text == reply
    assert result.attempts == 1


async def test_invalid_output_is_reasked_with_feedback(run: Run) -> None:
    replies = [
        ModelResponse(text="Sure! Here it is.", usage=_usage(10, 4), cost=0.1),
        ModelResponse(text='{"answer": "a", "mood": "angry"}', usage=_usage(20, 6), cost=0.2),
        ModelResponse(text=GOOD, usage=_usage(30, 8), cost=0.3, model="m-1", finish_reason="stop"),
    ]
    model = TestModel(replies=replies)
    agent = Agent(model, instruction="Be nice.", output_schema=Answer, output_retries=2)

    result = await run(agent, "hi")

    assert result.output == GOOD_OUTPUT
    assert result.attempts == 3
    assert result.usage == _usage(60, 18)
    assert result.cost == pytest.approx(0.6)
    first, second, third = (r.messages for r in model.requests)
    assert second[:2] == first
    assert second[2] == {"role": "assistant", "content": "Sure! Here it is."}
    assert second[3]["role"] == "user"
    assert "Validation errors" in second[3]["content"]
    assert third[:4] == second
    assert third[4] == {"role": "assistant", "content": '{"answer": "a", "mood": "angry"}'}
    assert "mood" in third[5]["content"]
    # The re-ask exchanges are not part of the result.
    assert result.messages == [*first, {"role": "assistant", "content": GOOD}]


async def test_output_validation_error_after_every_reask(run: Run) -> None:
    replies = [
        ModelResponse(text="not json", usage=_usage(1, 2)),
        ModelResponse(text='{"answer": 3}', usage=_usage(3, 4)),
    ]
    model = TestModel(replies=replies)
    agent = Agent(model, output_schema=Answer, output_retries=1)

    with pytest.raises(OutputValidationError) as info:
        await run(agent, "hi")

    error = info.value
    assert error.attempts == 2
    assert error.raw_text == '{"answer": 3}'
    assert {e["loc"] for e in error.errors} == {("answer",), ("mood",)}
    assert error.usage == _usage(4, 6)
    assert isinstance(error.__cause__, ValidationError)
    assert len(model.requests) == 2


async def test_no_reask_when_output_retries_is_zero(run: Run) -> None:
    model = TestModel(replies=["nope", GOOD])
    with pytest.raises(OutputValidationError) as info:
        await run(Agent(model, output_schema=Answer, output_retries=0), "hi")
    assert info.value.attempts == 1
    assert len(model.requests) == 1


async def test_cost_is_none_when_unknown(run: Run) -> None:
    result = await run(Agent(TestModel(replies=["bad", GOOD]), output_schema=Answer), "hi")
    assert result.attempts == 2
    assert result.cost is None


async def test_cost_sums_the_calls_whose_cost_is_known(run: Run) -> None:
    replies = [ModelResponse(text="bad", cost=0.25), ModelResponse(text=GOOD, cost=None)]
    result = await run(Agent(TestModel(replies=replies), output_schema=Answer), "hi")
    assert result.cost == 0.25


async def test_a_failed_call_is_retried_model_retries_times(run: Run) -> None:
    def fail(messages: list[dict[str, Any]]) -> str:
        raise ModelCallError("rate limited", model="m", status_code=429)

    model = FunctionModel(fail)
    with pytest.raises(ModelCallError) as info:
        await run(Agent(model, output_schema=Answer), "hi")
    assert info.value.status_code == 429
    assert info.value.attempts == 3
    assert len(model.requests) == 3  # the call and model_retries=2 retries

    model = FunctionModel(fail)
    with pytest.raises(ModelCallError):
        await run(Agent(model, output_schema=Answer, model_retries=0), "hi")
    assert len(model.requests) == 1


@pytest.mark.parametrize(
    "error",
    [
        ModelCallError("bad key", model="m", status_code=401),
        ModelCallError("bad request", model="m", status_code=400),
        ModelCallError("odd reply", model="m", retryable=False),
        ContextWindowError("too long", model="m", status_code=400),
    ],
    ids=["401", "400", "not-retryable", "context-window"],
)
async def test_a_call_that_cannot_succeed_later_is_not_retried(
    run: Run, error: ModelCallError
) -> None:
    def fail(messages: list[dict[str, Any]]) -> str:
        raise error

    model = FunctionModel(fail)
    with pytest.raises(type(error)) as info:
        await run(Agent(model, output_schema=Answer, model_retries=3), "hi")
    assert info.value is error
    assert len(model.requests) == 1


async def test_a_retry_that_succeeds(run: Run) -> None:
    replies: list[Any] = [
        ModelCallError("timed out", model="m"),
        ModelCallError("overloaded", model="m", status_code=503),
        ModelResponse(text=GOOD, usage=_usage(10, 5), cost=0.5, model="m"),
    ]

    def reply(messages: list[dict[str, Any]]) -> Any:
        item = replies.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    model = FunctionModel(reply)
    result = await run(Agent(model, output_schema=Answer), "hi")

    assert result.output == GOOD_OUTPUT
    assert result.attempts == 3
    assert result.usage == _usage(10, 5)  # failed calls use nothing
    assert result.cost == 0.5
    assert [r.messages for r in model.requests] == [model.requests[0].messages] * 3
    assert result.messages[:-1] == model.requests[0].messages


# -- the result ------------------------------------------------------------------


async def test_result_fields(run: Run) -> None:
    reply = ModelResponse(
        text=GOOD,
        usage=_usage(12, 7),
        cost=0.002,
        model="provider/model-2026",
        finish_reason="stop",
    )
    model = TestModel(replies=[reply])
    agent = Agent(
        model,
        instruction="You help {{ who }}.",
        input_schema=Question,
        output_schema=Answer,
        model_settings={"temperature": 0},
    )

    result = await run(agent, {"topic": "tea", "urgency": 2}, instruction_args={"who": "Ana"})

    assert isinstance(result, Result)
    assert result.output == GOOD_OUTPUT
    assert result.text == GOOD
    assert result.messages == [
        {"role": "system", "content": "You help Ana."},
        {"role": "user", "content": '{"topic":"tea","urgency":2}'},
        {"role": "assistant", "content": GOOD},
    ]
    assert result.usage == _usage(12, 7)
    assert result.cost == 0.002
    assert result.model == "provider/model-2026"
    assert result.finish_reason == "stop"
    assert result.attempts == 1
    assert result.duration_s > 0
    assert result.input == Question(topic="tea", urgency=2)
    assert result.output_json == {
        "answer": "Grüße 🙂",
        "mood": "happy",
        "details": [{"label": "x", "score": 0.5}],
    }
    assert model.requests[0].settings == {"temperature": 0}
    json.dumps(result.messages)


async def test_result_of_a_plain_text_agent(run: Run) -> None:
    model = TestModel(text="Hello there", name="double")
    result = await run(Agent(model), "hi")
    assert result.output == "Hello there"
    assert result.text == "Hello there"
    assert result.output_json == "Hello there"
    assert result.model == "double"
    assert result.finish_reason == "stop"
    assert result.usage == _usage(1, 2)  # word counts


async def test_the_result_model_falls_back_to_the_agent_model(run: Run) -> None:
    model = TestModel(replies=[ModelResponse(text="ok")], name="double")
    result = await run(Agent(model), "hi")
    assert result.model == "double"
    assert result.finish_reason is None
    assert result.usage == Usage()


def test_output_from_json_rebuilds_the_output() -> None:
    agent = Agent(TestModel(), output_schema=Answer)
    assert agent.output_from_json(GOOD_OUTPUT.model_dump(mode="json")) == GOOD_OUTPUT
    assert Agent(TestModel()).output_from_json("text") == "text"


# -- override ----------------------------------------------------------------------


def test_override_in_sync_code() -> None:
    agent = Agent("openai/gpt-4o-mini", output_schema=Answer, model_settings={"temperature": 0})
    configured = agent.model
    double = TestModel(replies=[GOOD])

    with agent.override(model=double):
        assert agent.model is double
        result = agent.run("hi")

    assert agent.model is configured
    assert result.output == GOOD_OUTPUT
    request = double.last_request
    assert request.model == "openai/gpt-4o-mini"
    assert request.settings == {"temperature": 0}
    assert request.response_format is not None


async def test_override_in_async_code() -> None:
    agent = Agent("anthropic/claude-sonnet-4", output_schema=Answer)
    double = TestModel(replies=[GOOD])

    with agent.override(model=double):
        result = await agent.arun("hi")

    assert result.output == GOOD_OUTPUT
    assert double.last_request.model == "anthropic/claude-sonnet-4"
    assert isinstance(agent.model, LiteLLMModel)


async def test_overrides_nest_and_are_restored(run: Run) -> None:
    agent = Agent(TestModel(text="configured"))
    outer, inner = TestModel(text="outer"), TestModel(text="inner")

    with agent.override(model=outer):
        assert (await run(agent, "a")).output == "outer"
        with agent.override(model=inner):
            assert (await run(agent, "b")).output == "inner"
        assert (await run(agent, "c")).output == "outer"
    assert (await run(agent, "d")).output == "configured"

    assert [r.messages[-1]["content"] for r in outer.requests] == ["a", "c"]
    assert [r.messages[-1]["content"] for r in inner.requests] == ["b"]


def test_override_is_restored_after_an_error() -> None:
    agent = Agent(TestModel(text="configured"))
    with pytest.raises(InputValidationError), agent.override(model=TestModel()):
        agent.run(42)  # type: ignore[arg-type]
    assert agent.run("x").output == "configured"


def test_override_is_per_agent() -> None:
    first, second = Agent(TestModel(text="first")), Agent(TestModel(text="second"))
    with first.override(model=TestModel(text="double")):
        assert first.run("x").output == "double"
        assert second.run("x").output == "second"


def test_override_needs_a_model() -> None:
    agent = Agent(TestModel())
    with (
        pytest.raises(ConfigurationError, match="needs a Model"),
        agent.override(
            model="openai/gpt-4o"  # type: ignore[arg-type]
        ),
    ):
        pass


async def test_override_decides_structured_output(run: Run) -> None:
    agent = Agent(TestModel(replies=[GOOD]), output_schema=Answer)
    prompted = TestModel(replies=[GOOD], structured=False)
    assert agent.structured_output_mode == "json_schema"
    with agent.override(model=prompted):
        assert agent.structured_output_mode == "prompt"
        await run(agent, "hi")
    assert agent.structured_output_mode == "json_schema"
    assert prompted.last_request.response_format is None
    assert prompted.last_request.messages[0]["content"] == agent.schema_hint


class CountingModel(TestModel):
    """Counts how often the agent asks whether the model supports a JSON schema."""

    __test__ = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.asked = 0

    def supports_structured_output(self, model: str) -> bool:
        self.asked += 1
        return super().supports_structured_output(model)


async def test_the_structured_output_decision_is_made_once_per_model(run: Run) -> None:
    model = CountingModel()
    agent = Agent(model, output_schema=Answer)
    for _ in range(3):
        await run(agent, "hi")
    assert agent.structured_output_mode == "json_schema"
    assert model.asked == 1

    other = CountingModel(structured=False)
    with agent.override(model=other):
        await run(agent, "hi")
        await run(agent, "hi")
    assert (model.asked, other.asked) == (1, 1)
    assert other.last_request.response_format is None


@pytest.mark.parametrize(
    ("requested", "response_format", "hint"),
    [
        ("json_schema", "schema", False),
        ("json_object", {"type": "json_object"}, True),
        ("prompt", None, True),
    ],
)
async def test_structured_output_can_be_chosen(
    run: Run, requested: str, response_format: Any, hint: bool
) -> None:
    # The double says it cannot take a schema: an explicit choice wins over it.
    model = CountingModel(replies=[GOOD], structured=False)
    agent = Agent(model, instruction="Be brief.", output_schema=Answer, structured_output=requested)  # type: ignore[arg-type]

    result = await run(agent, "hi")

    assert agent.structured_output_mode == requested
    assert model.asked == 0
    request = model.last_request
    expected = agent.response_format if response_format == "schema" else response_format
    assert request.response_format == expected
    system = request.messages[0]["content"]
    assert system == (f"Be brief.\n\n{agent.schema_hint}" if hint else "Be brief.")
    assert result.output == GOOD_OUTPUT


@pytest.mark.parametrize(
    ("model", "settings", "expected"),
    [
        ("openai/my-local-model", {"api_base": "http://127.0.0.1:8080/v1"}, "json_schema"),
        ("openai/my-local-model", {"base_url": "http://127.0.0.1:8080/v1"}, "json_schema"),
        ("hosted_vllm/Qwen/Qwen3-8B", {}, "json_schema"),
        ("ollama_chat/llama3.2", {}, "json_schema"),
        ("lm_studio/qwen3", {}, "json_schema"),
        ("openai/gpt-4o-mini", {}, "json_schema"),  # LiteLLM's table knows it
        ("openai/my-local-model", {}, "prompt"),  # OpenAI itself, a model it has not
        ("anthropic/my-proxy-model", {"api_base": "http://127.0.0.1:1"}, "prompt"),
        ("ollama/llama3.2", {}, "json_schema"),
    ],
)
def test_auto_structured_output_for_litellm_models(
    model: str, settings: dict[str, Any], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    agent = Agent(model, output_schema=Answer, model_settings=settings)
    assert agent.structured_output_mode == expected


def test_openai_api_base_from_the_environment_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_BASE", "http://127.0.0.1:8080/v1")
    agent = Agent("openai/my-local-model", output_schema=Answer)
    assert agent.structured_output_mode == "json_schema"


async def test_concurrent_tasks_see_their_own_override() -> None:
    agent = Agent(TestModel(text="configured"))
    both_inside = asyncio.Barrier(2)

    async def task(label: str) -> list[str]:
        async def reply(messages: list[dict[str, Any]]) -> str:
            await asyncio.sleep(0)
            return label

        with agent.override(model=FunctionModel(reply, name=label)):
            await both_inside.wait()  # both overrides are active now
            outputs = []
            for _ in range(3):
                outputs.append((await agent.arun("hi")).output)
                await asyncio.sleep(0)
            return outputs

    first, second = await asyncio.gather(task("one"), task("two"))

    assert first == ["one"] * 3
    assert second == ["two"] * 3
    assert (await agent.arun("hi")).output == "configured"


async def test_tasks_started_inside_an_override_inherit_it() -> None:
    agent = Agent(TestModel(text="configured"))
    with agent.override(model=TestModel(text="double")):
        task = asyncio.create_task(agent.arun("hi"))
    assert (await task).output == "double"
    assert (await agent.arun("hi")).output == "configured"
