"""Write the README's Python blocks as modules a type checker can read: .ci/types.

The blocks are taken as tests/test_docs.py takes them, and run there in one namespace
after the README's prelude (``COMMON``); here they become one module that starts with
that prelude, so each block sees what the earlier ones defined. Two things differ
from the run:

- a block with a top-level ``await`` becomes the body of an ``async def`` (its names
  declared ``global``), since a module may not ``await``;
- a block that gives a prelude name a meaning of its own (the Flask section's ``db``,
  the SQLModel section's ``engine``) starts a new module, in which the prelude's binding
  of that name is renamed out of its way: a type checker gives a module-level name one
  type, where the run simply rebinds it.

Usage: python .ci/readme_snippets.py OUTPUT_DIRECTORY  (prints the files written)
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_docs  # noqa: E402  (tests/ is put on the path above)

PREAMBLE = """\
import tempfile
from collections.abc import Callable
from pathlib import Path

tmp_path = Path(tempfile.mkdtemp())
cleanups: list[Callable[[], object]] = []
"""
"""What test_docs puts in a page's namespace before its prelude."""

_CO_COROUTINE = 0x80


def bound_names(source: str, *, imports: bool = True) -> set[str]:
    """The names the top-level statements of ``source`` bind."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if imports:
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        else:
            names.update(
                sub.id
                for sub in ast.walk(node)
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store)
            )
    return names


def awaits(source: str) -> bool:
    """Whether ``source`` awaits at top level."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    code = compile(source, "<block>", "exec", flags=flags, dont_inherit=True)
    return bool(code.co_flags & _CO_COROUTINE)


def modules(page: Path) -> list[str]:
    """The page's Python blocks as module sources, each starting with the prelude."""
    prelude = textwrap.dedent(test_docs.COMMON)
    prelude_names = bound_names(prelude)
    found: list[list[str]] = []
    for block in test_docs.python_blocks(page):
        source = block.source
        rebound = bound_names(source, imports=False) & prelude_names
        if not found or rebound:
            own = prelude
            for name in sorted(rebound):
                own = re.sub(rf"\b{name}\b", f"prelude_{name}", own)
            found.append([PREAMBLE, own])
        if awaits(source):
            names = sorted(bound_names(source))
            body = (f"global {', '.join(names)}\n" if names else "") + source
            source = f"async def block_{block.index}() -> None:\n" + textwrap.indent(body, "    ")
        found[-1].append(f"# {block.where}: block {block.index}\n{source}\n")
    return ["\n\n".join(parts) for parts in found]


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for index, source in enumerate(modules(ROOT / "README.md"), start=1):
        path = out / f"readme_{index}.py"
        path.write_text(source, encoding="utf-8")
        print(path)


if __name__ == "__main__":
    main()
