"""Types: ``mypy --strict`` accepts a typed app, and the generic mixin maps and runs.

The mypy runs check ``examples/typed_app.py``, ``tests/support/typed_cases.py`` and
``tests/support/typed_styles.py`` (their ``assert_type`` calls and the errors marked with
``# type: ignore``) against this checkout's ``src``, with plain ``strict = True`` and
no plugin, as an application would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from agent_session import Agent, AgentSessionMixin, ConfigurationError
from agent_session.testing import TestModel
from support import typed_cases

ROOT = Path(__file__).resolve().parents[1]
CASES = Path(typed_cases.__file__).resolve()
TYPED_APP = ROOT / "examples" / "typed_app.py"
STYLES = CASES.with_name("typed_styles.py")


def run_mypy(tmp_path: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on ``files`` with this checkout's ``src`` first on the path."""
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\npython_version = 3.11\n")
    env = {**os.environ, "MYPYPATH": os.pathsep.join([str(ROOT / "src"), str(CASES.parents[1])])}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(config),
            # Shared between runs (stubs of SQLAlchemy and Pydantic are slow to build).
            "--cache-dir",
            str(ROOT / ".mypy_cache" / "test_typing"),
            "--no-error-summary",
            "--show-error-codes",
            *map(str, files),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.timeout(600)  # a first run, with no mypy cache yet, builds the stubs' cache
def test_mypy_strict_accepts_the_typed_app_and_the_cases(tmp_path: Path) -> None:
    bad = tmp_path / "bad_app.py"
    bad.write_text(
        textwrap.dedent(
            """
            from support.typed_cases import DataclassChat, UntypedChat

            def answer(chat: DataclassChat) -> str:
                return chat.last_output.answer

            def revision(chat: UntypedChat) -> str:
                return UntypedChat.context_revision
            """
        )
    )
    run = run_mypy(tmp_path, TYPED_APP, CASES, bad)
    assert run.returncode == 1, run.stdout + run.stderr
    errors = [line for line in run.stdout.splitlines() if ": error:" in line]
    # Only the deliberately wrong file fails: ``last_output`` is Optional, a column
    # on the class is an ``InstrumentedAttribute[int]``.
    assert [line.split(": error: ")[0] for line in errors] == ["bad_app.py:5", "bad_app.py:8"]
    assert '"answer"' in errors[0] and "[union-attr]" in errors[0]
    assert "InstrumentedAttribute[int]" in errors[1] and "[return-value]" in errors[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mypy_strict_accepts_an_app_in_each_style(tmp_path: Path) -> None:
    """``tests/support/typed_styles.py``: a model in each declarative style, and the calls an app
    makes with its kind of session (``db.session``, SQLModel's sessions)."""
    run = run_mypy(tmp_path, STYLES)
    assert run.returncode == 0, run.stdout + run.stderr
    assert ": error:" not in run.stdout


# -- run time: the generic mixin is an ordinary declarative mixin ----------------


def test_typed_cases_map_and_run() -> None:
    engine = sa.create_engine("sqlite://")
    typed_cases.Base.metadata.create_all(engine)
    typed_cases.DataclassBase.metadata.create_all(engine)
    with Session(engine) as db:
        typed_cases.untyped(db)
        assert typed_cases.text(db) == "PLAIN TEXT"
        reply = typed_cases.dataclass(db)
        assert isinstance(reply, typed_cases.Reply)
        stored = db.scalars(sa.select(typed_cases.DataclassChat)).all()
        assert [chat.context_revision for chat in stored] == [1]
    assert typed_cases.DataclassChat(user_id="u").context is None
    columns = set(typed_cases.TextChat.__table__.columns.keys())
    assert columns == {"id", "context", "context_revision"}
    engine.dispose()


def test_typed_app_runs() -> None:
    run = subprocess.run(
        [sys.executable, str(TYPED_APP)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "stored turns: 2" in run.stdout
    assert "async turns: 2" in run.stdout


class Reply(BaseModel):
    answer: str


class Other(BaseModel):
    answer: str


class SubReply(Reply):
    pass


@pytest.mark.parametrize(
    ("parameter", "output_schema"),
    [(Other, Reply), (str, Reply), (Reply, None)],
    ids=["other-schema", "str-for-schema", "schema-for-text"],
)
def test_a_type_parameter_that_does_not_match_the_agent_is_rejected(
    parameter: type, output_schema: type[BaseModel] | None
) -> None:
    class Base(DeclarativeBase):
        pass

    agent = Agent(TestModel(), output_schema=output_schema)
    with pytest.raises(ConfigurationError, match=r"Mismatched is declared AgentSessionMixin\["):

        class Mismatched(AgentSessionMixin[parameter], Base):  # type: ignore[valid-type]
            __tablename__ = "mismatched"
            __agent__ = agent
            id: Mapped[int] = mapped_column(primary_key=True)


@pytest.mark.parametrize(
    ("parameter", "output_schema"),
    [(Reply, SubReply), (BaseModel, Reply), (object, None), (str, None), (Any, Reply)],
    ids=["base-of-schema", "basemodel", "object", "str", "any"],
)
def test_a_matching_type_parameter_is_accepted(
    parameter: Any, output_schema: type[BaseModel] | None
) -> None:
    class Base(DeclarativeBase):
        pass

    agent = Agent(TestModel(), output_schema=output_schema)

    class Matched(AgentSessionMixin[parameter], Base):  # type: ignore[valid-type]
        __tablename__ = "matched"
        __agent__ = agent
        id: Mapped[int] = mapped_column(primary_key=True)

    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as db:
        chat = Matched.start_session(db, "hi")
        assert isinstance(chat.last_output, output_schema or str)
    engine.dispose()
