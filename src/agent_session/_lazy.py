"""A module imported on its first use, for what a plain turn does not need."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LazyModule"]


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
