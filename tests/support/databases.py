"""The database matrix every storage test runs on.

Six SQLAlchemy URLs, one per supported driver: SQLite (sync and aiosqlite),
PostgreSQL (psycopg and asyncpg) and MySQL/MariaDB (PyMySQL and aiomysql).
SQLite databases live in pytest's ``tmp_path``; the server URLs default to the
local test servers and can be pointed elsewhere with the environment variables
``AGENT_SESSION_TEST_POSTGRES_URL`` and ``AGENT_SESSION_TEST_MYSQL_URL`` (given
in their sync form, the async URL is derived by swapping the driver).

A server that does not answer, or a missing driver package, skips the test
locally and fails it when ``CI`` is ``true``/``1``: in CI a skipped database
test is a failure.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

POSTGRES_URL_ENV = "AGENT_SESSION_TEST_POSTGRES_URL"
MYSQL_URL_ENV = "AGENT_SESSION_TEST_MYSQL_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"

ALL_DATABASES = (
    "sqlite",
    "sqlite+aiosqlite",
    "postgresql+psycopg",
    "postgresql+asyncpg",
    "mysql+pymysql",
    "mysql+aiomysql",
)
SYNC_DATABASES = ("sqlite", "postgresql+psycopg", "mysql+pymysql")
ASYNC_DATABASES = ("sqlite+aiosqlite", "postgresql+asyncpg", "mysql+aiomysql")
SERVER_DATABASES = ("postgresql+psycopg", "mysql+pymysql")

# Python modules each database needs: its own driver, the driver behind
# ``sync_url`` and, for the async ones, greenlet (SQLAlchemy's asyncio bridge).
_DRIVER_MODULES: dict[str, tuple[str, ...]] = {
    "sqlite": ("sqlite3",),
    "sqlite+aiosqlite": ("sqlite3", "aiosqlite", "greenlet"),
    "postgresql+psycopg": ("psycopg",),
    "postgresql+asyncpg": ("psycopg", "asyncpg", "greenlet"),
    "mysql+pymysql": ("pymysql",),
    "mysql+aiomysql": ("pymysql", "aiomysql", "greenlet"),
}

# A 1 MB JSON document has to fit in one MySQL packet, with room to spare.
MIN_MYSQL_PACKET = 8 * 1024 * 1024
WANTED_MYSQL_PACKET = 64 * 1024 * 1024

CONNECT_TIMEOUT_SECONDS = 5
# Bound on waiting for table locks while dropping tables, so that a test which
# leaks an open transaction fails its teardown instead of hanging the run.
LOCK_TIMEOUT_SECONDS = 20


# Each test run works in databases of its own, created next to the configured
# ones, so that several runs (a developer's and CI's, say) can share one server.
# Set AGENT_SESSION_TEST_SHARED_DATABASE=1 to use the configured database itself.
RUN_DATABASE = f"agent_session_test_{os.getpid()}"
_created_run_databases: list[tuple[str, str]] = []


def _isolated() -> bool:
    return os.environ.get("AGENT_SESSION_TEST_SHARED_DATABASE", "") not in {"1", "true"}


def running_under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def postgres_url(*, is_async: bool = False) -> str:
    url = make_url(os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL)
    if url.get_backend_name() != "postgresql":
        raise pytest.UsageError(f"{POSTGRES_URL_ENV} is not a PostgreSQL URL: {_safe(url)}")
    if _isolated():
        url = url.set(database=RUN_DATABASE)
    return _render(url.set(drivername="postgresql+asyncpg" if is_async else "postgresql+psycopg"))


def mysql_url(*, is_async: bool = False) -> str:
    url = make_url(os.environ.get(MYSQL_URL_ENV) or DEFAULT_MYSQL_URL)
    if url.get_backend_name() not in {"mysql", "mariadb"}:
        raise pytest.UsageError(f"{MYSQL_URL_ENV} is not a MySQL/MariaDB URL: {_safe(url)}")
    # utf8mb4 is what lets MySQL/MariaDB store 4-byte characters (emoji);
    # the server's "utf8" is the 3-byte subset.
    if "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    if _isolated():
        url = url.set(database=RUN_DATABASE)
    return _render(url.set(drivername="mysql+aiomysql" if is_async else "mysql+pymysql"))


def server_hosts() -> set[str]:
    """Host names of the configured database servers (the network guard lets them through)."""
    hosts = {make_url(postgres_url()).host, make_url(mysql_url()).host}
    return {host for host in hosts if host}


@dataclass
class Database:
    """One database of the matrix, handed to a test by the ``database`` fixtures."""

    name: str
    url: str
    sync_url: str
    dialect: str
    is_async: bool
    _engines: list[tuple[dict[str, Any], Engine | AsyncEngine]] = field(
        default_factory=list, repr=False
    )
    _sync_engine: Engine | None = field(default=None, repr=False)
    _metadata: list[sa.MetaData] = field(default_factory=list, repr=False)

    def engine(self, **kw: Any) -> Engine | AsyncEngine:
        """The engine on ``url`` (an ``AsyncEngine`` for the async drivers).

        Created on the first call with a given set of keyword arguments and
        reused afterwards; disposed when the test ends.
        """
        for known_kw, engine in self._engines:
            if known_kw == kw:
                return engine
        created: Engine | AsyncEngine
        if self.is_async:
            created = create_async_engine(self.url, **kw)
        else:
            created = sa.create_engine(self.url, **kw)
        self._engines.append((dict(kw), created))
        return created

    def sync_engine(self) -> Engine:
        """An engine on ``sync_url``: for setup, and for checking what was stored."""
        if self._sync_engine is None:
            self._sync_engine = sa.create_engine(self.sync_url)
        return self._sync_engine

    def create_all(self, metadata: sa.MetaData) -> None:
        """Give ``metadata`` fresh, empty tables; they are dropped again when the test ends.

        Dropping first makes leftovers of an interrupted run harmless, and lets
        tests reuse table names with different columns.
        """
        with self.sync_engine().begin() as conn:
            self._bound_lock_waits(conn)
            metadata.drop_all(conn)
            metadata.create_all(conn)
        if not any(known is metadata for known in self._metadata):
            self._metadata.append(metadata)

    async def aclose(self) -> None:
        """Dispose the test's engines, then drop the tables it created."""
        try:
            engines = [engine for _, engine in reversed(self._engines)]
            self._engines.clear()
            for engine in engines:
                if isinstance(engine, AsyncEngine):
                    await engine.dispose()
                else:
                    engine.dispose()
            # Drop only once every other connection is gone: on PostgreSQL and
            # MySQL, DROP TABLE waits for locks held by other connections.
            for metadata in reversed(self._metadata):
                with self.sync_engine().begin() as conn:
                    self._bound_lock_waits(conn)
                    metadata.drop_all(conn)
            self._metadata.clear()
        finally:
            if self._sync_engine is not None:
                self._sync_engine.dispose()
                self._sync_engine = None

    def _bound_lock_waits(self, conn: Connection) -> None:
        if self.dialect == "postgresql":
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'")
        elif self.dialect == "mysql":
            conn.exec_driver_sql(f"SET SESSION lock_wait_timeout = {LOCK_TIMEOUT_SECONDS}")


@contextlib.asynccontextmanager
async def open_database(name: str, tmp_path: Path) -> AsyncIterator[Database]:
    """The ``Database`` called ``name``; skips (or fails under CI) when it is unusable."""
    database = _describe(name, tmp_path)
    _require(database)
    try:
        yield database
    finally:
        await database.aclose()


def _describe(name: str, tmp_path: Path) -> Database:
    dialect, _, _driver = name.partition("+")
    is_async = name in ASYNC_DATABASES
    if dialect == "sqlite":
        path = str(tmp_path / "test.sqlite3")
        url = _render(URL.create(name, database=path))
        sync_url = _render(URL.create("sqlite", database=path))
    elif dialect == "postgresql":
        url = postgres_url(is_async=is_async)
        sync_url = postgres_url()
    elif dialect == "mysql":
        url = mysql_url(is_async=is_async)
        sync_url = mysql_url()
    else:  # pragma: no cover - a typo in the matrix
        raise ValueError(f"unknown database {name!r}")
    return Database(name=name, url=url, sync_url=sync_url, dialect=dialect, is_async=is_async)


# One availability check per driver module and per server for the whole run:
# the key maps to ``None`` when usable, otherwise to the reason it is not.
_availability: dict[str, str | None] = {}


def _require(database: Database) -> None:
    for module in _DRIVER_MODULES[database.name]:
        problem = _check_once(
            f"module:{module}", functools.partial(importlib.import_module, module)
        )
        if problem is not None:
            _unavailable(
                database,
                f"driver package {module!r} cannot be imported ({problem}); "
                "install the test dependencies with: pip install -e '.[dev]'",
            )
    if database.dialect == "sqlite":
        return
    env_var = POSTGRES_URL_ENV if database.dialect == "postgresql" else MYSQL_URL_ENV
    problem = _check_once(
        f"server:{database.sync_url}", lambda: _probe_server(database.sync_url, database.dialect)
    )
    if problem is not None:
        _unavailable(
            database,
            f"{_safe(make_url(database.sync_url))} does not answer ({problem}); "
            f"start the server, or set {env_var} to the URL of a reachable one",
        )


def _unavailable(database: Database, detail: str) -> NoReturn:
    if running_under_ci():
        pytest.fail(
            f"database {database.name} unreachable under CI: a skipped database test "
            f"in CI is a failure. {detail}",
            pytrace=False,
        )
    pytest.skip(reason=f"database {database.name} unavailable: {detail}")


def _check_once(key: str, check: Callable[[], object]) -> str | None:
    if key not in _availability:
        try:
            check()
        except Exception as exc:
            _availability[key] = _describe_error(exc)
        else:
            _availability[key] = None
    return _availability[key]


def _describe_error(exc: Exception) -> str:
    # For a database error, the driver's own exception says it best; keep it on one line.
    cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    return " ".join(f"{type(cause).__name__}: {cause}".split())


def _admin_url(sync_url: str, dialect: str) -> str:
    """The configured database (the run's own database is created from there)."""
    configured = os.environ.get(POSTGRES_URL_ENV if dialect == "postgresql" else MYSQL_URL_ENV)
    default = DEFAULT_POSTGRES_URL if dialect == "postgresql" else DEFAULT_MYSQL_URL
    base = make_url(configured or default)
    return _render(make_url(sync_url).set(database=base.database))


def _create_run_database(sync_url: str, dialect: str) -> None:
    admin = sa.create_engine(
        _admin_url(sync_url, dialect),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )
    try:
        with admin.connect() as conn:
            name = conn.dialect.identifier_preparer.quote(RUN_DATABASE)
            if dialect == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                conn.exec_driver_sql(f"CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
                conn.exec_driver_sql(
                    f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
    finally:
        admin.dispose()
    _created_run_databases.append((sync_url, dialect))


def drop_run_databases() -> None:
    """Drop the databases this run created (called when the test session ends)."""
    while _created_run_databases:
        sync_url, dialect = _created_run_databases.pop()
        admin = sa.create_engine(
            _admin_url(sync_url, dialect), poolclass=NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            with admin.connect() as conn:
                name = conn.dialect.identifier_preparer.quote(RUN_DATABASE)
                force = " WITH (FORCE)" if dialect == "postgresql" else ""
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
        except Exception:  # best effort: a leftover database is harmless
            pass
        finally:
            admin.dispose()


def _probe_server(sync_url: str, dialect: str) -> None:
    if _isolated():
        _create_run_database(sync_url, dialect)
    engine = sa.create_engine(
        sync_url, poolclass=NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    )
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            if dialect == "mysql":
                _prepare_mysql(conn)
    finally:
        engine.dispose()


def _prepare_mysql(conn: Connection) -> None:
    """Make the MySQL/MariaDB test server fit for 1 MB+ JSON values and emoji.

    ``max_allowed_packet`` (MariaDB 10.11 default: 16 MB) bounds the size of
    one statement; raise it when a server was configured lower. It is a global
    setting that applies to connections opened afterwards, i.e. to every
    engine the tests create. Tables inherit the database's default character
    set, which has to be utf8mb4 for 4-byte characters in text columns.
    """
    packet = conn.execute(sa.text("SELECT @@GLOBAL.max_allowed_packet")).scalar_one()
    if int(packet) < MIN_MYSQL_PACKET:
        conn.exec_driver_sql(f"SET GLOBAL max_allowed_packet = {WANTED_MYSQL_PACKET}")
    charset = conn.execute(sa.text("SELECT @@character_set_database")).scalar_one()
    if charset != "utf8mb4":
        schema = conn.dialect.identifier_preparer.quote(str(conn.engine.url.database))
        conn.exec_driver_sql(
            f"ALTER DATABASE {schema} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )


def _render(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _safe(url: URL) -> str:
    return url.render_as_string(hide_password=True)
