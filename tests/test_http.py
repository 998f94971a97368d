"""``agent_session.http.problem``: every library error as an RFC 9457 problem document.

Every error class of ``errors.py`` has an entry of its own (a new error without one
fails here); statuses, ``type`` URIs and extension members are checked one by one;
real errors raised by the library (bad input, a paused session, invalid output, a
failing tool, a stored session) are shown not to leak the user's text, the model's
text, tool arguments, secrets or stack traces.
"""

from __future__ import annotations

import inspect
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import (
    Agent,
    AgentSessionMixin,
    ApprovalPendingError,
    InputValidationError,
    OutputValidationError,
    Tool,
    ToolCall,
    ToolExecutionError,
    errors,
)
from agent_session.errors import AgentSessionError
from agent_session.http import MEDIA_TYPE, PROBLEM_BASE, PROBLEM_TYPES, problem
from agent_session.testing import TestModel


def _error_classes() -> list[type[AgentSessionError]]:
    return [
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj)
        and issubclass(obj, AgentSessionError)
        and obj.__module__ == errors.__name__
    ]


SECRET = "sk-live-0123456789abcdef"
MARKER = "PRIVATE-MARKER-7731"

# One instance of each class, its message quoting a secret and private text on its
# second line (where the library's messages quote what Pydantic, a driver or a
# provider said).
EXAMPLES: dict[type[AgentSessionError], AgentSessionError] = {
    errors.AgentSessionError: errors.AgentSessionError(f"root {SECRET}\n{MARKER}"),
    errors.ConfigurationError: errors.ConfigurationError(f"no key {SECRET} {MARKER}"),
    errors.TemplateError: errors.TemplateError(f"instruction template: {MARKER}"),
    errors.InputValidationError: errors.InputValidationError(
        f"invalid input for Question: 1 validation error\n  input_value='{MARKER}'",
        errors=[{"loc": ("message",), "msg": "too long", "type": "string_too_long"}],
    ),
    errors.ModelCallError: errors.ModelCallError(
        f"model call failed (HTTP 500): {MARKER} Bearer {SECRET}", model="m", status_code=500
    ),
    errors.ContextWindowError: errors.ContextWindowError(
        f"maximum context length {MARKER}", model="m", status_code=400
    ),
    errors.TurnTimeoutError: errors.TurnTimeoutError(
        f"turn timed out {MARKER}", model="m", turn_timeout=5.0
    ),
    errors.OutputLimitError: errors.OutputLimitError(
        f"too long {MARKER}", model="m", limit_name="max_tokens", limit=10
    ),
    errors.OutputValidationError: errors.OutputValidationError(
        f"output did not match: {MARKER}", raw_text=MARKER, errors=[], attempts=3
    ),
    errors.ContextError: errors.ContextError(f"stored row: {MARKER}", key=1),
    errors.SessionNotFoundError: errors.SessionNotFoundError(
        "no Chat session with primary key 7", key=7
    ),
    errors.StaleSessionError: errors.StaleSessionError(
        f"Chat session 7: another writer changed the row\n{MARKER}", key=7
    ),
    errors.SessionBusyError: errors.SessionBusyError("Chat session 7 is running", key=7),
    errors.IdempotencyKeyReusedError: errors.IdempotencyKeyReusedError(
        f"session 7: idempotency key 'k' was used by a request with another input\n{MARKER}",
        key=7,
        idempotency_key="k",
    ),
    errors.StorageError: errors.StorageError(f"database error: {MARKER} {SECRET}", key=7),
    errors.ToolExecutionError: errors.ToolExecutionError(
        f"tool 'pay' raised ValueError: {MARKER}", tool_name="pay", tool_call_id="c1"
    ),
    errors.ToolLoopError: errors.ToolLoopError(f"too many steps {MARKER}", max_tool_steps=4),
    errors.ApprovalPendingError: errors.ApprovalPendingError(
        "session 7 waits for approvals of c1: resume it", key=7
    ),
    errors.BudgetExceededError: errors.BudgetExceededError(
        "session budget spent", kind="tokens", limit=100, spent=120
    ),
}

EXPECTED: dict[type[AgentSessionError], tuple[int, str]] = {
    errors.AgentSessionError: (500, "agent-session-error"),
    errors.ConfigurationError: (500, "configuration"),
    errors.TemplateError: (500, "template"),
    errors.InputValidationError: (422, "invalid-input"),
    errors.ModelCallError: (502, "model-call-failed"),
    errors.ContextWindowError: (422, "context-window-exceeded"),
    errors.TurnTimeoutError: (504, "turn-timeout"),
    errors.OutputLimitError: (502, "output-limit"),
    errors.OutputValidationError: (502, "invalid-model-output"),
    errors.ContextError: (500, "unreadable-session"),
    errors.SessionNotFoundError: (404, "session-not-found"),
    errors.StaleSessionError: (409, "stale-session"),
    errors.SessionBusyError: (409, "session-busy"),
    errors.IdempotencyKeyReusedError: (409, "idempotency-key-reused"),
    errors.StorageError: (500, "storage"),
    errors.ToolExecutionError: (500, "tool-failed"),
    errors.ToolLoopError: (502, "tool-loop"),
    errors.ApprovalPendingError: (409, "approval-pending"),
    errors.BudgetExceededError: (429, "budget-exceeded"),
}


def _text(response: tuple[int, dict[str, str], dict[str, Any]]) -> str:
    status, headers, body = response
    return json.dumps([status, headers, body])


def test_every_error_class_has_a_problem_type_of_its_own() -> None:
    classes = _error_classes()
    assert set(PROBLEM_TYPES) == set(classes), "map the new error in agent_session.http"
    assert set(EXAMPLES) == set(classes) == set(EXPECTED), "add the new error to this test"
    uris = [kind.uri for kind in PROBLEM_TYPES.values()]
    assert len(set(uris)) == len(uris)
    assert all(uri.startswith(PROBLEM_BASE) and uri != PROBLEM_BASE for uri in uris)


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_each_error_as_a_problem(cls: type[AgentSessionError]) -> None:
    exc = EXAMPLES[cls]
    assert type(exc) is cls
    status, headers, body = problem(exc)
    expected_status, name = EXPECTED[cls]
    assert status == body["status"] == expected_status
    assert body["type"] == f"https://agent-session.dev/problems/{name}"
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert headers["Content-Type"] == MEDIA_TYPE == "application/problem+json"
    text = _text((status, headers, body))
    json.loads(text)  # JSON as it is
    assert SECRET not in text
    assert MARKER not in text
    assert "Traceback" not in text
    if status >= 500 or cls is errors.ContextWindowError:
        assert body["detail"] == PROBLEM_TYPES[cls].detail  # fixed: never the message
    else:
        assert body["detail"] == str(exc).splitlines()[0]


def test_extension_members() -> None:
    from agent_session.tools import PendingApproval

    paused = errors.ApprovalPendingError(
        "session 7 waits for approvals of a, b",
        key=7,
        pending=[
            PendingApproval("a", "transfer", {"to": MARKER}),
            PendingApproval("b", "refund", {"amount": 5}),
        ],
    )
    _, _, body = problem(paused)
    assert body["pending"] == [
        {"tool_call_id": "a", "tool_name": "transfer"},
        {"tool_call_id": "b", "tool_name": "refund"},
    ]
    assert MARKER not in json.dumps(body)

    _, _, body = problem(EXAMPLES[errors.BudgetExceededError])
    assert (body["kind"], body["limit"], body["spent"]) == ("tokens", 100, 120)
    _, _, body = problem(EXAMPLES[errors.InputValidationError])
    assert body["source"] == "input"
    assert body["errors"] == [{"loc": ["message"], "msg": "too long", "type": "string_too_long"}]
    for cls in (errors.StaleSessionError, errors.SessionBusyError):
        assert problem(EXAMPLES[cls])[2]["retryable"] is True
    assert "retryable" not in problem(EXAMPLES[errors.SessionNotFoundError])[2]


class _Timeout(Exception):
    """Named like httpx's and LiteLLM's timeouts."""


_Timeout.__name__ = "ReadTimeout"


def _model_error(status: int | None, retry_after: float | None = None) -> errors.ModelCallError:
    return errors.ModelCallError("failed", model="m", status_code=status, retry_after=retry_after)


@pytest.mark.parametrize(
    ("provider_status", "status", "retryable"),
    [
        (429, 503, True),
        (503, 503, True),
        (529, 503, True),
        (408, 504, True),
        (504, 504, True),
        (500, 502, True),
        (502, 502, True),
        (401, 502, False),
        (400, 502, False),
        (None, 502, True),
    ],
)
def test_model_failures_by_provider_status(
    provider_status: int | None, status: int, retryable: bool
) -> None:
    got, headers, body = problem(_model_error(provider_status))
    assert got == body["status"] == status
    assert body["retryable"] is retryable
    assert "Retry-After" not in headers and "retry_after" not in body


def test_a_timed_out_connection_is_a_gateway_timeout() -> None:
    for cause in (TimeoutError("read"), _Timeout("read")):
        exc = _model_error(None)
        exc.__cause__ = cause
        assert problem(exc)[0] == 504
    refused = _model_error(None)
    refused.__cause__ = ConnectionRefusedError("refused")
    assert problem(refused)[0] == 502


def test_retry_after_from_the_provider() -> None:
    status, headers, body = problem(_model_error(429, retry_after=2.2))
    assert status == 503
    assert headers["Retry-After"] == "3"  # whole seconds, rounded up
    assert body["retry_after"] == 3
    _, headers, body = problem(_model_error(503, retry_after=0.0))
    assert headers["Retry-After"] == "0" and body["retry_after"] == 0


def test_an_app_subclass_is_answered_as_its_base() -> None:
    class TenantNotFound(errors.SessionNotFoundError):
        pass

    status, _, body = problem(TenantNotFound(f"no tenant {SECRET}", key=1))
    assert status == 404
    assert body["type"] == PROBLEM_TYPES[errors.SessionNotFoundError].uri
    assert SECRET not in body["detail"]


@pytest.mark.parametrize(
    "exc", [RuntimeError(f"{MARKER} {SECRET}"), KeyError(MARKER), ValueError(MARKER)]
)
def test_an_exception_not_of_the_library_is_a_generic_500(exc: Exception) -> None:
    status, headers, body = problem(exc)
    assert status == 500
    assert body == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "the request could not be completed",
    }
    assert headers == {"Content-Type": MEDIA_TYPE}


# -- real errors of the library --------------------------------------------------


class Question(BaseModel):
    message: str = Field(max_length=20)


class Reply(BaseModel):
    answer: str


def transfer(to: str) -> str:
    """Send money."""
    return f"sent to {to}"


def explode(to: str) -> str:
    """Fail with private text."""
    raise ValueError(f"account {to} is {MARKER}")


def test_invalid_input_does_not_quote_the_input() -> None:
    agent = Agent(TestModel(), input_schema=Question)
    words = f"my password is hunter2 and {MARKER}"
    with pytest.raises(InputValidationError) as caught:
        agent.run({"message": words})
    assert MARKER in str(caught.value)  # Pydantic quotes it, on a line after the first
    status, _, body = problem(caught.value)
    assert status == 422
    assert MARKER not in _text((status, {}, body)) and "hunter2" not in json.dumps(body)
    assert body["detail"].startswith("invalid input for Question")
    assert body["errors"] == [
        {
            "loc": ["message"],
            "msg": "String should have at most 20 characters",
            "type": "string_too_long",
        }
    ]


def test_invalid_output_and_a_failing_tool_do_not_quote_the_model_or_the_tool() -> None:
    agent = Agent(TestModel(replies=[f"not JSON: {MARKER}"]), output_schema=Reply, output_retries=0)
    with pytest.raises(OutputValidationError) as output_error:
        agent.run("Hi")
    failing = Agent(
        TestModel(replies=[ToolCall("explode", {"to": "12345678"}, id="c1")]),
        tools=[Tool(explode, on_error="raise")],
    )
    with pytest.raises(ToolExecutionError) as tool_error:
        failing.run("Hi")
    for exc, status in ((output_error.value, 502), (tool_error.value, 500)):
        assert MARKER in str(exc)
        got, headers, body = problem(exc)
        assert got == status
        text = _text((got, headers, body))
        assert MARKER not in text and "12345678" not in text


def test_a_paused_session_names_its_calls_not_their_arguments(tmp_path: Any) -> None:
    class Base(DeclarativeBase):
        pass

    class Chat(AgentSessionMixin[str], Base):
        __tablename__ = "http_problem_chats"
        __agent__ = Agent(
            TestModel(replies=[ToolCall("transfer", {"to": MARKER}, id="pay")]),
            tools=[Tool(transfer, requires_approval=True)],
            model_settings={"api_key": SECRET},
        )
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'chats.db'}")
    Base.metadata.create_all(engine)
    maker = sessionmaker(engine)
    try:
        chat = Chat.start_session(maker, "Pay Bo")
        with pytest.raises(ApprovalPendingError) as caught:
            Chat.continue_session(maker, chat.id, "And now?")
        status, headers, body = problem(caught.value)
        assert status == 409
        assert body["pending"] == [{"tool_call_id": "pay", "tool_name": "transfer"}]
        text = _text((status, headers, body))
        assert MARKER not in text and SECRET not in text
        missing = uuid.uuid4()
        with pytest.raises(errors.SessionNotFoundError) as not_found:
            Chat.continue_session(maker, missing, "Hi")
        status, _, body = problem(not_found.value)
        assert status == 404
        assert body["detail"] == f"no Chat session with primary key {missing}"
    finally:
        engine.dispose()


def test_a_rate_limited_turn_asks_the_client_to_wait() -> None:
    """The provider's wait reaches the response through the turn's retries."""
    from agent_session import ModelCallError
    from agent_session.testing import FunctionModel

    def limited(messages: list[dict[str, Any]]) -> str:
        raise ModelCallError(f"rate limited {MARKER}", model="m", status_code=429, retry_after=1.5)

    agent = Agent(FunctionModel(limited), model_retries=1)
    with pytest.raises(ModelCallError) as caught:
        agent.run("Hi")
    assert caught.value.attempts == 2
    status, headers, body = problem(caught.value)
    assert (status, headers["Retry-After"], body["retry_after"]) == (503, "2", 2)
    assert body["retryable"] is True
    assert MARKER not in _text((status, headers, body))


# -- transcripts -------------------------------------------------------------------


def test_transcript_shows_ids_parsed_replies_and_summarized_calls_without_the_system() -> None:
    from agent_session import Agent
    from agent_session.context import Message, MessageMeta
    from agent_session.http import message_view, transcript

    class Answer(BaseModel):
        answer: str

    agent = Agent("openai/gpt-4o-mini", instruction="Be brief.", output_schema=Answer)
    now = datetime.now(UTC)
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"order": 7}'},
    }
    messages = [
        Message(id="0.0", role="system", content="Be brief.", meta=MessageMeta(created_at=now)),
        Message(id="1.0", role="user", content="Where is 7?", meta=MessageMeta(created_at=now)),
        Message(id="1.1", role="assistant", tool_calls=[call], meta=MessageMeta(created_at=now)),
        Message(
            id="1.2",
            role="tool",
            tool_call_id="call_1",
            content="shipped",
            meta=MessageMeta(created_at=now),
        ),
        Message(
            id="1.3",
            role="assistant",
            content='{"answer": "Shipped."}',
            meta=MessageMeta(created_at=now),
        ),
        Message(id="2.1", role="assistant", content="not json", meta=MessageMeta(created_at=now)),
        Message(
            id="3.1",
            role="assistant",
            content='{"ans',
            meta=MessageMeta(created_at=now, interrupted=True),
        ),
    ]
    views = transcript(messages, agent)
    assert [v["id"] for v in views] == ["1.0", "1.1", "1.2", "1.3", "2.1", "3.1"]
    assert views[0] == {"id": "1.0", "role": "user", "text": "Where is 7?"}
    assert views[1] == {
        "id": "1.1",
        "role": "assistant",
        "tool_calls": [{"id": "call_1", "name": "lookup", "arguments": '{"order": 7}'}],
    }
    assert views[2] == {"id": "1.2", "role": "tool", "tool_call_id": "call_1", "text": "shipped"}
    assert views[3] == {"id": "1.3", "role": "assistant", "output": {"answer": "Shipped."}}
    assert views[4] == {"id": "2.1", "role": "assistant", "text": "not json"}
    assert views[5] == {"id": "3.1", "role": "assistant", "interrupted": True, "text": '{"ans'}
    assert "meta" not in str(views) and "usage" not in str(views)
    assert transcript(messages, agent, system=True)[0] == {
        "id": "0.0",
        "role": "system",
        "text": "Be brief.",
    }
    assert message_view(messages[4]) == {
        "id": "1.3",
        "role": "assistant",
        "text": '{"answer": "Shipped."}',
    }
