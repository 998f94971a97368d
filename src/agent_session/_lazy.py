"""What a plain turn does not need, made on its first use: a module, a function of a
module, a regular expression."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any, cast

__all__ = ["LazyModule", "lazy_compile", "lazy_function"]


class LazyModule:
    """Stands for the module ``name`` and imports it when an attribute is first read
    (``importlib.import_module``: thread-safe, and the module object is the one in
    ``sys.modules``). Type checkers see the real module: import it under
    ``TYPE_CHECKING`` and bind this only at run time."""

    __slots__ = ("_module", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: Any = None

    def __getattr__(self, attribute: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy_function(module: str, name: str) -> Callable[..., Any]:
    """The function ``name`` of ``module``, the module imported on the first call. Type
    checkers see the real function: import it under ``TYPE_CHECKING`` and bind this
    only at run time."""
    lazy = LazyModule(module)

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(lazy, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


class _LazyPattern:
    """Stands for ``re.compile(pattern, flags)`` and compiles it when first used."""

    __slots__ = ("_compiled", "_flags", "_pattern")

    def __init__(self, pattern: str, flags: int) -> None:
        self._pattern = pattern
        self._flags = flags
        self._compiled: re.Pattern[str] | None = None

    def __getattr__(self, attribute: str) -> Any:
        compiled = self._compiled
        if compiled is None:
            compiled = self._compiled = re.compile(self._pattern, self._flags)
        return getattr(compiled, attribute)

    def __repr__(self) -> str:
        return f"<lazy pattern {self._pattern!r}>"


def lazy_compile(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """``re.compile(pattern, flags)`` on first use (``search``, ``match``, ``pattern``,
    ...): a pattern only an error, a tool or a stream reads costs nothing at import.
    Use its methods; it is not a ``re.Pattern`` to ``isinstance`` or ``re.sub``."""
    return cast("re.Pattern[str]", _LazyPattern(pattern, flags))
