"""Tools without a turn: definitions and schemas, checking and running calls, doubles."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import functools
import json
import re
import threading
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

import agent_session
from agent_session import (
    ConfigurationError,
    Denied,
    ModelRequest,
    PendingApproval,
    Tool,
    ToolCall,
    ToolContext,
    ToolExecutionError,
)
from agent_session.llm import LiteLLMModel, _tool_calls
from agent_session.testing import FunctionModel, TestModel
from agent_session.tools import (
    MAX_ERROR_CHARS,
    ToolCallResult,
    Toolset,
    as_tool,
    replay_arguments,
    run_awaitable,
    tool_output,
)

Runner = Callable[..., list[ToolCallResult]]


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> Runner:
    """``toolset.run_calls(...)`` or ``asyncio.run(toolset.arun_calls(...))``."""
    if request.param == "sync":

        def run_sync(toolset: Toolset, calls: list[ToolCall], **kw: Any) -> list[ToolCallResult]:
            return toolset.run_calls(calls, **kw)

        return run_sync

    def run_async(toolset: Toolset, calls: list[ToolCall], **kw: Any) -> list[ToolCallResult]:
        return asyncio.run(toolset.arun_calls(calls, **kw))

    return run_async


class Deps(BaseModel):
    shop: str


class Order(BaseModel):
    order_id: str
    status: str


def get_order(order_id: str, include_items: bool = False) -> Order:
    """Look up an order by id.

    Returns the order with its status; this second paragraph is not sent.

    Args:
        order_id: The id printed on the invoice,
            e.g. "A-42".
        include_items (bool): Whether to list the items too.
    """
    return Order(order_id=order_id, status="shipped")


async def refund(ctx: ToolContext[Deps], order_id: str, amount: float) -> str:
    """Refund part of an order."""
    await asyncio.sleep(0)
    return f"refunded {amount:.2f} of {order_id} at {ctx.deps.shop} ({ctx.tool_call_id})"


# -- definitions ----------------------------------------------------------------------


def test_a_plain_function_becomes_a_tool_definition() -> None:
    tool = as_tool(get_order)

    assert tool.name == "get_order"
    assert tool.requires_approval is False
    assert tool.on_error == "return"
    assert tool.takes_context is False
    assert tool.is_async is False
    assert tool.definition == {
        "type": "function",
        "function": {
            "name": "get_order",
            "description": "Look up an order by id.",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_id": {
                        "type": "string",
                        "description": 'The id printed on the invoice, e.g. "A-42".',
                    },
                    "include_items": {
                        "type": "boolean",
                        "default": False,
                        "description": "Whether to list the items too.",
                    },
                },
                "required": ["order_id"],
                "additionalProperties": False,
            },
        },
    }


def test_tool_options_and_the_context_parameter() -> None:
    tool = Tool(refund, name="refund-v2", description="Give money back.", requires_approval=True)

    assert (tool.name, tool.description, tool.requires_approval) == (
        "refund-v2",
        "Give money back.",
        True,
    )
    assert tool.takes_context is True
    assert tool.is_async is True
    assert tool.parameters == {
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
        "required": ["order_id", "amount"],
        "additionalProperties": False,
    }
    assert Tool.from_function(refund).definition == as_tool(refund).definition
    assert as_tool(tool) is tool
    assert "refund-v2" in repr(tool)


def test_the_context_parameter_may_be_unparametrized_or_annotated() -> None:
    def plain(ctx: ToolContext, x: int) -> int:  # type: ignore[type-arg]
        return x

    def annotated(ctx: Annotated[ToolContext[None], "the context"], x: int) -> int:
        return x

    for fn in (plain, annotated):
        tool = Tool(fn)
        assert tool.takes_context is True
        assert list(tool.parameters["properties"]) == ["x"]


def test_field_descriptions_win_over_the_docstring() -> None:
    def search(
        query: Annotated[str, Field(description="Words to look for.", max_length=100)],
        limit: Annotated[int, Field(ge=1, le=50)] = 10,
    ) -> list[str]:
        """Search the catalogue.

        Args:
            query: Not this one.
            limit: How many results.
        """
        return []

    properties = Tool(search).parameters["properties"]
    assert properties["query"] == {
        "type": "string",
        "maxLength": 100,
        "description": "Words to look for.",
    }
    assert properties["limit"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 50,
        "default": 10,
        "description": "How many results.",
    }


def test_numpy_and_sphinx_docstrings() -> None:
    def numpy_style(city: str, days: int = 1) -> str:
        """Forecast the weather
        for a city.

        Parameters
        ----------
        city : str
            The city's name.
        days : int, optional
            How many days,
            at most 7.

        Returns
        -------
        str
        """
        return city

    def sphinx_style(city: str, days: int = 1) -> str:
        """Forecast the weather.

        :param city: The city's name.
        :param int days: How many days,
            at most 7.
        :returns: the forecast
        """
        return city

    numpy_tool = Tool(numpy_style)
    assert numpy_tool.description == "Forecast the weather for a city."
    assert numpy_tool.parameters["properties"]["city"]["description"] == "The city's name."
    assert numpy_tool.parameters["properties"]["days"]["description"] == "How many days, at most 7."
    sphinx_tool = Tool(sphinx_style)
    assert sphinx_tool.description == "Forecast the weather."
    assert sphinx_tool.parameters["properties"]["city"]["description"] == "The city's name."
    assert (
        sphinx_tool.parameters["properties"]["days"]["description"] == "How many days, at most 7."
    )


def test_no_docstring_no_description_and_unannotated_parameters_are_any() -> None:
    def note(text, tags=None):  # type: ignore[no-untyped-def]
        return text

    tool = Tool(note)
    assert "description" not in tool.definition["function"]
    assert tool.description is None
    assert tool.parameters == {
        "type": "object",
        "properties": {"text": {}, "tags": {"default": None}},
        "required": ["text"],
        "additionalProperties": False,
    }


def test_awkward_parameter_names_and_kinds() -> None:
    def odd(json: str, model_config: int, /, schema: bool = False, *, copy: str = "x") -> str:
        return f"{json}|{model_config}|{schema}|{copy}"

    tool = Tool(odd)
    assert list(tool.parameters["properties"]) == ["json", "model_config", "schema", "copy"]
    [result] = Toolset([tool]).run_calls(
        [ToolCall("odd", {"json": "j", "model_config": 2, "copy": "c"})]
    )
    assert result.status == "ok"
    assert result.content == "j|2|False|c"


def test_callable_objects_methods_and_partials() -> None:
    class Counter:
        def __init__(self) -> None:
            self.count = 0

        def bump(self, by: int = 1) -> int:
            """Add to the counter."""
            self.count += by
            return self.count

        def __call__(self, by: int) -> int:
            return self.bump(by)

    counter = Counter()
    toolset = Toolset(
        [
            counter.bump,
            Tool(counter, name="call_counter"),
            Tool(functools.partial(counter.bump, 5), name="five"),
        ]
    )
    assert list(toolset.tools) == ["bump", "call_counter", "five"]
    results = toolset.run_calls(
        [ToolCall("bump", {"by": 2}), ToolCall("call_counter", {"by": 3}), ToolCall("five", {})]
    )
    assert [r.result for r in results] == [2, 5, 10]
    with pytest.raises(ConfigurationError, match="pass name="):
        Tool(functools.partial(counter.bump, 5))


class _Opaque:
    pass


def _bad_definitions() -> list[Any]:
    def star_args(*names: str) -> None: ...

    def star_kwargs(**options: str) -> None: ...

    def context_second(x: int, ctx: ToolContext[None]) -> None: ...

    def context_keyword(*, ctx: ToolContext[None], x: int) -> None: ...

    def opaque(thing: _Opaque) -> None: ...

    def callback(fn: Callable[[int], int]) -> None: ...

    def unresolvable(x: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
        ...

    def fine(x: int) -> None: ...

    return [
        pytest.param(lambda: Tool(42), "must be callable", id="not-callable"),  # type: ignore[arg-type]
        pytest.param(lambda: Tool(star_args), r"\*args and \*\*kwargs", id="star-args"),
        pytest.param(lambda: Tool(star_kwargs), r"\*args and \*\*kwargs", id="star-kwargs"),
        pytest.param(lambda: Tool(context_second), "must come first", id="context-second"),
        pytest.param(lambda: Tool(context_keyword), "must be positional", id="context-keyword"),
        pytest.param(lambda: Tool(opaque), "cannot be validated", id="opaque-type"),
        pytest.param(lambda: Tool(callback), "no JSON schema", id="callable-type"),
        pytest.param(lambda: Tool(unresolvable), "cannot read its signature", id="forward-ref"),
        pytest.param(lambda: Tool(lambda x: x), "pass name=", id="lambda-name"),
        pytest.param(lambda: Tool(fine, name="has space"), "must match", id="bad-name"),
        pytest.param(lambda: Tool(fine, name="x" * 65), "must match", id="long-name"),
        pytest.param(lambda: Tool(fine, name=""), "must match", id="empty-name"),
        pytest.param(lambda: Tool(fine, on_error="ignore"), "on_error", id="on-error"),  # type: ignore[arg-type]
        pytest.param(lambda: Tool(fine, requires_approval="yes"), "True or False", id="approval"),  # type: ignore[arg-type]
        pytest.param(lambda: Tool(Tool(fine)), "not another Tool", id="tool-of-tool"),  # type: ignore[arg-type]
        pytest.param(lambda: Toolset([fine, Tool(fine)]), "two tools", id="duplicate"),
        pytest.param(lambda: Toolset("fine"), "a list", id="string-list"),  # type: ignore[arg-type]
    ]


@pytest.mark.parametrize(("build", "message"), _bad_definitions())
def test_bad_definitions_are_configuration_errors(build: Callable[[], Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


def test_a_toolset_in_order_with_its_definitions() -> None:
    toolset = Toolset([get_order, Tool(refund, requires_approval=True)])

    assert toolset.definitions == [as_tool(get_order).definition, as_tool(refund).definition]
    assert len(toolset) == 2 and bool(toolset) and not Toolset()
    assert "refund" in toolset and "nope" not in toolset
    assert toolset["refund"].requires_approval is True


# -- the value types -------------------------------------------------------------------


def test_tool_call_forms_and_ids() -> None:
    raw = ToolCall("get_order", '{"order_id": "A-42"}', id="call_1")
    assert (raw.name, raw.arguments, raw.id) == ("get_order", '{"order_id": "A-42"}', "call_1")
    assert raw.to_openai() == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_order", "arguments": '{"order_id": "A-42"}'},
    }
    from_dict = ToolCall("get_order", {"order_id": "Zürich"})
    assert json.loads(from_dict.arguments) == {"order_id": "Zürich"}
    assert "Zürich" in from_dict.arguments  # not escaped
    assert ToolCall("ping").arguments == "{}"
    ids = {ToolCall("ping").id for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in ids)
    with pytest.raises(dataclasses.FrozenInstanceError):
        raw.name = "other"  # type: ignore[misc]


def test_approval_value_types() -> None:
    pending = PendingApproval(tool_call_id="c1", tool_name="refund", arguments={"amount": 5.0})
    assert (pending.tool_call_id, pending.tool_name, pending.arguments) == (
        "c1",
        "refund",
        {"amount": 5.0},
    )
    assert Denied().reason is None
    assert Denied("too much").reason == "too much"
    assert Denied("x") == Denied("x")


@pytest.mark.parametrize(
    ("raw", "replayed", "kept"),
    [
        ('{"a": 1}', '{"a": 1}', None),
        ("", "{}", None),
        ("  ", "{}", None),
        ('{"a": ', "{}", '{"a": '),
        ("{", "{}", "{"),
        ("[1, 2]", "{}", "[1, 2]"),
        ("null", "{}", "null"),
        ("not json", "{}", "not json"),
    ],
)
def test_replay_arguments_is_always_a_json_object(
    raw: str, replayed: str, kept: str | None
) -> None:
    assert replay_arguments(raw) == (replayed, kept)
    assert isinstance(json.loads(replay_arguments(raw)[0]), dict)


# -- running calls ---------------------------------------------------------------------


def test_calls_run_and_answer_in_call_order(run: Runner) -> None:
    toolset = Toolset([get_order, refund])
    calls = [
        ToolCall("refund", '{"order_id": "A-1", "amount": "2.5"}', id="call_r"),
        ToolCall("get_order", '{"order_id": "A-2"}', id="call_g"),
    ]

    results = run(toolset, calls, deps=Deps(shop="Ada's"), session_key=7)

    assert [r.tool_call_id for r in results] == ["call_r", "call_g"]
    refund_result, order_result = results
    assert refund_result.status == "ok"
    assert refund_result.arguments == {"order_id": "A-1", "amount": 2.5}  # validated, converted
    assert refund_result.content == "refunded 2.50 of A-1 at Ada's (call_r)"
    assert refund_result.result == refund_result.content
    assert refund_result.error is None and refund_result.raw_arguments is None
    assert order_result.result == {"order_id": "A-2", "status": "shipped"}
    assert order_result.content == '{"order_id":"A-2","status":"shipped"}'
    assert order_result.arguments == {"order_id": "A-2", "include_items": False}
    assert all(r.duration_s >= 0 for r in results)
    assert order_result.to_message() == {
        "role": "tool",
        "tool_call_id": "call_g",
        "name": "get_order",
        "content": '{"order_id":"A-2","status":"shipped"}',
    }


def test_the_context_carries_deps_id_key_and_agent(run: Runner) -> None:
    seen: list[ToolContext[Any]] = []

    def look(ctx: ToolContext[Deps]) -> str:
        seen.append(ctx)
        return "ok"

    agent = agent_session.Agent(TestModel())
    deps = Deps(shop="s")
    run(
        Toolset([look]),
        [ToolCall("look", "{}", id="c9")],
        deps=deps,
        session_key=(1, "a"),
        agent=agent,
    )
    run(Toolset([look]), [ToolCall("look", "", id="c10")])

    assert seen[0] == ToolContext(deps=deps, tool_call_id="c9", session_key=(1, "a"), agent=agent)
    assert seen[0].deps is deps
    assert seen[1] == ToolContext(deps=None, tool_call_id="c10", session_key=None, agent=None)


def test_invalid_json_arguments_are_an_error_result_that_keeps_the_raw_text(run: Runner) -> None:
    ran: list[str] = []

    def lookup(order_id: str) -> str:
        ran.append(order_id)
        return order_id

    [result] = run(Toolset([lookup]), [ToolCall("lookup", '{"order_id": "A-', id="c1")])

    assert ran == []
    assert result.status == "error"
    assert result.raw_arguments == '{"order_id": "A-'
    assert result.arguments == {}
    assert result.error is not None and "not valid JSON" in result.error
    assert result.content == f"Error: {result.error}"
    assert result.result is None


def test_arguments_that_are_not_an_object(run: Runner) -> None:
    [result] = run(Toolset([get_order]), [ToolCall("get_order", '["A-1"]')])

    assert result.status == "error"
    assert result.error is not None and "must be a JSON object, got list" in result.error
    assert result.raw_arguments == '["A-1"]'


def test_invalid_arguments_list_the_errors_without_echoing_the_input(run: Runner) -> None:
    huge = "x" * 200_000

    def sized(count: int, ratio: float, name: str) -> None: ...

    [result] = run(
        Toolset([sized]),
        [ToolCall("sized", {"count": huge, "ratio": "high", "extra": 1})],
    )

    assert result.status == "error"
    assert result.error is not None
    assert "invalid arguments for sized" in result.error
    for line in ("- count: ", "- ratio: ", "- name: Field required", "- extra: Extra inputs"):
        assert line in result.error
    assert "xxxxxxxxxx" not in result.content
    assert len(result.content) < MAX_ERROR_CHARS
    # The parsed arguments are kept for the record, as JSON.
    assert result.arguments["ratio"] == "high"


def test_many_validation_errors_are_capped(run: Runner) -> None:
    def many(items: list[int]) -> None: ...

    [result] = run(Toolset([many]), [ToolCall("many", {"items": ["a"] * 500})])

    assert result.error is not None
    assert result.error.count("\n- ") == 11  # ten errors and the "more" line
    assert "... and 490 more" in result.error


def test_an_unknown_tool_names_the_available_ones(run: Runner) -> None:
    toolset = Toolset([get_order, refund])

    [result] = run(toolset, [ToolCall("delete_everything", "{}", id="c1")])

    assert result.status == "error"
    assert result.name == "delete_everything"
    assert result.error == "unknown tool 'delete_everything'; available tools: get_order, refund"
    [long] = run(toolset, [ToolCall("y" * 5000, "{}")])
    assert long.error is not None and len(long.error) < 200


def test_an_exception_is_an_error_result_by_default(run: Runner) -> None:
    def explode(order_id: str) -> str:
        raise LookupError(f"no order {order_id}")

    def quiet() -> str:
        raise RuntimeError

    results = run(
        Toolset([explode, quiet, get_order]),
        [
            ToolCall("explode", {"order_id": "A-1"}),
            ToolCall("quiet"),
            ToolCall("get_order", {"order_id": "A-2"}),
        ],
    )

    assert [r.status for r in results] == ["error", "error", "ok"]
    assert results[0].error == "explode raised LookupError: no order A-1"
    assert results[0].arguments == {"order_id": "A-1"}
    assert results[1].error == "quiet raised RuntimeError"


def test_on_error_raise_raises_tool_execution_error_from_the_exception() -> None:
    cause = LookupError("no such order")
    ran: list[str] = []

    def explode() -> str:
        raise cause

    def after() -> str:
        ran.append("after")
        return "ran"

    toolset = Toolset([Tool(explode, on_error="raise"), after])
    calls = [ToolCall("explode", id="c1"), ToolCall("after", id="c2")]

    with pytest.raises(ToolExecutionError) as caught:
        toolset.run_calls(calls)
    assert caught.value.tool_name == "explode"
    assert caught.value.tool_call_id == "c1"
    assert caught.value.__cause__ is cause
    assert "LookupError: no such order" in str(caught.value)
    assert ran == []  # sync code stops at the failing call

    with pytest.raises(ToolExecutionError) as caught:
        asyncio.run(toolset.arun_calls(calls))
    assert caught.value.__cause__ is cause
    assert ran == ["after"]  # async code ran the reply's calls together


def test_on_error_raise_still_returns_errors_for_bad_arguments(run: Runner) -> None:
    def strict(x: int) -> int:
        return x

    [result] = run(Toolset([Tool(strict, on_error="raise")]), [ToolCall("strict", '{"x": "no"}')])

    assert result.status == "error"


def test_async_drivers_raise_the_first_failure_in_call_order() -> None:
    async def first() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("first")

    async def second() -> None:
        raise ValueError("second")

    toolset = Toolset([Tool(first, on_error="raise"), Tool(second, on_error="raise")])

    with pytest.raises(ToolExecutionError) as caught:
        asyncio.run(toolset.arun_calls([ToolCall("first"), ToolCall("second")]))

    assert caught.value.tool_name == "first"


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


@pytest.mark.parametrize(
    ("value", "content", "result"),
    [
        ("plain text, as it is", "plain text, as it is", "plain text, as it is"),
        ("", "", ""),
        (None, "null", None),
        (42, "42", 42),
        (
            {"city": "Zürich", "n": [1, 2]},
            '{"city":"Zürich","n":[1,2]}',
            {"city": "Zürich", "n": [1, 2]},
        ),
        (
            Order(order_id="1", status="new"),
            '{"order_id":"1","status":"new"}',
            {"order_id": "1", "status": "new"},
        ),
        (Point(1, 2), '{"x":1,"y":2}', {"x": 1, "y": 2}),
        (
            dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            '"2026-01-02T03:04:05Z"',
            "2026-01-02T03:04:05Z",
        ),
        (dt.date(2026, 1, 2), '"2026-01-02"', "2026-01-02"),
        (
            uuid.UUID(int=1),
            '"00000000-0000-0000-0000-000000000001"',
            "00000000-0000-0000-0000-000000000001",
        ),
        (Color.RED, '"red"', "red"),
        (Decimal("1.50"), '"1.50"', "1.50"),
        ((1, "a"), '[1,"a"]', [1, "a"]),
        (float("nan"), "null", None),
        (b"bytes", '"bytes"', "bytes"),
    ],
)
def test_results_are_made_json_safe(value: Any, content: str, result: Any) -> None:
    assert tool_output(value) == (result, content)

    def give() -> Any:
        return value

    [ran] = Toolset([give]).run_calls([ToolCall("give")])
    assert (ran.status, ran.content, ran.result) == ("ok", content, result)
    json.dumps(ran.result, allow_nan=False)  # storable as it is


def test_a_result_without_json_form_is_a_clear_error(run: Runner) -> None:
    def opaque() -> Any:
        return _Opaque()

    [result] = run(Toolset([opaque]), [ToolCall("opaque")])

    assert result.status == "error"
    assert result.error is not None
    assert result.error.startswith("opaque returned a value that cannot be sent back: _Opaque")
    with pytest.raises(TypeError):
        tool_output(_Opaque())
    with pytest.raises(ToolExecutionError, match="not JSON-safe") as caught:
        Toolset([Tool(opaque, on_error="raise")]).run_calls([ToolCall("opaque")])
    assert isinstance(caught.value.__cause__, TypeError)


# -- sync and async ------------------------------------------------------------------


def test_async_calls_of_one_reply_run_concurrently() -> None:
    barrier = asyncio.Barrier(2)

    async def meet(name: str) -> str:
        # Each call waits for the other: run one after the other, they would time out.
        async with asyncio.timeout(10):
            await barrier.wait()
        return name

    toolset = Toolset([meet])
    results = asyncio.run(
        toolset.arun_calls([ToolCall("meet", {"name": "a"}), ToolCall("meet", {"name": "b"})])
    )

    assert [(r.status, r.result) for r in results] == [("ok", "a"), ("ok", "b")]


def test_sync_tools_run_in_worker_threads_in_async_code() -> None:
    barrier = threading.Barrier(2, timeout=10)
    threads: list[int] = []

    def meet(name: str) -> str:
        threads.append(threading.get_ident())
        barrier.wait()  # both calls are running at once, neither on the loop's thread
        return name

    async def main() -> tuple[int, list[ToolCallResult]]:
        results = await Toolset([meet]).arun_calls(
            [ToolCall("meet", {"name": "a"}), ToolCall("meet", {"name": "b"})]
        )
        return threading.get_ident(), results

    loop_thread, results = asyncio.run(main())

    assert [r.result for r in results] == ["a", "b"]
    assert loop_thread not in threads
    assert len(set(threads)) == 2


def test_sync_code_runs_one_call_after_the_other_on_its_thread() -> None:
    order: list[str] = []
    threads: set[int] = set()

    def step(name: str) -> str:
        threads.add(threading.get_ident())
        order.append(f"start {name}")
        order.append(f"end {name}")
        return name

    Toolset([step]).run_calls([ToolCall("step", {"name": n}) for n in "abc"])

    assert order == ["start a", "end a", "start b", "end b", "start c", "end c"]
    assert threads == {threading.get_ident()}


def test_an_async_tool_from_sync_code_with_and_without_a_running_loop() -> None:
    toolset = Toolset([refund])
    call = ToolCall("refund", {"order_id": "A-1", "amount": 1}, id="c1")

    [outside] = toolset.run_calls([call], deps=Deps(shop="s"))

    async def inside() -> ToolCallResult:
        return toolset.run_call(call, deps=Deps(shop="s"))

    assert outside.content == "refunded 1.00 of A-1 at s (c1)"
    assert asyncio.run(inside()).content == outside.content


def test_a_sync_function_returning_an_awaitable_is_awaited(run: Runner) -> None:
    async def later(x: int) -> int:
        return x * 2

    def deferred(x: int) -> Any:
        return later(x)

    [result] = run(Toolset([deferred]), [ToolCall("deferred", {"x": 21})])

    assert result.result == 42


def test_run_awaitable() -> None:
    async def value() -> int:
        return 5

    async def nested() -> int:
        return run_awaitable(value())

    assert run_awaitable(value()) == 5
    assert asyncio.run(nested()) == 5


# -- approvals -------------------------------------------------------------------------


def test_pending_approvals_carry_validated_arguments() -> None:
    toolset = Toolset([get_order, Tool(refund, requires_approval=True)])

    pending = toolset.pending_approval(
        ToolCall("refund", '{"order_id": "A-1", "amount": "12.5"}', id="c1")
    )

    assert pending == PendingApproval(
        tool_call_id="c1", tool_name="refund", arguments={"order_id": "A-1", "amount": 12.5}
    )
    assert toolset.pending_approval(ToolCall("get_order", {"order_id": "A-1"})) is None
    # Invalid arguments never wait for a person: the error goes back at once.
    assert toolset.pending_approval(ToolCall("refund", '{"order_id": ')) is None
    assert toolset.pending_approval(ToolCall("refund", {"order_id": "A-1"})) is None
    assert toolset.pending_approval(ToolCall("unknown")) is None


def test_a_denied_call_tells_the_model_why() -> None:
    toolset = Toolset([Tool(refund, requires_approval=True)])
    call = ToolCall("refund", {"order_id": "A-1", "amount": 3}, id="c1")

    with_reason = toolset.denied(call, Denied("over the limit"))
    without = toolset.denied(call, False)

    assert with_reason.status == "denied"
    assert with_reason.content == "The call to refund was denied by the user: over the limit"
    assert with_reason.error == "over the limit"
    assert with_reason.arguments == {"order_id": "A-1", "amount": 3.0}
    assert with_reason.to_message()["tool_call_id"] == "c1"
    assert without.content == "The call to refund was denied by the user."
    assert without.error is None


# -- the model seam ----------------------------------------------------------------------


def test_tools_are_sent_only_when_set() -> None:
    model = LiteLLMModel()
    definitions = Toolset([get_order]).definitions
    with_tools = ModelRequest(model="m", messages=[], tools=definitions)

    assert model._kwargs(with_tools)["tools"] == definitions
    assert "tools" not in model._kwargs(ModelRequest(model="m", messages=[]))
    assert "tools" not in model._kwargs(ModelRequest(model="m", messages=[], tools=[]))


def test_tool_calls_are_read_from_a_litellm_message() -> None:
    def call(id: str | None, name: str, arguments: Any) -> Any:
        function = type("F", (), {"name": name, "arguments": arguments})()
        return type("C", (), {"id": id, "function": function})()

    message = type(
        "M",
        (),
        {
            "tool_calls": [
                call("c1", "a", '{"x": 1}'),
                call("c2", "b", '{"x": '),
                call("c3", "c", None),
                call("c4", "d", {"x": "é"}),
                call(None, "e", "{}"),
            ]
        },
    )()

    calls = _tool_calls(message)

    assert [(c.id, c.name, c.arguments) for c in calls[:4]] == [
        ("c1", "a", '{"x": 1}'),
        ("c2", "b", '{"x": '),
        ("c3", "c", ""),
        ("c4", "d", '{"x": "é"}'),
    ]
    assert calls[4].id.startswith("call_")
    assert _tool_calls(type("M", (), {"tool_calls": None})()) == ()


# -- test doubles --------------------------------------------------------------------


class Reply(BaseModel):
    answer: str


def _request(tools: list[Any] | None, messages: list[dict[str, Any]] | None = None) -> ModelRequest:
    return ModelRequest(
        model="test",
        messages=messages or [{"role": "user", "content": "hi"}],
        output_schema=Reply,
        tools=tools,
    )


def test_test_model_calls_each_tool_once_then_answers() -> None:
    toolset = Toolset([get_order, refund, Tool(_constrained)])
    model = TestModel()

    first = model.complete(_request(toolset.definitions))

    assert first.finish_reason == "tool_calls"
    assert first.text == ""
    assert [c.name for c in first.tool_calls] == ["get_order", "refund", "_constrained"]
    assert len({c.id for c in first.tool_calls}) == 3
    # The generated arguments pass validation.
    for call in first.tool_calls:
        assert toolset.prepare(call).error is None, call
    assert first.usage.completion_tokens > 0

    results = toolset.run_calls(list(first.tool_calls), deps=Deps(shop="s"))
    history = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [c.to_openai() for c in first.tool_calls],
        },
        *(r.to_message() for r in results),
    ]
    second = model.complete(_request(toolset.definitions, history))

    assert second.tool_calls == ()
    assert Reply.model_validate_json(second.text)
    assert len(model.requests) == 2


def _constrained(
    count: Annotated[int, Field(ge=3, le=5)], code: Annotated[str, Field(pattern="^x")] = "xy"
) -> int:
    return count


async def test_test_model_selects_tools_and_stays_unchanged_without_them() -> None:
    definitions = Toolset([get_order, refund]).definitions

    chosen = await TestModel(call_tools=["refund"]).acomplete(_request(definitions))
    assert [c.name for c in chosen.tool_calls] == ["refund"]

    none = TestModel(call_tools="none").complete(_request(definitions))
    assert none.tool_calls == () and Reply.model_validate_json(none.text)

    plain = TestModel().complete(_request(None))
    assert plain.tool_calls == () and plain.finish_reason == "stop"

    with pytest.raises(AssertionError, match="does not carry"):
        TestModel(call_tools=["missing"]).complete(_request(definitions))
    with pytest.raises(ValueError, match="call_tools"):
        TestModel(call_tools="some")  # type: ignore[arg-type]


def test_scripted_replies_may_be_tool_calls() -> None:
    call = ToolCall("get_order", {"order_id": "A-1"}, id="c1")
    model = TestModel(replies=[call, [call, ToolCall("refund", "{", id="c2")], "done"])
    definitions = Toolset([get_order]).definitions

    replies = [model.complete(_request(definitions)) for _ in range(3)]

    assert replies[0].tool_calls == (call,)
    assert [c.id for c in replies[1].tool_calls] == ["c1", "c2"]
    assert replies[1].tool_calls[1].arguments == "{"
    assert (replies[2].text, replies[2].tool_calls) == ("done", ())


async def test_function_model_scripts_a_tool_turn() -> None:
    toolset = Toolset([get_order])

    def script(messages: list[dict[str, Any]]) -> Any:
        if messages[-1]["role"] == "tool":
            return {"answer": f"status: {json.loads(messages[-1]['content'])['status']}"}
        return ToolCall("get_order", {"order_id": "A-9"}, id="c1")

    async def ascript(messages: list[dict[str, Any]]) -> Any:
        return [ToolCall("get_order", {"order_id": "A-9"})] if len(messages) == 1 else "x"

    for model in (FunctionModel(script), FunctionModel(ascript)):
        first = await model.acomplete(_request(toolset.definitions))
        assert [c.name for c in first.tool_calls] == ["get_order"]
        assert first.finish_reason == "tool_calls"

    model = FunctionModel(script)
    first = model.complete(_request(toolset.definitions))
    [result] = toolset.run_calls(list(first.tool_calls))
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [first.tool_calls[0].to_openai()]},
        result.to_message(),
    ]
    final = model.complete(_request(toolset.definitions, history))
    assert json.loads(final.text) == {"answer": "status: shipped"}

    with pytest.raises(TypeError, match="mixes"):
        FunctionModel(lambda messages: [ToolCall("x"), "y"]).complete(_request(None))
    assert FunctionModel(lambda messages: []).complete(_request(None)).text == "[]"
