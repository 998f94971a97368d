"""Driver errors that say the set-up is wrong, not the database: what to do about them.

- A transaction-mode connection pooler (PgBouncer before 1.21, in ``pool_mode =
  transaction``) gives each transaction whichever server connection is free, and
  keeps no prepared statement between transactions: a driver that prepares
  statements then fails with ``prepared statement "..." does not exist`` (SQLSTATE
  26000) or ``... already exists`` (42P05). That is a ``ConfigurationError`` naming
  the engine arguments that turn the driver's prepared statements off.
- A write on a read-only server (a hot-standby replica; ``default_transaction_read_only``)
  fails with SQLSTATE 25006: the ``StorageError`` says writes go to the primary.

Only the SQLSTATE and the driver's module are read, once a statement has failed: a
turn that succeeds costs nothing more.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc

__all__ = ["misconfigured", "read_only_hint"]

_PREPARED_STATEMENT_SQLSTATES = frozenset({"26000", "42P05"})
_READ_ONLY_SQLSTATE = "25006"

PSYCOPG_SETTING = (
    'create_engine(url, connect_args={"prepare_threshold": None}) (or create_async_engine)'
)
ASYNCPG_SETTING = (
    "create_async_engine(url, connect_args={"
    '"statement_cache_size": 0, "prepared_statement_cache_size": 0, '
    '"prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__"})'
)


def _sqlstate(exc: sa_exc.DBAPIError) -> Any:
    orig = exc.orig
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def misconfigured(exc: sa_exc.DBAPIError) -> str | None:
    """What to set when ``exc`` says a pooler dropped the driver's prepared statements
    (the text of a ``ConfigurationError``); ``None`` for any other error."""
    if _sqlstate(exc) not in _PREPARED_STATEMENT_SQLSTATES:
        return None
    module = type(exc.orig).__module__
    if "asyncpg" in module:
        setting = ASYNCPG_SETTING
    elif "psycopg" in module:
        setting = PSYCOPG_SETTING
    else:
        setting = "the driver's option that turns server-side prepared statements off"
    return (
        "the server connection did not have the prepared statement the driver made on "
        "another one: a connection pooler in transaction mode (PgBouncer before 1.21) "
        "keeps no prepared statement between transactions; the turn wrote nothing. "
        f"Create the engine without them: {setting} (see docs/scaling.md)"
    )


def read_only_hint(exc: sa_exc.DBAPIError) -> str:
    """A hint for a write refused by a read-only server, or ``""``."""
    if _sqlstate(exc) != _READ_ONLY_SQLSTATE:
        return ""
    return (
        ". The server is read-only (a hot-standby replica?): write through an engine on the primary"
    )
