"""The docs are code: every Python block of README.md and docs/*.md runs.

How a page runs
---------------
- One test per page that has Python blocks: README.md, then docs/*.md in name order
  (a page joins as soon as it has one). The page's Python blocks (fences ```python or
  ```py) run in order in one namespace, like a doctest session: what a block defines
  is there for the next one.
- Before the first block, the page's **prelude** runs in that namespace. It supplies
  what the page leaves out (imports, ``Base``, ``db``, the schemas), so the page stays
  short while every block is still checked. The prelude is ``PAGES[path].prelude``
  (``path`` relative to the repository root, e.g. ``"docs/errors.md"``); a page with
  no entry in ``PAGES`` gets ``DEFAULT``.
- A block may ``await`` at top level; it runs on the page's event loop (one loop per
  page, so async engines and sessions survive from block to block).
- No model is reached: every LiteLLM model string is answered by a ``TestModel``
  (structured output is built from the output schema, plain text is ``"ok"``), by
  patching ``LiteLLMModel`` for the test. Blocks that use their own test double
  (``agent.override(model=...)``) get that one. The conftest network guard refuses
  any other connection.
- A failing block fails its page's test with the page and the block's line
  (``README.md:58: block 2 of 5 raised ...``); tracebacks point at Markdown lines.
- Every fence must name its language: ```python / ```py run; ```bash, ```json,
  ```text, ```sql, ```console ... are not run.

What the preludes provide
-------------------------
``COMMON`` (in every prelude below): ``uuid``, ``Any``, ``sa`` (sqlalchemy),
``BaseModel``, ``Field``, ``DeclarativeBase``, ``Mapped``, ``mapped_column``,
``Session``, ``sessionmaker``, ``AsyncSession``, ``async_sessionmaker``, ``Agent``,
``AgentSessionMixin``; the schemas ``CompanyArgs`` (``company_name``), ``UserMessage``
(``message``) and ``Reply`` (``answer``, optional ``follow_up_question``); one SQLite
file in ``tmp_path`` reached by ``engine`` (sync) and ``async_engine`` (aiosqlite);
``db`` (a ``Session``), ``maker`` (a ``sessionmaker``) and ``amaker`` (an
``async_sessionmaker``); and a ``Base`` that creates each model's table when its
class is defined. Anything appended to ``cleanups`` (sync or async callables) runs
after the page, in reverse order.

``CHAT_AGENT`` adds the README's model: ``agent`` and ``ChatAgent`` (UUID ``id``,
required ``user_id``). ``DEFAULT`` is ``COMMON + CHAT_AGENT``; ``tests/data/docs_page.md``
is a sample page written against it (sync, sessionmaker and async turns).

Adding a page's prelude
-----------------------
If ``DEFAULT`` does not fit (the page defines its own ``ChatAgent``, needs a status
column, other schemas, a server database, ...), add an entry::

    PAGES["docs/storage.md"] = Page(prelude=COMMON + CHAT_AGENT + '''
    class TrackedChat(AgentSessionMixin[Reply], Base):
        ...
    ''')

The prelude is Python source (dedented), run like a block. ``Page`` also takes
``before_block(namespace, block)`` and ``after_block(namespace, block)`` hooks, for
set-up or checks around each block (``docs/migrations.md`` runs each migration a
block defines against a table with a row); the namespace holds ``offline_model``
(the ``TestModel`` answering LiteLLM model strings, with its ``requests``).

Fix the page, not the prelude, when a block is wrong: the prelude only supplies
what the page says it leaves out.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import sys
import textwrap
import traceback
import types
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase

from agent_session.llm import LiteLLMModel, ModelRequest, ModelResponse, StreamChunk
from agent_session.testing import TestModel

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = frozenset({"python", "py", "python3"})
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


# -- blocks ----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: str
    """The page, relative to the repository root."""
    line: int
    """The line of the block's first code line (1-based)."""
    language: str
    source: str
    index: int = 0
    """Position among the page's Python blocks (1-based; 0 for other blocks)."""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def defines(self) -> set[str]:
        """The names the block's top-level statements define (functions, classes)."""
        tree = ast.parse(self.source)
        return {
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order."""
    page = path.relative_to(ROOT).as_posix()
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    opening: re.Match[str] | None = None
    body: list[str] = []
    start = 0
    for number, line in enumerate(lines, start=1):
        match = _FENCE.match(line)
        if opening is None:
            if match:
                opening, body, start = match, [], number + 1
            continue
        fence = opening["fence"]
        closing = (
            match is not None
            and match["fence"][0] == fence[0]
            and len(match["fence"]) >= len(fence)
            and not match["info"].strip()
        )
        if not closing:
            body.append(line)
            continue
        indent = opening["indent"]
        source = "\n".join(text.removeprefix(indent) for text in body)
        language = (opening["info"].split() or [""])[0].lower()
        blocks.append(Block(page, start, language, source))
        opening = None
    assert opening is None, f"{page}: a code fence opened and never closed"
    return blocks


def python_blocks(path: Path) -> list[Block]:
    found = [b for b in fenced_blocks(path) if b.language in PYTHON]
    return [
        Block(b.page, b.line, b.language, b.source, index) for index, b in enumerate(found, start=1)
    ]


# -- preludes --------------------------------------------------------------------

Hook = Callable[[dict[str, Any], Block], None]


@dataclass(frozen=True)
class Page:
    """What a page's blocks run with: a prelude and optional hooks around each block."""

    prelude: str = ""
    before_block: Hook | None = None
    after_block: Hook | None = None


COMMON = """
import uuid
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from agent_session import Agent, AgentSessionMixin


class CompanyArgs(BaseModel):
    company_name: str


class UserMessage(BaseModel):
    message: str = Field(min_length=1)


class Reply(BaseModel):
    answer: str
    follow_up_question: str | None = None


engine = sa.create_engine(f"sqlite:///{tmp_path / 'docs.sqlite3'}")
async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'docs.sqlite3'}")


class Base(DeclarativeBase):
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Base.metadata.create_all(engine)  # the page defines a model: give it its table


db = Session(engine)
maker = sessionmaker(engine)
amaker = async_sessionmaker(async_engine)
cleanups.extend([engine.dispose, async_engine.dispose, db.close])
"""

CHAT_AGENT = """
agent = Agent(
    "openai/gpt-4o-mini",
    instruction="You are a helpful assistant for {{ company_name }}.",
    instruction_schema=CompanyArgs,
    input_schema=UserMessage,
    output_schema=Reply,
)


class ChatAgent(AgentSessionMixin[Reply], Base):
    __tablename__ = "chat_agents"
    __agent__ = agent
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[str]
"""

DEFAULT = Page(prelude=COMMON + CHAT_AGENT)


def _fresh_base(namespace: dict[str, Any], block: Block) -> None:
    """Each block of the page is an alternative model: give it a declarative base of its own."""
    namespace["Base"] = type("Base", (DeclarativeBase,), {"__module__": namespace["__name__"]})


def _before_migration(namespace: dict[str, Any], block: Block) -> None:
    """A fresh base for each block; a block that alters the status column finds
    ``tickets`` as an older release left it, with a ``String(16)`` status."""
    _fresh_base(namespace, block)
    if "alter_column(" in block.source and '"status"' in block.source:
        connection: sa.Connection = namespace["connection"]
        if "status" in {c["name"] for c in sa.inspect(connection).get_columns("tickets")}:
            with namespace["op"].batch_alter_table("tickets") as batch_op:
                batch_op.drop_column("status")  # added by an earlier block, as String(32)
        connection.exec_driver_sql(
            "ALTER TABLE tickets ADD COLUMN status VARCHAR(16) DEFAULT 'pending' NOT NULL"
        )


def _run_migrations(namespace: dict[str, Any], block: Block) -> None:
    """Run the ``upgrade``/``downgrade`` a block defines on ``tickets``, which has a row:
    ``upgrade`` changes the columns (names or types), ``downgrade`` restores them, the
    row stays."""
    connection: sa.Connection = namespace["connection"]

    def columns() -> list[tuple[str, str]]:
        return [(c["name"], str(c["type"])) for c in sa.inspect(connection).get_columns("tickets")]

    def rows() -> list[Any]:
        return [tuple(row) for row in connection.exec_driver_sql("SELECT id, title FROM tickets")]

    defined = block.defines()
    before, stored = columns(), rows()
    if "upgrade" in defined:
        namespace["upgrade"]()
        assert columns() != before, f"{block.where}: upgrade() changed no column"
        assert rows() == stored, f"{block.where}: upgrade() changed the stored rows"
    if "downgrade" in defined:
        namespace["downgrade"]()
        assert columns() == before, f"{block.where}: downgrade() did not undo upgrade()"
        assert rows() == stored, f"{block.where}: downgrade() changed the stored rows"


MIGRATIONS = Page(
    prelude=COMMON
    + """
from alembic.migration import MigrationContext
from alembic.operations import Operations

support_agent = Agent("openai/gpt-4o-mini", output_schema=Reply)

connection = engine.connect()
connection.exec_driver_sql("CREATE TABLE tickets (id INTEGER PRIMARY KEY, title VARCHAR(200))")
connection.exec_driver_sql("INSERT INTO tickets (title) VALUES ('printer on fire')")
op = Operations(MigrationContext.configure(connection))
cleanups.append(connection.close)
""",
    before_block=_before_migration,
    after_block=_run_migrations,
)

OBSERVABILITY = Page(
    prelude=COMMON
    + CHAT_AGENT
    + """
import logging as _logging

# The page turns the library's logging on: put its level back after the page.
_level = _logging.getLogger("agent_session").level
cleanups.append(lambda: _logging.getLogger("agent_session").setLevel(_level))
"""
)

PAGES: dict[str, Page] = {
    "README.md": Page(prelude=COMMON),
    "docs/migrations.md": MIGRATIONS,
    "docs/observability.md": OBSERVABILITY,
}


# -- running ---------------------------------------------------------------------


@pytest.fixture
def offline_model(monkeypatch: pytest.MonkeyPatch) -> TestModel:
    """Answer every LiteLLM model string with a ``TestModel`` (and never import LiteLLM)."""
    double = TestModel(name="offline-litellm")

    def complete(self: LiteLLMModel, request: ModelRequest) -> ModelResponse:
        return double.complete(request)

    async def acomplete(self: LiteLLMModel, request: ModelRequest) -> ModelResponse:
        return await double.acomplete(request)

    def stream(self: LiteLLMModel, request: ModelRequest) -> Iterator[StreamChunk]:
        return double.stream(request)

    def astream(self: LiteLLMModel, request: ModelRequest) -> AsyncIterator[StreamChunk]:
        return double.astream(request)

    def supports_structured_output(self: LiteLLMModel, model: str) -> bool:
        return True

    monkeypatch.setattr(LiteLLMModel, "complete", complete)
    monkeypatch.setattr(LiteLLMModel, "acomplete", acomplete)
    monkeypatch.setattr(LiteLLMModel, "stream", stream)
    monkeypatch.setattr(LiteLLMModel, "astream", astream)
    monkeypatch.setattr(LiteLLMModel, "supports_structured_output", supports_structured_output)
    return double


def _run(source: str, filename: str, first_line: int, namespace: dict[str, Any], loop: Any) -> None:
    """Run ``source`` as if it stood at ``first_line`` of ``filename`` (top-level await allowed)."""
    padded = "\n" * (first_line - 1) + source
    code = compile(
        padded, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        loop.run(result)


def _run_prelude(page_name: str, page: Page, namespace: dict[str, Any], loop: Any) -> None:
    failure = None
    try:
        _run(textwrap.dedent(page.prelude), f"<prelude of {page_name}>", 1, namespace, loop)
    except Exception as exc:
        failure = f"the prelude of {page_name} raised:\n" + "".join(traceback.format_exception(exc))
    if failure is not None:
        pytest.fail(failure, pytrace=False)


def _failure(block: Block, total: int, exc: BaseException) -> str:
    frames = exc.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename == __file__:
        frames = frames.tb_next  # start the traceback at the page's line
    trace = "".join(traceback.format_exception(type(exc), exc, frames))
    return (
        f"{block.where}: block {block.index} of {total} raised "
        f"{type(exc).__name__}: {exc}\n\n{trace}"
    )


PAGES_WITH_PYTHON = [path for path in DOC_FILES if python_blocks(path)]


@pytest.mark.parametrize("path", PAGES_WITH_PYTHON, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_python_block_runs(path: Path, tmp_path: Path, offline_model: TestModel) -> None:
    page_name = path.relative_to(ROOT).as_posix()
    ran = run_page(path, PAGES.get(page_name, DEFAULT), tmp_path, offline_model)
    assert ran == len(python_blocks(path)) > 0


def run_page(path: Path, page: Page, tmp_path: Path, offline_model: TestModel) -> int:
    """Run the prelude and every Python block of ``path``; return how many blocks ran."""
    blocks = python_blocks(path)
    page_name = path.relative_to(ROOT).as_posix()
    module = types.ModuleType("docs_" + re.sub(r"\W", "_", page_name))
    namespace = module.__dict__
    cleanups: list[Callable[[], Any]] = []
    namespace.update(tmp_path=tmp_path, cleanups=cleanups, offline_model=offline_model)
    sys.modules[module.__name__] = module  # string annotations resolve in the module
    ran = 0
    try:
        with asyncio.Runner() as loop:
            try:
                _run_prelude(page_name, page, namespace, loop)
                for block in blocks:
                    if page.before_block is not None:
                        page.before_block(namespace, block)
                    failure = None
                    try:
                        _run(block.source, str(path), block.line, namespace, loop)
                    except Exception as exc:
                        failure = _failure(block, len(blocks), exc)
                    if failure is not None:
                        pytest.fail(failure, pytrace=False)
                    if page.after_block is not None:
                        page.after_block(namespace, block)
                    ran += 1
            finally:
                for cleanup in reversed(cleanups):
                    result = cleanup()
                    if inspect.isawaitable(result):
                        loop.run(result)
    finally:
        del sys.modules[module.__name__]
    return ran


def test_the_default_prelude(tmp_path: Path, offline_model: TestModel) -> None:
    """``DEFAULT`` (used by pages without a prelude of their own) runs a sample page."""
    page = ROOT / "tests" / "data" / "docs_page.md"
    assert run_page(page, DEFAULT, tmp_path, offline_model) == 3
    assert len(offline_model.requests) == 4


def test_model_strings_are_answered_offline(offline_model: TestModel) -> None:
    from pydantic import BaseModel

    from agent_session import Agent

    class Verdict(BaseModel):
        ok: bool

    agent = Agent(
        "anthropic/claude-sonnet-4-20250514",
        output_schema=Verdict,
        model_settings={"api_base": "http://127.0.0.1:9/v1"},
    )
    assert agent.run("Is this offline?").output == Verdict(ok=True)
    assert asyncio.run(agent.arun("And this?")).output == Verdict(ok=True)
    assert [r.model for r in offline_model.requests] == [agent.model_name] * 2
    assert offline_model.requests[0].settings == {"api_base": "http://127.0.0.1:9/v1"}


def test_every_prelude_names_a_page_with_python_blocks() -> None:
    pages = {path.relative_to(ROOT).as_posix() for path in PAGES_WITH_PYTHON}
    assert set(PAGES) <= pages, "a prelude for a page that is gone or has no Python block"


def test_every_fence_names_its_language() -> None:
    unlabeled = [b.where for path in DOC_FILES for b in fenced_blocks(path) if not b.language]
    assert unlabeled == [], "label these code blocks (```python, ```bash, ```text, ...)"


def test_the_fence_parser() -> None:
    page = ROOT / "tests" / "data" / "fences.md"
    blocks = fenced_blocks(page)
    assert [(b.line, b.language) for b in blocks] == [(4, "python"), (9, "text"), (17, "py")]
    assert blocks[0].source == 'print("```")\nx = 1'
    assert blocks[2].source == "y = x + 1"
    assert [b.index for b in python_blocks(page)] == [1, 2]
