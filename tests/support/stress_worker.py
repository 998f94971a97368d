"""Models and helpers shared by the concurrency, fault, stress and bad-input tests.

Run as a script, this module is the worker process those tests start:

- ``race URL ...``: continue stored sessions turn after turn (several workers at
  once) and print, as one JSON line, which turns committed and which lost a race;
- ``hang URL ...``: start one turn whose model call never returns, so that the
  test can kill the process in the middle of the turn.

Every turn's user message carries a unique token in brackets, ``"turn [w3t12]"``,
and the fake model answers ``{"answer": "echo:w3t12"}``, so a history shows which
reply belongs to which message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from agent_session import Agent, AgentSessionMixin, StaleSessionError
from agent_session.testing import FunctionModel

if TYPE_CHECKING:
    from support.databases import Database

ASYNC_DRIVERS = frozenset({"aiosqlite", "asyncpg", "aiomysql"})
INSTRUCTION = "Repeat the token of each message."
_TOKEN = re.compile(r"\[([^\[\]]+)\]")


class Echo(BaseModel):
    answer: str


def token_of(text: str) -> str:
    match = _TOKEN.search(text)
    assert match is not None, f"no token in {text!r}"
    return match.group(1)


def echo(messages: list[dict[str, Any]]) -> dict[str, str]:
    """The fake model: answer with the token of the newest user message."""
    user = next(m for m in reversed(messages) if m["role"] == "user")
    return {"answer": f"echo:{token_of(str(user['content']))}"}


def make_chat(
    fn: Callable[..., Any] = echo,
    *,
    status: bool = False,
    running_timeout: timedelta | None = None,
    table: str = "race_chats",
    **agent_kw: Any,
) -> Any:
    """A fresh session model class (own metadata) whose agent calls ``fn``.

    The same arguments give the same table in every process, so a test and the
    workers it starts share rows.
    """
    agent_kw.setdefault("instruction", INSTRUCTION)
    agent = Agent(FunctionModel(fn), output_schema=Echo, **agent_kw)

    class Base(DeclarativeBase):
        pass

    namespace: dict[str, Any] = {
        "__tablename__": table,
        "__agent__": agent,
        "__annotations__": {"id": Mapped[int], "owner": Mapped[str]},
        "id": mapped_column(primary_key=True, autoincrement=True),
        "owner": mapped_column(sa.String(40), default="test"),
    }
    if status:
        namespace["__status_attribute__"] = "status"
    if running_timeout is not None:
        namespace["__running_timeout__"] = running_timeout
    return type("Chat", (AgentSessionMixin, Base), namespace)


def model_of(cls: Any) -> FunctionModel:
    model = cls.__agent__.model
    assert isinstance(model, FunctionModel)
    return model


def joined_row(conn: Any, table: sa.Table, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with its format-4 head joined with its history rows: ``context`` then
    holds ``messages`` (the whole active path, without ids), as version 3 stored it."""
    from agent_session.context import is_head, joined_document
    from agent_session.mixin import history_owner

    head = row.get("context")
    history = next(
        (t for t in table.metadata.tables.values() if history_owner(t) is table),
        None,
    )
    if not is_head(head) or history is None:
        return row
    rows = conn.execute(
        sa.select(history.c.seq, history.c.parent, history.c.data)
        .where(history.c.session_id == row["id"])
        .order_by(history.c.seq)
    ).all()
    joined = joined_document(head, rows)
    joined["messages"] = [
        {k: v for k, v in m.items() if k not in ("id", "parent")} for m in joined["messages"]
    ]
    return {**row, "context": joined}


def history_tokens(document: dict[str, Any]) -> list[str]:
    """Check a stored history and return the user tokens in order.

    The history must be: the system message, then user/assistant pairs where each
    assistant reply echoes the token of the user message right before it.
    """
    messages = document["messages"]
    assert messages[0]["role"] == "system", messages[0]
    assert messages[0]["content"] == INSTRUCTION
    pairs = messages[1:]
    assert len(pairs) % 2 == 0, f"odd number of turn messages: {len(pairs)}"
    tokens = []
    for user, assistant in zip(pairs[::2], pairs[1::2], strict=True):
        assert user["role"] == "user", user
        assert assistant["role"] == "assistant", assistant
        token = token_of(user["content"])
        assert json.loads(assistant["content"]) == {"answer": f"echo:{token}"}, (user, assistant)
        tokens.append(token)
    assert document["turns"] == len(tokens)
    assert len(set(tokens)) == len(tokens), f"duplicated turn in {tokens}"
    return tokens


class Harness:
    """One session model class on one database of the matrix, sync or async alike.

    Tests are written once as ``async def``; for a sync database the sync
    classmethods run, for an async one their ``a``-prefixed twins.
    """

    def __init__(self, database: Database, cls: Any, **engine_kw: Any) -> None:
        database.create_all(cls.metadata)
        self.database = database
        self.cls = cls
        self.table: sa.Table = cls.__table__
        self.engine = database.engine(**engine_kw)
        self.is_async = isinstance(self.engine, AsyncEngine)
        self.maker: Any = (
            async_sessionmaker(self.engine) if self.is_async else sessionmaker(self.engine)
        )

    @property
    def model(self) -> FunctionModel:
        return model_of(self.cls)

    @property
    def pool(self) -> Any:
        engine = self.engine
        return engine.sync_engine.pool if isinstance(engine, AsyncEngine) else engine.pool

    @property
    def sync_engine(self) -> sa.Engine:
        engine = self.engine
        return engine.sync_engine if isinstance(engine, AsyncEngine) else engine

    @asynccontextmanager
    async def session(self, engine: Any = None) -> AsyncIterator[Any]:
        """A caller-owned session; closed (not committed) at exit."""
        bind = engine if engine is not None else self.engine
        if self.is_async:
            async with AsyncSession(bind, expire_on_commit=False) as db:
                yield db
        else:
            with Session(bind, expire_on_commit=False) as db:
                yield db

    async def execute(self, db: Any, sql: str) -> Any:
        if self.is_async:
            return (await db.execute(sa.text(sql))).scalar()
        return db.execute(sa.text(sql)).scalar()

    async def commit(self, db: Any) -> None:
        await db.commit() if self.is_async else db.commit()

    async def rollback(self, db: Any) -> None:
        await db.rollback() if self.is_async else db.rollback()

    async def start(self, input: Any = "hello [t0]", db: Any = None, **kw: Any) -> Any:
        target = self.maker if db is None else db
        if self.is_async:
            return await self.cls.astart_session(target, input, **kw)
        return self.cls.start_session(target, input, **kw)

    async def cont(self, key: Any, input: Any, db: Any = None, **kw: Any) -> Any:
        target = self.maker if db is None else db
        if self.is_async:
            return await self.cls.acontinue_session(target, key, input, **kw)
        return self.cls.continue_session(target, key, input, **kw)

    async def context(self, key: Any, db: Any = None, **kw: Any) -> Any:
        target = self.maker if db is None else db
        if self.is_async:
            return await self.cls.aget_context(target, key, **kw)
        return self.cls.get_context(target, key, **kw)

    # -- what is stored, read through a separate sync connection ---------------

    def rows(self) -> list[dict[str, Any]]:
        """Every row, its context joined with its history rows (the whole path)."""
        with self.database.sync_engine().connect() as conn:
            query = sa.select(self.table).order_by(self.table.c.id)
            return [
                joined_row(conn, self.table, dict(row)) for row in conn.execute(query).mappings()
            ]

    def row(self, key: int) -> dict[str, Any]:
        with self.database.sync_engine().connect() as conn:
            query = sa.select(self.table).where(self.table.c.id == key)
            return joined_row(conn, self.table, dict(conn.execute(query).mappings().one()))

    def update(self, key: int, **values: Any) -> None:
        with self.database.sync_engine().begin() as conn:
            conn.execute(sa.update(self.table).where(self.table.c.id == key).values(**values))

    def tokens(self, key: int) -> list[str]:
        return history_tokens(self.row(key)["context"])


def is_async_url(url: str) -> bool:
    return make_url(url).get_driver_name() in ASYNC_DRIVERS


def worker_command(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


ASYNC_TWIN = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "mysql": "aiomysql"}


def async_twin(sync_url: str) -> str:
    """The same database through the async driver of its backend."""
    url = make_url(sync_url)
    return url.set(
        drivername=f"{url.get_backend_name()}+{ASYNC_TWIN[url.get_backend_name()]}"
    ).render_as_string(hide_password=False)


def run_race(
    urls: list[str],
    *,
    table: str,
    keys: list[int],
    turns: int,
    retries: int,
    workdir: Path,
    latency_ms: float = 20,
    timeout: float = 120,
) -> list[dict[str, Any]]:
    """Start one ``race`` worker per URL, release them together, return their reports."""
    go = workdir / "go"
    procs = []
    for worker, url in enumerate(urls):
        command = worker_command(
            "race",
            url,
            f"--table={table}",
            f"--keys={','.join(map(str, keys))}",
            f"--turns={turns}",
            f"--worker={worker}",
            f"--retries={retries}",
            f"--latency-ms={latency_ms}",
            f"--seed={worker}",
            f"--ready={workdir / f'ready-{worker}'}",
            f"--go={go}",
        )
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        deadline = time.monotonic() + timeout
        for worker, proc in enumerate(procs):
            while not (workdir / f"ready-{worker}").exists():
                assert proc.poll() is None, proc.communicate()[1].decode()
                assert time.monotonic() < deadline, f"worker {worker} never got ready"
                time.sleep(0.01)
        go.touch()
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, err.decode()
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
        return reports
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def check_race(harness: Harness, reports: list[dict[str, Any]]) -> dict[str, int]:
    """Check the stored histories against what the workers saw; return the counts.

    Every committed turn is in its session's history exactly once, each reply right
    after its own message, and each worker's turns in the order it ran them; a turn
    that lost the race left no trace; the only error a worker saw is
    ``StaleSessionError``.
    """
    errors = [error for report in reports for error in report["errors"]]
    assert errors == [], errors
    committed: dict[int, list[str]] = {}
    lost: set[str] = set()
    for report in reports:
        for key, token in report["committed"]:
            committed.setdefault(key, []).append(token)
        lost.update(token for _, token in report["conflicts"])
    stored_total = 0
    for row in harness.rows():
        key = row["id"]
        tokens = history_tokens(row["context"])
        first, later = tokens[0], tokens[1:]
        assert first == f"s{key}", tokens
        assert sorted(later) == sorted(committed.get(key, [])), (key, later, committed.get(key))
        assert not lost & set(later), lost & set(later)
        assert row["context_revision"] == 1 + len(later)
        for report in reports:  # each worker ran its turns one after the other
            mine = [t for t in later if t.startswith(f"w{report['worker']}t")]
            assert mine == sorted(mine, key=lambda t: int(t.split("t")[1])), mine
        stored_total += len(later)
    committed_total = sum(len(tokens) for tokens in committed.values())
    assert stored_total == committed_total
    attempts = sum(len(r["committed"]) + len(r["conflicts"]) for r in reports)
    return {
        "turns": attempts,
        "committed": committed_total,
        "conflicts": len(lost),
        "model_calls": sum(r["calls"] for r in reports),
    }


# -- the worker process --------------------------------------------------------------


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.005)


def _race(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    latency = args.latency_ms / 1000
    is_async = is_async_url(args.url)

    if is_async:

        async def model_fn(messages: list[dict[str, Any]]) -> dict[str, str]:
            await asyncio.sleep(rng.uniform(0, latency))
            return echo(messages)

        fn: Callable[..., Any] = model_fn
    else:

        def sync_model_fn(messages: list[dict[str, Any]]) -> dict[str, str]:
            time.sleep(rng.uniform(0, latency))
            return echo(messages)

        fn = sync_model_fn

    cls = make_chat(fn, table=args.table)
    keys = [int(k) for k in args.keys.split(",")]
    report: dict[str, Any] = {"worker": args.worker, "committed": [], "conflicts": [], "errors": []}

    def outcome(key: int, token: str, exc: BaseException | None) -> None:
        if exc is None:
            report["committed"].append([key, token])
        elif isinstance(exc, StaleSessionError):
            report["conflicts"].append([key, token])
        else:
            report["errors"].append(f"{key} {token}: {type(exc).__name__}: {exc}")

    plan = [(rng.choice(keys), f"w{args.worker}t{i}") for i in range(args.turns)]
    ready, go = Path(args.ready), Path(args.go)
    if is_async:
        from sqlalchemy.ext.asyncio import create_async_engine

        async def run_async() -> None:
            engine = create_async_engine(args.url)
            async with engine.connect() as conn:  # connect before the start signal
                await conn.execute(sa.text("SELECT 1"))
            await asyncio.to_thread(ready.touch)
            await asyncio.to_thread(_wait_for, go, 60)
            maker = async_sessionmaker(engine)
            for key, token in plan:
                try:
                    await cls.acontinue_session(
                        maker, key, f"turn [{token}]", conflict_retries=args.retries
                    )
                except Exception as exc:
                    outcome(key, token, exc)
                else:
                    outcome(key, token, None)
            await engine.dispose()

        asyncio.run(run_async())
    else:
        engine = sa.create_engine(args.url)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        ready.touch()
        _wait_for(go, 60)
        maker = sessionmaker(engine)
        for key, token in plan:
            try:
                cls.continue_session(maker, key, f"turn [{token}]", conflict_retries=args.retries)
            except Exception as exc:
                outcome(key, token, exc)
            else:
                outcome(key, token, None)
        engine.dispose()
    report["calls"] = len(model_of(cls).requests)
    print(json.dumps(report), flush=True)


def _hang(args: argparse.Namespace) -> None:
    ready = Path(args.ready)

    def never_returns(messages: list[dict[str, Any]]) -> dict[str, str]:
        ready.touch()
        time.sleep(600)
        raise AssertionError("the test should have killed this process")

    cls = make_chat(never_returns, table=args.table, status=args.status)
    engine = sa.create_engine(args.url)
    if args.mode == "session":
        with Session(engine) as db:
            cls.continue_session(db, args.key, "never answered [hang]")
            db.commit()
    else:
        cls.continue_session(sessionmaker(engine), args.key, "never answered [hang]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    race = commands.add_parser("race")
    race.add_argument("url")
    race.add_argument("--table", required=True)
    race.add_argument("--keys", required=True, help="comma-separated primary keys")
    race.add_argument("--turns", type=int, required=True)
    race.add_argument("--worker", type=int, required=True)
    race.add_argument("--retries", type=int, default=0)
    race.add_argument("--latency-ms", type=float, default=20)
    race.add_argument("--seed", type=int, default=0)
    race.add_argument("--ready", required=True, help="file to create once connected")
    race.add_argument("--go", required=True, help="file to wait for before the first turn")
    hang = commands.add_parser("hang")
    hang.add_argument("url")
    hang.add_argument("--table", required=True)
    hang.add_argument("--key", type=int, required=True)
    hang.add_argument("--mode", choices=["sessionmaker", "session"], required=True)
    hang.add_argument("--status", action="store_true")
    hang.add_argument("--ready", required=True, help="file to create once the model is called")
    args = parser.parse_args(argv)
    if args.command == "race":
        _race(args)
    else:
        _hang(args)


if __name__ == "__main__":
    main()
