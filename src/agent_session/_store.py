"""The I/O shells: answer the operations of a session flow with a database and a model.

``SyncStore`` works with a ``Session`` or a ``scoped_session`` (the caller owns the
transaction: the store only flushes) or a ``sessionmaker`` (the store runs each
operation in its own short transaction and commits it, so no connection is checked
out while the model is called). ``AsyncStore`` is the same for ``AsyncSession``,
``async_scoped_session`` and ``async_sessionmaker``.
Statements and results are built by ``_StoreBase``; the twins differ only in
``await``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.types import TypeDecorator

from ._drivers import ToolScope, amodel_handler, model_handler
from ._flows import SessionSpec, covers, written_marker
from ._keys import identity
from ._operations import Insert, Load, Query, Snapshot, Swap
from ._server_errors import misconfigured, read_only_hint
from .context import seq_range
from .errors import (
    ConfigurationError,
    ContextError,
    InputValidationError,
    SessionNotFoundError,
    StaleSessionError,
    StorageError,
    show_key,
)
from .llm import Model

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


_QUOTED = re.compile(
    r"""(?P<name>\b(?:column|relation|constraint|table|key|index|database|schema|type|"""
    r"""function|trigger|class|role|user|at)\s+)?"""
    r"""(?P<quoted>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""",
    re.IGNORECASE,
)
"""A quoted part of a driver's message, and the word before it when that says it is
the name of a column, table, constraint, ...: what is not such a name may be data."""


def _unquoted_data(match: re.Match[str]) -> str:
    return match.group(0) if match.group("name") else "'...'"


def driver_message(exc: sa_exc.DBAPIError) -> str:
    """What a driver error says, without stored data: its class and the first line of
    its message, quoted values replaced by ``'...'``. PostgreSQL quotes the value it
    refused in ``DETAIL`` and ``CONTEXT: JSON data ...`` lines, MySQL and MariaDB in
    the message itself (``Duplicate entry '...'``); names of columns, tables and
    constraints are kept."""
    orig = exc.orig
    if orig is None:
        return type(exc).__name__
    args: tuple[Any, ...] = getattr(orig, "args", ())
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        text = f"{args[1]} (error {args[0]})"  # PyMySQL and aiomysql: (code, message)
    else:
        text = str(orig)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = _QUOTED.sub(_unquoted_data, first)
    return f"{type(orig).__name__}: {first}" if first else type(orig).__name__


@contextmanager
def _database_errors(
    what: str, key: Any, naming: Callable[[Any], str], *, owned: bool = True
) -> Iterator[None]:
    """Turn driver errors into the library's errors (never a raw OperationalError).

    ``naming(key)`` says which session (``Chat session 42``, ``new Chat session``),
    asked only when an error is raised; ``owned`` is false in a caller-owned
    transaction, whose lost connection the caller must roll back.
    """
    try:
        yield
    except sa_exc.DBAPIError as exc:
        name = naming(key)
        text = str(exc.orig) if exc.orig is not None else str(exc)
        # The driver's text may quote stored data: only ``driver_message`` is shown.
        shown = driver_message(exc)
        advice = misconfigured(exc)
        if advice is not None:
            raise ConfigurationError(
                f"{name}: database error while {what} ({shown}): {advice}"
            ) from exc
        if _lost_race(exc, text):
            raise StaleSessionError(
                f"{name}: another writer held or changed the row while {what} "
                f"({shown}); nothing was written. In your own transaction, roll it "
                "back before retrying",
                key=key,
            ) from exc
        hint = read_only_hint(exc)
        if exc.connection_invalidated and not owned:
            hint = (
                ". The connection was lost, and your transaction with it: nothing was "
                "written. Roll the session back and retry; an engine created with "
                "pool_pre_ping=True replaces a dead pooled connection before using it"
            )
        raise StorageError(f"{name}: database error while {what}: {shown}{hint}", key=key) from exc


@contextmanager
def _readable_row(key: Any, naming: Callable[[Any], str]) -> Iterator[None]:
    """A stored value the column type cannot decode (invalid JSON text on SQLite)."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise ContextError(
            f"stored row of {naming(key)} cannot be read: {type(exc).__name__}: {exc}",
            key=key,
        ) from exc


def _fresh(session: Session | AsyncSession) -> bool:
    """No transaction begun and nothing pending: what an operation starts, it alone holds.

    Then a connection lost by the operation's first statements cost nothing but that
    operation, which can run again after a rollback.
    """
    if session.in_transaction():
        return False
    return not (session.new or session.deleted or session.dirty)


def _dump_document(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _DocumentJSON(TypeDecorator[Any]):
    """The context column's JSON type, bound as compact UTF-8 JSON text.

    Only the library's own writes use it (the column stays the plain JSON type), so
    a document is stored the same whatever ``json_serializer`` the engine has; the
    default one escapes every non-ASCII character as ``\\uXXXX``. The dialect's
    JSON type still renders the statement (``::JSON`` casts on PostgreSQL), and
    every driver takes the JSON text as it takes the default serializer's.
    """

    impl: type[sa.JSON[Any]] | sa.JSON[Any] = sa.JSON
    cache_ok = True

    def __init__(self, column_type: sa.JSON) -> None:
        super().__init__()
        self.column_type = column_type
        self.impl = column_type

    def bind_processor(self, dialect: sa.Dialect) -> Callable[[Any], str]:
        return _dump_document


def _document_type(column_type: Any) -> Any:
    """How to bind the context: ``_DocumentJSON``, unless the column has a type of
    the application's own (a ``TypeDecorator``), whose processing is then kept."""
    return _DocumentJSON(column_type) if isinstance(column_type, sa.JSON) else column_type


ROWS_PER_INSERT = 1000
"""History rows per INSERT statement (an executemany) when many are written at once."""

NEWEST_ROWS = 64
"""How many of a session's newest history rows a load of its whole path reads in the
statement that reads the head (a ``LastTurns(n)`` load reads n): which rows a turn
needs is known only from the head, so the load reads these with it, in one statement,
and the older rows of a longer path in a second one."""

SWAP_WITH_ROWS = 8
"""Up to this many new rows go into the compare-and-swap's own statement on PostgreSQL
(a turn writes one or two); more are inserted by their own statements."""

_SEQ, _PARENT, _DATA = "agent_session_seq", "agent_session_parent", "agent_session_data"


def snap_key(store: _StoreBase, snap: Snapshot, key: Any) -> Any:
    """The key of the loaded row (``key`` as given, else the instance's identity)."""
    return key if key is not None else identity(snap.instance)


class _StoreBase:
    """What both shells share: statement building and snapshotting, no I/O."""

    owns_transactions = False
    """True with a sessionmaker: the store begins and commits its own transactions."""

    def __init__(self, spec: SessionSpec, model: Model, tools: ToolScope | None = None) -> None:
        self.spec = spec
        self.model = model
        self.cls = spec.cls
        self.tools = tools if tools is not None else ToolScope(spec.agent.toolset, agent=spec.agent)
        """Runs the flow's ``RunTools`` with the caller's ``deps`` and the session key."""

    def name(self, key: Any) -> str:
        """How messages name a session: ``Chat session 42``, or ``new Chat session``."""
        if key is None:
            return f"new {self.cls.__name__} session"
        return f"{self.cls.__name__} session {show_key(key)}"

    def not_found(self, key: Any) -> SessionNotFoundError:
        return SessionNotFoundError(
            f"no {self.cls.__name__} session with primary key {show_key(key)}", key=key
        )

    def snapshot(self, instance: Any, key: Any) -> Snapshot:
        if instance is None:
            raise self.not_found(key)
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

    # -- history rows ---------------------------------------------------------------

    def _history_keys(self) -> list[sa.Column[Any]]:
        table = self.spec.history_table
        return [column for column in table.primary_key.columns if column.name != "seq"]

    def _history_key_criteria(self) -> list[sa.ColumnElement[bool]]:
        """``<history key column> = :pk<i>`` for each column naming the session row."""
        return [
            column == sa.bindparam(f"pk{i}", type_=column.type)
            for i, column in enumerate(self._history_keys())
        ]

    def _rows_select(self) -> Any:
        """``SELECT seq, parent, data WHERE <key> AND seq BETWEEN :first AND :last ORDER
        BY seq``, built once per class."""
        statement = self.spec.statements.get("rows")
        if statement is None:
            table = self.spec.history_table
            statement = (
                sa.select(table.c.seq, table.c.parent, table.c.data)
                .where(
                    *self._history_key_criteria(),
                    table.c.seq >= sa.bindparam("first", type_=sa.Integer()),
                    table.c.seq <= sa.bindparam("last", type_=sa.Integer()),
                )
                .order_by(table.c.seq)
            )
            self.spec.statements["rows"] = statement
        return statement

    def rows_statement(self, op: Load, snap: Snapshot) -> tuple[Any, dict[str, Any]] | None:
        """The rows ``op.history`` needs with the head just read (``None``: none)."""
        if self.spec.history_table is None or op.history is None:
            return None
        seqs = seq_range(snap.document, op.history)
        if seqs is None:
            return None
        return self.rows_between(op, snap, *seqs)

    def rows_between(
        self, op: Load, snap: Snapshot, first: int, last: int
    ) -> tuple[Any, dict[str, Any]]:
        """The rows of the loaded session with seqs ``first..last``."""
        params = self._key_params(snap_key(self, snap, op.key))
        params["first"], params["last"] = first, last
        return self._rows_select(), params

    def newest_rows(self, op: Load, session: Session) -> int | None:
        """How many of the newest rows to read with the head in one statement, for
        ``op`` (``None``: read the head alone, then the rows it names). Not when the
        session has ``do_orm_execute`` listeners: options they add to a query (such as
        ``with_loader_criteria``, a soft delete or a tenant filter) do not apply to a
        statement given as SQL, so the row is then read by ``Session.get``, which they
        see."""
        history = op.history
        if self.spec.history_table is None or not self._one_statement_load():
            return None
        if session.dispatch.do_orm_execute:
            return None
        if history == "path":
            return NEWEST_ROWS
        if isinstance(history, int) and not isinstance(history, bool) and history > 0:
            return history
        return None

    def _one_statement_load(self) -> bool:
        """Whether the model's row can be loaded by the ORM from a ``UNION ALL`` of its
        table and the history table: a plain mapping of one table (no inheritance, no
        SQL-expression attributes, no relationship loaded by a join), which is what
        ``Session.get`` would then load too."""
        cached = self.spec.statements.get("one_statement")
        if cached is None:
            mapper = sa.inspect(self.cls)
            table = mapper.local_table
            cached = (
                isinstance(table, sa.Table)
                and mapper.persist_selectable is table
                and mapper.inherits is None
                and mapper.polymorphic_on is None
                and not any(rel.lazy in ("joined", "subquery") for rel in mapper.relationships)
                and all(
                    isinstance(column, sa.Column) and column.table is table
                    for prop in mapper.column_attrs
                    for column in prop.columns
                )
            )
            self.spec.statements["one_statement"] = cached
        return bool(cached)

    def head_and_rows_statement(self, op: Load) -> Any:
        """``SELECT <the row>, NULL.. WHERE <pk> [AND <where>] UNION ALL SELECT NULL..,
        seq, parent, data WHERE <key> AND seq > max(seq) - :newest``, as the ORM's
        entity of the model and the three row columns: the head and the newest rows
        in one statement (``newest_rows``)."""
        if not op.where:
            cached = self.spec.statements.get("head_and_rows")
            if cached is not None:
                return cached
        mapper = sa.inspect(self.cls)
        # The columns the ORM loads with the row (deferred ones are read when used).
        loaded = {
            column for prop in mapper.column_attrs if not prop.deferred for column in prop.columns
        }
        columns = [column for column in mapper.local_table.c if column in loaded]
        history = self.spec.history_table
        keys = self._history_key_criteria()
        newest = (
            sa.select(sa.func.coalesce(sa.func.max(history.c.seq), 0))
            .where(*keys)
            .scalar_subquery()
        )
        head = sa.select(
            *columns,
            sa.type_coerce(sa.null(), sa.Integer()).label(_SEQ),
            sa.type_coerce(sa.null(), sa.Integer()).label(_PARENT),
            sa.type_coerce(sa.null(), history.c.data.type).label(_DATA),
        ).where(*self._key_criteria(), *op.where)
        rows = sa.select(
            *(sa.type_coerce(sa.null(), column.type).label(column.name) for column in columns),
            history.c.seq.label(_SEQ),
            history.c.parent.label(_PARENT),
            history.c.data.label(_DATA),
        ).where(*keys, history.c.seq > newest - sa.bindparam("newest", type_=sa.Integer()))
        # Not a subquery: MariaDB would copy the union into a temporary table first.
        statement = (
            sa.select(
                self.cls,
                sa.column(_SEQ, sa.Integer()),
                sa.column(_PARENT, sa.Integer()),
                sa.column(_DATA, history.c.data.type),
            )
            .from_statement(sa.union_all(head, rows))
            .execution_options(populate_existing=True)
        )
        if not op.where:
            self.spec.statements["head_and_rows"] = statement
        return statement

    def snapshot_and_rows(
        self, op: Load, found: Sequence[Any], newest: int
    ) -> tuple[Snapshot, tuple[int, int] | None]:
        """The snapshot of what ``head_and_rows_statement`` found, with the rows the
        head needs among the ones read, and the seqs it needs that were not read
        (``None``: none)."""
        instance = None
        read = []
        for entity, seq, parent, data in found:
            if entity is not None:
                instance = entity
            elif seq is not None:
                read.append((seq, parent, data))
        snap = self.snapshot(instance, op.key)
        wanted = seq_range(snap.document, op.history)
        if wanted is None:
            return snap, None
        first, last = wanted
        oldest_read = max((row[0] for row in read), default=0) - newest + 1
        rows = tuple(sorted(row for row in read if first <= row[0] <= last))
        snap = replace(snap, rows=rows)
        if first >= oldest_read:
            return snap, None
        return snap, (first, min(last, oldest_read - 1))

    def insert_rows_statement(self, key: Any, rows: tuple[Any, ...]) -> tuple[Any, list[Any]]:
        """``INSERT`` of ``rows`` under ``key``, as an executemany."""
        table = self.spec.history_table
        statement = self.spec.statements.get("insert_rows")
        if statement is None:
            statement = sa.insert(table)
            self.spec.statements["insert_rows"] = statement
        names = [column.name for column in self._history_keys()]
        keys = key if isinstance(key, tuple) else (key,)
        base = dict(zip(names, keys, strict=True))
        return statement, [
            {**base, "seq": seq, "parent": parent, "data": data} for seq, parent, data in rows
        ]

    def insert_batches(self, key: Any, rows: tuple[Any, ...]) -> Iterator[tuple[Any, list[Any]]]:
        """``insert_rows_statement`` in batches of ``ROWS_PER_INSERT`` rows."""
        for start in range(0, len(rows), ROWS_PER_INSERT):
            yield self.insert_rows_statement(key, rows[start : start + ROWS_PER_INSERT])

    def outside(self, op: Insert, row: Any) -> InputValidationError | None:
        """The error for a new row that its criteria do not match (``row`` is ``None``)."""
        if row is not None:
            return None
        return InputValidationError(
            f"{self.cls.__name__}: the new row does not match the where= criteria; "
            "nothing was stored",
            errors=[],
            source="where",
        )

    def delete_rows_statement(self, key: Any) -> tuple[Any, dict[str, Any]]:
        """``DELETE`` every row under ``key`` (left by a deleted session whose key is
        used again)."""
        table = self.spec.history_table
        statement = self.spec.statements.get("delete_rows")
        if statement is None:
            statement = sa.delete(table).where(*self._history_key_criteria())
            self.spec.statements["delete_rows"] = statement
        return statement, self._key_params(key)

    # Statements are built once per class and key set, with bound parameters, and
    # run as Core statements: no ORM bulk-update machinery on the per-turn path.

    def _column(self, attr: str) -> sa.Column[Any]:
        column: sa.Column[Any] = sa.inspect(self.cls).get_property(attr).columns[0]
        return column

    def _key_params(self, key: Any) -> dict[str, Any]:
        keys = key if isinstance(key, tuple) else (key,)
        return {f"pk{i}": value for i, value in enumerate(keys)}

    def _key_criteria(self) -> list[sa.ColumnElement[bool]]:
        return [
            column == sa.bindparam(f"pk{i}", type_=column.type)
            for i, column in enumerate(sa.inspect(self.cls).primary_key)
        ]

    def swap_statement(self, op: Swap) -> tuple[sa.Update, dict[str, Any]]:
        """``UPDATE ... SET <values> WHERE <pk> AND <revision> = <seen> [AND <op.where>]``.

        With its parameters. The statement without criteria is cached; the caller's
        criteria carry their own bound values, so they are added per call.
        """
        names = tuple(sorted(op.values))
        cache = self.spec.statements
        statement = cache.get(names)
        if statement is None:
            revision = self._column(self.spec.revision_attr)
            statement = (
                sa.update(revision.table)
                .where(
                    *self._key_criteria(),
                    revision == sa.bindparam("seen", type_=revision.type),
                )
                .values(
                    {
                        column: sa.bindparam(f"set_{name}", type_=self._bind_type(name, column))
                        for name, column in ((n, self._column(n)) for n in names)
                    }
                )
            )
            cache[names] = statement
        params = self._key_params(op.key)
        params["seen"] = op.seen_revision
        params.update((f"set_{name}", value) for name, value in op.values.items())
        if op.where:
            statement = statement.where(*op.where)
        return statement, params

    def swap_and_rows_statement(self, op: Swap, dialect: str) -> tuple[Any, dict[str, Any]] | None:
        """On PostgreSQL, the compare-and-swap and the INSERT of its new rows as one
        statement: ``WITH won AS (UPDATE ... RETURNING <pk>) INSERT INTO <history>
        SELECT <pk>, :seq0, :parent0, :data0 FROM won [UNION ALL ...]``, which inserts
        the rows only when the UPDATE matched (its row count: every row, or none).
        ``None``: run the UPDATE, then the INSERT (other databases have no
        data-modifying ``WITH``; a first write of rows deletes old ones first)."""
        count = len(op.rows)
        if dialect != "postgresql" or not count or op.fresh or count > SWAP_WITH_ROWS:
            return None
        mapper = sa.inspect(self.cls)
        if mapper.persist_selectable is not mapper.local_table:
            return None  # joined-table inheritance: the UPDATE spans two tables
        update, params = self.swap_statement(op)
        cache_key = ("swap_rows", tuple(sorted(op.values)), count)
        statement = None if op.where else self.spec.statements.get(cache_key)
        if statement is None:
            history = self.spec.history_table
            won = update.returning(*mapper.primary_key).cte("agent_session_won")
            selects = [
                sa.select(
                    *won.c,
                    sa.bindparam(f"seq{i}", type_=sa.Integer()),
                    sa.bindparam(f"parent{i}", type_=sa.Integer()),
                    sa.bindparam(f"data{i}", type_=history.c.data.type),
                )
                for i in range(count)
            ]
            names = [column.name for column in self._history_keys()]
            statement = (
                sa.insert(history)
                .from_select(
                    [*names, "seq", "parent", "data"],
                    selects[0] if count == 1 else sa.union_all(*selects),
                )
                .execution_options(preserve_rowcount=True)  # an INSERT's count is kept
            )
            if not op.where:
                self.spec.statements[cache_key] = statement
        for i, (seq, parent, data) in enumerate(op.rows):
            params[f"seq{i}"], params[f"parent{i}"], params[f"data{i}"] = seq, parent, data
        return statement, params

    def _bind_type(self, attr: str, column: sa.Column[Any]) -> Any:
        if attr == self.spec.context_attr:
            return _document_type(column.type)
        return column.type

    def before_insert(self, instance: Any) -> Any:
        """Bind the new context as ``_DocumentJSON`` in the flush's INSERT: the attribute
        holds a bound SQL expression until ``after_insert`` puts the document back."""
        attr = self.spec.context_attr
        document = getattr(instance, attr)
        bind_type = self._bind_type(attr, self._column(attr))
        if document is not None and isinstance(bind_type, _DocumentJSON):
            setattr(instance, attr, sa.literal(document, type_=bind_type))
        return document

    def after_insert(self, instance: Any, document: Any, *, flushed: bool) -> None:
        """The document back on the attribute: as loaded after a flush, else as set."""
        if flushed:
            set_committed_value(instance, self.spec.context_attr, document)
        else:
            setattr(instance, self.spec.context_attr, document)

    def revision_statement(self, where: tuple[Any, ...]) -> sa.Select[Any]:
        """``SELECT revision[, status, status_changed_at] WHERE <pk> [AND <where>]``."""
        statement = self.spec.statements.get("revision")
        if statement is None:
            spec = self.spec
            attrs = [spec.revision_attr]
            if spec.status_attr is not None and spec.status_changed_attr is not None:
                attrs += [spec.status_attr, spec.status_changed_attr]
            statement = sa.select(*(self._column(a) for a in attrs)).where(*self._key_criteria())
            self.spec.statements["revision"] = statement
        return statement.where(*where) if where else statement

    def row_statement(self, where: tuple[Any, ...]) -> sa.Select[Any]:
        """``SELECT <the row> WHERE <pk> AND <where>``: ``Session.get`` with criteria."""
        return (
            sa.select(self.cls)
            .where(*self._key_criteria(), *where)
            .execution_options(populate_existing=True)
        )

    def written_document(self, op: Load, session: Session) -> tuple[Any, int] | None:
        """The document and revision this library last wrote on ``op.instance``, if usable.

        Only when the instance still holds exactly that document (not expired by a
        rollback, not replaced) and belongs to this session (caller-owned mode) or to
        none (sessionmaker mode, where that write was committed). The caller then
        checks the stored revision: equal means the row is what was written.
        """
        instance = op.instance
        if instance is None:
            return None
        state = sa.inspect(instance)
        if state.session is not (None if self.owns_transactions else session):
            return None
        document = state.dict.get(self.spec.context_attr)
        revision = state.dict.get(self.spec.revision_attr)
        written = written_marker(instance)
        if document is None or revision is None or written is None or document is not written[0]:
            return None
        if written[1] is None or not covers(written, op.history):
            return None
        return written[1], revision

    def snapshot_from_revision(
        self, op: Load, written: tuple[Any, int], row: Any
    ) -> Snapshot | None:
        """A snapshot without reloading the document, if the stored revision is unchanged."""
        if row is None:
            raise self.not_found(op.key)  # gone, or outside the caller's criteria
        document, revision = written
        if row[0] != revision:
            return None
        spec = self.spec
        if spec.status_attr is not None and spec.status_changed_attr is not None:
            set_committed_value(op.instance, spec.status_attr, row[1])
            set_committed_value(op.instance, spec.status_changed_attr, row[2])
        return Snapshot(
            instance=op.instance,
            document=getattr(op.instance, spec.context_attr),
            revision=revision,
            status=row[1] if spec.status_attr else None,
            status_changed_at=row[2] if spec.status_attr else None,
            joined=document,
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
        self,
        spec: SessionSpec,
        model: Model,
        db: Session | sessionmaker[Session] | scoped_session[Session],
        tools: ToolScope | None = None,
    ) -> None:
        super().__init__(spec, model, tools)
        self._drive = model_handler(model, self.tools)
        """Answers what is not a database operation (model, tools, sleep)."""
        if isinstance(db, scoped_session):
            db = db()  # the registry's current Session (Flask-SQLAlchemy's db.session)
        if isinstance(db, Session):
            self.session: Session | None = db
            self.maker: sessionmaker[Session] | None = None
        elif isinstance(db, sessionmaker):
            self.session, self.maker = None, db
            self.owns_transactions = True
        else:
            raise ConfigurationError(
                f"{self.cls.__name__}: db must be a Session or a sessionmaker, "
                f"got {type(db).__name__} (use the a-prefixed methods with AsyncSession)"
            )

    def __call__(self, op: Any) -> Any:
        if isinstance(op, Load):
            return self._run(self._load, op, op.key, "reading")
        if isinstance(op, Swap):
            return self._run(self._swap, op, op.key, "writing")
        if isinstance(op, Insert):
            return self._run(self._insert, op, None, "inserting")
        if isinstance(op, Query):
            return self._run(self._query, op, None, "reading")
        return self._drive(op)

    def _run(self, fn: Callable[[Session, Any], T], op: Any, key: Any, what: str) -> T:
        # A pooled connection that died while idle (server restart, killed backend)
        # fails on its first statement. When the failed transaction held this
        # operation alone and was never committed, the server has discarded it:
        # nothing was written, and one retry on a fresh connection is safe.
        if self.maker is None:
            assert self.session is not None
            session = self.session
            fresh = _fresh(session)
            for attempt in (1, 2):
                try:
                    return fn(session, op)
                except sa_exc.DBAPIError as exc:
                    if fresh and attempt == 1 and exc.connection_invalidated:
                        session.rollback()
                        continue
                    with _database_errors(what, key, self.name, owned=False):
                        raise
            raise AssertionError("unreachable")
        for attempt in (1, 2):
            with self.maker(expire_on_commit=False) as session:
                try:
                    value = fn(session, op)
                except sa_exc.DBAPIError as exc:
                    if attempt == 1 and exc.connection_invalidated:
                        continue
                    with _database_errors(what, key, self.name):
                        raise
                with _database_errors(what, key, self.name):
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
        params = self._key_params(op.key)
        written = self.written_document(op, session)
        if written is not None:
            # SQLAlchemy's own execute: SQLModel's Session deprecates its override.
            row = Session.execute(session, self.revision_statement(op.where), params).first()
            snap = self.snapshot_from_revision(op, written, row)
            if snap is not None:
                return snap
        newest = self.newest_rows(op, session)
        if newest is not None:
            params["newest"] = newest
            statement = self.head_and_rows_statement(op)
            with _readable_row(op.key, self.name):
                found = Session.execute(session, statement, params).all()
            snap, missing = self.snapshot_and_rows(op, found, newest)
            if missing is None:
                return snap
            assert snap.rows is not None
            older = Session.execute(session, *self.rows_between(op, snap, *missing)).all()
            return replace(snap, rows=(*older, *snap.rows))
        with _readable_row(op.key, self.name):
            if op.where:
                instance = session.scalars(self.row_statement(op.where), params).first()
            else:
                instance = session.get(self.cls, op.key, populate_existing=True)
        snap = self.snapshot(instance, op.key)
        read = self.rows_statement(op, snap)
        if read is None:
            return snap
        rows = tuple(Session.execute(session, read[0], read[1]).all())
        return replace(snap, rows=rows)

    def _swap(self, session: Session, op: Swap) -> bool:
        if op.rows:
            dialect = session.get_bind(self.cls).dialect.name
            both = self.swap_and_rows_statement(op, dialect)
            if both is not None:
                result = Session.execute(session, *both)
                return self.after_swap(op, int(result.rowcount == len(op.rows)))  # type: ignore[attr-defined]
        statement, params = self.swap_statement(op)
        result = Session.execute(session, statement, params)
        won = self.after_swap(op, result.rowcount)  # type: ignore[attr-defined]
        if won and op.rows:
            if op.fresh:
                Session.execute(session, *self.delete_rows_statement(op.key))
            for insert, rows in self.insert_batches(op.key, op.rows):
                Session.execute(session, insert, rows)
        return won

    def _query(self, session: Session, op: Query) -> list[Any]:
        return list(Session.execute(session, op.statement).all())

    def _insert(self, session: Session, op: Insert) -> Any:
        document = self.before_insert(op.instance)
        session.add(op.instance)
        try:
            session.flush()
            key = identity(op.instance)
            if self.spec.history_table is not None:
                Session.execute(session, *self.delete_rows_statement(key))
                for statement, rows in self.insert_batches(key, op.rows):
                    Session.execute(session, statement, rows)
            if op.where:
                found = Session.execute(
                    session, self.revision_statement(op.where), self._key_params(key)
                ).first()
                error = self.outside(op, found)
                if error is not None:
                    session.delete(op.instance)  # its rows go with it
                    session.flush()
                    raise error
        except Exception:
            if op.instance in session:
                session.expunge(op.instance)
            self.after_insert(op.instance, document, flushed=False)
            raise
        self.after_insert(op.instance, document, flushed=True)
        return op.instance


class AsyncStore(_StoreBase):
    """Async twin of ``SyncStore`` for ``AsyncSession`` and ``async_sessionmaker``."""

    def __init__(
        self, spec: SessionSpec, model: Model, db: Any, tools: ToolScope | None = None
    ) -> None:
        super().__init__(spec, model, tools)
        self._drive = amodel_handler(model, self.tools)
        """Answers what is not a database operation (model, tools, sleep)."""
        from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session, async_sessionmaker

        self.execute = AsyncSession.execute  # SQLAlchemy's own (SQLModel's is deprecated)
        if isinstance(db, async_scoped_session):
            db = db()  # the registry's AsyncSession for the current scope
        if isinstance(db, AsyncSession):
            self.session: AsyncSession | None = db
            self.maker: async_sessionmaker[AsyncSession] | None = None
        elif isinstance(db, async_sessionmaker):
            self.session, self.maker = None, db
            self.owns_transactions = True
        else:
            raise ConfigurationError(
                f"{self.cls.__name__}: db must be an AsyncSession or an async_sessionmaker, "
                f"got {type(db).__name__} (use the methods without the a- prefix with Session)"
            )

    async def __call__(self, op: Any) -> Any:
        if isinstance(op, Load):
            return await self._run(self._load, op, op.key, "reading")
        if isinstance(op, Swap):
            return await self._run(self._swap, op, op.key, "writing")
        if isinstance(op, Insert):
            return await self._run(self._insert, op, None, "inserting")
        if isinstance(op, Query):
            return await self._run(self._query, op, None, "reading")
        return await self._drive(op)

    async def _run(
        self, fn: Callable[[AsyncSession, Any], Any], op: Any, key: Any, what: str
    ) -> Any:
        # See SyncStore._run for the retry.
        if self.maker is None:
            assert self.session is not None
            session = self.session
            fresh = _fresh(session)
            for attempt in (1, 2):
                try:
                    return await fn(session, op)
                except sa_exc.DBAPIError as exc:
                    if fresh and attempt == 1 and exc.connection_invalidated:
                        await session.rollback()
                        continue
                    with _database_errors(what, key, self.name, owned=False):
                        raise
            raise AssertionError("unreachable")
        for attempt in (1, 2):
            async with self.maker(expire_on_commit=False) as session:
                try:
                    value = await fn(session, op)
                except sa_exc.DBAPIError as exc:
                    if attempt == 1 and exc.connection_invalidated:
                        continue
                    with _database_errors(what, key, self.name):
                        raise
                with _database_errors(what, key, self.name):
                    try:
                        await session.commit()
                    except sa_exc.DBAPIError:
                        with suppress(sa_exc.SQLAlchemyError):
                            await session.rollback()  # see SyncStore._run
                        raise
                return value
        raise AssertionError("unreachable")

    async def _load(self, session: AsyncSession, op: Load) -> Snapshot:
        params = self._key_params(op.key)
        written = self.written_document(op, session.sync_session)
        if written is not None:
            result = await self.execute(session, self.revision_statement(op.where), params)
            snap = self.snapshot_from_revision(op, written, result.first())
            if snap is not None:
                return snap
        newest = self.newest_rows(op, session.sync_session)
        if newest is not None:
            params["newest"] = newest
            statement = self.head_and_rows_statement(op)
            with _readable_row(op.key, self.name):
                found = (await self.execute(session, statement, params)).all()
            snap, missing = self.snapshot_and_rows(op, found, newest)
            if missing is None:
                return snap
            assert snap.rows is not None
            between = self.rows_between(op, snap, *missing)
            older = (await self.execute(session, *between)).all()
            return replace(snap, rows=(*older, *snap.rows))
        with _readable_row(op.key, self.name):
            if op.where:
                instance = (await session.scalars(self.row_statement(op.where), params)).first()
            else:
                instance = await session.get(self.cls, op.key, populate_existing=True)
        snap = self.snapshot(instance, op.key)
        read = self.rows_statement(op, snap)
        if read is None:
            return snap
        rows = tuple((await self.execute(session, read[0], read[1])).all())
        return replace(snap, rows=rows)

    async def _swap(self, session: AsyncSession, op: Swap) -> bool:
        if op.rows:
            dialect = session.sync_session.get_bind(self.cls).dialect.name
            both = self.swap_and_rows_statement(op, dialect)
            if both is not None:
                result = await self.execute(session, *both)
                return self.after_swap(op, int(result.rowcount == len(op.rows)))  # type: ignore[attr-defined]
        statement, params = self.swap_statement(op)
        result = await self.execute(session, statement, params)
        won = self.after_swap(op, result.rowcount)  # type: ignore[attr-defined]
        if won and op.rows:
            if op.fresh:
                await self.execute(session, *self.delete_rows_statement(op.key))
            for insert, rows in self.insert_batches(op.key, op.rows):
                await self.execute(session, insert, rows)
        return won

    async def _query(self, session: AsyncSession, op: Query) -> list[Any]:
        return list((await self.execute(session, op.statement)).all())

    async def _insert(self, session: AsyncSession, op: Insert) -> Any:
        document = self.before_insert(op.instance)
        session.add(op.instance)
        try:
            await session.flush()
            key = identity(op.instance)
            if self.spec.history_table is not None:
                await self.execute(session, *self.delete_rows_statement(key))
                for statement, rows in self.insert_batches(key, op.rows):
                    await self.execute(session, statement, rows)
            if op.where:
                result = await self.execute(
                    session, self.revision_statement(op.where), self._key_params(key)
                )
                error = self.outside(op, result.first())
                if error is not None:
                    await session.delete(op.instance)  # its rows go with it
                    await session.flush()
                    raise error
        except Exception:
            if op.instance in session:
                session.expunge(op.instance)
            self.after_insert(op.instance, document, flushed=False)
            raise
        self.after_insert(op.instance, document, flushed=True)
        return op.instance
