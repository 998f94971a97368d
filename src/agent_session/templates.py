"""Instruction templates: a sandboxed Jinja environment with strict undefined variables.

Templates are compiled once, when the ``Agent`` is built, so a syntax error is a
``ConfigurationError`` at definition time. Rendering errors (a missing variable, a
sandbox violation, a failing filter) are ``TemplateError`` at run time. Argument
values are data: Jinja never re-renders a value, so ``"{{ 7*7 }}"`` passed as an
argument arrives in the instruction literally.

A turn on a stored session renders its instruction again (the agent's current
instruction, the stored arguments): ``render_cached`` keeps the text per template
and arguments, so the same arguments are not rendered twice. Only a template that
renders the same text for the same arguments is cached (none using Jinja's
``random`` filter or ``lipsum``), and only arguments that are plain JSON data,
whose text form tells them apart.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

from .errors import ConfigurationError, TemplateError

__all__ = ["InstructionTemplate"]

_ENV = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
)


CACHED_RENDERS = 256
"""Rendered texts a template keeps (then it starts again from none)."""

_UNSTABLE_FILTERS = frozenset({"random"})
_UNSTABLE_NAMES = frozenset({"lipsum"})


def _stable(tree: nodes.Template) -> bool:
    """Whether the template renders the same text for the same arguments."""
    if any(node.name in _UNSTABLE_FILTERS for node in tree.find_all(nodes.Filter)):
        return False
    return not any(node.name in _UNSTABLE_NAMES for node in tree.find_all(nodes.Name))


def _plain(value: Any) -> bool:
    """JSON data of the exact built-in types (no subclass, no other object)."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return True
    if kind is dict:
        return all(type(key) is str and _plain(item) for key, item in value.items())
    if kind is list:
        return all(_plain(item) for item in value)
    return False


class InstructionTemplate:
    """A compiled instruction template."""

    __slots__ = ("_rendered", "_stable", "_template", "source")

    def __init__(self, source: str) -> None:
        self.source: str = source
        try:
            self._template = _ENV.from_string(source)
            self._stable = _stable(_ENV.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigurationError(
                f"instruction template has a syntax error on line {exc.lineno}: {exc.message}"
            ) from exc
        self._rendered: dict[Hashable, str] = {}

    def render_cached(self, args: Mapping[str, Any]) -> str:
        """``render(args)``, the text kept for the next call with the same ``args``
        when the template is stable and ``args`` are plain JSON data."""
        if not self._stable or type(args) is not dict:
            return self.render(args)
        key: Hashable
        if all(type(name) is str and type(value) is str for name, value in args.items()):
            key = tuple(args.items())
        elif _plain(args):
            # The JSON text keeps apart what compares equal but renders differently
            # (1, 1.0 and True) and the order of a nested dict's keys, which a loop shows.
            key = json.dumps(args, ensure_ascii=False)
        else:
            return self.render(args)
        text = self._rendered.get(key)
        if text is None:
            text = self.render(args)
            if len(self._rendered) >= CACHED_RENDERS:
                self._rendered.clear()
            self._rendered[key] = text
        return text

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
