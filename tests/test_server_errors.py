"""Driver errors that point at the set-up: ``agent_session._server_errors``.

The servers themselves are in ``test_pgbouncer.py`` and ``test_replica.py``; here the
mapping runs everywhere, on driver errors built by hand: the SQLSTATE and the
driver's module decide, nothing else.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import exc as sa_exc

from agent_session._server_errors import misconfigured, read_only_hint


def _driver_error(module: str, sqlstate: str | None, text: str = "failed") -> sa_exc.DBAPIError:
    cls: Any = type("DriverError", (Exception,), {"__module__": module})
    orig = cls(text)
    orig.sqlstate = sqlstate
    return sa_exc.DBAPIError("SELECT 1", {}, orig)


@pytest.mark.parametrize("sqlstate", ["26000", "42P05"])
def test_a_lost_prepared_statement_names_each_drivers_setting(sqlstate: str) -> None:
    psycopg = misconfigured(_driver_error("psycopg.errors", sqlstate))
    asyncpg = misconfigured(_driver_error("sqlalchemy.dialects.postgresql.asyncpg", sqlstate))
    other = misconfigured(_driver_error("pg8000.exceptions", sqlstate))
    assert psycopg is not None and asyncpg is not None and other is not None
    assert '"prepare_threshold": None' in psycopg and "statement_cache_size" not in psycopg
    assert '"statement_cache_size": 0' in asyncpg
    assert '"prepared_statement_cache_size": 0' in asyncpg
    assert '"prepared_statement_name_func"' in asyncpg
    assert "prepared statements off" in other
    for advice in (psycopg, asyncpg, other):
        assert "transaction mode" in advice and "docs/scaling.md" in advice


@pytest.mark.parametrize("sqlstate", [None, "40001", "25006", "23505", "08006"])
def test_other_errors_are_not_a_pooler_problem(sqlstate: str | None) -> None:
    assert misconfigured(_driver_error("psycopg.errors", sqlstate)) is None


def test_a_read_only_server_says_where_writes_go() -> None:
    hint = read_only_hint(_driver_error("psycopg.errors", "25006"))
    assert "read-only" in hint and "primary" in hint
    assert read_only_hint(_driver_error("psycopg.errors", "42P05")) == ""
    assert read_only_hint(_driver_error("pymysql.err", None)) == ""
