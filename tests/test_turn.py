"""The pure turn core, step by step: each test plays the model and drives the flow."""

from __future__ import annotations

import copy
from collections.abc import Generator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from agent_session import (
    CONTEXT_VERSION,
    Agent,
    ContextWindowError,
    InputValidationError,
    ModelCallError,
    ModelRequest,
    ModelResponse,
    OutputValidationError,
    Result,
    TextInput,
    Usage,
    _turn,
)
from agent_session.context import load_context
from agent_session.testing import FunctionModel, TestModel

NOW = datetime(2026, 4, 1, 12, 30, 0, 250000, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


class Args(BaseModel):
    company: str
    since: date = date(2020, 1, 1)


class Question(BaseModel):
    topic: str
    urgency: int = Field(ge=1, le=5)


class Answer(BaseModel):
    answer: str
    confidence: float = Field(ge=0, le=1)


def _agent(**kwargs: Any) -> Agent[Any]:
    kwargs.setdefault("instruction", "You support {{ company }} since {{ since }}.")
    kwargs.setdefault("instruction_schema", Args)
    return Agent(TestModel(), **kwargs)


def _response(text: str, prompt: int = 10, completion: int = 5, **kwargs: Any) -> ModelResponse:
    usage = Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
    kwargs.setdefault("model", "provider-model-1")
    kwargs.setdefault("finish_reason", "stop")
    return ModelResponse(text=text, usage=usage, **kwargs)


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value)


# -- validate_input -----------------------------------------------------------


def test_validate_input_from_a_string() -> None:
    turn_input = _turn.validate_input(_agent(), "Hello")
    assert turn_input.value == TextInput(message="Hello")
    assert turn_input.content == "Hello"


def test_validate_input_from_a_dict_and_an_instance() -> None:
    agent = _agent()
    assert _turn.validate_input(agent, {"message": "a"}).content == "a"
    instance = TextInput(message="b")
    turn_input = _turn.validate_input(agent, instance)
    assert turn_input.value is instance
    assert turn_input.content == "b"


def test_validate_input_multi_field_is_compact_json() -> None:
    agent = _agent(input_schema=Question)
    turn_input = _turn.validate_input(agent, {"topic": "Grüße 🙂", "urgency": "3"})
    assert turn_input.value == Question(topic="Grüße 🙂", urgency=3)
    assert turn_input.content == '{"topic":"Grüße 🙂","urgency":3}'
    assert turn_input.content == turn_input.value.model_dump_json()


def test_validate_input_errors() -> None:
    agent = _agent(input_schema=Question)
    with pytest.raises(InputValidationError) as info:
        _turn.validate_input(agent, {"topic": "x", "urgency": 9})
    assert info.value.source == "input"
    assert info.value.errors[0]["loc"] == ("urgency",)
    assert isinstance(info.value.__cause__, ValidationError)

    with pytest.raises(InputValidationError, match="one field"):
        _turn.validate_input(agent, "plain text")


def test_validate_input_size() -> None:
    agent = _agent(max_input_bytes=8)
    assert _turn.validate_input(agent, "🙂🙂").content == "🙂🙂"  # 8 bytes
    with pytest.raises(InputValidationError) as info:
        _turn.validate_input(agent, "🙂🙂a")  # 9 bytes, 3 characters
    assert info.value.source == "size"
    assert info.value.errors == []
    assert "9 bytes" in str(info.value)


# -- plan_first_turn / plan_next_turn --------------------------------------------


def test_plan_first_turn() -> None:
    agent = _agent()
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)

    assert plan.now == NOW
    assert plan.input == TextInput(message="Hi")
    assert plan.instruction_args == {"company": "Acme", "since": "2020-01-01"}
    [system] = plan.history
    assert system["role"] == "system"
    assert system["content"] == "You support Acme since 2020-01-01."
    assert "meta" not in system  # created with the document
    user = plan.user_message
    assert (user["role"], user["content"]) == ("user", "Hi")
    assert user["meta"] == {"created_at": user["meta"]["created_at"]}  # the input is the text
    assert _when(user["meta"]["created_at"]) == NOW


def test_plan_first_turn_uses_the_current_time_by_default() -> None:
    before = datetime.now(UTC)
    plan = _turn.plan_first_turn(_agent(), "Hi", {"company": "Acme"})
    assert before <= plan.now <= datetime.now(UTC)
    assert plan.now.tzinfo is not None


def test_plan_first_turn_without_instruction() -> None:
    agent = Agent(TestModel())
    plan = _turn.plan_first_turn(agent, "Hi", None, now=NOW)
    assert plan.history == []
    assert plan.instruction_args is None


def test_plan_first_turn_accepts_a_validated_input() -> None:
    agent = _agent()
    turn_input = _turn.validate_input(agent, "Hi")
    plan = _turn.plan_first_turn(agent, turn_input, {"company": "Acme"}, now=NOW)
    assert plan.input is turn_input.value


def test_plan_first_turn_validates_before_rendering() -> None:
    agent = _agent()
    with pytest.raises(InputValidationError) as info:
        _turn.plan_first_turn(agent, "Hi", {"since": "not a date"}, now=NOW)
    assert info.value.source == "instruction_args"
    assert {e["loc"] for e in info.value.errors} == {("company",), ("since",)}


def test_plan_next_turn_continues_a_document() -> None:
    agent = _agent()
    first = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    result = _turn.drive(
        _turn.model_flow(agent, first, "json_schema"), lambda _: _response("Hello")
    )
    document = _turn.next_document(first, result, None)

    plan = _turn.plan_next_turn(document, _turn.validate_input(agent, "Again"), now=LATER)

    assert plan.history == document["messages"]
    assert plan.instruction_args == {"company": "Acme", "since": "2020-01-01"}
    assert plan.user_message["content"] == "Again"
    assert _when(plan.user_message["meta"]["created_at"]) == LATER
    assert plan.now == LATER


# -- outgoing_messages -------------------------------------------------------------


def test_outgoing_messages_strip_meta() -> None:
    agent = _agent()
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    assert _turn.outgoing_messages(agent, plan, "json_schema") == [
        {"role": "system", "content": "You support Acme since 2020-01-01."},
        {"role": "user", "content": "Hi"},
    ]


def test_outgoing_messages_add_the_schema_hint_without_structured_output() -> None:
    agent = _agent(output_schema=Answer)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    history_before = copy.deepcopy(plan.history)

    structured = _turn.outgoing_messages(agent, plan, "json_schema")
    prompted = _turn.outgoing_messages(agent, plan, "prompt")

    assert structured[0]["content"] == "You support Acme since 2020-01-01."
    assert agent.schema_hint is not None
    assert prompted[0] == {
        "role": "system",
        "content": f"You support Acme since 2020-01-01.\n\n{agent.schema_hint}",
    }
    assert prompted[1:] == structured[1:]
    assert plan.history == history_before, "the plan is not modified"


def test_outgoing_messages_insert_a_system_message_for_the_hint() -> None:
    agent = Agent(TestModel(), output_schema=Answer)
    plan = _turn.plan_first_turn(agent, "Hi", None, now=NOW)
    messages = _turn.outgoing_messages(agent, plan, "prompt")
    assert messages == [
        {"role": "system", "content": agent.schema_hint},
        {"role": "user", "content": "Hi"},
    ]
    assert _turn.outgoing_messages(agent, plan, "json_schema") == [
        {"role": "user", "content": "Hi"}
    ]


def test_outgoing_messages_no_hint_for_plain_text() -> None:
    agent = Agent(TestModel())
    plan = _turn.plan_first_turn(agent, "Hi", None, now=NOW)
    assert _turn.outgoing_messages(agent, plan, "prompt") == [{"role": "user", "content": "Hi"}]


# -- model_flow, by hand -----------------------------------------------------------


def _finish(flow: Generator[ModelRequest, ModelResponse, Result[Any]], reply: ModelResponse) -> Any:
    with pytest.raises(StopIteration) as stop:
        flow.send(reply)
    return stop.value.value


def test_model_flow_one_call() -> None:
    agent = _agent(output_schema=Answer, model_settings={"temperature": 0})
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    flow = _turn.model_flow(agent, plan, "json_schema")

    request = next(flow)
    assert isinstance(request, ModelRequest)
    assert request.model == agent.model_name
    assert request.messages == _turn.outgoing_messages(agent, plan, "json_schema")
    assert request.response_format == agent.response_format
    assert request.settings == {"temperature": 0}
    assert request.output_schema is Answer

    result = _finish(flow, _response('{"answer": "42", "confidence": 0.5}', cost=0.01))

    assert isinstance(result, Result)
    assert result.output == Answer(answer="42", confidence=0.5)
    assert result.text == '{"answer": "42", "confidence": 0.5}'
    assert result.messages == [
        *request.messages,
        {"role": "assistant", "content": '{"answer": "42", "confidence": 0.5}'},
    ]
    assert result.usage == Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15)
    assert result.cost == 0.01
    assert result.model == "provider-model-1"
    assert result.finish_reason == "stop"
    assert result.attempts == 1
    assert result.duration_s > 0
    assert result.input is plan.input


def test_model_flow_without_structured_output_sends_no_response_format() -> None:
    agent = _agent(output_schema=Answer)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    request = next(_turn.model_flow(agent, plan, "prompt"))
    assert request.response_format is None
    assert request.messages[0]["content"].endswith(str(agent.schema_hint))


def test_model_flow_reasks_then_succeeds() -> None:
    agent = _agent(output_schema=Answer, output_retries=2)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    flow = _turn.model_flow(agent, plan, "json_schema")
    first = next(flow)

    second = flow.send(_response("no json here", 10, 3, cost=0.1))
    assert second.messages[: len(first.messages)] == first.messages
    assert second.messages[len(first.messages)] == {"role": "assistant", "content": "no json here"}
    feedback = second.messages[-1]
    assert feedback["role"] == "user"
    assert "not valid" in feedback["content"]
    assert "Validation errors" in feedback["content"]
    assert len(second.messages) == len(first.messages) + 2

    third = flow.send(_response('{"answer": "x", "confidence": 7}', 20, 4, cost=None))
    assert len(third.messages) == len(first.messages) + 4
    assert "confidence" in third.messages[-1]["content"]

    result = _finish(flow, _response('{"answer": "x", "confidence": 0.7}', 30, 5, cost=0.2))
    assert result.attempts == 3
    assert result.usage == Usage(prompt_tokens=60, completion_tokens=12, total_tokens=72)
    assert result.cost == pytest.approx(0.3)
    assert result.messages == [
        *first.messages,
        {"role": "assistant", "content": '{"answer": "x", "confidence": 0.7}'},
    ]


def test_model_flow_gives_up_after_output_retries() -> None:
    agent = _agent(output_schema=Answer, output_retries=1)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    flow = _turn.model_flow(agent, plan, "json_schema")
    next(flow)
    flow.send(_response("{}", 1, 1))

    with pytest.raises(OutputValidationError) as info:
        flow.send(_response('{"answer": 1}', 2, 2))

    error = info.value
    assert error.attempts == 2
    assert error.raw_text == '{"answer": 1}'
    assert {e["loc"] for e in error.errors} == {("answer",), ("confidence",)}
    assert error.usage == Usage(prompt_tokens=3, completion_tokens=3, total_tokens=6)
    assert isinstance(error.__cause__, ValidationError)
    assert "Answer" in str(error)


def test_model_flow_with_no_retries_fails_on_the_first_bad_answer() -> None:
    agent = _agent(output_schema=Answer, output_retries=0)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    flow = _turn.model_flow(agent, plan, "json_schema")
    next(flow)
    with pytest.raises(OutputValidationError) as info:
        flow.send(_response("oops"))
    assert info.value.attempts == 1


def test_model_flow_plain_text_takes_any_text() -> None:
    agent = Agent(TestModel())
    plan = _turn.plan_first_turn(agent, "Hi", None, now=NOW)
    flow = _turn.model_flow(agent, plan, "json_schema")
    assert next(flow).response_format is None
    result = _finish(flow, _response("```not json```", model=""))
    assert result.output == "```not json```"
    assert result.model == agent.model_name  # the response named no model
    assert result.cost is None


def test_model_flow_json_object_mode_sends_json_mode_and_the_hint() -> None:
    agent = _agent(output_schema=Answer)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    request = next(_turn.model_flow(agent, plan, "json_object"))
    assert request.response_format == {"type": "json_object"}
    assert request.messages[0]["content"].endswith(str(agent.schema_hint))
    assert request.messages == _turn.outgoing_messages(agent, plan, "prompt")


# -- re-ask feedback and truncated replies ------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        "Sure! " + "x" * 4994,  # prose: Pydantic's error would carry the whole text
        '{"answer": "' + "x" * 4986 + '"}',  # a missing field: it would carry the object
        '{"answer": "' + "x" * 4960 + '", "confidence": "high"}',
    ],
    ids=["prose", "missing-field", "wrong-type"],
)
def test_reask_feedback_names_the_errors_but_never_repeats_the_reply(reply: str) -> None:
    agent = _agent(output_schema=Answer)
    assert len(reply) >= 4990
    with pytest.raises(ValidationError) as info:
        agent.parse_output(reply)

    feedback = _turn.reask_feedback(info.value)

    assert len(feedback) < 600
    assert "x" * 20 not in feedback
    for error in info.value.errors():
        assert error["type"] in feedback


def test_reask_feedback_is_bounded_for_many_errors() -> None:
    class Wide(BaseModel):
        values: list[int]

    with pytest.raises(ValidationError) as info:
        Wide.model_validate_json('{"values": [' + ",".join(['"a"'] * 500) + "]}")
    assert len(info.value.errors()) == 500

    feedback = _turn.reask_feedback(info.value)

    assert len(feedback) <= _turn.FEEDBACK_MAX_CHARS + 200
    assert "(and 490 more)" in feedback
    long_text = _turn.reask_feedback(ValueError("y" * 10_000))
    assert len(long_text) <= _turn.FEEDBACK_MAX_CHARS + 200


def test_a_reply_cut_off_at_the_token_limit_is_not_reasked() -> None:
    agent = _agent(output_schema=Answer, output_retries=2, model_settings={"max_tokens": 64})
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    flow = _turn.model_flow(agent, plan, "json_schema")
    next(flow)

    with pytest.raises(OutputValidationError) as info:
        flow.send(_response('{"answer": "a very long ans', 10, 64, finish_reason="length"))

    error = info.value
    assert error.attempts == 1
    assert "cut off at the token limit" in str(error)
    assert "model_settings['max_tokens'] (now 64)" in str(error)
    assert error.raw_text == '{"answer": "a very long ans'
    assert error.usage == Usage(prompt_tokens=10, completion_tokens=64, total_tokens=74)


def test_a_complete_reply_that_reached_the_token_limit_is_accepted() -> None:
    agent = _agent(output_schema=Answer)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    flow = _turn.model_flow(agent, plan, "json_schema")
    next(flow)
    good = '{"answer": "a", "confidence": 0.5}'
    result = _finish(flow, _response(good, finish_reason="length"))
    assert result.finish_reason == "length"
    assert result.output == Answer(answer="a", confidence=0.5)


# -- retries of failed calls ---------------------------------------------------------


def _failure(status: int | None = 503, retry_after: float | None = None) -> ModelCallError:
    return ModelCallError("down", model="m", status_code=status, retry_after=retry_after)


def test_a_retryable_failure_sleeps_then_sends_the_same_request_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_turn, "RETRY_BASE_DELAY", 1.0)
    monkeypatch.setattr(_turn, "RETRY_MAX_DELAY", 30.0)
    agent = _agent(output_schema=Answer, model_retries=2)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    flow = _turn.model_flow(agent, plan, "json_schema")
    request = next(flow)

    first_wait = flow.throw(_failure(503))
    assert isinstance(first_wait, _turn.Sleep)
    assert 0.5 <= first_wait.seconds <= 1.0  # backoff 1 s, with jitter
    assert flow.send(None) == request  # with the time left of turn_timeout
    second_wait = flow.throw(_failure(None))  # a timeout
    assert 1.0 <= second_wait.seconds <= 2.0  # doubled
    assert flow.send(None) == request  # with the time left of turn_timeout

    result = _finish(flow, _response('{"answer": "a", "confidence": 0.5}', 10, 5))
    assert result.attempts == 3  # the failed calls count
    assert result.usage == Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15)


def test_retries_stop_after_model_retries() -> None:
    agent = _agent(output_schema=Answer, model_retries=1)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    flow = _turn.model_flow(agent, plan, "json_schema")
    next(flow)
    assert isinstance(flow.throw(_failure(429)), _turn.Sleep)
    assert isinstance(flow.send(None), ModelRequest)

    last = _failure(429)
    with pytest.raises(ModelCallError) as info:
        flow.throw(last)
    assert info.value is last
    assert info.value.attempts == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_failure_that_cannot_succeed_later_is_not_retried(status: int) -> None:
    agent = _agent(output_schema=Answer, model_retries=5)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    flow = _turn.model_flow(agent, plan, "json_schema")
    next(flow)
    with pytest.raises(ModelCallError) as info:
        flow.throw(_failure(status))
    assert info.value.attempts == 1


def test_a_context_window_error_is_not_retried() -> None:
    agent = _agent(output_schema=Answer, model_retries=5)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    flow = _turn.model_flow(agent, plan, "json_schema")
    next(flow)
    with pytest.raises(ContextWindowError):
        flow.throw(ContextWindowError("too long", model="m", status_code=400))


def test_retry_after_is_honoured_and_capped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_turn, "RETRY_BASE_DELAY", 0.5)
    monkeypatch.setattr(_turn, "RETRY_MAX_DELAY", 30.0)
    agent = _agent(output_schema=Answer, model_retries=2)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    flow = _turn.model_flow(agent, plan, "json_schema")
    next(flow)

    with caplog.at_level("WARNING", logger="agent_session"):
        assert flow.throw(_failure(429, retry_after=7.0)) == _turn.Sleep(7.0)
        flow.send(None)
        assert flow.throw(_failure(429, retry_after=86_400.0)) == _turn.Sleep(30.0)

    messages = [record.getMessage() for record in caplog.records]
    assert all(record.name.startswith("agent_session") for record in caplog.records)
    assert any("retry 1 of 2 in 7.00s" in message for message in messages)
    assert any("asked to wait 86400s" in message and "30s" in message for message in messages)


def test_retry_delay() -> None:
    assert _turn.retry_delay(1, None, base=1.0, cap=30.0, jitter=lambda: 1.0) == 1.0
    assert _turn.retry_delay(1, None, base=1.0, cap=30.0, jitter=lambda: 0.0) == 0.5
    assert _turn.retry_delay(4, None, base=1.0, cap=30.0, jitter=lambda: 1.0) == 8.0
    assert _turn.retry_delay(20, None, base=1.0, cap=30.0, jitter=lambda: 1.0) == 30.0
    assert _turn.retry_delay(1, 2.5, base=1.0, cap=30.0) == 2.5
    assert _turn.retry_delay(1, 0.0, base=1.0, cap=30.0) == 0.0
    assert _turn.retry_delay(1, 500.0, base=1.0, cap=30.0) == 30.0


def test_drive_answers_the_sleeps_of_a_retrying_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    agent = _agent(output_schema=Answer, model_retries=2)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    slept: list[float] = []
    monkeypatch.setattr(_turn.time, "sleep", slept.append)
    calls: list[ModelRequest] = []

    def complete(request: ModelRequest) -> ModelResponse:
        calls.append(request)
        if len(calls) < 3:
            raise _failure(503)
        return _response('{"answer": "a", "confidence": 0.5}')

    result = _turn.drive(_turn.model_flow(agent, plan, "json_schema"), _handler(complete))

    assert len(calls) == 3
    assert slept == [0.0, 0.0]  # the test setting: no real waits
    assert result.attempts == 3


def _handler(complete: Any) -> Any:
    model = FunctionModel(lambda messages: "unused")
    model.complete = complete  # type: ignore[method-assign]
    return _turn.model_handler(model)


# -- next_document ---------------------------------------------------------------


def _first_document(agent: Agent[Any], cost: float | None = 0.25) -> tuple[Any, dict[str, Any]]:
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    reply = _response('{"answer": "Hello", "confidence": 1}', 10, 5, cost=cost)
    result = _turn.drive(_turn.model_flow(agent, plan, "json_schema"), lambda _: reply)
    return result, _turn.next_document(plan, result, None)


def test_next_document_first_turn() -> None:
    agent = _agent(output_schema=Answer)
    result, document = _first_document(agent)

    assert document["version"] == CONTEXT_VERSION
    assert document["turns"] == 1
    assert document["usage"] == {"prompt_tokens": 10, "completion_tokens": 5}
    assert document["cost"] == 0.25
    assert _when(document["created_at"]) == NOW
    assert document["created_at"] == document["updated_at"]
    assert document["instruction_args"] == {"company": "Acme", "since": "2020-01-01"}
    system, user, assistant = document["messages"]
    assert system["role"] == "system"
    assert "input" not in user["meta"]
    assert assistant["role"] == "assistant"
    assert assistant["content"] == result.text
    # Only what cannot be derived: no output (it is the content), no time (the user
    # message's), no attempts (one), no total (the sum).
    assert assistant["meta"] == {
        "model": "provider-model-1",
        "usage": document["usage"],
        "cost": 0.25,
        "finish_reason": "stop",
    }

    context = load_context(document)
    assert context.turns == 1
    assert context.chat_messages() == result.messages
    assert context.to_document() == {**document, "path": [], "next": 1}
    reply = context.messages[-1]
    assert reply.parse_output(agent) == Answer(answer="Hello", confidence=1.0)
    assert reply.meta.attempts == 1
    assert reply.meta.created_at == NOW
    assert reply.meta.usage == Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15)
    assert context.messages[1].parse_input(agent) == TextInput(message="Hi")


def test_next_document_leaves_out_unknown_cost_and_missing_arguments() -> None:
    agent = Agent(TestModel(), output_schema=Answer)
    plan = _turn.plan_first_turn(agent, "Hi", None, now=NOW)
    reply = _response('{"answer": "a", "confidence": 0}')
    result = _turn.drive(_turn.model_flow(agent, plan, "json_schema"), lambda _: reply)
    document = _turn.next_document(plan, result, None)
    assert "cost" not in document
    assert "cost" not in document["messages"][-1]["meta"]
    assert "instruction_args" not in document
    load_context(document)


def test_next_document_later_turn_accumulates_and_keeps_the_previous() -> None:
    agent = _agent(output_schema=Answer)
    _, previous = _first_document(agent)
    frozen = copy.deepcopy(previous)

    plan = _turn.plan_next_turn(previous, _turn.validate_input(agent, "More"), now=LATER)
    reply = _response('{"answer": "More", "confidence": 0.5}', 30, 7, cost=0.5)
    result = _turn.drive(_turn.model_flow(agent, plan, "json_schema"), lambda _: reply)
    document = _turn.next_document(plan, result, previous)

    assert previous == frozen, "the previous document is not modified"
    assert document is not previous
    assert document["messages"] is not previous["messages"]
    assert document["turns"] == 2
    assert document["usage"] == {"prompt_tokens": 40, "completion_tokens": 12}
    assert document["cost"] == pytest.approx(0.75)
    assert document["created_at"] == previous["created_at"]
    assert _when(document["updated_at"]) == LATER
    assert document["instruction_args"] == previous["instruction_args"]
    assert document["messages"][: len(previous["messages"])] == previous["messages"]
    assert [m["role"] for m in document["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert load_context(document).turns == 2


@pytest.mark.parametrize(
    ("before", "now", "after"),
    [(None, None, None), (None, 0.5, 0.5), (0.25, None, 0.25), (0.25, 0.5, 0.75)],
)
def test_next_document_cost_is_summed_when_known(
    before: float | None, now: float | None, after: float | None
) -> None:
    agent = _agent(output_schema=Answer)
    _, previous = _first_document(agent, cost=before)
    plan = _turn.plan_next_turn(previous, _turn.validate_input(agent, "More"), now=LATER)
    reply = _response('{"answer": "a", "confidence": 0}', cost=now)
    result = _turn.drive(_turn.model_flow(agent, plan, "json_schema"), lambda _: reply)
    document = _turn.next_document(plan, result, previous)
    assert document.get("cost") == (pytest.approx(after) if after is not None else None)


def test_next_document_tolerates_a_previous_document_without_totals() -> None:
    agent = Agent(TestModel())
    previous = {
        "version": 2,
        "messages": [],
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }
    plan = _turn.plan_next_turn(previous, _turn.validate_input(agent, "Hi"), now=LATER)
    result = _turn.drive(
        _turn.model_flow(agent, plan, "json_schema"), lambda _: _response("ok", 1, 1)
    )
    document = _turn.next_document(plan, result, previous)
    assert document["turns"] == 1
    assert document["usage"] == {"prompt_tokens": 1, "completion_tokens": 1}
    assert document["created_at"] == "2026-01-01T00:00:00Z"
    load_context(document)


# -- drive / adrive ------------------------------------------------------------------


def _recovering_flow(log: list[Any]) -> Generator[str, Any, str]:
    try:
        answer = yield "first"
        log.append(answer)
    except ValueError as exc:
        log.append(f"caught {exc}")
        answer = yield "second"
        log.append(answer)
    return f"done with {answer}"


def _failing_handler(op: str) -> str:
    if op == "first":
        raise ValueError("boom")
    return f"answer to {op}"


async def _afailing_handler(op: str) -> str:
    return _failing_handler(op)


def test_drive_sends_each_answer() -> None:
    log: list[Any] = []
    assert _turn.drive(_recovering_flow(log), lambda op: f"answer to {op}") == (
        "done with answer to first"
    )
    assert log == ["answer to first"]


def test_drive_throws_a_handler_error_into_the_flow() -> None:
    log: list[Any] = []
    assert _turn.drive(_recovering_flow(log), _failing_handler) == "done with answer to second"
    assert log == ["caught boom", "answer to second"]


async def test_adrive_throws_a_handler_error_into_the_flow() -> None:
    log: list[Any] = []
    result = await _turn.adrive(_recovering_flow(log), _afailing_handler)
    assert result == "done with answer to second"
    assert log == ["caught boom", "answer to second"]


def _closing_flow(log: list[str]) -> Generator[str, Any, str]:
    try:
        yield "op"
    finally:
        log.append("flow cleaned up")
    return "unreachable"


def test_drive_propagates_an_error_the_flow_does_not_handle() -> None:
    log: list[str] = []
    error = ModelCallError("provider down", model="m", status_code=503)

    def handler(op: str) -> str:
        raise error

    with pytest.raises(ModelCallError) as info:
        _turn.drive(_closing_flow(log), handler)
    assert info.value is error
    assert log == ["flow cleaned up"], "the error was raised inside the flow"


async def test_adrive_propagates_an_error_the_flow_does_not_handle() -> None:
    log: list[str] = []

    async def handler(op: str) -> str:
        raise ModelCallError("timeout", model="m")

    with pytest.raises(ModelCallError, match="timeout"):
        await _turn.adrive(_closing_flow(log), handler)
    assert log == ["flow cleaned up"]


def test_drive_model_flow_with_a_failing_model() -> None:
    agent = _agent(output_schema=Answer, model_retries=2)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    requests: list[ModelRequest] = []

    def handler(op: ModelRequest | _turn.Sleep) -> ModelResponse | None:
        if isinstance(op, _turn.Sleep):
            return None
        requests.append(op)
        raise ModelCallError("rate limited", model=op.model, status_code=429)

    with pytest.raises(ModelCallError) as info:
        _turn.drive(_turn.model_flow(agent, plan, "json_schema"), handler)
    assert info.value.status_code == 429
    assert info.value.attempts == len(requests) == 3


async def test_adrive_runs_model_flow() -> None:
    agent = _agent(output_schema=Answer)
    plan = _turn.plan_first_turn(agent, "Hi", {"company": "Acme"}, now=NOW)
    replies = iter(["bad", '{"answer": "a", "confidence": 0.1}'])

    async def handler(request: ModelRequest) -> ModelResponse:
        return _response(next(replies))

    result = await _turn.adrive(_turn.model_flow(agent, plan, "json_schema"), handler)
    assert result.attempts == 2
    assert result.output == Answer(answer="a", confidence=0.1)


def test_drive_a_flow_that_yields_nothing() -> None:
    def flow() -> Generator[Any, Any, int]:
        return 7
        yield  # pragma: no cover

    assert _turn.drive(flow(), lambda op: op) == 7


def test_sleep_operation_is_answered_by_every_driver() -> None:
    import asyncio

    from agent_session._turn import Sleep, adrive, amodel_handler, drive, model_handler
    from agent_session.testing import TestModel

    def flow() -> Any:
        slept = yield Sleep(0.0)
        return slept

    model = TestModel()
    assert drive(flow(), model_handler(model)) is None
    assert asyncio.run(adrive(flow(), amodel_handler(model))) is None
    assert model.requests == []


def test_new_instruction_arguments_replace_the_instruction_not_a_summary() -> None:
    """``with_instructions``: the stored arguments and the system message are replaced;
    a document whose first message is a summary, or that has no instruction, gets one."""
    from agent_session._turn import validate_instructions, with_instructions

    class Args(BaseModel):
        name: str

    agent = Agent(TestModel(), instruction="Help {{ name }}.", instruction_schema=Args)
    bob = validate_instructions(agent, {"name": "Bob"})
    user = {"role": "user", "content": "hi"}
    summary = {"role": "system", "content": "so far", "meta": {"summary": {"covers": 2}}}
    document = {
        "messages": [{"role": "system", "content": "Help Ada."}, user],
        "instruction_args": {"name": "Ada"},
    }
    renewed = with_instructions(agent, document, bob)
    assert renewed["messages"] == [{"role": "system", "content": "Help Bob."}, user]
    assert renewed["instruction_args"] == {"name": "Bob"}
    assert document["instruction_args"] == {"name": "Ada"}  # the given one is not modified
    for messages in ([summary, user], [user]):
        renewed = with_instructions(agent, {"messages": messages}, bob)
        assert renewed["messages"] == [{"role": "system", "content": "Help Bob."}, *messages]
    with pytest.raises(InputValidationError, match="name"):
        validate_instructions(agent, {})
