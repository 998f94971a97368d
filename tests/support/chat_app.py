"""The FastAPI chat example (``examples/fastapi_chat``) as tests and benchmarks run it.

- ``load_app()``: the example's module (``create_app``, ``migrate``, the models).
- ``chat_database()``: a PostgreSQL database of its own on the configured server, its
  tables made by the example's Alembic revisions, dropped afterwards; yields the async
  URL (asyncpg) the app takes.
- ``serving(env, workers=1)``: the app under a real ``uvicorn`` process (``workers``
  processes) on a free port of 127.0.0.1; yields a ``Served`` (its base URL and the
  process), and stops it whatever happens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

# Variables that would point the example at a real provider or another database.
_INHERITED_NOT = ("AGENT_SESSION_", "OPENAI_", "CHAT_")


def load_app() -> ModuleType:
    """``examples/fastapi_chat/app.py`` (it puts ``examples/`` on ``sys.path``)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    import fastapi_chat.app as module

    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_admin_url() -> str:
    url = sa.make_url(os.environ.get("AGENT_SESSION_TEST_POSTGRES_URL") or DEFAULT_POSTGRES)
    return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def postgres_reachable() -> str | None:
    """``None`` when the configured PostgreSQL answers, else why not."""
    engine = sa.create_engine(
        postgres_admin_url(), poolclass=NullPool, connect_args={"connect_timeout": 3}
    )
    try:
        with engine.connect():
            return None
    except Exception as exc:
        return f"PostgreSQL unreachable: {type(exc).__name__}"
    finally:
        engine.dispose()


@contextmanager
def chat_database(prefix: str = "agent_session_chat") -> Iterator[str]:
    """A new database with the example's tables (Alembic); yields its asyncpg URL."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin_url = postgres_admin_url()
    admin = sa.create_engine(admin_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.make_url(admin_url).set(drivername="postgresql+asyncpg", database=name)
    async_url = url.render_as_string(hide_password=False)
    try:
        load_app().migrate(async_url)
        yield async_url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def sync_engine(async_url: str) -> sa.Engine:
    url = sa.make_url(async_url)
    name = "postgresql+psycopg" if url.drivername == "postgresql+asyncpg" else "sqlite"
    return sa.create_engine(url.set(drivername=name), poolclass=NullPool)


@dataclass(frozen=True)
class Served:
    url: str
    """``http://127.0.0.1:PORT``"""
    process: subprocess.Popen[bytes]
    """uvicorn's process (with ``workers > 1``, the parent of the worker processes)."""

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of uvicorn and its worker processes so far."""
        pids = [self.process.pid]
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        if children.exists():
            pids += [int(pid) for pid in children.read_text().split()]
        ticks = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")


@contextmanager
def serving(
    env: Mapping[str, str],
    *,
    workers: int = 1,
    timeout: float = 60.0,
    app: str = "fastapi_chat.app:app",
    app_dir: Path = EXAMPLES,
) -> Iterator[Served]:
    """``uvicorn <app>`` on 127.0.0.1 with ``env`` added."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_NOT)}
    environment.update(env)
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(app_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
        app,
    ]
    process = subprocess.Popen(command, env=environment, cwd=ROOT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {process.returncode}")
            try:
                if httpx.get(f"{base_url}/chats", timeout=2).status_code == 401:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not answer in time")
            time.sleep(0.1)
        yield Served(base_url, process)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def rows(engine: sa.Engine, *tables: str) -> dict[str, list[Any]]:
    """Every row of ``tables``, for before/after comparisons."""
    out: dict[str, list[Any]] = {}
    with engine.connect() as conn:
        for table in tables:
            result = conn.exec_driver_sql(f"SELECT * FROM {table}")
            out[table] = sorted((tuple(map(repr, row)) for row in result), key=str)
    return out
