"""Concurrent turns on one session: no turn is lost, and no connection waits on a model.

Threads, asyncio tasks and processes continue the same sessions at once. Every
committed turn is in the history exactly once, each reply right after its own
message; a turn that lost the race raises ``StaleSessionError`` and writes nothing.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from agent_session import (
    ModelCallError,
    SessionBusyError,
    StaleSessionError,
    _flows,
)
from agent_session._flows import Waits
from support.databases import Database, open_database
from support.stress_worker import (
    Harness,
    async_twin,
    check_race,
    echo,
    make_chat,
    run_race,
    token_of,
)


def last_token(messages: list[dict[str, Any]]) -> str:
    return token_of(next(m for m in reversed(messages) if m["role"] == "user")["content"])


def naive_utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# -- two callers race on one session -------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1], ids=["no-retry", "one-retry"])
async def test_two_callers_race(database: Database, retries: int) -> None:
    """Two threads (sync drivers) or two tasks (async drivers) load the same revision.

    Both call the model before either writes. The first write wins; the other either
    raises ``StaleSessionError`` having written nothing, or reloads and runs again.
    """
    first_calls: set[str] = set()
    if database.is_async:
        task_barrier = asyncio.Barrier(2)

        async def fn(messages: list[dict[str, Any]]) -> dict[str, str]:
            token = last_token(messages)
            if token in {"a", "b"} and token not in first_calls:
                first_calls.add(token)
                await asyncio.wait_for(task_barrier.wait(), 10)
            return echo(messages)

        h = Harness(database, make_chat(fn))
    else:
        thread_barrier = threading.Barrier(2, timeout=10)

        def sync_fn(messages: list[dict[str, Any]]) -> dict[str, str]:
            token = last_token(messages)
            if token in {"a", "b"} and token not in first_calls:
                first_calls.add(token)
                thread_barrier.wait()
            return echo(messages)

        h = Harness(database, make_chat(sync_fn))

    chat = await h.start("hello [t0]")
    outcomes: dict[str, Any] = {}
    if h.is_async:

        async def turn(token: str) -> None:
            try:
                await h.cont(chat.id, f"turn [{token}]", conflict_retries=retries)
            except Exception as exc:
                outcomes[token] = exc
            else:
                outcomes[token] = "ok"

        await asyncio.gather(turn("a"), turn("b"))
    else:

        def thread_turn(token: str) -> None:
            try:
                h.cls.continue_session(
                    h.maker, chat.id, f"turn [{token}]", conflict_retries=retries
                )
            except Exception as exc:
                outcomes[token] = exc
            else:
                outcomes[token] = "ok"

        threads = [threading.Thread(target=thread_turn, args=(t,)) for t in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    tokens = h.tokens(chat.id)
    calls = [last_token(r.messages) for r in h.model.requests]
    if retries == 0:
        winners = [t for t, outcome in outcomes.items() if outcome == "ok"]
        losers = [outcome for outcome in outcomes.values() if outcome != "ok"]
        assert len(winners) == 1, outcomes
        assert len(losers) == 1 and isinstance(losers[0], StaleSessionError), outcomes
        assert "nothing was written" in str(losers[0])
        assert tokens == ["t0", winners[0]]
        assert h.row(chat.id)["context_revision"] == 2
        assert sorted(calls) == ["a", "b", "t0"]
    else:
        assert outcomes == {"a": "ok", "b": "ok"}
        assert tokens[0] == "t0" and sorted(tokens[1:]) == ["a", "b"]
        assert h.row(chat.id)["context_revision"] == 3
        # The loser ran its turn a second time, on top of the winner's turn.
        loser = tokens[2]
        assert calls.count(loser) == 2 and calls.count(tokens[1]) == 1


# -- a caller-owned transaction that loses a race ----------------------------------

ISOLATION_CASES = [
    pytest.param("mysql+pymysql", None, "raised-at-once", id="mariadb-repeatable-read"),
    pytest.param("mysql+aiomysql", None, "raised-at-once", id="aiomysql-repeatable-read"),
    pytest.param("mysql+pymysql", "READ COMMITTED", "retried", id="mariadb-read-committed"),
    pytest.param("postgresql+psycopg", None, "retried", id="postgresql-read-committed"),
    pytest.param("postgresql+asyncpg", None, "retried", id="asyncpg-read-committed"),
    pytest.param(
        "postgresql+psycopg", "REPEATABLE READ", "serialization", id="postgresql-repeatable-read"
    ),
    pytest.param("postgresql+asyncpg", "SERIALIZABLE", "serialization", id="asyncpg-serializable"),
]


@pytest.mark.parametrize(
    ("named_database", "isolation", "expected"), ISOLATION_CASES, indirect=["named_database"]
)
async def test_race_inside_callers_transaction(
    named_database: Database, isolation: str | None, expected: str
) -> None:
    """Another writer commits a turn while this caller's transaction calls the model.

    - READ COMMITTED (PostgreSQL's default): the reload sees the new revision, so
      ``conflict_retries`` re-runs the turn on top of it, inside the transaction.
    - REPEATABLE READ (MariaDB's default): the reload still sees the old snapshot;
      re-running could never succeed, so ``StaleSessionError`` comes at once.
    - PostgreSQL REPEATABLE READ/SERIALIZABLE: the write itself fails with a
      serialization failure, reported as ``StaleSessionError`` too.
    """
    holder: dict[str, Any] = {}

    def other_writer_sync(messages: list[dict[str, Any]]) -> dict[str, str]:
        if last_token(messages) == "mine" and not holder.get("done"):
            holder["done"] = True
            h.cls.continue_session(h.maker, holder["key"], "turn [other]")
        return echo(messages)

    async def other_writer(messages: list[dict[str, Any]]) -> dict[str, str]:
        if last_token(messages) == "mine" and not holder.get("done"):
            holder["done"] = True
            await h.cls.acontinue_session(h.maker, holder["key"], "turn [other]")
        return echo(messages)

    database = named_database
    h = Harness(database, make_chat(other_writer if database.is_async else other_writer_sync))
    chat = await h.start("hello [t0]")
    holder["key"] = chat.id
    engine = h.engine.execution_options(isolation_level=isolation) if isolation else None

    async with h.session(engine) as db:
        if expected == "retried":
            await h.cont(chat.id, "turn [mine]", db, conflict_retries=3)
            await h.commit(db)
            assert h.tokens(chat.id) == ["t0", "other", "mine"]
        else:
            with pytest.raises(StaleSessionError) as info:
                await h.cont(chat.id, "turn [mine]", db, conflict_retries=3)
            if expected == "raised-at-once":
                assert "REPEATABLE READ" in str(info.value)
            else:
                assert isinstance(info.value.__cause__, sa.exc.DBAPIError)
                assert "roll it back" in str(info.value)
            await h.rollback(db)
            assert h.tokens(chat.id) == ["t0", "other"]

    calls = [last_token(r.messages) for r in h.model.requests]
    assert calls.count("mine") == (2 if expected == "retried" else 1), calls
    # And the session goes on normally afterwards.
    await h.cont(chat.id, "turn [after]")
    assert h.tokens(chat.id)[-1] == "after"


# -- SQLite: "database is locked" never leaks out ------------------------------------


LOCK_CASES = [
    pytest.param("IMMEDIATE", "sessionmaker", id="write-lock-sessionmaker"),
    pytest.param("IMMEDIATE", "session", id="write-lock-session"),
    pytest.param("EXCLUSIVE", "sessionmaker", id="exclusive-lock-sessionmaker"),
    pytest.param("EXCLUSIVE", "session", id="exclusive-lock-session"),
    pytest.param("SHARED", "sessionmaker", id="reader-blocks-commit-sessionmaker"),
]


@pytest.mark.parametrize(("lock", "mode"), LOCK_CASES)
@pytest.mark.parametrize("named_database", ["sqlite", "sqlite+aiosqlite"], indirect=True)
async def test_sqlite_locked_database_is_stale(
    named_database: Database, lock: str, mode: str
) -> None:
    """Another connection locks the SQLite file during a turn.

    IMMEDIATE (a pending write) makes the write fail, EXCLUSIVE the read too, and an
    open read transaction (SHARED) makes the library's COMMIT fail. Each time the
    turn raises ``StaleSessionError``, and nothing of it is ever committed: not now,
    and not later by whoever reuses the pooled connection.
    """
    h = Harness(named_database, make_chat(), connect_args={"timeout": 0.05})
    chat = await h.start("hello [t0]")
    before = h.row(chat.id)
    other = sqlite3.connect(make_url(named_database.sync_url).database or "", isolation_level=None)
    try:
        if lock == "SHARED":
            other.execute("BEGIN")
            other.execute(f"SELECT * FROM {h.table.name}").fetchall()
        else:
            other.execute(f"BEGIN {lock}")
        async with h.session() as db:
            with pytest.raises(StaleSessionError) as info:
                await h.cont(chat.id, "turn [locked]", db if mode == "session" else None)
            await h.rollback(db)
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert "database is locked" in str(info.value.__cause__)
    assert ("while reading" if lock == "EXCLUSIVE" else "while writing") in str(info.value)
    assert h.row(chat.id) == before
    await h.cont(chat.id, "turn [free]")  # on the same pooled connection
    assert h.tokens(chat.id) == ["t0", "free"]


async def test_sqlite_threads_contending(tmp_path: Path) -> None:
    """Four threads, each with its own connection, write one SQLite file with no
    busy timeout: every failure is a ``StaleSessionError``, no turn is lost."""
    rng = random.Random(7)

    def fn(messages: list[dict[str, Any]]) -> dict[str, str]:
        time.sleep(rng.uniform(0, 0.003))
        return echo(messages)

    async with open_database("sqlite", tmp_path) as database:
        h = Harness(database, make_chat(fn), connect_args={"timeout": 0})
        chat = await h.start("hello [t0]")
        committed: list[str] = []
        failures: list[BaseException] = []

        def worker(n: int) -> None:
            for i in range(10):
                token = f"w{n}t{i}"
                try:
                    h.cls.continue_session(h.maker, chat.id, f"turn [{token}]")
                except Exception as exc:
                    failures.append(exc)
                else:
                    committed.append(token)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

        assert all(isinstance(exc, StaleSessionError) for exc in failures), failures
        assert len(committed) + len(failures) == 40
        tokens = h.tokens(chat.id)
        assert tokens[0] == "t0" and sorted(tokens[1:]) == sorted(committed)
        assert h.row(chat.id)["context_revision"] == 1 + len(committed)


async def test_processes_race_on_sqlite_file(tmp_path: Path) -> None:
    """Four processes (two through aiosqlite) continue two sessions in one SQLite file."""
    async with open_database("sqlite", tmp_path) as database:
        h = Harness(database, make_chat())
        keys = [(await h.start(f"hello [s{n}]")).id for n in (1, 2)]
        assert keys == [1, 2]
        urls = [database.sync_url, async_twin(database.sync_url)] * 2
        reports = run_race(
            urls,
            table=h.table.name,
            keys=keys,
            turns=10,
            retries=1,
            workdir=tmp_path,
            latency_ms=5,
        )
        counts = check_race(h, reports)
        assert counts["turns"] == 40
        print(f"sqlite processes: {counts}")


# -- no connection is checked out while the model is called --------------------------


@pytest.mark.parametrize("mode", ["sessionmaker", "session"])
async def test_connections_checked_out_during_model_call(database: Database, mode: str) -> None:
    """With a sessionmaker, zero connections are checked out while the model runs;
    a caller-owned session keeps its one connection for the whole turn."""
    during_call: list[int] = []
    if database.is_async:

        async def fn(messages: list[dict[str, Any]]) -> dict[str, str]:
            during_call.append(h.pool.checkedout())
            await asyncio.sleep(0)
            return echo(messages)

        h = Harness(database, make_chat(fn))
    else:

        def sync_fn(messages: list[dict[str, Any]]) -> dict[str, str]:
            during_call.append(h.pool.checkedout())
            return echo(messages)

        h = Harness(database, make_chat(sync_fn))
    events: list[str] = []
    sa.event.listen(h.sync_engine, "checkout", lambda *_: events.append("checkout"))
    sa.event.listen(h.sync_engine, "checkin", lambda *_: events.append("checkin"))

    chat = await h.start("hello [t0]")  # sessionmaker: insert after the model call
    if mode == "sessionmaker":
        await h.cont(chat.id, "turn [t1]")
        await h.cont(chat.id, "turn [t2]")
        assert during_call == [0, 0, 0]
    else:
        async with h.session() as db:
            await h.cont(chat.id, "turn [t1]", db)
            await h.cont(chat.id, "turn [t2]", db)
            await h.commit(db)
        assert during_call == [0, 1, 1]
    # Every checkout was matched by a checkin, and none is left open.
    assert events.count("checkout") == events.count("checkin") > 0
    assert h.pool.checkedout() == 0
    assert h.tokens(chat.id) == ["t0", "t1", "t2"]


# -- the optional status column --------------------------------------------------------


async def test_running_status_is_committed_before_the_model_call(database: Database) -> None:
    """Another connection sees ``running`` during the call; a second worker trying
    to continue the session gets ``SessionBusyError`` and changes nothing."""
    seen: dict[str, Any] = {}

    def observe() -> None:
        row = h.row(seen["key"])
        seen["status"], seen["since"] = row["status"], row["status_changed_at"]
        seen["row"] = row

    if database.is_async:

        async def fn(messages: list[dict[str, Any]]) -> dict[str, str]:
            if last_token(messages) == "mine":
                observe()
                try:
                    await h.cls.acontinue_session(h.maker, seen["key"], "turn [intruder]")
                except SessionBusyError as exc:
                    seen["busy"] = exc
            return echo(messages)

        h = Harness(database, make_chat(fn, status=True))
    else:

        def sync_fn(messages: list[dict[str, Any]]) -> dict[str, str]:
            if last_token(messages) == "mine":
                observe()
                try:
                    h.cls.continue_session(h.maker, seen["key"], "turn [intruder]")
                except SessionBusyError as exc:
                    seen["busy"] = exc
            return echo(messages)

        h = Harness(database, make_chat(sync_fn, status=True))

    chat = await h.start("hello [t0]")
    seen["key"] = chat.id
    assert h.row(chat.id)["status"] == "completed"
    await h.cont(chat.id, "turn [mine]")

    assert seen["status"] == "running"
    assert seen["since"] is not None
    assert isinstance(seen["busy"], SessionBusyError)
    assert "running a turn in another worker" in str(seen["busy"])
    assert seen["row"]["context_revision"] == 2  # the claim; the intruder wrote nothing
    row = h.row(chat.id)
    assert row["status"] == "completed"
    assert row["context_revision"] == 3
    assert h.tokens(chat.id) == ["t0", "mine"]
    assert [last_token(r.messages) for r in h.model.requests] == ["t0", "mine"]


@dataclass(frozen=True)
class RecordingWaits(Waits):
    """The library's waits, noting which thread or task waited for a busy row."""

    waiters: set[Any] = field(default_factory=set, compare=False)

    def poll_delay(self, poll: int) -> float:
        try:
            self.waiters.add(asyncio.current_task())
        except RuntimeError:  # no event loop: a worker thread
            self.waiters.add(threading.get_ident())
        return super().poll_delay(poll)


CONTENDERS = 4


@pytest.mark.parametrize(
    ("busy_timeout", "retries"),
    [(30.0, 0), (None, 0), (None, 3)],
    ids=["busy-timeout", "no-wait", "no-wait-3-retries"],
)
async def test_contending_turns_wait_for_the_running_one(
    database: Database, busy_timeout: float | None, retries: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several workers continue one session (status column) at once: threads for sync
    drivers, tasks for async ones. The first worker's model call starts the others and
    goes on only once each of them has seen its turn running (or given up).

    With ``busy_timeout`` each waits for the turn before it and runs on its history:
    every turn commits, with exactly one model call each. Without it, as before, the
    others raise ``SessionBusyError`` at once, whatever ``conflict_retries`` says, and
    write nothing.
    """
    waits = RecordingWaits(poll_cap=0.05)
    monkeypatch.setattr(_flows, "WAITS", waits)
    others = [f"w{i}" for i in range(1, CONTENDERS)]
    outcomes: dict[str, Any] = {}
    seen: dict[str, Any] = {}

    def settled() -> bool:
        if busy_timeout is None:
            return all(token in outcomes for token in others)
        return len(waits.waiters) == len(others)

    async def turn(token: str) -> None:
        try:
            await h.cont(
                seen["key"], f"turn [{token}]", busy_timeout=busy_timeout, conflict_retries=retries
            )
        except Exception as exc:
            outcomes[token] = exc
        else:
            outcomes[token] = "ok"

    def thread_turn(token: str) -> None:
        asyncio.run(turn(token))

    if database.is_async:
        tasks: list[asyncio.Task[None]] = []

        async def fn(messages: list[dict[str, Any]]) -> dict[str, str]:
            if last_token(messages) == "w0":
                seen["during"] = h.row(seen["key"])
                tasks.extend(asyncio.create_task(turn(token)) for token in others)
                for _ in range(2000):
                    if settled():
                        break
                    await asyncio.sleep(0.01)
                seen["after"] = h.row(seen["key"])
            return echo(messages)

        h = Harness(database, make_chat(fn, status=True))
    else:
        threads: list[threading.Thread] = []

        def sync_fn(messages: list[dict[str, Any]]) -> dict[str, str]:
            if last_token(messages) == "w0":
                seen["during"] = h.row(seen["key"])
                threads.extend(threading.Thread(target=thread_turn, args=(t,)) for t in others)
                for thread in threads:
                    thread.start()
                for _ in range(2000):
                    if settled():
                        break
                    time.sleep(0.01)
                seen["after"] = h.row(seen["key"])
            return echo(messages)

        h = Harness(database, make_chat(sync_fn, status=True))

    chat = await h.start("hello [t0]")
    seen["key"] = chat.id
    await turn("w0")
    if database.is_async:
        await asyncio.gather(*tasks)
    else:
        for thread in threads:
            thread.join(30)

    assert settled()
    calls = [last_token(r.messages) for r in h.model.requests]
    row = h.row(chat.id)
    if busy_timeout is not None:
        assert outcomes == dict.fromkeys(["w0", *others], "ok")
        assert sorted(calls) == sorted(["t0", "w0", *others])  # one model call per turn
        tokens = h.tokens(chat.id)
        assert tokens[:2] == ["t0", "w0"] and sorted(tokens[2:]) == others
        assert row["status"] == "completed"
        assert row["context_revision"] == 1 + 2 * CONTENDERS  # a claim and a write each
    else:
        assert outcomes["w0"] == "ok"
        for token in others:
            assert isinstance(outcomes[token], SessionBusyError), outcomes
            assert "running a turn in another worker" in str(outcomes[token])
        assert seen["after"] == seen["during"]  # the busy workers wrote nothing
        assert seen["during"]["status"] == "running"
        assert calls == ["t0", "w0"]
        assert h.tokens(chat.id) == ["t0", "w0"]
        assert row["context_revision"] == 3


async def test_failed_turn_commits_failed_and_keeps_context(database: Database) -> None:
    def fn(messages: list[dict[str, Any]]) -> dict[str, str]:
        if last_token(messages) == "boom":
            raise ModelCallError("HTTP 500", model="function-model", status_code=500)
        return echo(messages)

    h = Harness(database, make_chat(fn, status=True))
    chat = await h.start("hello [t0]")
    before = h.row(chat.id)
    with pytest.raises(ModelCallError):
        await h.cont(chat.id, "turn [boom]")
    after = h.row(chat.id)
    assert after["status"] == "failed"
    assert after["context"] == before["context"]
    assert after["context_revision"] == before["context_revision"] + 2  # running, failed

    await h.cont(chat.id, "turn [again]")
    assert h.row(chat.id)["status"] == "completed"
    assert h.tokens(chat.id) == ["t0", "again"]


@pytest.mark.parametrize("running_timeout", [timedelta(minutes=5), 300], ids=["delta", "seconds"])
async def test_running_session_is_taken_over_after_the_timeout(
    database: Database, running_timeout: timedelta | int
) -> None:
    """A session left ``running`` by a worker that died is busy until
    ``__running_timeout__`` (a ``timedelta`` or seconds) has passed since the status
    changed; then any worker may continue it."""
    h = Harness(database, make_chat(status=True, running_timeout=running_timeout))  # type: ignore[arg-type]
    chat = await h.start("hello [t0]")
    h.update(chat.id, status="running", status_changed_at=naive_utc_now())
    before = h.row(chat.id)
    with pytest.raises(SessionBusyError):
        await h.cont(chat.id, "turn [too-early]")
    assert h.row(chat.id) == before

    h.update(chat.id, status_changed_at=naive_utc_now() - timedelta(minutes=6))
    await h.cont(chat.id, "turn [late]")
    row = h.row(chat.id)
    assert row["status"] == "completed"
    assert h.tokens(chat.id) == ["t0", "late"]


async def test_a_turn_still_running_after_busy_timeout_is_busy(database: Database) -> None:
    """``busy_timeout`` bounds the wait: a turn that is still running then is busy,
    and nothing was written or sent to the model."""
    h = Harness(database, make_chat(status=True))
    chat = await h.start("hello [t0]")
    h.update(chat.id, status="running", status_changed_at=naive_utc_now())
    before = h.row(chat.id)
    with pytest.raises(SessionBusyError, match=r"still running after 0\.2s"):
        await h.cont(chat.id, "turn [waited]", busy_timeout=0.2)
    assert h.row(chat.id) == before
    assert len(h.model.requests) == 1

    h.update(chat.id, status="completed")  # the other worker is done: the wait ends
    await h.cont(chat.id, "turn [after]", busy_timeout=0.2)
    assert h.tokens(chat.id) == ["t0", "after"]
