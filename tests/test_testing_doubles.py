"""The test doubles: ``TestModel``, ``FunctionModel`` and ``sample_from_schema``."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from enum import Enum, IntEnum
from typing import Annotated, Any, Literal

import pytest
from pydantic import (
    UUID4,
    AnyUrl,
    AwareDatetime,
    BaseModel,
    Field,
    PositiveInt,
    TypeAdapter,
    create_model,
)

from agent_session import (
    Agent,
    Model,
    ModelCallError,
    ModelRequest,
    ModelResponse,
    OutputValidationError,
    Usage,
)
from agent_session.testing import FunctionModel, TestModel, sample_from_schema
from support.runner import Run


class Answer(BaseModel):
    answer: str
    score: int = Field(ge=0, le=10)


# -- TestModel -----------------------------------------------------------------------


def test_test_model_is_a_model_and_not_collected() -> None:
    assert isinstance(TestModel(), Model)
    assert TestModel.__test__ is False


async def test_scripted_replies_of_every_kind(run: Run) -> None:
    replies: list[Any] = [
        '{"answer": "from a string", "score": 1}',
        {"answer": "from a dict 🙂", "score": 2},
        Answer(answer="from a model", score=3),
        ModelResponse(text='{"answer": "from a response", "score": 4}', model="explicit"),
    ]
    model = TestModel(replies=replies)
    agent = Agent(model, output_schema=Answer)

    outputs = [(await run(agent, f"q{i}")).output for i in range(4)]

    assert outputs == [
        Answer(answer="from a string", score=1),
        Answer(answer="from a dict 🙂", score=2),
        Answer(answer="from a model", score=3),
        Answer(answer="from a response", score=4),
    ]
    assert [r.messages[-1]["content"] for r in model.requests] == ["q0", "q1", "q2", "q3"]


async def test_a_dict_reply_keeps_non_ascii(run: Run) -> None:
    result = await run(Agent(TestModel(replies=[{"answer": "Köln 🙂", "score": 0}])), "hi")
    assert result.text == '{"answer": "Köln 🙂", "score": 0}'


async def test_a_list_reply_is_sent_as_json(run: Run) -> None:
    result = await run(Agent(TestModel(replies=[[1, "two"]])), "hi")
    assert result.text == '[1, "two"]'


async def test_running_out_of_replies_is_an_assertion_error(run: Run) -> None:
    model = TestModel(replies=["one"])
    agent = Agent(model)
    assert (await run(agent, "a")).output == "one"

    with pytest.raises(AssertionError, match=r"call #2 but has only 1 replies"):
        await run(agent, "b")
    assert len(model.requests) == 2


async def test_an_empty_script_fails_on_the_first_call(run: Run) -> None:
    with pytest.raises(AssertionError, match="call #1"):
        await run(Agent(TestModel(replies=[])), "a")


async def test_reasks_consume_replies(run: Run) -> None:
    model = TestModel(replies=["bad", "still bad"])
    with pytest.raises(AssertionError, match="call #3"):
        await run(Agent(model, output_schema=Answer, output_retries=5), "hi")


async def test_default_text_and_name(run: Run) -> None:
    result = await run(Agent(TestModel()), "hi")
    assert (result.output, result.model) == ("ok", "test-model")
    result = await run(Agent(TestModel(text="custom", name="double")), "hi")
    assert (result.output, result.model) == ("custom", "double")


async def test_without_replies_structured_agents_get_a_sample(run: Run) -> None:
    model = TestModel()
    result = await run(Agent(model, output_schema=Answer), "hi")
    assert isinstance(result.output, Answer)
    assert 0 <= result.output.score <= 10
    # Repeatable: the same schema gives the same sample.
    assert (await run(Agent(model, output_schema=Answer), "hi")).output == result.output


async def test_usage_is_a_word_count_and_cost_is_per_call(run: Run) -> None:
    model = TestModel(replies=["three word reply"], cost=0.125)
    agent = Agent(model, instruction="Be very brief.")
    result = await run(agent, "two words")
    assert result.usage == Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8)
    assert result.cost == 0.125


def test_requests_are_recorded() -> None:
    model = TestModel()
    with pytest.raises(IndexError):
        _ = model.last_request
    agent = Agent(model, model_settings={"seed": 7})
    agent.run("first")
    agent.run("second")
    assert len(model.requests) == 2
    assert model.last_request is model.requests[1]
    assert isinstance(model.last_request, ModelRequest)
    assert model.last_request.messages == [{"role": "user", "content": "second"}]
    assert model.last_request.settings == {"seed": 7}
    assert model.last_request.model == "test-model"


def test_structured_flag() -> None:
    assert TestModel().supports_structured_output("x") is True
    assert TestModel(structured=False).supports_structured_output("x") is False
    assert FunctionModel(lambda m: "x", structured=False).supports_structured_output("x") is False


# -- FunctionModel ---------------------------------------------------------------


def _one(messages: list[dict[str, Any]]) -> str:
    return f"one:{messages[-1]['content']}"


def _two(messages: list[dict[str, Any]], request: ModelRequest) -> str:
    return f"two:{messages[-1]['content']}:{request.model}"


async def _async_one(messages: list[dict[str, Any]]) -> str:
    await asyncio.sleep(0)
    return f"aone:{messages[-1]['content']}"


async def _async_two(messages: list[dict[str, Any]], request: ModelRequest) -> str:
    await asyncio.sleep(0)
    return f"atwo:{messages[-1]['content']}:{request.model}"


def _varargs(*args: Any) -> str:
    return f"var:{len(args)}"


FUNCTIONS: dict[str, tuple[Callable[..., Any], str]] = {
    "sync_one_arg": (_one, "one:hi"),
    "sync_two_args": (_two, "two:hi:fn"),
    "async_one_arg": (_async_one, "aone:hi"),
    "async_two_args": (_async_two, "atwo:hi:fn"),
    "lambda": (lambda messages: str(len(messages)), "1"),
    "varargs": (_varargs, "var:2"),
}


@pytest.mark.parametrize(("fn", "expected"), list(FUNCTIONS.values()), ids=list(FUNCTIONS))
async def test_function_model_forms(run: Run, fn: Callable[..., Any], expected: str) -> None:
    model = FunctionModel(fn, name="fn")
    result = await run(Agent(model), "hi")
    assert result.output == expected
    assert result.model == "fn"
    assert len(model.requests) == 1


@pytest.mark.parametrize("fn", [_async_one, _async_two], ids=["one_arg", "two_args"])
def test_async_function_from_sync_code_without_a_loop(fn: Callable[..., Any]) -> None:
    result = Agent(FunctionModel(fn, name="fn")).run("hi")
    assert result.output.startswith("a")


async def test_async_function_from_sync_code_inside_a_running_loop() -> None:
    # A sync ``run`` called from async code cannot nest ``asyncio.run``; the reply
    # still arrives, computed on a loop of its own.
    result = Agent(FunctionModel(_async_two, name="fn")).run("hi")
    assert result.output == "atwo:hi:fn"


def test_a_callable_object_and_a_bound_method() -> None:
    class Replier:
        def __call__(self, messages: list[dict[str, Any]]) -> str:
            return "called"

        def reply(self, messages: list[dict[str, Any]], request: ModelRequest) -> str:
            return f"method:{request.model}"

    assert Agent(FunctionModel(Replier())).run("hi").output == "called"
    assert Agent(FunctionModel(Replier().reply, name="m")).run("hi").output == "method:m"


async def test_function_model_replies_of_every_kind(run: Run) -> None:
    replies: list[Any] = [
        {"answer": "dict", "score": 1},
        Answer(answer="model", score=2),
        ModelResponse(text='{"answer": "response", "score": 3}', cost=0.5),
    ]

    def fn(messages: list[dict[str, Any]]) -> Any:
        return replies[len([m for m in messages if m["role"] == "user"]) - 1]

    agent = Agent(FunctionModel(fn), output_schema=Answer)
    assert (await run(agent, "hi")).output == Answer(answer="dict", score=1)
    replies.pop(0)
    assert (await run(agent, "hi")).output == Answer(answer="model", score=2)
    replies.pop(0)
    result = await run(agent, "hi")
    assert result.output == Answer(answer="response", score=3)
    assert result.cost == 0.5


async def test_function_model_gets_a_copy_of_the_messages(run: Run) -> None:
    def vandal(messages: list[dict[str, Any]]) -> str:
        messages[-1]["content"] = "changed"
        messages.append({"role": "user", "content": "extra"})
        return "ok"

    model = FunctionModel(vandal)
    result = await run(Agent(model), "original")
    assert model.requests[0].messages == [{"role": "user", "content": "original"}]
    assert result.messages[0] == {"role": "user", "content": "original"}


async def test_function_model_drives_reasks(run: Run) -> None:
    def fn(messages: list[dict[str, Any]]) -> str:
        if messages[-1]["role"] == "user" and "not valid" in messages[-1]["content"]:
            return '{"answer": "fixed", "score": 5}'
        return '{"answer": "broken", "score": 99}'

    model = FunctionModel(fn, cost=0.01)
    result = await run(Agent(model, output_schema=Answer), "hi")
    assert result.output == Answer(answer="fixed", score=5)
    assert result.attempts == 2
    assert result.cost == pytest.approx(0.02)


async def test_function_model_errors_propagate(run: Run) -> None:
    async def down(messages: list[dict[str, Any]]) -> str:
        raise ModelCallError("service unavailable", model="m", status_code=503)

    with pytest.raises(ModelCallError, match="service unavailable"):
        await run(Agent(FunctionModel(down)), "hi")


async def test_function_model_invalid_forever(run: Run) -> None:
    model = FunctionModel(lambda messages: "never json")
    with pytest.raises(OutputValidationError) as info:
        await run(Agent(model, output_schema=Answer, output_retries=3), "hi")
    assert info.value.attempts == 4
    assert info.value.raw_text == "never json"
    assert len(model.requests) == 4


# -- sample_from_schema ------------------------------------------------------------


class Color(Enum):
    RED = "red"
    GREEN = "green"


class Level(IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    street: str
    city: str
    zip_code: Annotated[str, Field(min_length=5, max_length=5)]


class Person(BaseModel):
    name: str
    address: Address
    previous: list[Address]
    tags: set[str]
    color: Color
    level: Level


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: Annotated[int, Field(ge=1, le=9)]


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pet(BaseModel):
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]


class Node(BaseModel):
    value: int
    next: Node | None


class Tree(BaseModel):
    label: str
    children: list[Tree]


class WithDefaults(BaseModel):
    name: str = "default name"
    count: int = 3
    maybe: str | None = None
    items: list[int] = Field(default_factory=list)


def _field(annotation: Any) -> type[BaseModel]:
    model: type[BaseModel] = create_model("Sampled", value=(annotation, ...))
    return model


SCHEMAS: dict[str, type[BaseModel]] = {
    "flat": Answer,
    "nested": Person,
    "defaults": WithDefaults,
    "discriminated_union": Pet,
    "recursive_optional": Node,
    "recursive_list": Tree,
    "recursive_in_a_field": _field(Node),
    "recursive_list_in_a_field": _field(list[Tree]),
    "str": _field(str),
    "int": _field(int),
    "float": _field(float),
    "bool": _field(bool),
    "none": _field(None),
    "any": _field(Any),
    "enum": _field(Color),
    "int_enum": _field(Level),
    "literal": _field(Literal["a", "b"]),
    "literal_single": _field(Literal["only"]),
    "literal_int": _field(Literal[3, 4]),
    "optional": _field(int | None),
    "optional_model": _field(Address | None),
    "union": _field(int | str),
    "list_of_models": _field(list[Address]),
    "list_min_items": _field(Annotated[list[int], Field(min_length=3)]),
    "list_max_zero": _field(Annotated[list[int], Field(max_length=0)]),
    "dict": _field(dict[str, Color]),
    "tuple": _field(tuple[int, str, Color]),
    "tuple_variadic": _field(tuple[float, ...]),
    "frozenset": _field(frozenset[int]),
    "datetime": _field(dt.datetime),
    "aware_datetime": _field(AwareDatetime),
    "date": _field(dt.date),
    "time": _field(dt.time),
    "timedelta": _field(dt.timedelta),
    "uuid": _field(uuid.UUID),
    "uuid4": _field(UUID4),
    "url": _field(AnyUrl),
    "decimal": _field(Decimal),
    "bytes": _field(bytes),
    "positive_int": _field(PositiveInt),
    "int_ge_le": _field(Annotated[int, Field(ge=10, le=20)]),
    "int_gt_lt": _field(Annotated[int, Field(gt=-10, lt=-5)]),
    "int_negative": _field(Annotated[int, Field(lt=0)]),
    "int_multiple_of": _field(Annotated[int, Field(multiple_of=5)]),
    "int_multiple_in_range": _field(Annotated[int, Field(multiple_of=7, ge=10, le=20)]),
    "float_open_unit": _field(Annotated[float, Field(gt=0, lt=1)]),
    "float_narrow_open": _field(Annotated[float, Field(gt=0.5, lt=0.7)]),
    "float_below": _field(Annotated[float, Field(le=-2.5)]),
    "float_above": _field(Annotated[float, Field(gt=100)]),
    "float_multiple_of": _field(Annotated[float, Field(multiple_of=0.25, gt=1)]),
    "str_min_length": _field(Annotated[str, Field(min_length=8)]),
    "str_max_length": _field(Annotated[str, Field(max_length=0)]),
    "str_exact_length": _field(Annotated[str, Field(min_length=3, max_length=3)]),
}


@pytest.mark.parametrize("schema", list(SCHEMAS.values()), ids=list(SCHEMAS))
def test_sample_from_schema_is_valid(schema: type[BaseModel]) -> None:
    value = sample_from_schema(schema.model_json_schema())
    schema.model_validate(value)
    # The sample is JSON, as a model would send it.
    schema.model_validate_json(TypeAdapter(Any).dump_json(value))


def test_sample_from_schema_for_a_plain_type_adapter() -> None:
    adapter: TypeAdapter[list[Color]] = TypeAdapter(list[Color])
    assert adapter.validate_python(sample_from_schema(adapter.json_schema())) == [Color.RED]


def test_sample_prefers_defaults_and_first_choices() -> None:
    assert sample_from_schema(WithDefaults.model_json_schema()) == {
        "name": "default name",
        "count": 3,
        "maybe": None,
        "items": [1],
    }
    pet = Pet.model_validate(sample_from_schema(Pet.model_json_schema()))
    assert isinstance(pet.pet, Cat)


def test_sample_of_a_recursive_model_terminates() -> None:
    node = Node.model_validate(sample_from_schema(Node.model_json_schema()))
    depth = 0
    current: Node | None = node
    while current is not None:
        depth += 1
        current = current.next
    assert 1 < depth < 30
