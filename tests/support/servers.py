"""Servers a test starts for itself: a PgBouncer, PostgreSQL clusters for replication.

Everything runs on 127.0.0.1, on free ports, in a temporary directory of its own, and
is stopped (processes killed, directory removed) when the context manager exits, also
when the test fails. The programs come from Debian's packages: ``pgbouncer`` and
``postgresql-15`` (``/usr/lib/postgresql/<version>/bin``); ``.ci/run`` installs
PgBouncer when it is missing. As root, the servers run as the ``postgres`` user (neither
PostgreSQL nor PgBouncer runs as root).

A missing program skips the test locally and fails it under CI, like an unreachable
database (``support.databases``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from support.databases import running_under_ci

PG_ROOT = Path("/usr/lib/postgresql")
START_TIMEOUT_SECONDS = 30.0


def missing(what: str) -> NoReturn:
    """Skip (locally) or fail (under CI) a test whose program is not installed."""
    if running_under_ci():
        pytest.fail(f"{what} is not installed; .ci/run installs it", pytrace=False)
    pytest.skip(f"{what} is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}): {_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers on 127.0.0.1:{port}: {_tail(log)}")
        time.sleep(0.05)


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


def _as_server_user() -> tuple[list[str], int | None, int | None]:
    """``(prefix, uid, gid)``: how to run a server program as a user that may run it."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        missing("the postgres user (the PostgreSQL server package makes it)")
    return ["runuser", "-u", "postgres", "--"], user.pw_uid, user.pw_gid


@contextlib.contextmanager
def server_directory(prefix: str) -> Iterator[Path]:
    """A temporary directory the server user owns (pytest's tmp_path is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _, uid, gid = _as_server_user()
    if uid is not None and gid is not None:
        os.chown(path, uid, gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


# -- PgBouncer ---------------------------------------------------------------------


@dataclass(frozen=True)
class PgBouncer:
    port: int
    directory: Path

    def url(self, drivername: str, database: str) -> str:
        return f"{drivername}://postgres@127.0.0.1:{self.port}/{database}"


@contextlib.contextmanager
def pgbouncer(
    *, upstream_port: int = 5432, pool_mode: str = "transaction", pool_size: int = 2
) -> Iterator[PgBouncer]:
    """A PgBouncer on 127.0.0.1 in front of ``127.0.0.1:upstream_port`` (every database
    name, user ``postgres``, trust authentication), ``pool_size`` server connections
    per database: fewer than the clients, so that a client's transactions land on
    different server connections, as they do under load."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if binary is None:
        missing("pgbouncer (apt-get install pgbouncer)")
    with server_directory("pgbouncer-") as directory:
        port = free_port()
        (directory / "userlist.txt").write_text('"postgres" ""\n')
        (directory / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={upstream_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {directory / 'userlist.txt'}\n"
            f"pool_mode = {pool_mode}\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 200\n"
            f"logfile = {directory / 'pgbouncer.log'}\n"
            f"pidfile = {directory / 'pgbouncer.pid'}\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        _, uid, gid = _as_server_user()
        for name in ("userlist.txt", "pgbouncer.ini"):
            if uid is not None and gid is not None:
                os.chown(directory / name, uid, gid)
        prefix, _, _ = _as_server_user()
        log = directory / "pgbouncer.log"
        process = subprocess.Popen(
            [*prefix, binary, str(directory / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port(port, process, log)
            yield PgBouncer(port, directory)
        finally:
            _stop(process)


# -- PostgreSQL: a primary and a hot standby ------------------------------------------


def postgres_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_basebackup."""
    candidates = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not candidates or not (candidates[-1] / "pg_basebackup").exists():
        missing("the PostgreSQL server programs (initdb, pg_basebackup)")
    return candidates[-1]


@dataclass(frozen=True)
class Replication:
    """A primary and a hot standby streaming from it, on 127.0.0.1."""

    primary_port: int
    replica_port: int
    directory: Path

    def url(self, port: int, drivername: str = "postgresql+psycopg") -> str:
        return f"{drivername}://postgres@127.0.0.1:{port}/postgres"


def _run(command: list[str], log: Path) -> None:
    prefix, _, _ = _as_server_user()
    with log.open("ab") as out:
        done = subprocess.run(
            [*prefix, *command], stdout=out, stderr=subprocess.STDOUT, timeout=120, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {_tail(log)}")


_SERVER_SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
fsync = off
full_page_writes = off
max_connections = 30
shared_buffers = 16MB
hot_standby = on
max_wal_senders = 4
wal_level = replica
"""


@contextlib.contextmanager
def replication() -> Iterator[Replication]:
    """A fresh primary (``initdb``) and a replica made from it with ``pg_basebackup``,
    streaming; both stopped (``pg_ctl stop -m immediate``, then killed if need be) and
    their directory removed at exit, whatever happened."""
    bin_dir = postgres_bin()
    with server_directory("pg-replication-") as directory:
        log = directory / "setup.log"
        primary, replica = directory / "primary", directory / "replica"
        primary_port, replica_port = free_port(), free_port()
        started: list[Path] = []
        try:
            _run(
                [str(bin_dir / "initdb"), "-D", str(primary), "-U", "postgres",
                 "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
                log,
            )  # fmt: skip
            _append(primary / "postgresql.conf", _settings(primary_port, directory))
            _start(bin_dir, primary, log, started)
            _run(
                [str(bin_dir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary_port),
                 "-U", "postgres", "-D", str(replica), "-R", "-X", "stream", "-c", "fast",
                 "--no-sync"],
                log,
            )  # fmt: skip
            _append(replica / "postgresql.conf", _settings(replica_port, directory))
            _start(bin_dir, replica, log, started)
            yield Replication(primary_port, replica_port, directory)
        finally:
            for data in reversed(started):
                _stop_cluster(bin_dir, data, log)


def _settings(port: int, sockets: Path) -> str:
    return _SERVER_SETTINGS.format(port=port, sockets=sockets)


def _append(path: Path, text: str) -> None:
    with path.open("a") as out:
        out.write(text)


def _start(bin_dir: Path, data: Path, log: Path, started: list[Path]) -> None:
    started.append(data)
    _run(
        [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(data.parent / f"{data.name}.log"),
         "-w", "-t", "60", "start"],
        log,
    )  # fmt: skip


def _stop_cluster(bin_dir: Path, data: Path, log: Path) -> None:
    with contextlib.suppress(Exception):
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], log)
    pid_file = data / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(pid_file.read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)  # pg_ctl did not stop it
