"""Shared fixtures: the database matrix and the network guard."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import databases, runner
from support.databases import (
    ALL_DATABASES,
    ASYNC_DATABASES,
    SERVER_DATABASES,
    SYNC_DATABASES,
    Database,
    open_database,
    server_hosts,
)

# Use the model cost map bundled with litellm instead of fetching it at import
# time. Set here, before any test module imports litellm.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


# -- database matrix ---------------------------------------------------------


@pytest.fixture(params=ALL_DATABASES, ids=ALL_DATABASES)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """Each of the six databases in turn; ``-k postgresql`` (or ``-k aiomysql``...) selects."""
    async with open_database(request.param, tmp_path) as db:
        yield db


@pytest.fixture(params=SYNC_DATABASES, ids=SYNC_DATABASES)
async def sync_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The databases reached through a sync driver: sqlite, psycopg, pymysql."""
    async with open_database(request.param, tmp_path) as db:
        yield db


@pytest.fixture(params=ASYNC_DATABASES, ids=ASYNC_DATABASES)
async def async_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """The databases reached through an async driver: aiosqlite, asyncpg, aiomysql."""
    async with open_database(request.param, tmp_path) as db:
        yield db


@pytest.fixture(params=SERVER_DATABASES, ids=SERVER_DATABASES)
async def server_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Database]:
    """The real servers (PostgreSQL and MySQL/MariaDB), through their sync drivers."""
    async with open_database(request.param, tmp_path) as db:
        yield db


# -- order -------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The ``slow`` and ``stress`` tests first (otherwise in collection order): under
    pytest-xdist they start while the other worker runs the short ones, rather than
    leaving it idle at the end."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("slow") is None and item.get_closest_marker("stress") is None
        )
    )


# -- network guard -----------------------------------------------------------
#
# No test may open a connection beyond this machine: in particular none may
# reach a real LLM provider. Loopback addresses, unix sockets and the hosts of
# the configured test database servers are allowed; anything else raises
# RuntimeError. It is deliberately not an OSError, so that HTTP clients cannot
# mistake it for a transient connection failure and retry or fall back.

_LOCAL_HOST_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})
_UNIX_FAMILY = getattr(socket, "AF_UNIX", None)


def _host_text(host: object) -> str | None:
    if isinstance(host, bytes):
        return host.decode("ascii", "replace")
    return host if isinstance(host, str) else None


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOCAL_HOST_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class _NetworkGuard:
    def __init__(self, allowed_hosts: set[str]) -> None:
        self.allowed_hosts = {host.lower() for host in allowed_hosts}
        self.allowed_addresses: set[str] = set()
        self.real_connect = socket.socket.connect
        self.real_connect_ex = socket.socket.connect_ex
        self.real_getaddrinfo = socket.getaddrinfo

    def _allowed(self, host: str) -> bool:
        return (
            _is_loopback(host)
            or host.lower() in self.allowed_hosts
            or host in self.allowed_addresses
        )

    def check_address(self, family: int, address: Any) -> None:
        if _UNIX_FAMILY is not None and family == _UNIX_FAMILY:
            return
        if isinstance(address, str | bytes):  # a unix socket path
            return
        host = _host_text(address[0]) if isinstance(address, tuple) and address else None
        if host is None or not self._allowed(host):
            raise RuntimeError(f"tests may not reach the network: {address!r}")

    def connect(self, sock: socket.socket, address: Any) -> None:
        self.check_address(sock.family, address)
        self.real_connect(sock, address)

    def connect_ex(self, sock: socket.socket, address: Any) -> int:
        self.check_address(sock.family, address)
        return self.real_connect_ex(sock, address)

    def getaddrinfo(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        name = _host_text(host)
        if host is not None and name != "" and (name is None or not self._allowed(name)):
            raise RuntimeError(f"tests may not reach the network: {host!r}")
        results = self.real_getaddrinfo(host, *args, **kwargs)
        if name is not None and name.lower() in self.allowed_hosts:
            # A database server named in the test URLs: allow what it resolves to.
            self.allowed_addresses.update(str(sockaddr[0]) for *_, sockaddr in results)
        return results


@pytest.fixture(scope="session", autouse=True)
def network_guard() -> Iterator[None]:
    """Refuse, for the whole run, any connection that would leave this machine."""
    guard = _NetworkGuard(server_hosts())
    with pytest.MonkeyPatch.context() as patch:

        def connect(sock: socket.socket, address: Any) -> None:
            guard.connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            return guard.connect_ex(sock, address)

        patch.setattr(socket.socket, "connect", connect)
        patch.setattr(socket.socket, "connect_ex", connect_ex)
        patch.setattr(socket, "getaddrinfo", guard.getaddrinfo)
        yield


@pytest.fixture(autouse=True)
def no_retry_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries of failed model calls wait 0 s in tests (the backoff is tested on its own)."""
    from agent_session import _turn

    monkeypatch.setattr(_turn, "RETRY_BASE_DELAY", 0.0)
    monkeypatch.setattr(_turn, "RETRY_MAX_DELAY", 0.0)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the per-run PostgreSQL and MariaDB databases; a worker reports its invariant counts."""
    databases.drop_run_databases()
    worker_output = getattr(session.config, "workeroutput", None)
    if worker_output is not None:  # a pytest-xdist worker: the controller sums the counts
        worker_output["invariant_checked"] = dict(_CHECKED)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """Add a pytest-xdist worker's invariant counts to the controller's."""
    counts = getattr(node, "workeroutput", {}).get("invariant_checked", {})
    for kind, count in counts.items():
        _CHECKED[kind] += count


# -- the tool-call invariant -------------------------------------------------
#
# Every context document a store writes (Insert, Swap) and every request a turn
# builds (``_turn._request``, for stores and ``Agent.run`` alike) is recorded, and
# each test's records are checked when the test ends (tests/support/invariants.py): a
# stored history never holds a call without its result, nor a result without its
# call, and no request carries an unresolved call. A breach fails the test that wrote or sent it.

_RECORDED: dict[str, list[tuple[str, Any]]] = {"documents": [], "requests": []}
_CHECKED = {"documents": 0, "requests": 0}


def _record_operation(store: Any, op: Any) -> None:
    from agent_session._flows import Insert, Swap

    attr = store.spec.context_attr
    if isinstance(op, Insert):
        _RECORDED["documents"].append(("insert", getattr(op.instance, attr, None)))
    elif isinstance(op, Swap) and attr in op.values:
        _RECORDED["documents"].append(("swap", op.values[attr]))
    # Format 4: each history row written is one finished turn (or one summary).
    for seq, _, data in getattr(op, "rows", ()):
        _RECORDED["documents"].append((f"history row {seq}", {"row": data}))


@pytest.fixture(scope="session", autouse=True)
def record_writes_and_requests() -> Iterator[None]:
    """Wrap the stores' operations and the turn's request builder, for the whole run."""
    from agent_session import _store, _turn

    sync_call, async_call = _store.SyncStore.__call__, _store.AsyncStore.__call__
    build_request = _turn._request

    def sync_recorded(self: Any, op: Any) -> Any:
        _record_operation(self, op)
        return sync_call(self, op)

    async def async_recorded(self: Any, op: Any) -> Any:
        _record_operation(self, op)
        return await async_call(self, op)

    def recorded_request(*args: Any, **kwargs: Any) -> Any:
        request = build_request(*args, **kwargs)
        _RECORDED["requests"].append(("request", request.messages))
        return request

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_store.SyncStore, "__call__", sync_recorded)
        patch.setattr(_store.AsyncStore, "__call__", async_recorded)
        patch.setattr(_turn, "_request", recorded_request)
        yield


@pytest.fixture(autouse=True)
def tool_call_invariant(request: pytest.FixtureRequest) -> Iterator[None]:
    """Check what this test stored and sent, when it ends."""
    from support.invariants import check_document, check_history

    for records in _RECORDED.values():
        records.clear()
    yield
    test = request.node.nodeid
    for kind, document in _RECORDED["documents"]:
        check_document(document, where=f"{test}: {kind}")
        _CHECKED["documents"] += 1
    for _, messages in _RECORDED["requests"]:
        check_history(messages, where=f"{test}: request")
        _CHECKED["requests"] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(
        f"tool-call invariant: {_CHECKED['documents']} stored documents and "
        f"{_CHECKED['requests']} model requests checked"
    )


@pytest.fixture(params=["sync", "async"])
def run(request: pytest.FixtureRequest) -> runner.Run:
    """``await run(agent, input, **kwargs)`` through ``agent.run`` or ``agent.arun``."""
    return runner.call_sync if request.param == "sync" else runner.call_async


@pytest.fixture
async def named_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """One database of the matrix, chosen by indirect parametrization."""
    async with open_database(request.param, tmp_path) as db:
        yield db
