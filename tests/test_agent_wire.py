"""The real LiteLLM code path, end to end, against a fake OpenAI-compatible server.

Every agent here is built from a model string, so calls go through
``LiteLLMModel``, ``litellm.completion``/``acompletion``, the OpenAI SDK and a
real HTTP connection to ``fake_openai`` on 127.0.0.1. Each behaviour runs twice,
through ``agent.run`` and through ``agent.arun``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agent_session import Agent, llm
from agent_session.errors import ContextWindowError, ModelCallError, OutputValidationError
from agent_session.result import Result
from support.fake_openai import FakeOpenAI, running_fake_openai

KNOWN_MODEL = "openai/gpt-4o-mini"
"""A model LiteLLM's bundled price map knows, with response-schema support."""
UNKNOWN_MODEL = "openai/my-local-model"
"""A model LiteLLM knows nothing about (a local OpenAI-compatible server)."""
LIBRARY_ONLY_SETTINGS = ("api_base", "api_key", "num_retries", "max_retries", "timeout")
"""Settings LiteLLM consumes itself: they must never reach the request body."""
DELAY = 10.0
"""How long the fake server holds a delayed reply; a call cut short by a timeout, or a
shutdown that does not wait for the reply, ends long before it (not a speed check)."""

Runner = Callable[..., Result[Any]]


class Answer(BaseModel):
    answer: str
    score: int


GOOD = '{"answer": "42", "score": 7}'
BAD = '{"answer": "42", "score": "high"}'


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with running_fake_openai() as server:
        yield server


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Runner:
    """``agent.run(...)`` or ``await agent.arun(...)``, with the same arguments.

    LiteLLM is imported here, so that its import time counts in no test's timing.
    """
    llm.import_litellm()
    if request.param == "sync":

        def run_sync(agent: Agent[Any], *args: Any, **kwargs: Any) -> Result[Any]:
            return agent.run(*args, **kwargs)

        return run_sync

    def run_async(agent: Agent[Any], *args: Any, **kwargs: Any) -> Result[Any]:
        return asyncio.run(agent.arun(*args, **kwargs))

    return run_async


def settings(server: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {"api_base": server.base_url, "api_key": "test-key", **extra}


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def expected_cost(prompt_tokens: int, completion_tokens: int) -> float:
    litellm = llm.import_litellm()
    prompt, completion = litellm.cost_per_token(
        model="gpt-4o-mini", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
    )
    return float(prompt + completion)


# -- what is sent ----------------------------------------------------------------


def test_structured_request_body(fake_openai: FakeOpenAI, call: Runner) -> None:
    agent = Agent(
        KNOWN_MODEL,
        instruction="You grade answers for {{ name }}.",
        output_schema=Answer,
        model_settings=settings(fake_openai, temperature=0.2, max_tokens=50),
    )
    fake_openai.enqueue_completion(GOOD)

    call(agent, "What is six times seven?", instruction_args={"name": "Ada"})

    assert len(fake_openai.requests) == 1
    request = fake_openai.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer test-key"
    body = request.body
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [
        {"role": "system", "content": "You grade answers for Ada."},
        {"role": "user", "content": "What is six times seven?"},
    ]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Answer", "schema": Answer.model_json_schema()},
    }
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 50
    assert not set(LIBRARY_ONLY_SETTINGS) & set(body)


def test_a_model_unknown_to_litellm_on_a_compatible_server_gets_response_format(
    fake_openai: FakeOpenAI, call: Runner
) -> None:
    """llama.cpp, vLLM, LM Studio...: LiteLLM's table does not know the model, but the
    server takes ``response_format``, so "auto" sends it."""
    agent = Agent(
        UNKNOWN_MODEL,
        instruction="You grade answers.",
        output_schema=Answer,
        model_settings=settings(fake_openai, temperature=0),
    )
    fake_openai.enqueue_completion(GOOD, model="my-local-model")

    result = call(agent, "What is six times seven?")

    assert agent.structured_output_mode == "json_schema"
    assert len(fake_openai.requests) == 1
    body = fake_openai.requests[0].body
    assert body["model"] == "my-local-model"
    assert body["response_format"] == agent.response_format
    assert body["messages"] == [
        {"role": "system", "content": "You grade answers."},
        {"role": "user", "content": "What is six times seven?"},
    ]
    assert body["temperature"] == 0
    assert not set(LIBRARY_ONLY_SETTINGS) & set(body)
    # The unknown model has no price: no cost rather than a made-up one.
    assert result.output == Answer(answer="42", score=7)
    assert result.cost is None
    assert result.model == "my-local-model"


@pytest.mark.parametrize("prefix", ["hosted_vllm", "lm_studio"])
def test_other_compatible_servers_get_response_format(
    fake_openai: FakeOpenAI, call: Runner, prefix: str
) -> None:
    agent = Agent(
        f"{prefix}/my-local-model", output_schema=Answer, model_settings=settings(fake_openai)
    )
    fake_openai.enqueue_completion(GOOD, model="my-local-model")

    assert call(agent, "Hi").output == Answer(answer="42", score=7)

    assert agent.structured_output_mode == "json_schema"
    assert fake_openai.bodies[0]["response_format"] == agent.response_format


def test_the_schema_in_the_prompt_when_chosen(fake_openai: FakeOpenAI, call: Runner) -> None:
    agent = Agent(
        UNKNOWN_MODEL,
        instruction="You grade answers.",
        output_schema=Answer,
        structured_output="prompt",
        model_settings=settings(fake_openai),
    )
    fake_openai.enqueue_completion(GOOD, model="my-local-model")

    call(agent, "What is six times seven?")

    body = fake_openai.requests[0].body
    assert "response_format" not in body
    assert agent.schema_hint is not None
    schema_json = json.dumps(Answer.model_json_schema(), separators=(",", ":"))
    assert agent.schema_hint.endswith(schema_json)
    assert body["messages"] == [
        {"role": "system", "content": f"You grade answers.\n\n{agent.schema_hint}"},
        {"role": "user", "content": "What is six times seven?"},
    ]


def test_json_mode_when_chosen(fake_openai: FakeOpenAI, call: Runner) -> None:
    agent = Agent(
        UNKNOWN_MODEL,
        output_schema=Answer,
        structured_output="json_object",
        model_settings=settings(fake_openai),
    )
    fake_openai.enqueue_completion(GOOD, model="my-local-model")

    call(agent, "What is six times seven?")

    body = fake_openai.requests[0].body
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0] == {"role": "system", "content": agent.schema_hint}


def test_text_agent_without_instruction_sends_only_the_user_message(
    fake_openai: FakeOpenAI, call: Runner
) -> None:
    agent = Agent(KNOWN_MODEL, model_settings=settings(fake_openai))
    fake_openai.enqueue_completion("Hello there.")

    result = call(agent, "Hi!")

    body = fake_openai.requests[0].body
    assert body["messages"] == [{"role": "user", "content": "Hi!"}]
    assert "response_format" not in body
    assert result.output == "Hello there."


# -- what comes back -------------------------------------------------------------


def test_result_fields(fake_openai: FakeOpenAI, call: Runner) -> None:
    agent = Agent(
        KNOWN_MODEL,
        instruction="You grade answers.",
        output_schema=Answer,
        model_settings=settings(fake_openai),
    )
    fake_openai.enqueue_completion(
        GOOD,
        prompt_tokens=120,
        completion_tokens=30,
        model="gpt-4o-mini-2024-07-18",
        finish_reason="length",
    )

    result = call(agent, "What is six times seven?")

    assert result.output == Answer(answer="42", score=7)
    assert result.text == GOOD
    assert result.usage.prompt_tokens == 120
    assert result.usage.completion_tokens == 30
    assert result.usage.total_tokens == 150
    assert isinstance(result.cost, float)
    assert result.cost == pytest.approx(expected_cost(120, 30))
    assert result.cost > 0
    assert result.finish_reason == "length"
    assert result.model == "gpt-4o-mini-2024-07-18"
    assert result.attempts == 1
    assert result.messages == [
        {"role": "system", "content": "You grade answers."},
        {"role": "user", "content": "What is six times seven?"},
        {"role": "assistant", "content": GOOD},
    ]
    assert len(fake_openai.requests) == 1


# -- re-asks ---------------------------------------------------------------------


def test_reask_after_invalid_output(fake_openai: FakeOpenAI, call: Runner) -> None:
    agent = Agent(
        KNOWN_MODEL,
        instruction="You grade answers.",
        output_schema=Answer,
        model_settings=settings(fake_openai),
    )
    fake_openai.enqueue_completion(BAD, prompt_tokens=100, completion_tokens=10)
    fake_openai.enqueue_completion(GOOD, prompt_tokens=150, completion_tokens=12)

    result = call(agent, "What is six times seven?")

    assert result.attempts == 2
    assert result.output == Answer(answer="42", score=7)
    assert result.text == GOOD
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (250, 22)
    assert result.usage.total_tokens == 272
    assert result.cost == pytest.approx(expected_cost(100, 10) + expected_cost(150, 12))

    assert len(fake_openai.requests) == 2
    first, second = (request.body for request in fake_openai.requests)
    assert second["response_format"] == first["response_format"]
    assert second["messages"][:2] == first["messages"]
    assert second["messages"][2] == {"role": "assistant", "content": BAD}
    feedback = second["messages"][3]
    assert feedback["role"] == "user"
    assert feedback["content"].startswith("Your previous answer was not valid")
    assert "score" in feedback["content"]
    assert len(second["messages"]) == 4

    # The re-ask exchange is not part of the conversation.
    assert result.messages == [*first["messages"], {"role": "assistant", "content": GOOD}]


def test_output_stays_invalid(fake_openai: FakeOpenAI, call: Runner) -> None:
    agent = Agent(
        KNOWN_MODEL,
        output_schema=Answer,
        output_retries=2,
        model_settings=settings(fake_openai),
    )
    for _ in range(3):
        fake_openai.enqueue_completion(BAD)
    fake_openai.enqueue_completion(GOOD)  # never asked for

    with pytest.raises(OutputValidationError) as caught:
        call(agent, "What is six times seven?")

    error = caught.value
    assert error.attempts == agent.output_retries + 1 == 3
    assert error.raw_text == BAD
    assert error.errors
    assert error.errors[0]["loc"] == ("score",)
    assert error.usage.total_tokens == 3 * 15
    assert len(fake_openai.requests) == 3
    assert fake_openai.pending == 1
    # Each re-ask carries the whole exchange so far.
    assert [len(body["messages"]) for body in fake_openai.bodies] == [1, 3, 5]


def test_text_that_is_not_json_is_reasked(fake_openai: FakeOpenAI, call: Runner) -> None:
    agent = Agent(
        UNKNOWN_MODEL, output_schema=Answer, output_retries=1, model_settings=settings(fake_openai)
    )
    fake_openai.enqueue_completion("Sure! The answer is 42.", model="my-local-model")
    fake_openai.enqueue_completion(f"```json\n{GOOD}\n```", model="my-local-model")

    result = call(agent, "What is six times seven?")

    assert result.attempts == 2
    assert result.output == Answer(answer="42", score=7)
    assert result.cost is None
    assert len(fake_openai.requests) == 2


# -- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "code"),
    [
        (401, "invalid_request_error", "invalid_api_key"),
        (429, "requests", "rate_limit_exceeded"),
        (500, "server_error", None),
    ],
    ids=["401", "429", "500"],
)
def test_http_errors(
    fake_openai: FakeOpenAI, call: Runner, status: int, error_type: str, code: str | None
) -> None:
    agent = Agent(KNOWN_MODEL, model_settings=settings(fake_openai), model_retries=0)
    fake_openai.enqueue_error(
        status, f"scripted failure {status}", error_type=error_type, code=code
    )
    fake_openai.enqueue_completion("should not be reached")

    with pytest.raises(ModelCallError) as caught:
        call(agent, "Hi!")

    error = caught.value
    assert error.status_code == status
    assert error.model == KNOWN_MODEL
    assert error.retryable is (status != 401)
    assert error.attempts == 1
    assert f"HTTP {status}" in str(error)
    assert f"scripted failure {status}" in str(error)
    cause = error.__cause__
    assert cause is not None
    assert type(cause).__module__.startswith("litellm")
    assert getattr(cause, "status_code", None) == status
    # Exactly one request: neither LiteLLM nor the OpenAI SDK retried.
    assert len(fake_openai.requests) == 1
    assert fake_openai.pending == 1


def test_timeout(fake_openai: FakeOpenAI, call: Runner) -> None:
    agent = Agent(KNOWN_MODEL, model_settings=settings(fake_openai, timeout=0.5), model_retries=0)
    fake_openai.enqueue_delay(DELAY)
    fake_openai.enqueue_completion("should not be reached")

    with pytest.raises(ModelCallError) as caught:
        call(agent, "Hi!")

    error = caught.value
    assert error.status_code is None
    assert error.retryable is True
    assert error.model == KNOWN_MODEL
    assert error.__cause__ is not None
    assert type(error.__cause__).__name__ == "Timeout"
    assert len(fake_openai.requests) == 1
    assert fake_openai.pending == 1  # the 0.5 s timeout ended the call, not the reply


def test_connection_refused(call: Runner) -> None:
    port = closed_port()
    agent = Agent(
        KNOWN_MODEL,
        model_settings={"api_base": f"http://127.0.0.1:{port}/v1", "api_key": "test-key"},
        model_retries=0,
    )

    with pytest.raises(ModelCallError) as caught:
        call(agent, "Hi!")

    error = caught.value
    # LiteLLM reports this as an InternalServerError with status 500; no server
    # answered, so there is no HTTP status.
    assert error.status_code is None
    assert error.retryable is True
    assert error.model == KNOWN_MODEL
    assert "APIConnectionError" in str(error)
    assert error.__cause__ is not None
    assert type(error.__cause__).__module__.startswith("litellm")


# -- retries of failed calls: one layer, counted -------------------------------------

FAILURES = ["429", "500", "503", "timeout", "refused"]


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every address a socket connects to during the test (after the network guard)."""
    seen: list[Any] = []
    guarded = socket.socket.connect

    def connect(sock: socket.socket, address: Any) -> None:
        seen.append(address)
        guarded(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def _failing_agent(server: FakeOpenAI, failure: str, **kwargs: Any) -> tuple[Agent[Any], int]:
    """An agent whose every call fails with ``failure``; and the port it calls."""
    extra: dict[str, Any] = {}
    port = server.port
    if failure == "timeout":
        extra["timeout"] = 0.3
        for _ in range(10):
            server.enqueue_delay(DELAY)
    elif failure == "refused":
        port = closed_port()
        extra["api_base"] = f"http://127.0.0.1:{port}/v1"
    else:
        for _ in range(10):
            server.enqueue_error(int(failure), f"scripted {failure}", error_type="server_error")
    agent = Agent(KNOWN_MODEL, model_settings=settings(server, **extra), **kwargs)
    return agent, port


def _calls_to(connections: list[Any], port: int) -> int:
    return sum(1 for address in connections if address[1] == port)


@pytest.mark.parametrize("failure", FAILURES)
def test_each_failed_call_is_sent_once_plus_model_retries(
    fake_openai: FakeOpenAI, call: Runner, connections: list[Any], failure: str
) -> None:
    agent, port = _failing_agent(fake_openai, failure)
    assert agent.model_retries == 2

    with pytest.raises(ModelCallError) as caught:
        call(agent, "Hi!")

    assert caught.value.attempts == 3
    assert caught.value.retryable is True
    if failure == "refused":
        assert caught.value.status_code is None
        assert _calls_to(connections, port) == 3
    else:
        assert caught.value.status_code == (None if failure == "timeout" else int(failure))
        assert len(fake_openai.requests) == 3
        # Every request went over its own connection: none was retried inside the client.
        assert _calls_to(connections, port) == 3


@pytest.mark.parametrize("failure", FAILURES)
def test_no_retry_at_all_with_model_retries_zero(
    fake_openai: FakeOpenAI, call: Runner, connections: list[Any], failure: str
) -> None:
    agent, port = _failing_agent(fake_openai, failure, model_retries=0)

    with pytest.raises(ModelCallError) as caught:
        call(agent, "Hi!")

    assert caught.value.attempts == 1
    assert _calls_to(connections, port) == 1
    if failure != "refused":
        assert len(fake_openai.requests) == 1


def test_a_retry_that_succeeds(fake_openai: FakeOpenAI, call: Runner) -> None:
    agent = Agent(KNOWN_MODEL, output_schema=Answer, model_settings=settings(fake_openai))
    fake_openai.enqueue_error(503, "overloaded", error_type="server_error")
    fake_openai.enqueue_completion(GOOD, prompt_tokens=20, completion_tokens=6)

    result = call(agent, "Hi!")

    assert result.output == Answer(answer="42", score=7)
    assert result.attempts == 2
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (20, 6)
    assert result.cost == pytest.approx(expected_cost(20, 6))
    first, second = fake_openai.bodies
    assert first == second


def test_retry_after_is_read_from_the_response(
    fake_openai: FakeOpenAI, call: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    agent = Agent(KNOWN_MODEL, model_settings=settings(fake_openai), model_retries=1)
    fake_openai.enqueue_error(429, "slow down", error_type="requests", retry_after=7)
    fake_openai.enqueue_error(429, "slow down", error_type="requests", retry_after="1.5")

    with caplog.at_level("WARNING", logger="agent_session"), pytest.raises(ModelCallError) as c:
        call(agent, "Hi!")

    assert c.value.retry_after == 1.5  # the last reply's header
    assert len(fake_openai.requests) == 2
    retries = [r.getMessage() for r in caplog.records if "retry 1 of 1" in r.getMessage()]
    assert len(retries) == 1
    assert "HTTP 429" in retries[0]
    # The provider asked for 7 s; the test setting caps every wait at 0 s, and says so.
    assert any("asked to wait 7s" in r.getMessage() for r in caplog.records)


def test_retry_after_as_an_http_date() -> None:
    now = 1_000_000_000.0
    assert llm.parse_retry_after("Sun, 09 Sep 2001 01:47:00 GMT", now=now) == 20.0
    assert llm.parse_retry_after("Sun, 09 Sep 2001 01:46:00 GMT", now=now) == 0.0
    assert llm.parse_retry_after(" 12 ") == 12.0
    assert llm.parse_retry_after("-3") is None
    assert llm.parse_retry_after("soon") is None
    assert llm.parse_retry_after("nan") is None


@pytest.mark.parametrize(
    "message",
    [
        "the request exceeds the available context size, try increasing it",  # llama.cpp
        "This model's maximum context length is 8192 tokens. However, your messages "
        "resulted in 9000 tokens. Please reduce the length of the messages.",  # OpenAI
    ],
    ids=["llama.cpp", "openai"],
)
def test_a_request_over_the_context_window(
    fake_openai: FakeOpenAI, call: Runner, message: str
) -> None:
    agent = Agent(UNKNOWN_MODEL, model_settings=settings(fake_openai), model_retries=2)
    fake_openai.enqueue_error(400, message, error_type="invalid_request_error")

    with pytest.raises(ContextWindowError) as caught:
        call(agent, "Hi!")

    error = caught.value
    assert isinstance(error, ModelCallError)
    assert error.status_code == 400
    assert error.retryable is False
    assert "context window" in str(error)
    assert len(fake_openai.requests) == 1  # never retried


def test_another_bad_request_is_not_a_context_window_error(
    fake_openai: FakeOpenAI, call: Runner
) -> None:
    agent = Agent(UNKNOWN_MODEL, model_settings=settings(fake_openai))
    fake_openai.enqueue_error(400, "temperature must be at most 2", error_type="invalid_request")

    with pytest.raises(ModelCallError) as caught:
        call(agent, "Hi!")

    assert type(caught.value) is ModelCallError
    assert (caught.value.status_code, caught.value.retryable) == (400, False)
    assert len(fake_openai.requests) == 1


# -- truncated replies and re-ask feedback ------------------------------------------


def test_a_reply_cut_off_by_the_token_limit_is_not_reasked(
    fake_openai: FakeOpenAI, call: Runner
) -> None:
    agent = Agent(
        UNKNOWN_MODEL,
        output_schema=Answer,
        output_retries=2,
        model_settings=settings(fake_openai, max_tokens=8),
    )
    fake_openai.enqueue_completion('{"answer": "4', completion_tokens=8, finish_reason="length")
    fake_openai.enqueue_completion(GOOD)  # never asked for

    with pytest.raises(OutputValidationError) as caught:
        call(agent, "Hi!")

    error = caught.value
    assert "cut off at the token limit" in str(error)
    assert "model_settings['max_tokens'] (now 8)" in str(error)
    assert error.attempts == 1
    assert error.raw_text == '{"answer": "4'
    assert len(fake_openai.requests) == 1
    assert fake_openai.bodies[0]["max_tokens"] == 8


def test_the_reask_of_a_long_bad_reply_stays_small(fake_openai: FakeOpenAI, call: Runner) -> None:
    bad = "Sure! " + "x" * 4994
    agent = Agent(UNKNOWN_MODEL, output_schema=Answer, model_settings=settings(fake_openai))
    fake_openai.enqueue_completion(bad)
    fake_openai.enqueue_completion(GOOD)

    call(agent, "Hi!")

    reask = fake_openai.bodies[1]["messages"]
    assert reask[-2] == {"role": "assistant", "content": bad}  # the reply, once
    feedback = reask[-1]["content"]
    assert len(feedback) < 400
    assert "json_invalid" in feedback
    assert "xxxxxxxxxx" not in feedback


# -- quiet: nothing on stdout or stderr ---------------------------------------------


@pytest.mark.parametrize("failure", [*FAILURES, "401", "context-window"])
def test_failed_calls_print_nothing(
    fake_openai: FakeOpenAI,
    call: Runner,
    capfd: pytest.CaptureFixture[str],
    failure: str,
) -> None:
    if failure == "401":
        agent = Agent(KNOWN_MODEL, model_settings=settings(fake_openai))
        fake_openai.enqueue_error(401, "bad key", error_type="invalid_request_error")
    elif failure == "context-window":
        agent = Agent(KNOWN_MODEL, model_settings=settings(fake_openai))
        fake_openai.enqueue_error(400, "the request exceeds the available context size")
    else:
        agent, _ = _failing_agent(fake_openai, failure)
    capfd.readouterr()

    with pytest.raises(ModelCallError):
        call(agent, "Hi!")

    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


# -- lazy import and the offline price map -----------------------------------------

# Run in a fresh interpreter, where the conftest network guard is not installed:
# install a small one first so that nothing can leave this machine.
_SUBPROCESS_GUARD = """
import ipaddress, socket
_connect = socket.socket.connect
_getaddrinfo = socket.getaddrinfo
def _local(host):
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False
def connect(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        raise RuntimeError(f"no network in this test: {address!r}")
    return _connect(sock, address)
def getaddrinfo(host, *args, **kwargs):
    if not _local(host):
        raise RuntimeError(f"no network in this test: {host!r}")
    return _getaddrinfo(host, *args, **kwargs)
socket.socket.connect = connect
socket.getaddrinfo = getaddrinfo
"""

_LAZY_IMPORT_SCRIPT = """
import json, os, sys

import agent_session
import agent_session.agent, agent_session.llm, agent_session.testing
from agent_session import Agent
from pydantic import BaseModel

class Report(BaseModel):
    ok: bool

report = {"after_import": "litellm" in sys.modules}
settings = {"api_base": sys.argv[1], "api_key": "test-key"}
agent = Agent("openai/gpt-4o-mini", model_settings=settings)
report["after_agent"] = "litellm" in sys.modules
local = Agent("openai/my-local-model", output_schema=Report, model_settings=settings)
report["local_mode"] = local.structured_output_mode
report["after_mode"] = "litellm" in sys.modules
result = agent.run("Hi!")
report["after_run"] = "litellm" in sys.modules
report["output"] = result.output
report["cost_map_env"] = os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP")
print(json.dumps(report))
"""


def _child_env(**overrides: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LITELLM_LOCAL_MODEL_COST_MAP", None)
    env.pop("LITELLM_OFFLINE_MODE", None)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    # Any HTTP client that honours proxies would hit a closed local port.
    dead = f"http://127.0.0.1:{closed_port()}"
    env.update(HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    src = str(Path(llm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


def test_import_is_lazy_and_a_call_imports_litellm(fake_openai: FakeOpenAI) -> None:
    fake_openai.enqueue_completion("Hello there.")
    script = _SUBPROCESS_GUARD + textwrap.dedent(_LAZY_IMPORT_SCRIPT)

    done = subprocess.run(
        [sys.executable, "-c", script, fake_openai.base_url],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {
        "after_import": False,
        "after_agent": False,
        # An OpenAI-compatible server needs no capability table: no import to decide.
        "local_mode": "json_schema",
        "after_mode": False,
        "after_run": True,
        "output": "Hello there.",
        # Not set by the user, so the library chose the bundled price map.
        "cost_map_env": "True",
    }
    assert len(fake_openai.requests) == 1


@pytest.fixture
def fresh_import(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Make ``import_litellm`` import again, and ``import litellm`` find a stub.

    The stub stands in for LiteLLM, so the environment handling before the import
    is tested without LiteLLM reading it (with the remote price map chosen, a real
    import would try to fetch it).
    """
    stub = types.ModuleType("litellm")
    monkeypatch.setattr(llm, "_litellm", None)
    monkeypatch.setitem(sys.modules, "litellm", stub)
    return stub


@pytest.mark.parametrize("value", ["False", "false", "0"])
def test_explicit_cost_map_setting_is_kept(
    fresh_import: types.ModuleType, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", value)
    monkeypatch.setenv("LITELLM_OFFLINE_MODE", value)

    assert llm.import_litellm() is fresh_import

    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == value
    assert os.environ["LITELLM_OFFLINE_MODE"] == value


def test_offline_cost_map_is_the_default(
    fresh_import: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LITELLM_LOCAL_MODEL_COST_MAP", raising=False)
    monkeypatch.delenv("LITELLM_OFFLINE_MODE", raising=False)

    assert llm.import_litellm() is fresh_import

    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert os.environ["LITELLM_OFFLINE_MODE"] == "True"
    assert llm.import_litellm() is fresh_import  # imported once, then cached


# -- quiet in an application

_QUIET_SCRIPT = """
import asyncio, sys
from agent_session import Agent, ModelCallError, _turn

_turn.RETRY_BASE_DELAY = 0.0
agent = Agent(
    "openai/gpt-4o-mini",
    model_settings={"api_base": sys.argv[1], "api_key": "test-key"},
    model_retries=1,
)
for attempt in (lambda: agent.run("Hi!"), lambda: asyncio.run(agent.arun("Hi!"))):
    try:
        attempt()
    except ModelCallError as error:
        assert error.attempts == 2, error.attempts
    else:
        raise SystemExit("no error")
"""


def test_an_app_without_logging_configured_sees_nothing(fake_openai: FakeOpenAI) -> None:
    """In a fresh interpreter (no pytest handlers): retries are logged as warnings,
    and without a handler configured by the application nothing reaches stderr."""
    for _ in range(4):
        fake_openai.enqueue_error(503, "overloaded", error_type="server_error")
    script = _SUBPROCESS_GUARD + textwrap.dedent(_QUIET_SCRIPT)

    done = subprocess.run(
        [sys.executable, "-c", script, fake_openai.base_url],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    assert len(fake_openai.requests) == 4


# -- the fake server itself ----------------------------------------------------------


def _post(url: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_fake_server_script_and_record() -> None:
    with running_fake_openai() as server:
        root = server.base_url.removesuffix("/v1")
        server.enqueue_completion("hi", prompt_tokens=3, completion_tokens=1, model="m")
        server.enqueue_error(418, "teapot", error_type="teapot_error", code="tea")

        status, body = _post(f"{root}/chat/completions", {"n": 1})
        assert status == 200
        assert body["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
        assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        assert body["model"] == "m"

        status, body = _post(f"{server.base_url}/chat/completions", {"n": 2})
        assert (status, body["error"]["type"], body["error"]["code"]) == (
            418,
            "teapot_error",
            "tea",
        )

        status, body = _post(f"{server.base_url}/chat/completions", {"n": 3})
        assert status == 500  # the script is empty
        status, _ = _post(f"{server.base_url}/embeddings", {"n": 4})
        assert status == 404

        assert server.bodies == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
        assert [r.path for r in server.requests] == [
            "/chat/completions",
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/embeddings",
        ]


def test_fake_server_stops_promptly_during_a_delay() -> None:
    with running_fake_openai() as server:
        server.enqueue_delay(DELAY)
        client = socket.create_connection(("127.0.0.1", server.port))
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        deadline = time.monotonic() + 5
        while not server.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(server.requests) == 1
        started = time.perf_counter()
    # Leaving the block stopped the server although a reply was still being delayed.
    assert time.perf_counter() - started < DELAY - 1
    client.close()
