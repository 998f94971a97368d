"""Every way of declaring a model takes the mixin: turns, the stored context, Alembic.

One session model per declarative style (``DeclarativeBase``, with
``MappedAsDataclass``, ``declarative_base()``, ``registry().generate_base()``,
``@registry.mapped``, Flask-SQLAlchemy's ``db.Model`` in both its styles, SQLModel's
``table=True``), each on SQLite, PostgreSQL and MariaDB: a start and a continue
turn, the context read back, and a migration that Alembic autogenerates from the
model and that leaves nothing more to generate.

The class-definition hooks are what changes between SQLAlchemy releases: CI also
runs this module at the lowest SQLAlchemy the package allows (``.ci/sqlalchemy-lowest``).
"""

from __future__ import annotations

import ast
import warnings
from typing import Any

import pytest
import sqlalchemy as sa
import sqlmodel
from alembic.autogenerate import compare_metadata, produce_migrations, render_python_code
from alembic.migration import MigrationContext
from alembic.operations import Operations
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    Session,
    declarative_base,
    mapped_column,
    registry,
)
from sqlmodel import Field, SQLModel

from agent_session import Agent, AgentSessionMixin, ConfigurationError
from agent_session.testing import TestModel
from support.databases import Database
from support.sessions import stored_rows

agent = Agent(TestModel(text="hi there"))


class Base(DeclarativeBase):
    pass


class ModernChat(AgentSessionMixin[str], Base):
    __tablename__ = "style_modern"
    __agent__ = agent
    __status_attribute__ = "status"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(50))


class DataclassBase(MappedAsDataclass, DeclarativeBase):
    pass


class DataclassChat(AgentSessionMixin[str], DataclassBase):
    __tablename__ = "style_dataclass"
    __agent__ = agent
    __status_attribute__ = "status"
    title: Mapped[str] = mapped_column(sa.String(50))
    id: Mapped[int] = mapped_column(primary_key=True, init=False)


Classic = declarative_base()


class ClassicChat(AgentSessionMixin, Classic):
    __tablename__ = "style_classic"
    __agent__ = agent
    __status_attribute__ = "status"
    id = sa.Column(sa.Integer, primary_key=True)
    title = sa.Column(sa.String(50), nullable=False)


Generated = registry().generate_base()


class GeneratedChat(AgentSessionMixin, Generated):
    __tablename__ = "style_generated"
    __agent__ = agent
    __status_attribute__ = "status"
    id = sa.Column(sa.Integer, primary_key=True)
    title = sa.Column(sa.String(50), nullable=False)


decorated = registry()


@decorated.mapped
class DecoratedChat(AgentSessionMixin[str]):
    __tablename__ = "style_decorated"
    __agent__ = agent
    __status_attribute__ = "status"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(50))


flask_db = SQLAlchemy()


class FlaskChat(AgentSessionMixin, flask_db.Model):  # type: ignore[name-defined,misc]
    """Flask-SQLAlchemy's default ``db.Model``, which names the table (``flask_chat``)."""

    __agent__ = agent
    __status_attribute__ = "status"
    id = flask_db.Column(flask_db.Integer, primary_key=True)
    title = flask_db.Column(flask_db.String(50), nullable=False)


class FlaskBase(DeclarativeBase):
    pass


flask_typed_db = SQLAlchemy(model_class=FlaskBase)


class FlaskTypedChat(AgentSessionMixin[str], flask_typed_db.Model):  # type: ignore[misc]
    """Flask-SQLAlchemy with a ``DeclarativeBase`` model class (``flask_typed_chat``)."""

    __agent__ = agent
    __status_attribute__ = "status"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(50))


class SQLModelChat(AgentSessionMixin[str], SQLModel, table=True):
    """SQLModel names the table (``sqlmodelchat``); the mixin's columns are fields."""

    __agent__ = agent
    __status_attribute__ = "status"
    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=50)


STYLES: dict[str, Any] = {
    "DeclarativeBase": ModernChat,
    "MappedAsDataclass": DataclassChat,
    "declarative_base": ClassicChat,
    "generate_base": GeneratedChat,
    "registry.mapped": DecoratedChat,
    "flask_sqlalchemy": FlaskChat,
    "flask_sqlalchemy_model_class": FlaskTypedChat,
    "sqlmodel": SQLModelChat,
}

MIXIN_COLUMNS = {
    "context": "sa.Column('context', sa.JSON(), nullable=True)",
    "context_revision": (
        "sa.Column('context_revision', sa.Integer(), server_default=sa.text('0'), nullable=False)"
    ),
    "status": (
        "sa.Column('status', sa.String(length=32), server_default='pending', nullable=False)"
    ),
    "status_changed_at": "sa.Column('status_changed_at', sa.DateTime(), nullable=True)",
}


def test_each_style_names_its_table_and_gets_the_columns() -> None:
    names = {style: model.__table__.name for style, model in STYLES.items()}
    assert names["flask_sqlalchemy"] == "flask_chat"
    assert names["flask_sqlalchemy_model_class"] == "flask_typed_chat"
    assert names["sqlmodel"] == "sqlmodelchat"
    for model in STYLES.values():
        assert set(MIXIN_COLUMNS) <= set(model.__table__.c.keys())
        assert isinstance(model.__table__.c.context.type, sa.JSON)


def test_mistakes_are_configuration_errors_at_class_definition_in_every_style() -> None:
    # Each style maps the class when it is defined, and the mapping checks it.
    with pytest.raises(ConfigurationError, match=r"NoAgent uses AgentSessionMixin but does not"):

        class NoAgent(AgentSessionMixin, declarative_base()):  # type: ignore[misc]
            __tablename__ = "no_agent"
            id = sa.Column(sa.Integer, primary_key=True)

    with pytest.raises(ConfigurationError, match=r"TextContext.context .* must be JSON-typed"):

        @registry().mapped
        class TextContext(AgentSessionMixin):
            __tablename__ = "text_context"
            __agent__ = agent
            id: Mapped[int] = mapped_column(primary_key=True)
            context: Mapped[str] = mapped_column(sa.Text())

    with pytest.raises(ConfigurationError, match=r"WrongAgent.__agent__ must be an Agent"):

        class WrongAgent(AgentSessionMixin, SQLAlchemy().Model):  # type: ignore[misc]
            __agent__ = "openai/gpt-4o"
            id = sa.Column(sa.Integer, primary_key=True)

    class LocalModel(SQLModel, registry=registry()):
        pass

    with pytest.raises(ConfigurationError, match=r"declared AgentSessionMixin\[int\]"):

        class Mismatched(AgentSessionMixin[int], LocalModel, table=True):
            __agent__ = agent
            id: int | None = Field(default=None, primary_key=True)


def _migrate(database: Database, table: sa.Table) -> None:
    """Autogenerate the table's migration on an empty database, run it, compare again."""
    database.create_all(table.metadata)  # dropped again when the test ends
    # The history table is declared on the style's own metadata, beside the table.
    history = table.metadata.tables[f"{table.name}_history"]
    # Every table of the metadata (SQLModel's is shared with other test modules): the
    # migration then creates this style's two tables and touches no other.
    metadata = sa.MetaData()
    for other in table.metadata.sorted_tables:
        other.to_metadata(metadata)
    with database.sync_engine().begin() as conn:
        history.drop(conn)
        table.drop(conn)
        context = MigrationContext.configure(conn)
        script = produce_migrations(context, metadata)
        # The body of a revision's upgrade(), as Alembic writes it into the file.
        code = "def upgrade():\n" + render_python_code(script.upgrade_ops)
        rendered = ast.unparse(ast.parse(code))
        for column in MIXIN_COLUMNS.values():
            assert column in rendered, rendered
        assert f"op.create_table('{history.name}'" in rendered, rendered
        namespace = {"op": Operations(context), "sa": sa, "sqlmodel": sqlmodel, "mysql": mysql}
        exec(code, namespace)
        namespace["upgrade"]()
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


@pytest.mark.parametrize("style", list(STYLES))
async def test_each_style_takes_turns_and_migrates(sync_database: Database, style: str) -> None:
    model = STYLES[style]
    table: sa.Table = model.__table__
    _migrate(sync_database, table)
    engine = sync_database.engine()
    session = sqlmodel.Session if style == "sqlmodel" else Session
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # none from SQLModel's Session
        with session(engine) as db:
            chat = model.start_session(db, "hello", title="first")
            chat = model.continue_session(db, chat.id, "again")
            db.commit()
            key = chat.id
        with session(engine) as db:
            context = model.get_context(db, key)
    assert type(chat) is model and chat.last_output == "hi there"
    assert context.turns == 2
    assert [(m.role, m.content) for m in context.messages] == [
        ("user", "hello"),
        ("assistant", "hi there"),
        ("user", "again"),
        ("assistant", "hi there"),
    ]
    [row] = stored_rows(sync_database, table)
    assert row["title"] == "first" and row["status"] == "completed"
    # Start (1), then the continue's claim and its write (3).
    assert row["context_revision"] == 3 and row["context"]["turns"] == 2
