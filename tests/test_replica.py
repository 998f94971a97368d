"""Reads from a real hot-standby replica; writes go to the primary.

The test makes a primary (``initdb``) and a replica of it (``pg_basebackup -R``,
streaming replication) in a temporary directory, on ports of their own, with Debian's
PostgreSQL programs (about 3 s on two cores), and stops both whatever happens. Turns
are written on the primary; ``get_context`` reads the replica. With replay paused on
the replica (``pg_wal_replay_pause()``), the lag is certain: the replica shows the
conversation without its last turn, the primary shows it whole (how an app reads its
own writes: from the primary). A turn through an engine on the replica is refused by
the read-only server and is a ``StorageError`` that says so; nothing is written.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import Agent, AgentSessionMixin, StorageError
from agent_session.testing import TestModel
from support.servers import Replication, replication

pytestmark = [pytest.mark.replica, pytest.mark.slow]

MODEL = TestModel(text="noted")


class Base(DeclarativeBase):
    pass


class ReplicatedChat(AgentSessionMixin[str], Base):
    __tablename__ = "replicated_chats"
    __agent__ = Agent(MODEL)
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[str] = mapped_column(sa.String(32))


class StatusChat(AgentSessionMixin[str], Base):
    __tablename__ = "replicated_status_chats"
    __agent__ = Agent(MODEL)
    __status_attribute__ = "status"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    status: Mapped[str] = mapped_column(sa.String(32), default="pending")


@pytest.fixture(scope="module")
def servers() -> Iterator[Replication]:
    with replication() as pair:
        yield pair


def _caught_up(primary: sa.Engine, replica: sa.Engine, timeout: float = 30.0) -> None:
    """Wait until the replica has replayed everything the primary has written."""
    with primary.connect() as conn:
        target = conn.execute(sa.text("SELECT pg_current_wal_insert_lsn()")).scalar_one()
    deadline = time.monotonic() + timeout
    with replica.connect() as conn:
        while True:
            behind = conn.execute(
                sa.text("SELECT pg_wal_lsn_diff(:target, pg_last_wal_replay_lsn()) > 0"),
                {"target": target},
            ).scalar_one()
            if not behind:
                return
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.02)


def _replay(replica: sa.Engine, action: str) -> None:
    with replica.connect() as conn:
        conn.execute(sa.text(f"SELECT pg_wal_replay_{action}()"))


def _contents(context: Any) -> list[Any]:
    return [(m.role, m.content) for m in context.messages]


def test_reads_from_a_hot_standby_may_lag_and_writes_go_to_the_primary(
    servers: Replication,
) -> None:
    primary = sa.create_engine(servers.url(servers.primary_port))
    replica = sa.create_engine(servers.url(servers.replica_port))
    try:
        with replica.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_is_in_recovery()")).scalar_one() is True
        Base.metadata.create_all(primary)
        writes, reads = sessionmaker(primary), sessionmaker(replica)

        chat = ReplicatedChat.start_session(writes, "first", user_id="ann")
        _caught_up(primary, replica)
        mine = ReplicatedChat.user_id == "ann"
        assert _contents(ReplicatedChat.get_context(reads, chat.id, where=mine)) == [
            ("user", "first"),
            ("assistant", "noted"),
        ]

        _replay(replica, "pause")
        try:
            ReplicatedChat.continue_session(writes, chat.id, "second")
            # The replica has not replayed the turn: a read there lags behind it ...
            lagging = ReplicatedChat.get_context(reads, chat.id)
            assert [c for _, c in _contents(lagging)] == ["first", "noted"]
            # ... and the app reads its own write from the primary.
            fresh = ReplicatedChat.get_context(writes, chat.id)
            assert [c for _, c in _contents(fresh)] == ["first", "noted", "second", "noted"]
        finally:
            _replay(replica, "resume")
        _caught_up(primary, replica)
        assert _contents(ReplicatedChat.get_context(reads, chat.id)) == _contents(fresh)

        # Writes through the replica's engine are refused by the server: nothing changes.
        with primary.connect() as conn:
            before = conn.execute(sa.select(ReplicatedChat.__table__)).mappings().all()
        calls = len(MODEL.requests)
        with pytest.raises(StorageError) as continued:
            ReplicatedChat.continue_session(reads, chat.id, "third")
        with pytest.raises(StorageError) as started:
            ReplicatedChat.start_session(reads, "hello", user_id="bo")
        for caught in (continued, started):
            message = str(caught.value)
            assert "read-only transaction" in message
            assert "hot-standby replica" in message and "primary" in message
        # Without a status column the model is called before the write is refused.
        assert len(MODEL.requests) == calls + 2
        _caught_up(primary, replica)
        with primary.connect() as conn:
            assert conn.execute(sa.select(ReplicatedChat.__table__)).mappings().all() == before
    finally:
        primary.dispose()
        replica.dispose()


def test_a_status_column_refuses_a_turn_on_the_replica_before_the_model_call(
    servers: Replication,
) -> None:
    """With a status column a sessionmaker turn first commits ``running``: on the
    replica that write fails, so no model call is made (and paid for)."""
    primary = sa.create_engine(servers.url(servers.primary_port))
    replica = sa.create_engine(servers.url(servers.replica_port))
    try:
        Base.metadata.create_all(primary)
        chat = StatusChat.start_session(sessionmaker(primary), "first")
        _caught_up(primary, replica)
        calls = len(MODEL.requests)
        with pytest.raises(StorageError, match="read-only"):
            StatusChat.continue_session(sessionmaker(replica), chat.id, "second")
        assert len(MODEL.requests) == calls
    finally:
        primary.dispose()
        replica.dispose()


async def test_async_reads_from_the_replica(servers: Replication) -> None:
    primary = sa.create_engine(servers.url(servers.primary_port))
    sync_replica = sa.create_engine(servers.url(servers.replica_port))
    replica = create_async_engine(servers.url(servers.replica_port, "postgresql+asyncpg"))
    try:
        Base.metadata.create_all(primary)
        chat = ReplicatedChat.start_session(sessionmaker(primary), "async", user_id="cy")
        _caught_up(primary, sync_replica)
        context = await ReplicatedChat.aget_context(async_sessionmaker(replica), chat.id)
        assert _contents(context) == [("user", "async"), ("assistant", "noted")]
        with pytest.raises(StorageError, match="read-only"):
            await ReplicatedChat.acontinue_session(async_sessionmaker(replica), chat.id, "more")
    finally:
        primary.dispose()
        sync_replica.dispose()
        await replica.dispose()
