"""The current instruction and a model per call, without a database.

A session's system message follows the agent's current ``instruction`` (rendered from
the stored ``instruction_args``; ``pin_instructions=True`` keeps the stored text), and
``model=`` / ``model_settings=`` choose the model of one call. Stored sessions:
``test_per_call_sessions.py``; over HTTP: ``test_per_call_wire.py``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from agent_session import Agent, _turn
from agent_session.testing import FunctionModel, TestModel

model = FunctionModel(lambda messages: "ok")
V1 = "Version one: answer {{ customer }} in French."
V2 = "Version two: answer {{ customer }} in English."


def test_the_system_message_follows_the_instruction() -> None:
    user = {"role": "user", "content": "hi", "meta": {"created_at": "2026-01-01T00:00:00Z"}}
    summary = {"role": "system", "content": "Earlier: hello.", "meta": {"summary": {"covers": 2}}}
    system = {"role": "system", "content": "Version one: answer Ada in French."}
    stored = {"instruction_args": {"customer": "Ada"}, "messages": [system, user]}

    def current(agent: Agent[str], document: dict[str, Any]) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = _turn.current_instructions(
            agent, document, session="session 1"
        )["messages"]
        return messages

    v2 = Agent(model, instruction=V2)
    english = {"role": "system", "content": "Version two: answer Ada in English."}
    assert current(v2, stored) == [english, user]
    # Unchanged text: the very same document (a stored document is reused as it is).
    assert _turn.current_instructions(Agent(model, instruction=V1), stored, session="s") is stored
    # An instruction added since: inserted before a summary; an agent without one keeps
    # the stored text.
    assert current(v2, {**stored, "messages": [summary, user]}) == [english, summary, user]
    assert current(Agent(model), stored) == [system, user]
    assert current(Agent(model, pin_instructions=True), stored) == [system, user]


async def test_run_takes_a_model_and_settings(run: Any) -> None:
    class Answer(BaseModel):
        answer: str

    agent = Agent(TestModel(name="structured"), output_schema=Answer, model_settings={"seed": 1})
    plain = TestModel(['{"answer": "hi"}'], name="plain", structured=False)
    result = await run(agent, "Hi", model=plain, model_settings={"temperature": 0.5})
    assert result.output == Answer(answer="hi") and result.model == "plain"
    request = plain.last_request
    assert request.settings == {"seed": 1, "temperature": 0.5}
    # The structured-output mode is decided per model: the schema goes in the prompt.
    assert request.response_format is None and "JSON schema" in request.messages[0]["content"]
    assert agent.structured_output_mode == "json_schema"
