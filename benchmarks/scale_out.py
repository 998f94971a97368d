"""Scale-out figures for docs/scaling.md: ``python -m benchmarks.scale_out``.

Not one of the suite's benchmarks (it starts servers of its own and writes no page):
it prints what docs/scaling.md quotes.

- The time of a turn (sessionmaker, a test double for the model, 10 sessions in turn)
  on the local PostgreSQL with each driver's defaults, with the settings a
  transaction-mode pooler needs (prepared statements off), and through a PgBouncer
  1.18 in transaction mode with those settings.
- Through PgBouncer with 2 server connections: 40 concurrent chats on one async
  engine of 20 connections, turns per second.
- A primary and a streaming hot standby made with initdb and pg_basebackup: how long
  they take to start, and how long a committed turn takes to be readable on the
  replica (median and worst of 100).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import Agent, AgentSessionMixin
from agent_session.testing import TestModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.servers import pgbouncer, replication  # noqa: E402

DIRECT = "127.0.0.1:5432"
DATABASE = "test"
PSYCOPG_ARGS: dict[str, Any] = {"prepare_threshold": None}
ASYNCPG_ARGS: dict[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__",
}
TURNS = 300
SESSIONS = 10


class Base(DeclarativeBase):
    pass


class ScaleChat(AgentSessionMixin[str], Base):
    __tablename__ = "bench_scale_out_chats"
    __agent__ = Agent(TestModel(text="ok"))
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


def _sync_turn_ms(host: str, connect_args: dict[str, Any]) -> float:
    engine = sa.create_engine(
        f"postgresql+psycopg://postgres@{host}/{DATABASE}", connect_args=connect_args
    )
    maker = sessionmaker(engine)
    try:
        keys = [ScaleChat.start_session(maker, "hi").id for _ in range(SESSIONS)]
        started = time.perf_counter()
        for n in range(TURNS):
            ScaleChat.continue_session(maker, keys[n % SESSIONS], "more")
        return (time.perf_counter() - started) * 1000 / TURNS
    finally:
        engine.dispose()


async def _async_turn_ms(host: str, connect_args: dict[str, Any]) -> float:
    engine = create_async_engine(
        f"postgresql+asyncpg://postgres@{host}/{DATABASE}", connect_args=connect_args
    )
    maker = async_sessionmaker(engine)
    try:
        keys = [(await ScaleChat.astart_session(maker, "hi")).id for _ in range(SESSIONS)]
        started = time.perf_counter()
        for n in range(TURNS):
            await ScaleChat.acontinue_session(maker, keys[n % SESSIONS], "more")
        return (time.perf_counter() - started) * 1000 / TURNS
    finally:
        await engine.dispose()


async def _concurrent_turns_per_second(host: str, chats: int = 40, turns: int = 10) -> float:
    engine = create_async_engine(
        f"postgresql+asyncpg://postgres@{host}/{DATABASE}",
        pool_size=20,
        max_overflow=0,
        connect_args=ASYNCPG_ARGS,
    )
    maker = async_sessionmaker(engine)

    async def chat() -> None:
        key = (await ScaleChat.astart_session(maker, "hi")).id
        for _ in range(turns):
            await ScaleChat.acontinue_session(maker, key, "more")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(chat() for _ in range(chats)))
        return chats * (turns + 1) / (time.perf_counter() - started)
    finally:
        await engine.dispose()


def _replica_figures() -> None:
    started = time.perf_counter()
    with replication() as servers:
        print(f"primary + replica started in {time.perf_counter() - started:.1f} s")
        primary = sa.create_engine(servers.url(servers.primary_port))
        replica = sa.create_engine(servers.url(servers.replica_port))
        try:
            Base.metadata.create_all(primary)
            writes, reads = sessionmaker(primary), sessionmaker(replica)
            key = ScaleChat.start_session(writes, "hi").id
            lags = []
            with replica.connect() as conn:
                for n in range(100):
                    ScaleChat.continue_session(writes, key, f"turn {n}")
                    committed = time.perf_counter()
                    while True:
                        count = conn.execute(
                            sa.text(
                                "SELECT count(*) FROM bench_scale_out_chats "
                                "WHERE id = :key AND context::text LIKE :text"
                            ),
                            {"key": key, "text": f'%"turn {n}"%'},
                        ).scalar_one()
                        conn.rollback()
                        if count:
                            break
                    lags.append((time.perf_counter() - committed) * 1000)
            ScaleChat.get_context(reads, key)
            print(
                f"replica shows a committed turn after {statistics.median(lags):.2f} ms "
                f"(median), {max(lags):.2f} ms (worst of 100)"
            )
        finally:
            primary.dispose()
            replica.dispose()


def main() -> None:
    direct = sa.create_engine(f"postgresql+psycopg://postgres@{DIRECT}/{DATABASE}")
    Base.metadata.drop_all(direct)
    Base.metadata.create_all(direct)
    try:
        with pgbouncer(pool_size=2) as bouncer:
            via = f"127.0.0.1:{bouncer.port}"
            rows = [
                ("psycopg, defaults, direct", _sync_turn_ms(DIRECT, {})),
                ("psycopg, prepare_threshold=None, direct", _sync_turn_ms(DIRECT, PSYCOPG_ARGS)),
                ("psycopg, prepare_threshold=None, PgBouncer", _sync_turn_ms(via, PSYCOPG_ARGS)),
                ("asyncpg, defaults, direct", asyncio.run(_async_turn_ms(DIRECT, {}))),
                (
                    "asyncpg, no statement caches, direct",
                    asyncio.run(_async_turn_ms(DIRECT, ASYNCPG_ARGS)),
                ),
                (
                    "asyncpg, no statement caches, PgBouncer",
                    asyncio.run(_async_turn_ms(via, ASYNCPG_ARGS)),
                ),
            ]
            for name, ms in rows:
                print(f"{name:45} {ms:6.2f} ms a turn")
            rate = asyncio.run(_concurrent_turns_per_second(via))
            print(
                f"40 concurrent chats through PgBouncer (2 server connections): {rate:.0f} turns/s"
            )
            rate = asyncio.run(_concurrent_turns_per_second(DIRECT))
            print(f"40 concurrent chats direct (20 connections): {rate:.0f} turns/s")
        _replica_figures()
    finally:
        Base.metadata.drop_all(direct)
        direct.dispose()


if __name__ == "__main__":
    main()
