"""The async twins are truly async, and the sync library works without greenlet."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from support.databases import Database

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from agent_session.testing import TestModel
from models import Base, Reply, SupportChat, TrackedChat, support_agent


def _touch_every_column(instance: object, table: sa.Table) -> dict[str, object]:
    """Read every column attribute; a lazy load here would raise MissingGreenlet."""
    return {column.key: getattr(instance, column.key) for column in table.columns}


async def test_no_lazy_load_after_the_async_calls(async_database: Database) -> None:
    async_database.create_all(Base.metadata)
    engine = async_database.engine()
    assert isinstance(engine, AsyncEngine)
    with support_agent.override(model=TestModel()):
        async with AsyncSession(engine) as db:  # default expire_on_commit=True
            chat = await SupportChat.astart_session(
                db, {"message": "hi"}, instruction_args={"company_name": "A"}, user_id="u"
            )
            values = _touch_every_column(chat, SupportChat.__table__)
            assert values["context_revision"] == 1
            assert isinstance(chat.last_output, Reply)
            chat = await SupportChat.acontinue_session(db, chat, {"message": "more"})
            values = _touch_every_column(chat, SupportChat.__table__)
            assert values["context_revision"] == 2
            context = await SupportChat.aget_context(db, chat.id)
            assert context.turns == 2
            await db.commit()

        maker = async_sessionmaker(engine)  # the library's own short transactions
        tracked = await TrackedChat.astart_session(
            maker, {"message": "hi"}, instruction_args={"company_name": "A"}, user_id="u"
        )
        tracked = await TrackedChat.acontinue_session(maker, tracked, {"message": "again"})
        values = _touch_every_column(tracked, TrackedChat.__table__)
        assert values["status"] == "completed" and values["context_revision"] == 3
        assert isinstance(tracked.last_output, Reply)


def test_sync_use_needs_no_greenlet(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["greenlet"] = None  # as if greenlet were not installed
        import sqlalchemy as sa
        from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, Session
        import agent_session
        from agent_session import Agent, AgentSessionMixin
        from agent_session.testing import TestModel

        class Base(DeclarativeBase):
            pass

        class Chat(AgentSessionMixin, Base):
            __tablename__ = "chats"
            __agent__ = Agent(TestModel(text="pong"))
            id: Mapped[int] = mapped_column(primary_key=True)

        engine = sa.create_engine("sqlite:///{tmp_path / "db.sqlite3"}")
        Base.metadata.create_all(engine)
        with Session(engine) as db:
            chat = Chat.start_session(db, "ping")
            db.commit()
            print(chat.last_output, "litellm" in sys.modules, sys.modules["greenlet"] is None)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    # pong: it worked; False: LiteLLM was not imported; True: greenlet never loaded
    assert run.stdout.split() == ["pong", "False", "True"]


@pytest.mark.parametrize("maker", [False, True], ids=["session", "sessionmaker"])
async def test_wrong_session_kind_is_a_configuration_error(
    async_database: Database, maker: bool
) -> None:
    from agent_session import ConfigurationError

    async_database.create_all(Base.metadata)
    engine = async_database.engine()
    db = async_sessionmaker(engine) if maker else AsyncSession(engine)
    with pytest.raises(ConfigurationError, match=r"a-prefixed|AsyncSession"):
        SupportChat.start_session(db, {"message": "hi"}, instruction_args={"company_name": "A"})
    if not maker:
        await db.close()  # type: ignore[union-attr]
