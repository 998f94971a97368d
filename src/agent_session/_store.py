"""The I/O shells: answer the operations of a session flow with a database and a model.

``SyncStore`` works with a ``Session`` (the caller owns the transaction: the store
only flushes) or a ``sessionmaker`` (the store runs each operation in its own short
transaction and commits it, so no connection is checked out while the model is
called). ``AsyncStore`` is the same for ``AsyncSession``/``async_sessionmaker``.
Statements and results are built by ``_StoreBase``; the twins differ only in
``await``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from ._flows import Insert, Load, SessionSpec, Snapshot, Swap
from .errors import (
    ConfigurationError,
    ContextError,
    SessionNotFoundError,
    StaleSessionError,
    StorageError,
)
from .llm import Model, ModelRequest

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")

__all__ = ["AsyncStore", "SyncStore"]


# A concurrent writer won: PostgreSQL serialization failure (REPEATABLE READ and
# SERIALIZABLE), deadlock and lock timeout; MySQL/MariaDB lock wait timeout,
# deadlock and "record has changed since last read" (snapshot isolation).
_LOST_RACE_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
_LOST_RACE_MYSQL_CODES = frozenset({1205, 1213, 1020})


def _lost_race(exc: sa_exc.DBAPIError, text: str) -> bool:
    if "database is locked" in text or "database table is locked" in text:  # SQLite
        return True
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _LOST_RACE_SQLSTATES:
        return True
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in _LOST_RACE_MYSQL_CODES


@contextmanager
def _database_errors(what: str, key: Any) -> Iterator[None]:
    """Turn driver errors into the library's errors (never a raw OperationalError)."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        text = str(exc.orig) if exc.orig is not None else str(exc)
        if _lost_race(exc, text):
            raise StaleSessionError(
                f"session {key!r}: another writer held or changed the row while {what} "
                f"({text.strip()}); nothing was written. In your own transaction, roll it "
                "back before retrying",
                key=key,
            ) from exc
        raise StorageError(
            f"session {key!r}: database error while {what}: {text}", key=key
        ) from exc


@contextmanager
def _readable_row(key: Any) -> Iterator[None]:
    """A stored value the column type cannot decode (invalid JSON text on SQLite)."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise ContextError(
            f"stored row of session {key!r} cannot be read: {type(exc).__name__}: {exc}",
            key=key,
        ) from exc


class _StoreBase:
    """What both shells share: statement building and snapshotting, no I/O."""

    def __init__(self, spec: SessionSpec, model: Model) -> None:
        self.spec = spec
        self.model = model
        self.cls = spec.cls

    def snapshot(self, instance: Any, key: Any) -> Snapshot:
        if instance is None:
            raise SessionNotFoundError(
                f"no {self.cls.__name__} session with primary key {key!r}", key=key
            )
        spec = self.spec
        return Snapshot(
            instance=instance,
            document=getattr(instance, spec.context_attr),
            revision=int(getattr(instance, spec.revision_attr) or 0),
            status=getattr(instance, spec.status_attr) if spec.status_attr else None,
            status_changed_at=(
                getattr(instance, spec.status_changed_attr) if spec.status_changed_attr else None
            ),
        )

    def swap_statement(self, op: Swap) -> sa.Update:
        mapper = sa.inspect(self.cls)
        keys = op.key if isinstance(op.key, tuple) else (op.key,)
        criteria = [column == value for column, value in zip(mapper.primary_key, keys, strict=True)]
        revision = getattr(self.cls, self.spec.revision_attr)
        return (
            sa.update(self.cls)
            .where(*criteria, revision == op.seen_revision)
            .values(**op.values)
            .execution_options(synchronize_session=False)
        )

    def after_swap(self, op: Swap, rowcount: int) -> bool:
        if rowcount != 1:
            return False
        for name, value in op.values.items():
            set_committed_value(op.instance, name, value)
        return True


class SyncStore(_StoreBase):
    """Answers flow operations with a ``Session`` or a ``sessionmaker``."""

    def __init__(
        self, spec: SessionSpec, model: Model, db: Session | sessionmaker[Session]
    ) -> None:
        super().__init__(spec, model)
        if isinstance(db, Session):
            self.session: Session | None = db
            self.maker: sessionmaker[Session] | None = None
        elif isinstance(db, sessionmaker):
            self.session, self.maker = None, db
        else:
            raise ConfigurationError(
                f"{self.cls.__name__}: db must be a Session or a sessionmaker, "
                f"got {type(db).__name__} (use the a-prefixed methods with AsyncSession)"
            )

    def __call__(self, op: Any) -> Any:
        if isinstance(op, ModelRequest):
            return self.model.complete(op)
        if isinstance(op, Load):
            return self._run(self._load, op, op.key, "reading", retry=True)
        if isinstance(op, Swap):
            return self._run(self._swap, op, op.key, "writing", retry=True)
        if isinstance(op, Insert):
            return self._run(self._insert, op, None, "inserting", retry=False)
        raise TypeError(f"unknown operation {op!r}")

    def _run(
        self, fn: Callable[[Session, Any], T], op: Any, key: Any, what: str, *, retry: bool
    ) -> T:
        if self.maker is None:
            assert self.session is not None
            with _database_errors(what, key):
                return fn(self.session, op)
        for attempt in (1, 2):
            with self.maker(expire_on_commit=False) as session:
                try:
                    value = fn(session, op)
                except sa_exc.DBAPIError as exc:
                    # A pooled connection that died while idle (server restart, killed
                    # backend) fails on its first statement: nothing was written, so
                    # one retry on a fresh connection is safe.
                    if retry and attempt == 1 and exc.connection_invalidated:
                        continue
                    with _database_errors(what, key):
                        raise
                with _database_errors(what, key):
                    try:
                        session.commit()
                    except sa_exc.DBAPIError:
                        # A failed COMMIT can leave the transaction open (SQLite's
                        # "database is locked"): closing the session alone would pool
                        # the connection with this write pending, and the connection's
                        # next user would commit it. Roll it back explicitly.
                        with suppress(sa_exc.SQLAlchemyError):
                            session.rollback()
                        raise
                return value
        raise AssertionError("unreachable")

    def _load(self, session: Session, op: Load) -> Snapshot:
        with _readable_row(op.key):
            instance = session.get(self.cls, op.key, populate_existing=True)
        return self.snapshot(instance, op.key)

    def _swap(self, session: Session, op: Swap) -> bool:
        result = session.execute(self.swap_statement(op))
        return self.after_swap(op, result.rowcount)  # type: ignore[attr-defined]

    def _insert(self, session: Session, op: Insert) -> Any:
        session.add(op.instance)
        try:
            session.flush()
        except Exception:
            if op.instance in session:
                session.expunge(op.instance)
            raise
        return op.instance


class AsyncStore(_StoreBase):
    """Async twin of ``SyncStore`` for ``AsyncSession`` and ``async_sessionmaker``."""

    def __init__(self, spec: SessionSpec, model: Model, db: Any) -> None:
        super().__init__(spec, model)
        from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

        if isinstance(db, AsyncSession):
            self.session: AsyncSession | None = db
            self.maker: async_sessionmaker[AsyncSession] | None = None
        elif isinstance(db, async_sessionmaker):
            self.session, self.maker = None, db
        else:
            raise ConfigurationError(
                f"{self.cls.__name__}: db must be an AsyncSession or an async_sessionmaker, "
                f"got {type(db).__name__} (use the methods without the a- prefix with Session)"
            )

    async def __call__(self, op: Any) -> Any:
        if isinstance(op, ModelRequest):
            return await self.model.acomplete(op)
        if isinstance(op, Load):
            return await self._run(self._load, op, op.key, "reading", retry=True)
        if isinstance(op, Swap):
            return await self._run(self._swap, op, op.key, "writing", retry=True)
        if isinstance(op, Insert):
            return await self._run(self._insert, op, None, "inserting", retry=False)
        raise TypeError(f"unknown operation {op!r}")

    async def _run(
        self, fn: Callable[[AsyncSession, Any], Any], op: Any, key: Any, what: str, *, retry: bool
    ) -> Any:
        if self.maker is None:
            assert self.session is not None
            with _database_errors(what, key):
                return await fn(self.session, op)
        for attempt in (1, 2):
            async with self.maker(expire_on_commit=False) as session:
                try:
                    value = await fn(session, op)
                except sa_exc.DBAPIError as exc:
                    if retry and attempt == 1 and exc.connection_invalidated:
                        continue
                    with _database_errors(what, key):
                        raise
                with _database_errors(what, key):
                    try:
                        await session.commit()
                    except sa_exc.DBAPIError:
                        with suppress(sa_exc.SQLAlchemyError):
                            await session.rollback()  # see SyncStore._run
                        raise
                return value
        raise AssertionError("unreachable")

    async def _load(self, session: AsyncSession, op: Load) -> Snapshot:
        with _readable_row(op.key):
            instance = await session.get(self.cls, op.key, populate_existing=True)
        return self.snapshot(instance, op.key)

    async def _swap(self, session: AsyncSession, op: Swap) -> bool:
        result = await session.execute(self.swap_statement(op))
        return self.after_swap(op, result.rowcount)  # type: ignore[attr-defined]

    async def _insert(self, session: AsyncSession, op: Insert) -> Any:
        session.add(op.instance)
        try:
            await session.flush()
        except Exception:
            if op.instance in session:
                session.expunge(op.instance)
            raise
        return op.instance
