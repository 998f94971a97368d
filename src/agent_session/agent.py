"""``Agent``: one LLM call with a templated instruction and validated input and output.

An ``Agent`` is configuration: the model, the instruction template and the schemas.
Everything that can be computed once (the compiled template, the output JSON
schema, the ``response_format``) is computed here, when the agent is built. The
turn itself lives in ``_turn`` (pure) and is driven by ``run``/``arun``, which only
perform the model call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel

from . import _turn
from .errors import ConfigurationError
from .llm import LiteLLMModel, Model
from .result import Result
from .templates import InstructionTemplate

__all__ = ["DEFAULT_MAX_INPUT_BYTES", "Agent", "TextInput"]

OutputT = TypeVar("OutputT")
SchemaT = TypeVar("SchemaT", bound=BaseModel)

DEFAULT_MAX_INPUT_BYTES = 8 * 1024 * 1024
"""Default cap on one user message (UTF-8 bytes): generous, but bounded."""

_LITELLM = LiteLLMModel()


class TextInput(BaseModel):
    """The default input schema: one free-text message."""

    message: str


class Agent(Generic[OutputT]):
    """An LLM call with a Jinja instruction, an input schema and an output schema.

    ``model`` is a LiteLLM model string (``"openai/gpt-4o-mini"``) or a ``Model``
    instance (a test double). ``model_settings`` are forwarded verbatim to LiteLLM
    (``temperature``, ``api_base``, ``api_key``, ``timeout``, ``num_retries``, ...).
    """

    @overload
    def __init__(
        self: Agent[str],
        model: str | Model,
        *,
        instruction: str | None = None,
        instruction_schema: type[BaseModel] | None = None,
        input_schema: type[BaseModel] | None = None,
        output_schema: None = None,
        max_retries: int = 2,
        model_settings: Mapping[str, Any] | None = None,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        name: str | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self: Agent[SchemaT],
        model: str | Model,
        *,
        instruction: str | None = None,
        instruction_schema: type[BaseModel] | None = None,
        input_schema: type[BaseModel] | None = None,
        output_schema: type[SchemaT],
        max_retries: int = 2,
        model_settings: Mapping[str, Any] | None = None,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        name: str | None = None,
    ) -> None: ...

    def __init__(
        self,
        model: str | Model,
        *,
        instruction: str | None = None,
        instruction_schema: type[BaseModel] | None = None,
        input_schema: type[BaseModel] | None = None,
        output_schema: type[BaseModel] | None = None,
        max_retries: int = 2,
        model_settings: Mapping[str, Any] | None = None,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        name: str | None = None,
    ) -> None:
        if isinstance(model, str):
            if not model.strip():
                raise ConfigurationError("Agent model must be a non-empty LiteLLM model string")
            self.model_name = model
            self._model: Model = _LITELLM
        elif isinstance(model, Model):
            self.model_name = model.name
            self._model = model
        else:
            raise ConfigurationError(
                f"Agent model must be a LiteLLM model string or a Model, got {type(model).__name__}"
            )
        for label, schema in (
            ("instruction_schema", instruction_schema),
            ("input_schema", input_schema),
            ("output_schema", output_schema),
        ):
            if schema is not None and not (
                isinstance(schema, type) and issubclass(schema, BaseModel)
            ):
                raise ConfigurationError(f"{label} must be a Pydantic model class, got {schema!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigurationError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if max_input_bytes <= 0:
            raise ConfigurationError("max_input_bytes must be positive")
        if instruction is not None and not isinstance(instruction, str):
            raise ConfigurationError("instruction must be a string (a Jinja template)")

        self.name = name or "agent"
        self.instruction = instruction
        self.template = InstructionTemplate(instruction) if instruction is not None else None
        self.instruction_schema = instruction_schema
        self.input_schema: type[BaseModel] = input_schema or TextInput
        self.output_schema = output_schema
        self.max_retries = max_retries
        self.model_settings: dict[str, Any] = dict(model_settings or {})
        self.max_input_bytes = max_input_bytes

        fields = list(self.input_schema.model_fields)
        self.single_input_field: str | None = fields[0] if len(fields) == 1 else None
        self.response_format: dict[str, Any] | None = None
        self.schema_hint: str | None = None
        if output_schema is not None:
            try:
                schema_json = output_schema.model_json_schema()
            except Exception as exc:
                raise ConfigurationError(
                    f"output_schema {output_schema.__name__} has no JSON schema: {exc}"
                ) from exc
            self.response_format = {
                "type": "json_schema",
                "json_schema": {"name": output_schema.__name__, "schema": schema_json},
            }
            self.schema_hint = (
                "Answer with only a JSON object, no prose and no code fences, that matches "
                "this JSON schema:\n" + json.dumps(schema_json, separators=(",", ":"))
            )
        self._override: ContextVar[Model | None] = ContextVar(
            f"agent_session_override_{id(self)}", default=None
        )

    def __repr__(self) -> str:
        out = self.output_schema.__name__ if self.output_schema else "str"
        return f"Agent(model={self.model_name!r}, output={out})"

    # -- model selection -------------------------------------------------

    @property
    def model(self) -> Model:
        """The model in effect: an override if one is active, else the configured one."""
        return self._override.get() or self._model

    @contextmanager
    def override(self, *, model: Model) -> Iterator[None]:
        """Use ``model`` instead of the configured one inside the ``with`` block.

        The override is held in a context variable, so it applies to code run in
        the block, sync or async (tasks created inside it inherit it). Threads
        started inside it do not: build the agent with the double for those.
        """
        if not isinstance(model, Model):
            raise ConfigurationError(f"override needs a Model, got {type(model).__name__}")
        token = self._override.set(model)
        try:
            yield
        finally:
            self._override.reset(token)

    def uses_structured_output(self, model: Model) -> bool:
        """Whether requests carry ``response_format`` (else the schema goes in the prompt)."""
        return self.output_schema is not None and model.supports_structured_output(self.model_name)

    # -- running ----------------------------------------------------------

    def run(
        self,
        input: BaseModel | Mapping[str, Any] | str,
        *,
        instruction_args: BaseModel | Mapping[str, Any] | None = None,
    ) -> Result[OutputT]:
        """Validate, render, call the model (re-asking on invalid output) and parse."""
        plan = _turn.plan_first_turn(self, input, instruction_args)
        model = self.model
        flow = _turn.model_flow(self, plan, self.uses_structured_output(model))
        return _turn.drive(flow, _turn.model_handler(model))

    async def arun(
        self,
        input: BaseModel | Mapping[str, Any] | str,
        *,
        instruction_args: BaseModel | Mapping[str, Any] | None = None,
    ) -> Result[OutputT]:
        """Async twin of ``run``."""
        plan = _turn.plan_first_turn(self, input, instruction_args)
        model = self.model
        flow = _turn.model_flow(self, plan, self.uses_structured_output(model))
        return await _turn.adrive(flow, _turn.amodel_handler(model))

    def parse_output(self, text: str) -> Any:
        """Parse and validate model text into the output (``ValidationError`` if invalid)."""
        if self.output_schema is None:
            return text
        return self.output_schema.model_validate_json(_strip_code_fence(text))

    def output_from_json(self, data: Any) -> OutputT:
        """Rebuild the output from its JSON form (``Result.output_json``)."""
        if self.output_schema is None:
            return data  # type: ignore[no-any-return]
        return self.output_schema.model_validate(data)  # type: ignore[return-value]


def _strip_code_fence(text: str) -> str:
    """Tolerate a reply wrapped in a Markdown code fence (```json ... ```)."""
    stripped = text.strip()
    if not (stripped.startswith("```") and stripped.endswith("```") and len(stripped) >= 6):
        return stripped
    body = stripped[3:-3]
    first, newline, rest = body.partition("\n")
    if newline and (first.strip() == "" or first.strip().isalnum()):
        body = rest  # the language tag line
    return body.strip()
