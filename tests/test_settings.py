"""Names and settings checked before anything runs: attributes named like an option,
the mixin's ``__*__`` settings (``__running_timeout__`` in seconds or a ``timedelta``),
and ``Agent(output_retries=)`` with its former name ``max_retries=``."""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import Agent, AgentSessionMixin, ConfigurationError, OutputValidationError
from agent_session.testing import TestModel

agent = Agent(TestModel(text="noted"))


def _model(namespace: dict[str, Any], annotations: dict[str, Any] | None = None) -> type:
    class Base(DeclarativeBase):
        pass

    body: dict[str, Any] = {
        "__tablename__": "settings_chats",
        "__agent__": agent,
        "__annotations__": {"id": Mapped[int], **(annotations or {})},
        "id": mapped_column(primary_key=True),
        **namespace,
    }
    return type("Chat", (AgentSessionMixin, Base), body)


@pytest.mark.parametrize(
    "option", ["stream", "where", "deps", "values", "approvals", "busy_timeout", "on_cancel"]
)
def test_an_attribute_named_like_an_option_is_refused(option: str) -> None:
    with pytest.raises(
        ConfigurationError,
        match=rf"^Chat\.{option} has the name of the option {option}= of \w+_session\(\).*"
        rf"values=\{{\"{option}_",
    ):
        _model({option: mapped_column(sa.String(10))}, {option: Mapped[str]})


def test_attributes_that_are_not_options_are_accepted() -> None:
    chat = _model(
        {name: mapped_column(sa.String(10)) for name in ("user_id", "input", "db", "model_name")},
        {name: Mapped[str] for name in ("user_id", "input", "db", "model_name")},
    )
    assert {"user_id", "input", "db", "model_name"} <= set(chat.__table__.columns.keys())  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(30, timedelta(seconds=30)), (2.5, timedelta(seconds=2.5)), (timedelta(hours=1),) * 2],
    ids=["int", "float", "timedelta"],
)
def test_running_timeout_takes_seconds_or_a_timedelta(value: Any, expected: timedelta) -> None:
    chat = _model({"__status_attribute__": "status", "__running_timeout__": value})
    assert chat.__agent_session_spec__.running_timeout == expected  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("__running_timeout__", "30", "a number of seconds > 0 or a positive timedelta, got '30'"),
        ("__running_timeout__", 0, "a number of seconds > 0 or a positive timedelta, got 0"),
        ("__running_timeout__", -1.5, "a number of seconds > 0 or a positive timedelta"),
        ("__running_timeout__", True, "a number of seconds > 0 or a positive timedelta"),
        ("__running_timeout__", float("nan"), "a number of seconds > 0 or a positive timedelta"),
        ("__running_timeout__", timedelta(0), "a number of seconds > 0 or a positive timedelta"),
        ("__context_attribute__", 3, "an attribute name, got 3"),
        ("__revision_attribute__", "", "an attribute name, got ''"),
        ("__status_attribute__", 1, "an attribute name or None, got 1"),
        ("__status_changed_attribute__", "changed at", "an attribute name, got 'changed at'"),
    ],
)
def test_a_bad_setting_is_refused_at_class_definition(
    setting: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=rf"^Chat\.{setting} must be {message}"):
        _model({"__status_attribute__": "status", setting: value})


# -- Agent(output_retries=) ----------------------------------------------------------


class Answer(BaseModel):
    answer: int


def test_output_retries_bounds_the_reasks() -> None:
    model = TestModel(replies=["no", "still no", "never"])
    agent = Agent(model, output_schema=Answer, output_retries=1)
    assert agent.output_retries == 1
    with pytest.raises(OutputValidationError) as caught:
        agent.run("hi")
    assert caught.value.attempts == 2 and len(model.requests) == 2


def test_max_retries_still_works_and_warns() -> None:
    model = TestModel(replies=["no", "never"])
    with pytest.warns(DeprecationWarning, match=r"max_retries=.*use Agent\(output_retries=") as w:
        agent = Agent(model, output_schema=Answer, max_retries=0)
    assert w[0].filename == __file__  # the warning points at the caller's line
    assert agent.output_retries == 0
    with pytest.warns(DeprecationWarning, match=r"use Agent.output_retries"):
        assert agent.max_retries == 0
    with pytest.raises(OutputValidationError) as caught:
        agent.run("hi")
    assert caught.value.attempts == 1


def test_output_retries_and_max_retries_together_are_refused() -> None:
    with (
        warnings.catch_warnings(),
        pytest.raises(ConfigurationError, match=r"pass only output_retries="),
    ):
        warnings.simplefilter("error")
        Agent(TestModel(), output_retries=1, max_retries=1)


def test_output_retries_is_checked() -> None:
    for bad in (-1, True, 1.5):
        with pytest.raises(ConfigurationError, match=r"^output_retries must be an int >= 0"):
            Agent(TestModel(), output_retries=bad)  # type: ignore[arg-type]
