"""Peer: the OpenAI Agents SDK's ``SQLAlchemySession`` on the same database.

The SDK's session (``agents.extensions.memory.sqlalchemy_session``) is async-only
and stores one row per message in ``agent_messages`` plus a row per session in
``agent_sessions``. agent-session stores the whole conversation as one JSON
document on the application's row. Both run here on one ``AsyncEngine`` (so the
same pool and, on SQLite, the same WAL and busy-timeout settings the SDK applies
to the engine), each on its own tables, with a history of N messages to start with
(the same texts on both sides), interleaved round by round. After each turn the
new messages are removed again (not timed).

One turn, on each side:

- SDK: ``items = await session.get_items()`` (one SELECT of every message, JSON
  decode per row); the same model double called with those items plus the new
  user message; ``await session.add_items([user, assistant])`` (one transaction:
  SELECT the session row, INSERT both messages, UPDATE ``updated_at``). Items are
  plain chat dicts; nothing is validated.
- agent-session: ``await Chat.acontinue_session(async_sessionmaker, pk, text)``
  (one transaction to SELECT and validate the document; the same double; input and
  output validated against their schemas; one transaction to compare-and-swap the
  document with both messages, each with its ``meta``, appended).

Read back: ``session.get_items()`` against ``Chat.aget_context(maker, pk)`` (a
validated ``Context``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from agent_session.llm import ModelRequest

from ._fixtures import (
    MODEL_NAME,
    RESPONSE_FORMAT,
    USER_TEXT,
    Databases,
    Reply,
    chat_items,
    chat_table,
    forget_requests,
)
from ._harness import BenchResult, Options, ainterleave, compare, fmt_ratio, fmt_ratio_stats

NAME = "peer"
TITLE = "Peer: OpenAI Agents SDK SQLAlchemySession"
SIZES = (10, 1000)
ROUNDS = {10: 100, 1000: 15}
SDK_TURN, LIB_TURN = "SDK turn", "agent-session turn"
SDK_READ, LIB_READ = "SDK read", "agent-session read"


def _measure(async_url: str, sync_url: str, size: int, rounds: int) -> dict[str, list[float]]:
    from agents.extensions.memory.sqlalchemy_session import SQLAlchemySession

    with chat_table(sync_url, f"peer_{size}", size, [1]) as fx:
        chat, model, sync_engine, reset_row = fx.chat, fx.model, fx.engine, fx.reset
        sessions_table, messages_table = f"peer_sessions_{size}", f"peer_messages_{size}"

        async def main() -> dict[str, list[float]]:
            engine = create_async_engine(async_url)
            sdk = SQLAlchemySession(
                "conversation-1",
                engine=engine,
                create_tables=True,
                sessions_table=sessions_table,
                messages_table=messages_table,
            )
            maker = async_sessionmaker(engine)
            await sdk.add_items(chat_items(size))  # type: ignore[arg-type]
            with sync_engine.connect() as conn:
                last_id = conn.exec_driver_sql(f"SELECT max(id) FROM {messages_table}").scalar()

            def reset_sdk() -> None:
                with sync_engine.begin() as conn:
                    conn.exec_driver_sql(
                        f"DELETE FROM {messages_table} WHERE id > {int(last_id or 0)}"
                    )

            async def sdk_turn() -> float:
                reset_sdk()
                started = time.perf_counter()
                items = await sdk.get_items()
                user = {"role": "user", "content": USER_TEXT}
                response = await model.acomplete(
                    ModelRequest(
                        model=MODEL_NAME,
                        messages=[*items, user],  # type: ignore[list-item]
                        response_format=RESPONSE_FORMAT,
                        output_schema=Reply,
                    )
                )
                await sdk.add_items([user, {"role": "assistant", "content": response.text}])  # type: ignore[list-item]
                elapsed = time.perf_counter() - started
                forget_requests(model)
                return elapsed

            async def lib_turn() -> float:
                reset_row(1)
                started = time.perf_counter()
                await chat.acontinue_session(maker, 1, USER_TEXT)
                elapsed = time.perf_counter() - started
                forget_requests(model)
                return elapsed

            async def sdk_read() -> float:
                started = time.perf_counter()
                items = await sdk.get_items()
                elapsed = time.perf_counter() - started
                assert len(items) >= size
                return elapsed

            async def lib_read() -> float:
                started = time.perf_counter()
                context = await chat.aget_context(maker, 1)
                elapsed = time.perf_counter() - started
                assert len(context.messages) > size
                return elapsed

            variants: dict[str, Callable[[], Awaitable[float]]] = {
                SDK_TURN: sdk_turn,
                LIB_TURN: lib_turn,
                SDK_READ: sdk_read,
                LIB_READ: lib_read,
            }
            try:
                return await ainterleave(variants, rounds, warmup=3 if size < 1000 else 1)
            finally:
                await engine.dispose()

        try:
            return asyncio.run(main())
        finally:
            with sync_engine.begin() as conn:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {messages_table}")
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {sessions_table}")


def run(opts: Options, dbs: Databases) -> BenchResult:
    result = BenchResult(
        name=NAME,
        title=TITLE,
        target="report the ratio (no target); same workload, same database, same process",
        description=__doc__ or "",
    )
    try:
        from importlib.metadata import version

        import agents.extensions.memory.sqlalchemy_session  # noqa: F401

        sdk_version = version("openai-agents")
    except ImportError as exc:
        return result.skip(f"openai-agents is not installed ({exc}); pip install -e '.[bench]'")
    targets = [
        ("SQLite (aiosqlite)", dbs.sqlite_url("peer", is_async=True), dbs.sqlite_url("peer"))
    ]
    if (pg := dbs.postgres_url(is_async=True)) is not None:
        targets.append(("PostgreSQL (asyncpg)", pg, dbs.postgres_url() or ""))
    else:
        result.notes.append(f"PostgreSQL rows skipped: {dbs.postgres_error}")
    sizes = (10,) if opts.quick else SIZES
    rows = []
    headline = []
    for label, async_url, sync_url in targets:
        for size in sizes:
            rounds = 3 if opts.quick else ROUNDS[size]
            samples = _measure(async_url, sync_url, size, rounds)
            for what, lib, sdk in (("turn", LIB_TURN, SDK_TURN), ("read back", LIB_READ, SDK_READ)):
                c = compare(samples[lib], samples[sdk])
                rows.append([label, f"{size:,}", what, *c.ms_cells(), *fmt_ratio_stats(c.ratio)])
                if what == "turn":
                    headline.append(f"{label} {size:,} msgs {fmt_ratio(c.ratio.median)}")
    result.add_table(
        f"agent-session vs openai-agents {sdk_version} SQLAlchemySession, ms "
        "(ratio = agent-session / SDK, median of per-round ratios; below 1 = agent-session faster)",
        [
            "database (driver)",
            "history",
            "operation",
            "agent-session",
            "p25–p75",
            "SDK",
            "p25–p75",
            "ratio",
            "ratio p25–p75",
        ],
        rows,
    )
    result.measured = "agent-session/SDK per turn: " + ", ".join(headline)
    result.headline = "; ".join(headline)
    result.met = None
    result.notes.append(
        "No target: the two designs trade differently. The SDK appends two rows per turn "
        "(constant write) and reads every message row back; agent-session reads and "
        "rewrites one document (write grows with the history) and validates it."
    )
    return result
