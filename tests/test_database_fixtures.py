"""The test fixtures themselves: the database matrix and the network guard."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from support.databases import ASYNC_DATABASES, Database

MEGABYTE = 1024 * 1024
LABEL = "Grüße 🙂 日本語"


def _document() -> dict[str, Any]:
    return {
        "text": "Grüße aus Köln — naïve café, Ελληνικά, русский, 日本語, עברית",
        "emoji": "🙂🚀👩‍💻🇺🇦",
        "big": "x" * MEGABYTE + "🙂",
        "nested": {"items": [1, 2.5, True, None, "ß"], "empty": {}},
    }


def _documents_table() -> tuple[sa.MetaData, sa.Table]:
    metadata = sa.MetaData()
    table = sa.Table(
        "fixture_documents",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )
    return metadata, table


@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped-json", "raw-json"])
async def test_json_document_round_trips(database: Database, ensure_ascii: bool) -> None:
    # With ensure_ascii=False the JSON text itself holds 4-byte characters,
    # which MySQL/MariaDB only store in utf8mb4.
    metadata, table = _documents_table()
    database.create_all(metadata)
    document = _document()
    row_in = {"id": 1, "label": LABEL, "body": document}
    engine = database.engine(
        json_serializer=lambda value: json.dumps(value, ensure_ascii=ensure_ascii)
    )
    query = sa.select(table.c.label, table.c.body)

    if database.is_async:
        assert isinstance(engine, AsyncEngine)
        async with engine.begin() as conn:
            await conn.execute(table.insert(), row_in)
        async with engine.connect() as conn:
            row = (await conn.execute(query)).one()
    else:
        assert isinstance(engine, sa.Engine)
        with engine.begin() as conn:
            conn.execute(table.insert(), row_in)
        with engine.connect() as conn:
            row = conn.execute(query).one()

    assert row.label == LABEL
    assert row.body == document
    with database.sync_engine().connect() as conn:
        assert conn.execute(query).one() == (LABEL, document)


def test_dialect_and_driver_match_the_url(database: Database) -> None:
    url = make_url(database.url)
    assert url.drivername == database.name
    assert url.get_backend_name() == database.dialect
    assert database.dialect in {"sqlite", "postgresql", "mysql"}
    assert database.is_async is (database.name in ASYNC_DATABASES)

    engine = database.engine()
    assert isinstance(engine, AsyncEngine) is database.is_async
    assert engine.dialect.is_async is database.is_async
    assert engine.dialect.name == database.dialect
    assert database.engine() is engine
    assert database.engine(pool_pre_ping=True) is not engine
    assert database.engine(pool_pre_ping=True) is database.engine(pool_pre_ping=True)

    sync_url = make_url(database.sync_url)
    assert sync_url.get_backend_name() == database.dialect
    assert sync_url.database == url.database
    assert sync_url.host == url.host
    assert not database.sync_engine().dialect.is_async
    assert database.sync_engine() is database.sync_engine()
    if database.dialect == "mysql":
        assert url.query["charset"] == "utf8mb4"
        assert sync_url.query["charset"] == "utf8mb4"


def test_create_all_starts_from_empty_tables(database: Database) -> None:
    metadata, table = _documents_table()
    database.create_all(metadata)
    with database.sync_engine().begin() as conn:
        conn.execute(table.insert(), {"id": 1, "label": "left over", "body": {}})

    database.create_all(metadata)
    with database.sync_engine().connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0


def test_sync_database_uses_a_sync_driver(sync_database: Database) -> None:
    assert not sync_database.is_async
    assert sync_database.url == sync_database.sync_url
    assert isinstance(sync_database.engine(), sa.Engine)


async def test_async_database_uses_an_async_driver(async_database: Database) -> None:
    assert async_database.is_async
    engine = async_database.engine()
    assert isinstance(engine, AsyncEngine)
    async with engine.connect() as conn:
        assert (await conn.execute(sa.text("SELECT 1"))).scalar_one() == 1


def test_server_database_is_a_real_server(server_database: Database) -> None:
    assert server_database.dialect in {"postgresql", "mysql"}
    assert not server_database.is_async
    with server_database.sync_engine().connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1


# -- network guard -----------------------------------------------------------

# Documentation-only addresses (RFC 5737, RFC 3849): never routed anywhere.
REMOTE_V4 = ("192.0.2.1", 443)
REMOTE_V6 = ("2001:db8::1", 443, 0, 0)
REFUSED = "tests may not reach the network"


def test_network_guard_refuses_remote_connections() -> None:
    with pytest.raises(RuntimeError, match=REFUSED):
        socket.create_connection(REMOTE_V4, timeout=1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(RuntimeError, match=REFUSED):
            sock.connect(REMOTE_V4)
        with pytest.raises(RuntimeError, match=REFUSED):
            sock.connect_ex(REMOTE_V4)
    if socket.has_ipv6:
        with (
            socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock6,
            pytest.raises(RuntimeError, match=REFUSED),
        ):
            sock6.connect(REMOTE_V6)
    with pytest.raises(RuntimeError, match=REFUSED):
        socket.getaddrinfo("api.openai.com", 443)
    with pytest.raises(RuntimeError, match=REFUSED):
        socket.create_connection(("api.anthropic.com", 443), timeout=1)
    # Not an OSError, so an HTTP client cannot swallow it as a connection failure.
    with pytest.raises(RuntimeError, match=REFUSED):
        urllib.request.urlopen("https://api.openai.com/v1/models", timeout=1)


async def test_network_guard_refuses_remote_connections_from_asyncio() -> None:
    with pytest.raises(RuntimeError, match=REFUSED):
        await asyncio.open_connection(*REMOTE_V4)
    with pytest.raises(RuntimeError, match=REFUSED):
        await asyncio.get_running_loop().getaddrinfo("api.openai.com", 443)


def test_network_guard_allows_loopback_and_unix_sockets(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with socket.create_connection(("localhost", port), timeout=5):
            pass
        assert socket.getaddrinfo("localhost", port)

    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
