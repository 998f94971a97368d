"""Faults during a turn: each raises a typed error, writes nothing, and the session
goes on normally afterwards.

- the model fails (HTTP 429 and 500, a timeout, a refused connection) or its output
  never validates;
- the database connection is killed while the model is being called;
- the worker process is killed with SIGKILL in the middle of a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from agent_session import (
    AgentSessionError,
    ModelCallError,
    OutputValidationError,
    SessionBusyError,
    StorageError,
)
from support.databases import Database
from support.stress_worker import Harness, echo, make_chat, token_of, worker_command


def last_token(messages: list[dict[str, Any]]) -> str:
    return token_of(next(m for m in reversed(messages) if m["role"] == "user")["content"])


# -- the model fails -------------------------------------------------------------------

MODEL = "function-model"
MODEL_FAULTS: dict[str, ModelCallError | None] = {
    "rate-limited-429": ModelCallError(
        f"model call to {MODEL} failed (HTTP 429): Rate limit reached", model=MODEL, status_code=429
    ),
    "server-error-500": ModelCallError(
        f"model call to {MODEL} failed (HTTP 500): Internal server error",
        model=MODEL,
        status_code=500,
    ),
    "timeout": ModelCallError(
        f"model call to {MODEL} failed (Timeout): Request timed out after 600s", model=MODEL
    ),
    "connection-refused": ModelCallError(
        f"model call to {MODEL} failed (APIConnectionError): [Errno 111] Connection refused",
        model=MODEL,
    ),
    "invalid-output": None,  # the model answers, but never with a valid Echo
}


@pytest.mark.parametrize("fault", list(MODEL_FAULTS))
async def test_model_fault_writes_nothing(database: Database, fault: str) -> None:
    broken = {"on": False}
    error = MODEL_FAULTS[fault]

    def fn(messages: list[dict[str, Any]]) -> Any:
        if broken["on"]:
            if error is None:
                return "Sure! Here is my answer, in prose rather than JSON."
            raise error
        return echo(messages)

    h = Harness(database, make_chat(fn, output_retries=2))
    chat = await h.start("hello [t0]")
    before = h.rows()
    expected = OutputValidationError if error is None else ModelCallError

    broken["on"] = True
    failures: list[AgentSessionError] = []
    with pytest.raises(expected) as info:  # a new session: no row is added
        await h.start("hello [never]")
    failures.append(info.value)
    with pytest.raises(expected) as info:  # the library's own short transactions
        await h.cont(chat.id, "turn [lost]")
    failures.append(info.value)
    async with h.session() as db:  # the caller's transaction: nothing is flushed
        with pytest.raises(expected) as info:
            await h.cont(chat.id, "turn [lost]", db)
        failures.append(info.value)
        assert not db.dirty and not db.new
        await h.rollback(db)
    assert h.rows() == before

    for failure in failures:
        if isinstance(failure, ModelCallError):
            assert error is not None
            assert failure.status_code == error.status_code
            assert failure.model == MODEL
            assert failure.attempts == 3  # the call and model_retries=2 retries
        else:
            assert isinstance(failure, OutputValidationError)
            assert failure.attempts == 3  # the call and two re-asks
            assert failure.raw_text.startswith("Sure!")
            assert failure.errors

    broken["on"] = False
    await h.cont(chat.id, "turn [t1]")
    assert h.tokens(chat.id) == ["t0", "t1"]
    assert h.row(chat.id)["context_revision"] == 2


# -- the database connection is killed during the model call ----------------------------

SERVER_DRIVERS = ["postgresql+psycopg", "postgresql+asyncpg", "mysql+pymysql", "mysql+aiomysql"]
BACKEND_ID = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
KILL = {"postgresql": "SELECT pg_terminate_backend({})", "mysql": "KILL {}"}
ALIVE = {
    "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE pid = {}",
    "mysql": "SELECT count(*) FROM information_schema.processlist WHERE id = {}",
}


def kill_backends(database: Database, backends: list[int]) -> None:
    """Kill server connections from another connection and wait until they are gone."""
    with database.sync_engine().connect() as conn:
        for backend in backends:
            conn.exec_driver_sql(KILL[database.dialect].format(int(backend)))
        deadline = time.monotonic() + 10
        for backend in backends:
            while conn.exec_driver_sql(ALIVE[database.dialect].format(int(backend))).scalar():
                assert time.monotonic() < deadline, f"connection {backend} survived the kill"
                conn.rollback()
                time.sleep(0.02)
            conn.rollback()


@pytest.mark.parametrize("mode", ["session", "sessionmaker"])
@pytest.mark.parametrize("named_database", SERVER_DRIVERS, indirect=True)
async def test_connection_killed_during_model_call(named_database: Database, mode: str) -> None:
    """The server connection dies while the model runs.

    In the caller's transaction the turn fails with ``StorageError`` and the row is
    intact; with a sessionmaker no connection was held during the call, the dead
    pooled connection fails on its first statement and is replaced once, and the
    turn succeeds.
    """
    database = named_database
    targets: list[int] = []

    def fn(messages: list[dict[str, Any]]) -> dict[str, str]:
        if last_token(messages) == "doomed":
            kill_backends(database, targets)
        return echo(messages)

    async def async_fn(messages: list[dict[str, Any]]) -> dict[str, str]:
        if last_token(messages) == "doomed":
            await asyncio.to_thread(kill_backends, database, targets)
        return echo(messages)

    h = Harness(database, make_chat(async_fn if database.is_async else fn))
    connected: list[int] = []

    @sa.event.listens_for(h.sync_engine, "connect")
    def record_backend(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(BACKEND_ID[database.dialect])
        connected.append(int(cursor.fetchone()[0]))
        cursor.close()

    chat = await h.start("hello [t0]")
    before = h.row(chat.id)

    if mode == "sessionmaker":
        targets.extend(connected)  # every connection of the pool, idle in the pool
        await h.cont(chat.id, "turn [doomed]")
        assert len(connected) > len(targets)  # a fresh connection replaced the dead one
        assert h.tokens(chat.id) == ["t0", "doomed"]
        return

    async with h.session() as db:
        targets.append(int(await h.execute(db, BACKEND_ID[database.dialect])))
        with pytest.raises(StorageError) as info:
            await h.cont(chat.id, "turn [doomed]", db)
        assert "database error while writing" in str(info.value)
        cause = info.value.__cause__
        assert isinstance(cause, sa.exc.DBAPIError) and cause.connection_invalidated
        assert h.row(chat.id) == before
        # The caller rolls back; the same session then works on a new connection.
        await h.rollback(db)
        await h.cont(chat.id, "turn [after]", db)
        await h.commit(db)
    assert h.tokens(chat.id) == ["t0", "after"]


# -- the worker process is killed in the middle of a turn -------------------------------


def kill_when_ready(command: list[str], ready: Path) -> int:
    """Start a worker, SIGKILL it once it is inside the model call; its exit status."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the worker never reached the model call"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    return proc.returncode


KILL_CASES = [
    pytest.param("sessionmaker", False, id="sessionmaker"),
    pytest.param("session", False, id="session"),
    pytest.param("sessionmaker", True, id="status-sessionmaker"),
    pytest.param("session", True, id="status-session"),
]


@pytest.mark.parametrize(("mode", "status"), KILL_CASES)
@pytest.mark.parametrize(
    "named_database", ["sqlite", "postgresql+psycopg", "mysql+pymysql"], indirect=True
)
async def test_worker_killed_mid_turn(
    named_database: Database, mode: str, status: bool, tmp_path: Path
) -> None:
    """SIGKILL a worker process while its model call runs.

    The session stays at its last committed state and can be continued at once.
    With the status column and a sessionmaker, ``running`` was committed before the
    call: the session is busy until ``__running_timeout__`` has passed, then another
    worker takes it over. (In a caller-owned transaction ``running`` was never
    committed, so nothing is left behind.)
    """
    database = named_database
    timeout = timedelta(seconds=3)
    h = Harness(database, make_chat(status=status, running_timeout=timeout, table="killed_chats"))
    chat = await h.start("hello [t0]")
    before = h.row(chat.id)

    ready = tmp_path / "model-called"
    command = worker_command(
        "hang",
        database.sync_url,
        "--table=killed_chats",
        f"--key={chat.id}",
        f"--mode={mode}",
        f"--ready={ready}",
        *(["--status"] if status else []),
    )
    assert kill_when_ready(command, ready) == -signal.SIGKILL

    after = h.row(chat.id)
    if status and mode == "sessionmaker":
        assert after["status"] == "running"
        assert after["context"] == before["context"]
        assert after["context_revision"] == before["context_revision"] + 1
        with pytest.raises(SessionBusyError):
            await h.cont(chat.id, "turn [too-soon]")
        assert h.row(chat.id) == after
        deadline = time.monotonic() + timeout.total_seconds() + 10
        while True:  # once the timeout has passed, the session is taken over
            try:
                await h.cont(chat.id, "turn [after]")
                break
            except SessionBusyError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert h.row(chat.id)["status"] == "completed"
    else:
        assert after == before
        await h.cont(chat.id, "turn [after]")
    assert h.tokens(chat.id) == ["t0", "after"]


# -- the final write fails after the model answered ------------------------------------

_REFUSE_COMPLETED = {
    "sqlite": [
        "CREATE TRIGGER refuse_completed BEFORE UPDATE OF status ON race_chats "
        "WHEN NEW.status = 'completed' BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION refuse_completed() RETURNS trigger AS $$ BEGIN "
        "IF NEW.status = 'completed' THEN RAISE EXCEPTION 'refused by trigger'; END IF; "
        "RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_completed BEFORE UPDATE ON race_chats "
        "FOR EACH ROW EXECUTE FUNCTION refuse_completed()",
    ],
    "mysql": [
        "CREATE TRIGGER refuse_completed BEFORE UPDATE ON race_chats FOR EACH ROW BEGIN "
        "IF NEW.status = 'completed' THEN "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by trigger'; END IF; END"
    ],
}


async def test_a_failed_final_write_marks_the_turn_failed(database: Database) -> None:
    """The model answered but the turn's write failed: the status says ``failed``
    (not ``running`` until the timeout), and the previous context is kept."""
    h = Harness(database, make_chat(status=True))
    chat = await h.start("hello [t0]")
    before = h.row(chat.id)
    with database.sync_engine().begin() as conn:
        for statement in _REFUSE_COMPLETED[database.dialect]:
            conn.exec_driver_sql(statement)
    try:
        with pytest.raises(StorageError, match="refused by trigger"):
            await h.cont(chat.id, "turn [lost]")
        after = h.row(chat.id)
        assert after["status"] == "failed"
        assert after["context"] == before["context"]
        assert after["context_revision"] == before["context_revision"] + 2  # running, failed
    finally:
        with database.sync_engine().begin() as conn:
            conn.exec_driver_sql(
                "DROP TRIGGER IF EXISTS refuse_completed"
                + (" ON race_chats" if database.dialect == "postgresql" else "")
            )
    await h.cont(chat.id, "turn [again]")
    assert h.row(chat.id)["status"] == "completed"
    assert h.tokens(chat.id) == ["t0", "again"]


# -- pooled connections that died while idle --------------------------------------------


def record_backends(h: Harness, dialect: str) -> list[int]:
    """The server ids of every connection the test's own engine opens, in order."""
    connected: list[int] = []

    @sa.event.listens_for(h.sync_engine, "connect")
    def record_backend(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(BACKEND_ID[dialect])
        connected.append(int(cursor.fetchone()[0]))
        cursor.close()

    return connected


@pytest.mark.parametrize("operation", ["start", "continue", "read"])
@pytest.mark.parametrize("mode", ["session", "sessionmaker"])
@pytest.mark.parametrize("named_database", SERVER_DRIVERS, indirect=True)
async def test_dead_idle_connections_cost_no_turn(
    named_database: Database, mode: str, operation: str
) -> None:
    """Every idle connection of the pool is killed (a server restart, an idle timeout,
    ``pg_terminate_backend``), then a session is started, continued or read.

    The first statement fails on a dead connection; nothing was written, so the
    operation runs again once on a fresh connection and succeeds: the model is called
    once per turn, as without the fault. In the caller's ``Session`` this holds when the
    operation begins the transaction (a fresh session).
    """
    database = named_database
    h = Harness(database, make_chat())
    connected = record_backends(h, database.dialect)
    chat = await h.start("hello [t0]")
    killed = list(connected)
    assert killed and h.pool.checkedout() == 0  # every connection is idle in the pool
    before = h.rows()
    calls = len(h.model.requests)

    async with contextlib.AsyncExitStack() as stack:
        db = None if mode == "sessionmaker" else await stack.enter_async_context(h.session())
        await asyncio.to_thread(kill_backends, database, killed)
        if operation == "start":
            new = await h.start("hello [t1]", db)
        elif operation == "continue":
            await h.cont(chat.id, "turn [t1]", db)
        else:
            context = await h.context(chat.id, db)
        if db is not None:
            await h.commit(db)

    assert len(connected) > len(killed)  # a fresh connection replaced the dead one
    assert len(h.model.requests) == calls + (operation != "read")
    if operation == "start":
        assert h.rows()[0] == before[0]
        assert h.tokens(new.id) == ["t1"]
    elif operation == "continue":
        assert h.tokens(chat.id) == ["t0", "t1"]
    else:
        assert context.turns == 1
        assert h.rows() == before


@pytest.mark.parametrize("held", ["statement", "pending"])
@pytest.mark.parametrize("named_database", SERVER_DRIVERS, indirect=True)
async def test_dead_connection_in_a_used_session_is_a_storage_error(
    named_database: Database, held: str
) -> None:
    """The caller's transaction already holds something (an earlier statement, an
    object added but not flushed): a lost connection took it with it, so the library
    does not retry behind the caller's back. ``StorageError`` says nothing was written
    and what to do; after a rollback the same session works again."""
    database = named_database
    h = Harness(database, make_chat())
    connected = record_backends(h, database.dialect)
    chat = await h.start("hello [t0]")
    before = h.rows()
    calls = len(h.model.requests)

    async with h.session() as db:
        if held == "statement":
            await h.execute(db, "SELECT 1")
        else:
            db.add(h.cls(owner="someone else"))
        await asyncio.to_thread(kill_backends, database, list(connected))
        with pytest.raises(StorageError) as info:
            await h.start("hello [lost]", db)
        message = str(info.value)
        assert message.startswith("new Chat session: database error while inserting")
        assert "nothing was written" in message and "pool_pre_ping=True" in message
        assert info.value.key is None
        cause = info.value.__cause__
        assert isinstance(cause, sa.exc.DBAPIError) and cause.connection_invalidated
        assert len(h.model.requests) == calls + 1
        assert h.rows() == before
        await h.rollback(db)
        await h.cont(chat.id, "turn [t1]", db)
        await h.commit(db)
    assert h.tokens(chat.id) == ["t0", "t1"]
    assert len(h.rows()) == 1
