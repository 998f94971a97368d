"""Defining and running a tool: the arguments model built from a function's signature
and docstring, ``ToolContext`` and ``PreparedCall`` (read as ``agent_session.tools``
names). Imported by the first tool: an agent without tools does not load it."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo
from pydantic.json_schema import GenerateJsonSchema

from . import tools as _tools  # noqa: F401 - loaded first: the classes here name it as their module
from ._lazy import lazy_compile
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .agent import Agent
    from .tools import Tool, ToolCall, ToolCallResult

__all__ = [
    "NoTitles",
    "Param",
    "PreparedCall",
    "ToolContext",
    "arguments_model",
    "is_context_annotation",
    "parse_docstring",
]

DepsT = TypeVar("DepsT")


@dataclass(frozen=True)
class ToolContext(Generic[DepsT]):
    """What a tool whose first parameter is typed ``ToolContext`` receives.

    ``deps`` is what the caller passed as ``deps=`` (never stored or logged);
    ``tool_call_id`` is the model's id for this call, stable when a turn is re-run,
    so it makes a good idempotency key; ``session_key`` is the session's primary key
    (``None`` outside a session); ``agent`` is the agent running the turn.
    """

    __module__ = "agent_session.tools"

    deps: DepsT
    tool_call_id: str
    session_key: Any = None
    agent: Agent[Any] | None = None


class NoTitles(GenerateJsonSchema):
    """Pydantic's schema without the generated ``title`` keys (noise in a tool schema)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def generate(self, schema: Any, mode: Any = "validation") -> Any:
        result = super().generate(schema, mode)
        result.pop("title", None)
        return result


@dataclass(frozen=True)
class Param:
    """A parameter of a tool's function and the field of the arguments model for it."""

    name: str
    field: str
    positional_only: bool


def is_context_annotation(annotation: Any) -> bool:
    if annotation is ToolContext or typing.get_origin(annotation) is ToolContext:
        return True
    if typing.get_origin(annotation) is Annotated:
        return is_context_annotation(typing.get_args(annotation)[0])
    return False


def _has_description(annotation: Any) -> bool:
    if typing.get_origin(annotation) is not Annotated:
        return False
    return any(isinstance(meta, FieldInfo) and meta.description for meta in annotation.__metadata__)


def arguments_model(
    fn: Callable[..., Any], tool_name: str, param_docs: Mapping[str, str]
) -> tuple[bool, tuple[Param, ...], type[BaseModel]]:
    """Whether ``fn`` takes a context, its parameters, and the model of its arguments."""
    try:
        signature = inspect.signature(fn, eval_str=True)
    except (TypeError, ValueError, NameError) as exc:
        raise ConfigurationError(f"tool {tool_name!r}: cannot read its signature: {exc}") from exc

    takes_context = False
    params: list[Param] = []
    fields: dict[str, Any] = {}
    for index, parameter in enumerate(signature.parameters.values()):
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ConfigurationError(
                f"tool {tool_name!r}: *args and **kwargs have no schema"
                f" (parameter {parameter.name!r})"
            )
        annotation = parameter.annotation
        if is_context_annotation(annotation):
            if index != 0:
                raise ConfigurationError(
                    f"tool {tool_name!r}: a ToolContext parameter must come first"
                    f" ({parameter.name!r} is number {index + 1})"
                )
            if parameter.kind == parameter.KEYWORD_ONLY:
                raise ConfigurationError(
                    f"tool {tool_name!r}: the ToolContext parameter must be positional"
                )
            takes_context = True
            continue
        if annotation is parameter.empty:
            annotation = Any
        if parameter.name in param_docs and not _has_description(annotation):
            annotation = Annotated[annotation, Field(description=param_docs[parameter.name])]
        default = ... if parameter.default is parameter.empty else parameter.default
        # Fields get neutral names and the parameter name as alias, so that a parameter
        # called ``json``, ``model_config`` or ``_x`` cannot collide with BaseModel.
        field_name = f"p{len(params)}"
        fields[field_name] = (annotation, Field(default, alias=parameter.name))
        params.append(
            Param(parameter.name, field_name, parameter.kind == parameter.POSITIONAL_ONLY)
        )

    try:
        model = create_model(
            f"{tool_name}_arguments",
            __config__=ConfigDict(extra="forbid", populate_by_name=False),
            **fields,
        )
    except Exception as exc:
        raise ConfigurationError(
            f"tool {tool_name!r}: its parameters cannot be validated: {exc}"
        ) from exc
    return takes_context, tuple(params), model


_SECTION = lazy_compile(
    r"^(args|arguments|parameters|params|returns?|yields?|raises?|examples?|notes?"
    r"|see also|attributes|keyword args|keyword arguments|other parameters):?\s*$",
    re.IGNORECASE,
)
_SPHINX_PARAM = lazy_compile(r"^:param\s+(?:[^:]*\s)?(\w+):\s*(.*)$")
_GOOGLE_PARAM = lazy_compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_PARAM = lazy_compile(r"^(\w+)\s*(?::.*)?$")


def parse_docstring(doc: str | None) -> tuple[str | None, dict[str, str]]:
    """The first paragraph, and per-parameter descriptions from an arguments section."""
    if not doc:
        return None, {}
    lines = doc.splitlines()
    summary_lines: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped or _SECTION.match(stripped) or stripped.startswith(":"):
            break
        summary_lines.append(stripped)
    summary = " ".join(summary_lines) or None
    return summary, _param_docs(lines)


def _param_docs(lines: list[str]) -> dict[str, str]:
    docs: dict[str, str] = {}
    current: str | None = None
    in_section = False
    numpy = False
    base_indent = 0
    for index, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        sphinx = _SPHINX_PARAM.match(stripped)
        if sphinx:
            current = sphinx.group(1)
            docs[current] = sphinx.group(2).strip()
            in_section = False
            continue
        if stripped.startswith(":"):
            current = None
            continue
        section = _SECTION.match(stripped)
        if section:
            name = section.group(1).lower()
            in_section = name in {"args", "arguments", "parameters", "params"}
            following = lines[index + 1].strip() if index + 1 < len(lines) else ""
            numpy = bool(following) and set(following) == {"-"}
            base_indent = indent
            current = None
            continue
        if not in_section:
            if current is not None and stripped and indent > 0:
                docs[current] = f"{docs[current]} {stripped}".strip()  # Sphinx continuation
            elif not stripped:
                current = None
            continue
        if not stripped or set(stripped) == {"-"}:
            continue
        if numpy:
            if indent <= base_indent:
                match = _NUMPY_PARAM.match(stripped)
                current = match.group(1) if match else None
                if current is not None:
                    docs[current] = ""
            elif current is not None:
                docs[current] = f"{docs[current]} {stripped}".strip()
            continue
        if indent <= base_indent:
            in_section = False  # dedented: the section is over
            current = None
            continue
        match = _GOOGLE_PARAM.match(stripped)
        if match and (current is None or indent <= _param_indent(lines, current)):
            current = match.group(1).lstrip("*")
            docs[current] = match.group(2).strip()
        elif current is not None:
            docs[current] = f"{docs[current]} {stripped}".strip()
    return {name: text for name, text in docs.items() if text}


def _param_indent(lines: list[str], name: str) -> int:
    for line in lines:
        stripped = line.lstrip()
        if re.match(rf"^\*{{0,2}}{re.escape(name)}\s*(\([^)]*\))?\s*:", stripped):
            return len(line) - len(stripped)
    return 0


@dataclass(frozen=True)
class PreparedCall:
    """A call checked before it runs: the tool and its arguments, or the error result."""

    __module__ = "agent_session.tools"

    call: ToolCall
    tool: Tool[Any] | None
    arguments: dict[str, Any]
    raw_arguments: str | None
    error: ToolCallResult | None
