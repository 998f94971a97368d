"""The operations a flow yields, in one place.

A flow is a generator: it yields an operation and is sent its answer. Who answers:

- the stores (``_store``), database operations: ``Load`` (answered with a
  ``Snapshot`` or ``None``), ``Insert`` (``None``), ``Swap`` (whether the
  compare-and-swap won) and ``Query`` (the rows of a read-only statement);
- the drivers, everything else: ``ModelRequest`` (a ``ModelResponse``; defined with
  the model seam in ``llm``, re-exported here), ``RunTools`` (one ``ToolCallResult``
  per call), ``Sleep`` (``None``) and ``HookCall`` (what the user hook returned).

Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from .llm import ModelRequest

if TYPE_CHECKING:
    from .tools import ToolCall

__all__ = [
    "HistoryRead",
    "HookCall",
    "Insert",
    "Load",
    "ModelRequest",
    "Query",
    "RunTools",
    "Sleep",
    "Snapshot",
    "Swap",
]


HistoryRead = (
    int | Literal["after_summary", "path", "all"] | tuple[str, Any, int] | tuple[str, int] | None
)
"""Which history rows a ``Load`` reads with the head: ``None`` none, an int n the
newest n turns of the active path, ``"after_summary"`` the path after the head
summary's anchor, ``"path"`` the whole active path (and the summaries on it),
``"all"`` every row, ``("page", seq, n)`` the newest n turns up to turn ``seq``,
``("row", seq)`` that row alone,
``("from", seq, n)`` the path from n turns before turn ``seq`` to its end."""


@dataclass(frozen=True)
class Load:
    """Read the row of ``key`` and the ``history`` rows with it (``instance``: the one
    this library last wrote, whose document is used when the row is unchanged)."""

    key: Any
    instance: Any = None
    where: tuple[Any, ...] = ()
    """The caller's criteria: a row outside them is not found."""
    history: HistoryRead = None
    """The history rows to read with the head, in the same transaction."""


@dataclass(frozen=True)
class Snapshot:
    """What a load saw: the instance, its stored document (the head), revision and
    status, and the history rows read with it."""

    instance: Any
    document: Any
    revision: int
    status: str | None = None
    status_changed_at: datetime | None = None
    rows: tuple[Any, ...] | None = None
    """``(seq, parent, data)`` of the rows read (``data`` as JSON text)."""
    joined: dict[str, Any] | None = None
    """The joined document this library last wrote on the instance, when the load
    found the row unchanged since (then no row was read)."""


@dataclass(frozen=True)
class Insert:
    """Insert a new row: ``instance``, with its first history rows."""

    instance: Any
    rows: tuple[Any, ...] = ()
    """History rows ``(seq, parent, data)`` inserted with the new row."""
    where: tuple[Any, ...] = ()
    """Criteria the new row must match (else ``InputValidationError``, nothing stored)."""


@dataclass(frozen=True)
class Swap:
    """Write ``values`` to the row of ``key`` only if its revision is still
    ``seen_revision`` (compare-and-swap)."""

    instance: Any
    key: Any
    seen_revision: int
    values: dict[str, Any]
    where: tuple[Any, ...] = ()
    """The caller's criteria: a row outside them is not written (as after a lost race)."""
    rows: tuple[Any, ...] = ()
    """History rows ``(seq, parent, data)`` inserted only when the compare-and-swap won."""
    fresh: bool = False
    """The rows are the first of a document stored as rows for the first time: any row
    left under the key (by a head written back by hand) is deleted before them."""


@dataclass(frozen=True)
class Query:
    """Run a read-only statement (``list_sessions``); answered with its rows."""

    statement: Any


@dataclass(frozen=True)
class RunTools:
    """Run these calls (tools that need no approval, or approved ones); answered with
    one ``ToolCallResult`` per call, in call order.

    The operation carries only the calls: ``deps``, the session key and the agent
    are held by the handler, so nothing that sees operations sees ``deps``.
    """

    calls: tuple[ToolCall, ...]


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` before the flow goes on (a backoff); answered with ``None``.

    A flow never sleeps itself: the sync driver blocks, the async one awaits, so a
    backoff in async code never blocks the event loop.
    """

    seconds: float


@dataclass(frozen=True)
class HookCall:
    """An observer's step: call the user hook ``fn(*args)`` (awaited if it is async)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
