"""What the benchmarks run on: databases, stored documents, models, doubles, baselines.

Databases: SQLite files in a temporary directory (in ``/dev/shm`` where it exists,
so the numbers show CPU cost, not the disk's flush latency), and a database of the run's own
(``agent_session_bench_<pid>``) on the PostgreSQL server named by
``AGENT_SESSION_BENCH_POSTGRES_URL`` and on the MySQL/MariaDB server named by
``AGENT_SESSION_BENCH_MYSQL_URL`` (defaults: the local test servers), created on
first use and dropped when the run ends. No table outside them is touched.

The session model mirrors ``examples/models.py``: a templated instruction, a
one-field input schema and a structured output (``Reply``). Documents are built
directly in the stored format and checked with ``agent_session.context.load_context``.

The baseline is what a careful hand-written application would do for one turn
without the library: one SELECT of the JSON column, the same input validation,
the same model call through the same double, parsing the reply with the same
output schema, then one compare-and-swap UPDATE that stores the document with the
two new messages appended.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from agent_session import Agent, AgentSessionMixin
from agent_session.context import load_context
from agent_session.llm import Model, ModelRequest, ModelResponse
from agent_session.testing import FunctionModel

POSTGRES_URL_ENV = "AGENT_SESSION_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MYSQL_URL_ENV = "AGENT_SESSION_BENCH_MYSQL_URL"
DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"

# -- schemas and texts -------------------------------------------------------------


class BenchInput(BaseModel):
    message: str = Field(min_length=1)


class Reply(BaseModel):
    answer: str
    follow_up_question: str | None = None


INSTRUCTION = (
    "You are a {{ tone }} support assistant for {{ company_name }}. "
    "Answer briefly and suggest one follow-up question."
)
INSTRUCTION_ARGS = {"company_name": "Acme", "tone": "friendly"}
USER_TEXT = (
    "Hello! I changed my password yesterday and since then the mobile app logs me out "
    "every few minutes. I already reinstalled it. What else can I try?"
)
REPLY = Reply(
    answer=(
        "Sorry about that. Sign out on every device from Settings > Security, then sign in "
        "again on the phone: the app keeps the old token until every session is closed. "
        "If it still happens, clear the app's storage and make sure the phone's clock is "
        "set automatically, since an off clock makes new tokens look expired."
    ),
    follow_up_question="Does it also happen on the web site?",
)
REPLY_TEXT = REPLY.model_dump_json()
MODEL_NAME = "bench-model"
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "Reply", "schema": Reply.model_json_schema()},
}


def make_agent(model: Model) -> Agent[Reply]:
    return Agent(
        model,
        instruction=INSTRUCTION,
        instruction_schema=None,
        input_schema=BenchInput,
        output_schema=Reply,
        output_retries=2,
    )


# -- model doubles -----------------------------------------------------------------


def _constant_reply(messages: list[dict[str, Any]]) -> str:
    return REPLY_TEXT


def instant_model() -> FunctionModel:
    """The zero-latency double: a fixed, valid reply."""
    return FunctionModel(_constant_reply, name=MODEL_NAME)


def sleeping_model(latency: float) -> FunctionModel:
    """A double that blocks its thread for ``latency`` seconds (for thread workers)."""

    def reply(messages: list[dict[str, Any]]) -> str:
        time.sleep(latency)
        return REPLY_TEXT

    return FunctionModel(reply, name=MODEL_NAME)


def async_sleeping_model(latency: float) -> FunctionModel:
    """A double that awaits ``asyncio.sleep(latency)`` (for asyncio workers)."""

    async def reply(messages: list[dict[str, Any]]) -> str:
        await asyncio.sleep(latency)
        return REPLY_TEXT

    return FunctionModel(reply, name=MODEL_NAME)


def forget_requests(model: Model) -> None:
    """Doubles record every request; drop them so long runs do not grow memory."""
    requests = getattr(model, "requests", None)
    if requests is not None:
        requests.clear()


# -- session models ----------------------------------------------------------------


def session_class(tablename: str, agent: Agent[Any], *, status: bool = False) -> type[Any]:
    """A mapped session model on a declarative base (and metadata) of its own, like
    ``examples.models.SupportChat``; with ``status``, with the status column."""

    class Base(DeclarativeBase):
        pass

    namespace: dict[str, Any] = {
        "__tablename__": tablename,
        "__agent__": agent,
        "__annotations__": {"id": Mapped[int], "user_id": Mapped[str]},
        "id": mapped_column(primary_key=True, autoincrement=True),
        "user_id": mapped_column(sa.String(64), default="bench"),
    }
    if status:
        namespace["__status_attribute__"] = "status"
    return type(f"Bench_{tablename}", (AgentSessionMixin, Base), namespace)


def instant_chat(tablename: str) -> tuple[type[Any], sa.Table, FunctionModel]:
    """A session model on table ``tablename`` driven by the zero-latency double:
    (model class, its table, the double)."""
    model = instant_model()
    chat = session_class(tablename, make_agent(model))
    return chat, chat.__table__, model


# -- stored documents --------------------------------------------------------------

_EPOCH = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _stamp(index: int) -> str:
    return (_EPOCH + timedelta(seconds=7 * index)).isoformat()


_WORDS = (  # noqa: SIM905 - prose reads better than a list literal
    "account password reset email link phone app web site login logout token session "
    "device browser cache settings security profile invoice payment card refund order "
    "delivery address shipping tracking number support ticket agent update version "
    "install error message screen button page menu option notification sync backup data "
    "file upload download share folder team member role permission admin plan price trial "
    "subscription renew cancel upgrade downgrade limit storage quota usage report export "
    "import calendar meeting reminder time zone language region network connection slow "
    "fast crash freeze restart reinstall clear check try again still works broken since "
    "yesterday today morning week after before when while because please thanks sorry "
    "help need want would could should can cannot does not also every some many few more "
    "less first second last next previous same different new old right wrong sure maybe "
    "really quite very just only even already yet again"
).split()


_SYLLABLES = "ba ce di fo gu ha je ki lo mu na pe ri so tu va we xi yo zu an el in or um".split()  # noqa: SIM905


def _word(rng: random.Random) -> str:
    if rng.random() < 0.35:  # names, numbers, product words: what makes real text diverse
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
    return rng.choice(_WORDS)


def _sentence(rng: random.Random, words: int) -> str:
    text = " ".join(_word(rng) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def _text(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng, rng.randint(8, 18)) for _ in range(sentences))


def make_document(messages: int, *, check: bool = True) -> dict[str, Any]:
    """A valid stored context: the system message plus ``messages`` user/assistant ones.

    ``messages`` is even: ``messages / 2`` finished turns of the support agent. The
    texts are word salad from a fixed vocabulary, different in every message and the
    same on every call, so the documents compress about as well as chat text (a
    document of one repeated message would compress to almost nothing).
    """
    if messages % 2:
        raise ValueError("a stored conversation has whole turns: an even message count")
    rng = random.Random(messages)
    usage = {"prompt_tokens": 120, "completion_tokens": 70}
    stored: list[dict[str, Any]] = [
        {
            "role": "system",
            "content": "You are a friendly support assistant for Acme. Answer briefly and "
            "suggest one follow-up question.",
        }
    ]
    for turn in range(messages // 2):
        question = _text(rng, 2)
        reply = Reply(answer=_text(rng, 4), follow_up_question=_sentence(rng, 8))
        stored.append(
            {"role": "user", "content": question, "meta": {"created_at": _stamp(2 * turn + 1)}}
        )
        stored.append(
            {
                "role": "assistant",
                "content": reply.model_dump_json(),
                "meta": {"model": MODEL_NAME, "usage": usage, "finish_reason": "stop"},
            }
        )
    turns = messages // 2
    document = {
        "version": 3,
        "created_at": _stamp(0),
        "updated_at": _stamp(max(messages - 1, 0)),
        "turns": turns,
        "usage": {k: v * turns for k, v in usage.items()},
        "instruction_args": dict(INSTRUCTION_ARGS),
        "messages": stored,
    }
    if check:
        load_context(document, key="benchmark")  # the library must accept it
    return document


def chat_items(messages: int, *, check: bool = True) -> list[dict[str, Any]]:
    """The same conversation as plain chat items (what a per-message store keeps)."""
    return [
        {"role": m["role"], "content": m["content"]}
        for m in make_document(messages, check=check)["messages"]
        if m["role"] != "system"
    ]


# -- the hand-written baseline -----------------------------------------------------


def _plan(document: dict[str, Any], text: str) -> tuple[dict[str, Any], ModelRequest, str]:
    BenchInput.model_validate({"message": text})
    now = datetime.now(UTC).isoformat()
    user = {"role": "user", "content": text, "meta": {"created_at": now}}
    history = [{"role": m["role"], "content": m["content"]} for m in document["messages"]]
    request = ModelRequest(
        model=MODEL_NAME,
        messages=[*history, {"role": "user", "content": text}],
        response_format=RESPONSE_FORMAT,
        output_schema=Reply,
    )
    return user, request, now


def _next(
    document: dict[str, Any], user: dict[str, Any], response: ModelResponse, now: str
) -> dict[str, Any]:
    Reply.model_validate_json(response.text)
    assistant = {"role": "assistant", "content": response.text, "meta": {"model": MODEL_NAME}}
    return {
        **document,
        "messages": [*document["messages"], user, assistant],
        "turns": document.get("turns", 0) + 1,
        "updated_at": now,
    }


def _select(table: sa.Table, pk: int) -> sa.Select[Any]:
    return sa.select(table.c.context, table.c.context_revision).where(table.c.id == pk)


def _swap(table: sa.Table, pk: int, revision: int, document: dict[str, Any]) -> sa.Update:
    return (
        sa.update(table)
        .where(table.c.id == pk, table.c.context_revision == revision)
        .values(context=document, context_revision=revision + 1)
    )


def baseline_turn(db: Session, table: sa.Table, pk: int, text: str, model: Model) -> None:
    """One turn in a caller-owned ``Session`` (the caller commits)."""
    row = db.execute(_select(table, pk)).one()
    user, request, now = _plan(row.context, text)
    response = model.complete(request)
    result = db.execute(
        _swap(table, pk, row.context_revision, _next(row.context, user, response, now))
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise RuntimeError("baseline lost a compare-and-swap")


def baseline_turn_maker(
    maker: sessionmaker[Session], table: sa.Table, pk: int, text: str, model: Model
) -> None:
    """One turn as two short transactions, with no connection held during the call."""
    with maker.begin() as db:
        row = db.execute(_select(table, pk)).one()
    user, request, now = _plan(row.context, text)
    response = model.complete(request)
    with maker.begin() as db:
        new = _next(row.context, user, response, now)
        result = db.execute(_swap(table, pk, row.context_revision, new))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise RuntimeError("baseline lost a compare-and-swap")


async def abaseline_turn(db: Any, table: sa.Table, pk: int, text: str, model: Model) -> None:
    """``baseline_turn`` on an ``AsyncSession``."""
    row = (await db.execute(_select(table, pk))).one()
    user, request, now = _plan(row.context, text)
    response = await model.acomplete(request)
    new = _next(row.context, user, response, now)
    result = await db.execute(_swap(table, pk, row.context_revision, new))
    if result.rowcount != 1:
        raise RuntimeError("baseline lost a compare-and-swap")


async def abaseline_turn_maker(
    maker: Any, table: sa.Table, pk: int, text: str, model: Model
) -> None:
    """``baseline_turn_maker`` on an ``async_sessionmaker``."""
    async with maker.begin() as db:
        row = (await db.execute(_select(table, pk))).one()
    user, request, now = _plan(row.context, text)
    response = await model.acomplete(request)
    async with maker.begin() as db:
        new = _next(row.context, user, response, now)
        result = await db.execute(_swap(table, pk, row.context_revision, new))
        if result.rowcount != 1:
            raise RuntimeError("baseline lost a compare-and-swap")


# -- rows ------------------------------------------------------------------------


def history_tables(table: sa.Table) -> list[tuple[sa.Table, sa.Column[Any]]]:
    """The tables that keep a session row's history apart from it (format 4's history
    table, declared on the model's metadata), each with its column naming the row."""
    found = []
    for other in table.metadata.sorted_tables:
        for column in other.c:
            if any(fk.column.table is table for fk in column.foreign_keys):
                found.append((other, column))
                break
    return found


def put_rows(engine: sa.Engine, table: sa.Table, document: dict[str, Any], ids: list[int]) -> None:
    """Insert (or reset) rows ``ids`` holding ``document`` as one stored document
    (format 3), revision 0, with no history rows: the library reads it and moves it to
    its current layout on the row's next write."""
    if not ids:
        return
    with engine.begin() as conn:
        for history, key in history_tables(table):
            conn.execute(sa.delete(history).where(key.in_(ids)))
        conn.execute(sa.delete(table).where(table.c.id.in_(ids)))
        conn.execute(
            sa.insert(table),
            [
                {"id": i, "user_id": "bench", "context": document, "context_revision": 0}
                for i in ids
            ],
        )


def import_rows(
    engine: sa.Engine, chat: type[Any], document: dict[str, Any], ids: list[int]
) -> None:
    """Rows ``ids`` holding ``document``'s conversation in the library's current layout:
    written by ``import_session`` where the library has it, else as ``put_rows``."""
    if not hasattr(chat, "import_session"):
        put_rows(engine, chat.__table__, document, ids)
        return
    table = chat.__table__
    items = [
        {"role": m["role"], "content": m["content"]}
        for m in document["messages"]
        if m["role"] != "system"
    ]
    with engine.begin() as conn:
        for history, key in history_tables(table):
            conn.execute(sa.delete(history).where(key.in_(ids)))
        conn.execute(sa.delete(table).where(table.c.id.in_(ids)))
    for pk in ids:
        with Session(engine) as db:
            chat.import_session(db, items, instruction_args=document.get("instruction_args"), id=pk)
            db.commit()


class Resetter:
    """Puts a row back, between timed turns (not timed), to what it held the first time
    it was called for that row: the stored document and revision, and no history rows
    newer than the ones it had then."""

    def __init__(self, engine: sa.Engine, table: sa.Table, document: dict[str, Any]) -> None:
        self.engine = engine
        self.table = table
        self.document = document
        self._saved: dict[int, tuple[Any, int, list[int]]] = {}

    def __call__(self, pk: int) -> None:
        histories = history_tables(self.table)
        with self.engine.begin() as conn:
            if pk not in self._saved:
                row = conn.execute(
                    sa.select(self.table.c.context, self.table.c.context_revision).where(
                        self.table.c.id == pk
                    )
                ).one()
                tops = [
                    int(
                        conn.execute(
                            sa.select(sa.func.coalesce(sa.func.max(history.c.seq), 0)).where(
                                key == pk
                            )
                        ).scalar_one()
                    )
                    for history, key in histories
                ]
                self._saved[pk] = (row.context, row.context_revision, tops)
                return
            context, revision, tops = self._saved[pk]
            for (history, key), top in zip(histories, tops, strict=True):
                conn.execute(sa.delete(history).where(key == pk, history.c.seq > top))
            conn.execute(
                sa.update(self.table)
                .where(self.table.c.id == pk)
                .values(context=context, context_revision=revision)
            )


@dataclass(frozen=True)
class ChatTable:
    """A session model's table on one database, its rows holding one stored document."""

    chat: type[Any]
    table: sa.Table
    model: FunctionModel
    engine: sa.Engine
    document: dict[str, Any]
    reset: Resetter


@contextmanager
def chat_table(
    url: str, tablename: str, messages: int, ids: list[int], *, baseline: Sequence[int] = ()
) -> Iterator[ChatTable]:
    """``instant_chat(tablename)``'s table created at ``url``, with rows ``ids`` holding a
    conversation of ``messages`` messages (the library's rows in its current layout, the
    ``baseline`` ones as one format-3 document); dropped, and the engine disposed, on
    exit."""
    chat, table, model = instant_chat(tablename)
    engine = sa.create_engine(url, json_serializer=compact_json)
    table.metadata.create_all(engine)
    document = make_document(messages)
    import_rows(engine, chat, document, [i for i in ids if i not in baseline])
    put_rows(engine, table, document, [i for i in ids if i in baseline])
    try:
        yield ChatTable(chat, table, model, engine, document, Resetter(engine, table, document))
    finally:
        table.metadata.drop_all(engine)
        engine.dispose()


# -- databases -------------------------------------------------------------------


class _Server:
    """A database server and the run's own database on it, created on first use."""

    def __init__(
        self,
        label: str,
        admin_url: sa.URL,
        drivers: tuple[str, str],
        database: str,
        create: tuple[str, ...],
        drop: str,
        **engine_options: Any,
    ) -> None:
        self.label = label
        self._admin_url = admin_url.set(drivername=drivers[0])
        self._drivers = drivers
        self._database = database
        self._create = create
        self._drop = drop
        self._engine_options = engine_options
        self._url: sa.URL | None = None
        self._error: str | None = None

    @property
    def error(self) -> str | None:
        self._ensure()
        return self._error

    def url(self, *, is_async: bool = False) -> str | None:
        """The URL of the run's own database, or ``None`` if the server is unusable."""
        self._ensure()
        if self._url is None:
            return None
        driver = self._drivers[1] if is_async else self._drivers[0]
        return self._url.set(drivername=driver).render_as_string(hide_password=False)

    def _ensure(self) -> None:
        if self._url is not None or self._error is not None:
            return
        try:
            engine = sa.create_engine(
                self._admin_url, **self._engine_options, connect_args={"connect_timeout": 5}
            )
            with engine.connect() as conn:
                for statement in self._create:
                    conn.exec_driver_sql(statement)
            engine.dispose()
        except Exception as exc:  # no server, no driver, no permission
            self._error = f"{self.label} unavailable: {_first_line(exc)}"
            return
        self._url = self._admin_url.set(database=self._database)

    def close(self) -> None:
        if self._url is None:
            return
        engine = sa.create_engine(self._admin_url, **self._engine_options)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(self._drop)
        finally:
            engine.dispose()
        self._url = None


class Databases:
    """SQLite files and the run's own server databases, created on first use."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="agent_session_bench_", dir=_memory_dir()))
        name = f"agent_session_bench_{os.getpid()}"
        self._postgres = _Server(
            "PostgreSQL",
            make_url(os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL),
            ("postgresql+psycopg", "postgresql+asyncpg"),
            name,
            (
                f'DROP DATABASE IF EXISTS "{name}"',
                f'CREATE DATABASE "{name}"',
                # Commits do not wait for the WAL flush: the flush costs every variant
                # the same, and on a shared machine its latency is mostly noise.
                f'ALTER DATABASE "{name}" SET synchronous_commit = off',
            ),
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            isolation_level="AUTOCOMMIT",
        )
        self._mysql = _Server(
            "MySQL/MariaDB",
            make_url(os.environ.get(MYSQL_URL_ENV) or DEFAULT_MYSQL_URL),
            ("mysql+pymysql", "mysql+aiomysql"),
            name,
            (
                f"DROP DATABASE IF EXISTS `{name}`",
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            ),
            f"DROP DATABASE IF EXISTS `{name}`",
        )

    # SQLite ----------------------------------------------------------------

    def sqlite_url(self, name: str, *, is_async: bool = False) -> str:
        driver = "sqlite+aiosqlite" if is_async else "sqlite"
        return f"{driver}:///{self.workdir / name}.sqlite3"

    # PostgreSQL --------------------------------------------------------------

    @property
    def postgres_error(self) -> str | None:
        return self._postgres.error

    def postgres_url(self, *, is_async: bool = False) -> str | None:
        """The URL of the run's own database, or ``None`` if the server is unusable."""
        return self._postgres.url(is_async=is_async)

    def sqlite_and_postgres(self, name: str, notes: list[str]) -> list[tuple[str, str]]:
        """``(label, url)`` of SQLite, and of PostgreSQL when its server is usable (else a
        line in ``notes`` says why its rows are missing)."""
        backends = [("SQLite", self.sqlite_url(name))]
        if (pg := self.postgres_url()) is not None:
            backends.append(("PostgreSQL", pg))
        else:
            notes.append(f"PostgreSQL rows skipped: {self.postgres_error}")
        return backends

    # MySQL / MariaDB ------------------------------------------------------------

    @property
    def mysql_error(self) -> str | None:
        return self._mysql.error

    def mysql_url(self, *, is_async: bool = False) -> str | None:
        """The URL of the run's own MySQL/MariaDB database, or ``None`` if unusable."""
        return self._mysql.url(is_async=is_async)

    def close(self) -> None:
        self._postgres.close()
        self._mysql.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def compact_json(document: Any) -> str:
    """Compact JSON, as the library writes it: a row put back reads as it was written."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _memory_dir() -> str | None:
    """``/dev/shm`` when it is usable: SQLite's disk flushes cost every variant the same
    and, on a machine shared with other work, add noise that hides the differences."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
