"""Instruction templates: a sandboxed Jinja environment with strict undefined variables.

Templates are compiled once, when the ``Agent`` is built, so a syntax error is a
``ConfigurationError`` at definition time. Rendering errors (a missing variable, a
sandbox violation, a failing filter) are ``TemplateError`` at run time. Argument
values are data: Jinja never re-renders a value, so ``"{{ 7*7 }}"`` passed as an
argument arrives in the instruction literally.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from .errors import ConfigurationError, TemplateError

__all__ = ["InstructionTemplate"]

_ENV = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
)


class InstructionTemplate:
    """A compiled instruction template."""

    __slots__ = ("_template", "source")

    def __init__(self, source: str) -> None:
        self.source: str = source
        try:
            self._template = _ENV.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigurationError(
                f"instruction template has a syntax error on line {exc.lineno}: {exc.message}"
            ) from exc

    def render(self, args: Mapping[str, Any]) -> str:
        """Render with ``args``; every failure becomes a ``TemplateError``."""
        try:
            return self._template.render(args)
        except jinja2.UndefinedError as exc:
            raise TemplateError(f"instruction template: {exc.message}") from exc
        except jinja2.exceptions.SecurityError as exc:
            raise TemplateError(f"instruction template: unsafe operation: {exc}") from exc
        except Exception as exc:  # a failing filter or test raises anything
            raise TemplateError(
                f"instruction template failed: {type(exc).__name__}: {exc}"
            ) from exc
