"""The public surface of the package: exports, the error hierarchy, import cost."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

import agent_session
from agent_session import errors

ROOT = Path(__file__).resolve().parent.parent


def _error_classes() -> dict[str, type[BaseException]]:
    return {
        name: obj
        for name, obj in vars(errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    }


def _printed(code: str) -> list[str]:
    """What ``python -c code`` prints in a fresh interpreter, split into words."""
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return run.stdout.split()


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name
        for name in dir(agent_session)
        if not name.startswith("_") and not isinstance(getattr(agent_session, name), ModuleType)
    }
    exported = set(agent_session.__all__)

    assert len(agent_session.__all__) == len(exported), "duplicates in __all__"
    assert exported - {"__version__"} == public
    for name in agent_session.__all__:
        assert hasattr(agent_session, name), name


def test_version_matches_the_project_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert agent_session.__version__ == project["project"]["version"]


def test_every_error_is_exported_and_derives_from_the_root() -> None:
    classes = _error_classes()
    assert set(classes) == set(errors.__all__)
    for name, cls in classes.items():
        assert name in agent_session.__all__, name
        assert getattr(agent_session, name) is cls
        assert issubclass(cls, agent_session.AgentSessionError), name
    assert agent_session.AgentSessionError.__bases__ == (Exception,)


def test_errors_that_are_also_builtin_errors() -> None:
    assert issubclass(agent_session.InputValidationError, ValueError)
    assert issubclass(agent_session.SessionNotFoundError, LookupError)
    error = agent_session.InputValidationError("bad", errors=[{"loc": ("x",)}])
    assert error.source == "input"
    assert error.errors == [{"loc": ("x",)}]
    assert str(error) == "bad"


def test_errors_carry_their_fields() -> None:
    call = agent_session.ModelCallError("down", model="m", status_code=503)
    assert (call.model, call.status_code) == ("m", 503)
    assert (call.retryable, call.retry_after, call.attempts) == (True, None, 1)
    assert agent_session.ModelCallError("no", model="m", status_code=401).retryable is False
    assert agent_session.ModelCallError("timed out", model="m").retryable is True
    window = agent_session.ContextWindowError("long", model="m", status_code=400)
    assert isinstance(window, agent_session.ModelCallError)
    assert (window.status_code, window.retryable) == (400, False)
    output = agent_session.OutputValidationError("no", raw_text="x", errors=[], attempts=3)
    assert (output.raw_text, output.errors, output.attempts, output.usage) == ("x", [], 3, None)
    for cls in (
        agent_session.ContextError,
        agent_session.SessionNotFoundError,
        agent_session.StaleSessionError,
        agent_session.SessionBusyError,
        agent_session.StorageError,
    ):
        assert cls("m", key=7).key == 7
        assert cls("m").key is None


def test_tool_errors_carry_their_fields() -> None:
    execution = agent_session.ToolExecutionError("boom", tool_name="refund", tool_call_id="c1")
    assert (execution.tool_name, execution.tool_call_id) == ("refund", "c1")
    assert agent_session.ToolExecutionError("boom", tool_name="t").tool_call_id is None
    loop = agent_session.ToolLoopError("too many", max_tool_steps=10)
    assert (loop.max_tool_steps, loop.usage) == (10, None)
    pending = agent_session.ApprovalPendingError("waiting", key=3, pending=("p",))
    assert (pending.key, pending.pending) == (3, ["p"])
    assert agent_session.ApprovalPendingError("waiting").pending == []


def test_budget_error_carries_its_fields() -> None:
    error = agent_session.BudgetExceededError("spent", kind="cost", limit=0.5, spent=0.51)
    assert (error.kind, error.limit, error.spent, str(error)) == ("cost", 0.5, 0.51, "spent")


def test_history_names_are_loaded_lazily() -> None:
    code = (
        "import sys; import agent_session; a = 'agent_session.history' in sys.modules; "
        "from agent_session import LastTurns, TokenBudget, Summarize; "
        "print(a, LastTurns.__module__, TokenBudget.__module__, Summarize.__module__, "
        "'litellm' in sys.modules)"
    )
    assert _printed(code) == ["False", *["agent_session.history"] * 3, "False"]


def test_tool_names_are_loaded_lazily() -> None:
    code = (
        "import sys; import agent_session; a = 'agent_session.tools' in sys.modules; "
        "from agent_session import Tool, ToolContext, ToolCall, PendingApproval, Denied; "
        "print(a, Tool.__module__, 'litellm' in sys.modules)"
    )
    assert _printed(code) == ["False", "agent_session.tools", "False"]


def test_names_defined_in_modules_imported_on_first_use_look_as_before() -> None:
    """``dir()``, ``__module__`` and run-time type hints of the names ``history`` and
    ``tools`` import on first use are those of the module that exports them."""
    code = (
        "import typing, agent_session.history as h, agent_session.tools as t; "
        "names = ['Summarize', 'CompactionPlan', 'apply_summary', 'plan_compaction', "
        "'summary_request_messages']; "
        "print(all(n in dir(h) for n in names), all(n in dir(t) for n in "
        "['ToolContext', 'PreparedCall']), h.CompactionPlan.__module__, "
        "h.Summarize.__module__, t.ToolContext.__module__, "
        "typing.get_type_hints(t.Toolset.prepare)['return'].__name__)"
    )
    assert _printed(code) == [
        "True",
        "True",
        "agent_session.history",
        "agent_session.history",
        "agent_session.tools",
        "PreparedCall",
    ]


def test_a_lazy_pattern_compiles_on_first_use_and_matches_like_the_pattern() -> None:
    from agent_session._lazy import lazy_compile

    lazy = lazy_compile(r"(\d+) tokens", re.IGNORECASE)
    assert lazy._compiled is None
    assert lazy.search("limit: 4096 TOKENS").group(1) == "4096"
    assert lazy.pattern == r"(\d+) tokens"
    assert lazy.findall("1 tokens, 2 Tokens") == ["1", "2"]
    assert lazy._compiled is re.compile(r"(\d+) tokens", re.IGNORECASE)


def test_error_and_tool_patterns_are_compiled_on_first_use() -> None:
    code = (
        "import sys; from agent_session import Agent, AgentSessionMixin; "
        "from agent_session import _secrets, _tooling, history, llm, tools; "
        "print(*(type(p).__name__ for p in (llm._CONTEXT_WINDOW_PHRASES, llm._KEY_VARIABLE, "
        "history._STATED_LIMIT, _tooling._SECTION, tools.NAME_PATTERN, _secrets._TOKEN)), "
        "tools.NAME_PATTERN.match('ok_name') is not None, "
        "llm._CONTEXT_WINDOW_PHRASES.search('Prompt is too long') is not None)"
    )
    assert _printed(code) == ["_LazyPattern"] * 6 + ["True", "True"]


def test_the_docstring_tree_names_every_error_class() -> None:
    doc = errors.__doc__
    assert doc is not None
    lines = [line.rstrip() for line in doc.splitlines()]
    root_line = next(line for line in lines if line.strip() == "AgentSessionError")
    indent = len(root_line) - len(root_line.lstrip())
    tree = lines[lines.index(root_line) + 1 :]
    tree = tree[: next(i for i, line in enumerate(tree) if not line.strip())]
    # Each branch "├── Name" or "└── Name" sits under its parent, 4 columns per level.
    named: dict[str, str] = {}
    parents = ["AgentSessionError"]
    for line in tree:
        match = re.match(r"^([│ ]*)([├└])── (\w+)", line[indent:])
        assert match, line
        depth = len(match.group(1)) // 4
        del parents[depth + 1 :]
        named[match.group(3)] = parents[depth]
        parents.append(match.group(3))

    classes = _error_classes()
    assert sorted(named) == sorted(set(classes) - {"AgentSessionError"})
    for name, parent in named.items():
        assert classes[name].__bases__[0] is classes[parent], name
    top = [line for line in tree if line[indent : indent + 1] in {"├", "└"}]
    assert top[-1][indent:].startswith("└──")
    assert all(branch[indent:].startswith("├──") for branch in top[:-1])


def test_importing_the_package_does_not_import_litellm() -> None:
    code = (
        "import sys\n"
        "import agent_session, agent_session.testing\n"
        "loaded = sorted(m for m in sys.modules if m == 'litellm' or m.startswith('litellm.'))\n"
        "print(loaded)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_agent_alone_does_not_load_the_orm() -> None:
    code = (
        "import sys; import agent_session; a = 'sqlalchemy.orm' in sys.modules; "
        "from agent_session import Agent; b = 'sqlalchemy.orm' in sys.modules; "
        "from agent_session import AgentSessionMixin; c = 'sqlalchemy.orm' in sys.modules; "
        "print(a, b, c, 'litellm' in sys.modules)"
    )
    assert _printed(code) == ["False", "False", "True", "False"]


def test_what_a_plain_turn_does_not_use_is_imported_on_first_use() -> None:
    rare = [
        "_compaction",
        "_observing",
        "_streaming",
        "_tooling",
        "_upgrades",
        "events",
        "http",
        "listing",
    ]
    code = (
        "import sys; from agent_session import Agent, AgentSessionMixin; "
        "agent = Agent('openai/gpt-4o-mini'); "
        f"print(*[m for m in {rare!r} if 'agent_session.' + m in sys.modules] or ['none']); "
        "from agent_session import Summarize, ToolContext, SessionPage; "
        "from agent_session.tools import PreparedCall; "
        "print(Summarize.__module__, ToolContext.__module__, PreparedCall.__module__, "
        "SessionPage.__module__)"
    )
    assert _printed(code) == [
        "none",
        "agent_session.history",
        "agent_session.tools",
        "agent_session.tools",
        "agent_session.listing",
    ]


def test_a_sync_agent_does_not_import_asyncio() -> None:
    code = (
        "import sys; from agent_session import Agent, Tool; "
        "agent = Agent('openai/gpt-4o-mini', tools=[Tool(lambda: 'ok', name='ok')]); "
        "print('asyncio' in sys.modules, 'concurrent.futures' in sys.modules)"
    )
    assert _printed(code) == ["False", "False"]


def test_invalid_input_never_imports_litellm(tmp_path: Path) -> None:
    code = f"""
import sys
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, Session
from agent_session import Agent, AgentSessionMixin, InputValidationError

class Base(DeclarativeBase):
    pass

class Chat(AgentSessionMixin, Base):
    __tablename__ = "chats"
    __agent__ = Agent("openai/gpt-4o-mini")
    id: Mapped[int] = mapped_column(primary_key=True)

engine = sa.create_engine("sqlite:///{tmp_path / "db.sqlite3"}")
Base.metadata.create_all(engine)
with Session(engine) as db:
    for bad in ({{"wrong": 1}}, 42):
        try:
            Chat.start_session(db, bad)
        except InputValidationError:
            pass
        else:
            raise SystemExit("no error")
print("litellm" in sys.modules)
"""
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False"]


def test_warm_up_imports_litellm_up_front() -> None:
    code = (
        "import asyncio, sys\n"
        "import agent_session\n"
        "before = 'litellm' in sys.modules\n"
        "asyncio.run(agent_session.awarm_up())\n"
        "agent_session.warm_up()\n"
        "import litellm\n"
        "print(before, 'litellm' in sys.modules, litellm.suppress_debug_info)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]


def test_prepare_and_aprepare_still_warm_up_and_warn() -> None:
    """The former names work until 1.0, each with a ``DeprecationWarning``."""
    agent_session.warm_up()  # the work is done once per process: the calls below are cheap
    with pytest.warns(DeprecationWarning, match=r"prepare\(\) is deprecated: use .*warm_up\(\)"):
        agent_session.prepare()
    with pytest.warns(DeprecationWarning, match=r"aprepare\(\) is deprecated: use .*awarm_up"):
        asyncio.run(agent_session.aprepare())


def test_tool_call_result_is_exported() -> None:
    from agent_session import ToolCallResult, tools
    from agent_session.result import Result

    assert ToolCallResult is tools.ToolCallResult
    assert "ToolCallResult" in agent_session.__all__
    assert "list[ToolCallResult]" in str(Result.__annotations__["tool_calls"])
