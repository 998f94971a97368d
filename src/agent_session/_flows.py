"""Session flows: start, continue and read a stored conversation, without I/O.

Each flow is a generator that yields operations and receives their results:

- ``ModelRequest`` -> ``ModelResponse``: call the model (no connection is needed);
- ``Sleep`` -> ``None``: wait before a failed model call is retried (from ``model_flow``);
- ``Load`` -> ``Snapshot``: read the row (raises ``SessionNotFoundError``);
- ``Insert`` -> the instance: add a new row;
- ``Swap`` -> ``bool``: compare-and-swap on the revision column; ``False`` when
  another writer changed the row first.

The sync and async shells (``_store``) answer these with a ``Session``, an
``AsyncSession`` or a (async) sessionmaker, which decides where transactions
begin and end. All the decisions (what to validate, when a turn is stale, what the
status column says, how to retry) are made here, once.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from . import _turn
from .agent import Agent
from .context import Context, load_context, utcnow
from .errors import (
    AgentSessionError,
    InputValidationError,
    SessionBusyError,
    StaleSessionError,
    show_key,
)
from .llm import Model

__all__ = [
    "Insert",
    "Load",
    "SessionSpec",
    "SessionStatus",
    "Snapshot",
    "Swap",
    "continue_flow",
    "read_flow",
    "start_flow",
]


class SessionStatus(enum.StrEnum):
    """Values of the optional status column."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class SessionSpec:
    """How one model class stores its sessions (attribute names, agent, limits)."""

    cls: type[Any]
    context_attr: str
    revision_attr: str
    status_attr: str | None
    status_changed_attr: str | None
    running_timeout: timedelta
    statements: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)
    """SQL statements the stores built for this class, reused on every turn."""

    @property
    def agent(self) -> Agent[Any]:
        agent: Agent[Any] = self.cls.__agent__
        return agent


@dataclass(frozen=True)
class Load:
    key: Any
    instance: Any = None
    where: tuple[Any, ...] = ()
    """The caller's criteria: a row outside them is not found."""


@dataclass(frozen=True)
class Snapshot:
    """What a load saw: the instance, its stored document, revision and status."""

    instance: Any
    document: Any
    revision: int
    status: str | None = None
    status_changed_at: datetime | None = None


@dataclass(frozen=True)
class Insert:
    instance: Any


@dataclass(frozen=True)
class Swap:
    instance: Any
    key: Any
    seen_revision: int
    values: dict[str, Any]
    where: tuple[Any, ...] = ()
    """The caller's criteria: a row outside them is not written (as after a lost race)."""


_VALID_DOC = "_agent_session_valid_document"
_LAST_RESULT = "_agent_session_last_result"

Flow = Generator[Any, Any, Any]


def _naive_utc(moment: datetime) -> datetime:
    """Status timestamps are stored as naive UTC, which every backend keeps as is."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def read_document(snap: Snapshot, key: Any) -> dict[str, Any]:
    """Validate the stored document once; a document this library just wrote is trusted."""
    doc: Any = snap.document
    if doc is not None and written_marker(snap.instance) is doc:
        return cast("dict[str, Any]", doc)
    context = load_context(doc, key=key)
    if context.version != doc.get("version"):
        return context.to_document()
    return cast("dict[str, Any]", doc)


def written_marker(instance: Any) -> Any:
    """The document this library last wrote on ``instance`` (``None`` if none)."""
    return getattr(instance, _VALID_DOC, None)


def remember(instance: Any, document: dict[str, Any], result: Any) -> None:
    """Mark ``document`` as written (valid) and keep the turn's result on the instance."""
    object.__setattr__(instance, _VALID_DOC, document)
    object.__setattr__(instance, _LAST_RESULT, result)


def start_flow(
    spec: SessionSpec,
    model: Model,
    input: Any,
    instruction_args: Any,
    values: Mapping[str, Any],
) -> Flow:
    """Validate, call the model, then insert the new row with its first context."""
    agent = spec.agent
    plan = _turn.plan_first_turn(agent, input, instruction_args)
    reserved = {spec.context_attr, spec.revision_attr, spec.status_attr, spec.status_changed_attr}
    clash = {name for name in reserved if name is not None and name in values}
    if clash:
        raise InputValidationError(
            f"{spec.cls.__name__}.start_session: {sorted(clash)} are managed by the library",
            errors=[],
            source="values",
        )
    try:
        instance = spec.cls(**values)
    except TypeError as exc:
        raise InputValidationError(
            f"{spec.cls.__name__}.start_session: bad column values: {exc}",
            errors=[],
            source="values",
        ) from exc
    mode = agent.output_mode(model)  # after validation: may import LiteLLM
    result = yield from _turn.model_flow(agent, plan, mode)
    document = _turn.next_document(plan, result, None)
    setattr(instance, spec.context_attr, document)
    setattr(instance, spec.revision_attr, 1)
    if spec.status_attr is not None:
        setattr(instance, spec.status_attr, SessionStatus.COMPLETED.value)
        setattr(instance, spec.status_changed_attr or "", _naive_utc(plan.now))
    instance = yield Insert(instance)
    remember(instance, document, result)
    return instance


def continue_flow(
    spec: SessionSpec,
    model: Model,
    key: Any,
    instance: Any,
    input: Any,
    conflict_retries: int,
    where: tuple[Any, ...] = (),
) -> Flow:
    """Reload, call the model with the stored history, and compare-and-swap the result.

    A lost race raises ``StaleSessionError`` after ``conflict_retries`` re-runs. When a
    reload cannot see a newer revision than the one that lost (a caller-owned
    transaction under REPEATABLE READ sees its old snapshot), re-running could never
    succeed, so the error is raised at once.
    """
    agent = spec.agent
    turn_input = _turn.validate_input(agent, input)
    is_count = isinstance(conflict_retries, int) and not isinstance(conflict_retries, bool)
    if not is_count or conflict_retries < 0:
        raise InputValidationError(
            f"conflict_retries must be an int >= 0, got {conflict_retries!r}",
            errors=[],
            source="conflict_retries",
        )
    mode = agent.output_mode(model)  # after validation: may import LiteLLM
    lost_at: int | None = None
    attempt = 0
    while True:
        snap: Snapshot = yield Load(key, instance, where)
        instance = snap.instance
        if lost_at is not None and snap.revision == lost_at:
            raise StaleSessionError(
                f"session {show_key(key)} was changed by another writer, and this transaction "
                "cannot see the newer revision (REPEATABLE READ snapshot); roll back and "
                "retry in a new transaction",
                key=key,
            )
        document = read_document(snap, key)
        _check_not_busy(spec, snap, key)
        plan = _turn.plan_next_turn(document, turn_input)
        revision = snap.revision
        if spec.status_attr is not None:
            claimed = yield Swap(
                instance, key, revision, _status(spec, SessionStatus.RUNNING, revision), where
            )
            if claimed:
                revision += 1
        else:
            claimed = True
        if claimed:
            try:
                result = yield from _turn.model_flow(agent, plan, mode)
                new_document = _turn.next_document(plan, result, document)
                values: dict[str, Any] = {spec.context_attr: new_document}
                if spec.status_attr is not None:
                    values.update(_status(spec, SessionStatus.COMPLETED, revision))
                else:
                    values[spec.revision_attr] = revision + 1
                written = yield Swap(instance, key, revision, values, where)
            except Exception:
                # The model call or the final write failed: with a status column, say
                # so (keeping the previous context) rather than leave it ``running``.
                if spec.status_attr is not None:
                    failed = _status(spec, SessionStatus.FAILED, revision)
                    # The turn's own error is the one to report, not a failed status write.
                    with contextlib.suppress(AgentSessionError):
                        yield Swap(instance, key, revision, failed, where)
                raise
            if written:
                remember(instance, new_document, result)
                return instance
        if attempt >= conflict_retries:
            raise StaleSessionError(
                f"session {show_key(key)} was changed by another writer during this turn "
                f"(revision {snap.revision} is no longer current); nothing was written",
                key=key,
            )
        attempt += 1
        lost_at = snap.revision


def read_flow(
    spec: SessionSpec, key: Any, where: tuple[Any, ...] = ()
) -> Generator[Any, Any, Context]:
    """Load a row and validate its stored context."""
    snap: Snapshot = yield Load(key, None, where)
    return load_context(snap.document, key=key)


def _status(spec: SessionSpec, status: SessionStatus, revision: int) -> dict[str, Any]:
    return {
        spec.status_attr or "": status.value,
        spec.status_changed_attr or "": _naive_utc(utcnow()),
        spec.revision_attr: revision + 1,
    }


def _check_not_busy(spec: SessionSpec, snap: Snapshot, key: Any) -> None:
    if spec.status_attr is None or snap.status != SessionStatus.RUNNING.value:
        return
    since = snap.status_changed_at
    if since is None:
        return
    age = _naive_utc(utcnow()) - _naive_utc(since)
    if age < spec.running_timeout:
        raise SessionBusyError(
            f"session {show_key(key)} is running a turn in another worker "
            f"(for {age.total_seconds():.1f}s; it is taken over after "
            f"{spec.running_timeout.total_seconds():.0f}s)",
            key=key,
        )
