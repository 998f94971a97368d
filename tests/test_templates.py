"""Instruction templates: sandboxed Jinja, strict variables, validated arguments."""

from __future__ import annotations

from datetime import date
from typing import Any

import jinja2
import pytest
from jinja2.exceptions import SecurityError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent_session import (
    Agent,
    AgentSessionError,
    ConfigurationError,
    InputValidationError,
    TemplateError,
)
from agent_session.templates import InstructionTemplate
from agent_session.testing import TestModel
from support.runner import Run


class CompanyArgs(BaseModel):
    company_name: str
    tone: str = "friendly"
    max_words: int = 50


# -- compile time ------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "Hello {{ name ",
        "{% for x in items %}no end",
        "{% if %}{% endif %}",
        "{{ name | no_such_filter }}",
        "{% endblock %}",
    ],
)
def test_a_syntax_error_is_a_configuration_error_when_the_agent_is_built(source: str) -> None:
    with pytest.raises(ConfigurationError, match="syntax error on line 1") as info:
        Agent(TestModel(), instruction=source)
    assert isinstance(info.value.__cause__, jinja2.TemplateSyntaxError)


def test_the_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigurationError, match="line 3"):
        InstructionTemplate("one\ntwo\n{{ three ")


def test_a_template_is_compiled_once_and_keeps_its_source() -> None:
    template = InstructionTemplate("Hi {{ name }}")
    assert template.source == "Hi {{ name }}"
    assert template.render({"name": "Ana"}) == "Hi Ana"
    assert template.render({"name": "Bo"}) == "Hi Bo"


def test_rendering_features() -> None:
    template = InstructionTemplate(
        "{% for item in items %}- {{ item | upper }}\n{% endfor %}"
        "{{ missing | default('fallback') }} {{ 'set' if flag is defined else 'unset' }}\n"
    )
    assert template.render({"items": ["a", "b"]}) == "- A\n- B\nfallback unset"
    assert template.render({"items": [], "flag": 1}) == "fallback set"


def test_no_html_escaping() -> None:
    assert InstructionTemplate("{{ x }}").render({"x": "<b>&'\"</b>"}) == "<b>&'\"</b>"


# -- the rendered text kept per arguments ----------------------------------------


class _Counting:
    """Stands for a compiled Jinja template and counts its renders."""

    def __init__(self, template: Any) -> None:
        self.template = template
        self.renders = 0

    def render(self, args: Any) -> str:
        self.renders += 1
        return str(self.template.render(args))


def _counted(source: str) -> tuple[InstructionTemplate, _Counting]:
    template = InstructionTemplate(source)
    counting = _Counting(template._template)
    template._template = counting
    return template, counting


def test_the_same_arguments_are_rendered_once() -> None:
    template, counting = _counted("For {{ company }}, {{ tone }}.")
    args = {"company": "Acme", "tone": "brief"}
    assert [template.render_cached(dict(args)) for _ in range(3)] == ["For Acme, brief."] * 3
    assert counting.renders == 1
    assert template.render_cached({"company": "Bolt", "tone": "brief"}) == "For Bolt, brief."
    assert counting.renders == 2


@pytest.mark.parametrize(
    "values",
    [
        [1, True, 1.0],  # equal, and hashed alike, but rendered differently
        [0.0, -0.0, False],
        [[1], [True], ["1"]],
        [{"a": 1, "b": 2}, {"b": 2, "a": 1}],  # same dict, other order
    ],
)
def test_arguments_that_render_differently_are_kept_apart(values: list[Any]) -> None:
    loop = "{% for k in x %}{{ k }}{% endfor %}" if isinstance(values[0], dict) else ""
    template, _ = _counted("{{ x }}|" + loop)
    rendered = [template.render_cached({"x": value}) for value in values]
    assert rendered == [template.render({"x": value}) for value in values]
    assert len(set(rendered)) == len(values)


@pytest.mark.parametrize(
    "source", ["{{ [1, 2, 3] | random }}", "{{ lipsum(1) }}", "{{ x }}{{ lipsum }}"]
)
def test_a_template_that_may_render_differently_is_rendered_every_time(source: str) -> None:
    template, counting = _counted(source)
    for _ in range(3):
        template.render_cached({"x": "a"})
    assert counting.renders == 3


def test_arguments_that_are_not_plain_data_are_rendered_every_time() -> None:
    template, counting = _counted("{{ day }}")
    for _ in range(2):
        assert template.render_cached({"day": date(2026, 1, 5)}) == "2026-01-05"
    assert counting.renders == 2


def test_a_failed_render_is_not_kept() -> None:
    template, counting = _counted("{{ name }}")
    for _ in range(2):
        with pytest.raises(TemplateError):
            template.render_cached({"other": "x"})
    assert counting.renders == 2


def test_the_kept_texts_are_bounded() -> None:
    from agent_session import templates

    template, counting = _counted("{{ n }}")
    for n in range(templates.CACHED_RENDERS + 1):
        template.render_cached({"n": n})
    assert len(template._rendered) <= templates.CACHED_RENDERS
    template.render_cached({"n": 0})
    assert counting.renders == templates.CACHED_RENDERS + 2


# -- run time: what fails --------------------------------------------------------


async def test_a_missing_variable_is_a_template_error_and_no_model_call(run: Run) -> None:
    model = TestModel()
    agent = Agent(model, instruction="You work for {{ company_name }}.")

    with pytest.raises(TemplateError, match="company_name") as info:
        await run(agent, "hi")

    assert isinstance(info.value.__cause__, jinja2.UndefinedError)
    assert isinstance(info.value, AgentSessionError)
    assert model.requests == []


async def test_a_missing_attribute_is_a_template_error(run: Run) -> None:
    agent = Agent(TestModel(), instruction="{{ user.name }}")
    with pytest.raises(TemplateError) as info:
        await run(agent, "hi", instruction_args={"user": {"id": 1}})
    assert isinstance(info.value.__cause__, jinja2.UndefinedError)


SANDBOX_VIOLATIONS = {
    "class_mro": "{{ ''.__class__.__mro__ }}",
    "class": "{{ ''.__class__ }}",
    "subclasses": "{{ ''.__class__.__base__.__subclasses__() }}",
    "function_globals": "{{ lipsum.__globals__ }}",
    "format_escape": "{{ '{0.__class__}'.format(1) }}",
    "format_map_escape": "{{ '{x.__class__}'.format_map({'x': 1}) }}",
    "cycler_init": "{{ cycler.__init__.__globals__ }}",
}


@pytest.mark.parametrize("source", list(SANDBOX_VIOLATIONS.values()), ids=list(SANDBOX_VIOLATIONS))
async def test_a_sandbox_violation_is_a_template_error(run: Run, source: str) -> None:
    model = TestModel()
    agent = Agent(model, instruction=source)

    with pytest.raises(TemplateError, match="unsafe") as info:
        await run(agent, "hi")

    assert isinstance(info.value.__cause__, SecurityError)
    assert model.requests == []


class Account(BaseModel):
    owner: str

    @jinja2.sandbox.unsafe
    def delete(self) -> str:
        return "deleted"


def test_calling_an_unsafe_method_is_a_template_error() -> None:
    template = InstructionTemplate("{{ account.delete() }}")
    with pytest.raises(TemplateError, match="unsafe") as info:
        template.render({"account": Account(owner="ana")})
    assert isinstance(info.value.__cause__, SecurityError)


def test_a_private_attribute_is_not_reachable() -> None:
    class Holder:
        _secret = "s3cret"

    with pytest.raises(TemplateError):
        InstructionTemplate("{{ h._secret }}").render({"h": Holder()})


FAILING = {
    "sum_of_strings": ("{{ 'abc' | sum }}", TypeError),
    "division_by_zero": ("{{ 1 / 0 }}", ZeroDivisionError),
    "huge_range": ("{{ range(10 ** 9) | list }}", OverflowError),
    "bad_format": ("{{ '%d' | format('x') }}", TypeError),
}


@pytest.mark.parametrize(("source", "cause"), list(FAILING.values()), ids=list(FAILING))
async def test_a_failing_filter_is_a_template_error(
    run: Run, source: str, cause: type[Exception]
) -> None:
    model = TestModel()
    agent = Agent(model, instruction=source)

    with pytest.raises(TemplateError, match=cause.__name__) as info:
        await run(agent, "hi")

    assert isinstance(info.value.__cause__, cause)
    assert model.requests == []


# -- values are data ------------------------------------------------------------


async def test_argument_values_are_never_rendered(run: Run) -> None:
    model = TestModel()
    agent = Agent(model, instruction="Company: {{ company_name }}")

    await run(agent, "hi", instruction_args={"company_name": "{{ 7*7 }} {% if 1 %}x{% endif %}"})

    system = model.requests[0].messages[0]
    assert system == {"role": "system", "content": "Company: {{ 7*7 }} {% if 1 %}x{% endif %}"}


async def test_the_user_message_is_never_rendered(run: Run) -> None:
    model = TestModel()
    agent = Agent(model, instruction="Be brief.")

    result = await run(agent, "{{ 7*7 }} {{ ''.__class__ }}")

    assert model.requests[0].messages[-1] == {
        "role": "user",
        "content": "{{ 7*7 }} {{ ''.__class__ }}",
    }
    assert result.messages[1]["content"] == "{{ 7*7 }} {{ ''.__class__ }}"


async def test_the_input_is_not_a_template_variable(run: Run) -> None:
    agent = Agent(TestModel(), instruction="{{ message }}")
    with pytest.raises(TemplateError):
        await run(agent, "hi")


# -- instruction arguments --------------------------------------------------------


async def test_arguments_are_validated_coerced_and_defaulted(run: Run) -> None:
    model = TestModel()
    agent = Agent(
        model,
        instruction="{{ company_name }} / {{ tone }} / {{ max_words + 1 }}",
        instruction_schema=CompanyArgs,
    )

    await run(agent, "hi", instruction_args={"company_name": "Acme", "max_words": "9"})

    assert model.requests[0].messages[0]["content"] == "Acme / friendly / 10"


async def test_arguments_may_be_a_schema_instance(run: Run) -> None:
    model = TestModel()
    agent = Agent(model, instruction="{{ company_name }}", instruction_schema=CompanyArgs)
    await run(agent, "hi", instruction_args=CompanyArgs(company_name="Initech"))
    assert model.requests[0].messages[0]["content"] == "Initech"


async def test_all_defaults_allow_no_arguments(run: Run) -> None:
    class Defaults(BaseModel):
        tone: str = "calm"

    model = TestModel()
    agent = Agent(model, instruction="Be {{ tone }}.", instruction_schema=Defaults)
    await run(agent, "hi")
    assert model.requests[0].messages[0]["content"] == "Be calm."


@pytest.mark.parametrize(
    "args",
    [
        None,
        {},
        {"company_name": 42},
        {"company_name": "Acme", "max_words": "many"},
    ],
    ids=["none", "empty", "wrong_type", "not_a_number"],
)
async def test_invalid_arguments_are_an_input_validation_error_and_no_model_call(
    run: Run, args: Any
) -> None:
    model = TestModel()
    agent = Agent(model, instruction="{{ company_name }}", instruction_schema=CompanyArgs)

    with pytest.raises(InputValidationError) as info:
        await run(agent, "hi", instruction_args=args)

    error = info.value
    assert error.source == "instruction_args"
    assert error.errors, "Pydantic's error list is attached"
    assert all({"loc", "msg", "type"} <= set(e) for e in error.errors)
    assert isinstance(error.__cause__, ValidationError)
    assert isinstance(error, ValueError)
    assert "CompanyArgs" in str(error)
    assert model.requests == []


async def test_the_validation_errors_locate_the_bad_field(run: Run) -> None:
    agent = Agent(TestModel(), instruction="{{ company_name }}", instruction_schema=CompanyArgs)
    with pytest.raises(InputValidationError) as info:
        await run(agent, "hi", instruction_args={"company_name": "A", "max_words": "x"})
    assert [e["loc"] for e in info.value.errors] == [("max_words",)]


async def test_arguments_of_another_model_are_refused(run: Run) -> None:
    class Other(BaseModel):
        company_name: str

    model = TestModel()
    agent = Agent(model, instruction="{{ company_name }}", instruction_schema=CompanyArgs)
    with pytest.raises(InputValidationError, match="CompanyArgs") as info:
        await run(agent, "hi", instruction_args=Other(company_name="x"))
    assert info.value.source == "instruction_args"
    assert model.requests == []


async def test_without_a_schema_arguments_are_used_as_given(run: Run) -> None:
    model = TestModel()
    agent = Agent(model, instruction="{{ n * 2 }} {{ when }} {{ items | join(',') }}")
    await run(agent, "hi", instruction_args={"n": 21, "when": date(2026, 1, 2), "items": [1, 2]})
    assert model.requests[0].messages[0]["content"] == "42 2026-01-02 1,2"


@pytest.mark.parametrize("args", [["a"], "company", 3], ids=["list", "str", "int"])
async def test_without_a_schema_arguments_must_be_a_mapping(run: Run, args: Any) -> None:
    model = TestModel()
    agent = Agent(model, instruction="x")
    with pytest.raises(InputValidationError, match="must be a dict") as info:
        await run(agent, "hi", instruction_args=args)
    assert info.value.source == "instruction_args"
    assert model.requests == []


async def test_arguments_must_be_json_serialisable(run: Run) -> None:
    model = TestModel()
    agent = Agent(model, instruction="{{ thing }}")
    with pytest.raises(InputValidationError, match="JSON") as info:
        await run(agent, "hi", instruction_args={"thing": object()})
    assert info.value.source == "instruction_args"
    assert model.requests == []


async def test_schema_arguments_must_be_json_serialisable(run: Run) -> None:
    class Opaque:
        pass

    class OpaqueArgs(BaseModel):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        thing: Opaque

    model = TestModel()
    agent = Agent(model, instruction="x", instruction_schema=OpaqueArgs)
    with pytest.raises(InputValidationError, match="JSON") as info:
        await run(agent, "hi", instruction_args={"thing": Opaque()})
    assert info.value.source == "instruction_args"
    assert model.requests == []


async def test_nested_argument_models_are_reachable_in_the_template(run: Run) -> None:
    class Person(BaseModel):
        name: str
        languages: list[str] = Field(default_factory=list)

    class Args(BaseModel):
        person: Person

    model = TestModel()
    agent = Agent(
        model,
        instruction="{{ person.name }} speaks {{ person.languages | join(' and ') }}.",
        instruction_schema=Args,
    )
    await run(agent, "hi", instruction_args={"person": {"name": "Zoë", "languages": ["de", "ja"]}})
    assert model.requests[0].messages[0]["content"] == "Zoë speaks de and ja."


async def test_an_instruction_without_variables_needs_no_arguments(run: Run) -> None:
    model = TestModel()
    agent = Agent(model, instruction="Answer in one word.\n")
    result = await run(agent, "hi")
    assert result.messages[0] == {"role": "system", "content": "Answer in one word."}
