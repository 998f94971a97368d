"""Session flows: start, continue, branch (regenerate, edit, switch, rewind) and read a
stored conversation, without I/O.

Each flow is a generator that yields operations and receives their results:

- ``ModelRequest`` -> ``ModelResponse``: call the model (no connection is needed);
- ``Sleep`` -> ``None``: wait before a failed model call is retried (from ``model_flow``);
- ``RunTools`` -> the calls' results: run tools (the handler holds ``deps``);
- ``Load`` -> ``Snapshot``: read the row (raises ``SessionNotFoundError``);
- ``Insert`` -> the instance: add a new row;
- ``Swap`` -> ``bool``: compare-and-swap on the revision column; ``False`` when
  another writer changed the row first;
- ``Sleep`` -> ``None``: wait before a conflict retry or the next look at a busy row.

The sync and async shells (``_store``) answer these with a ``Session``, an
``AsyncSession`` or a (async) sessionmaker, which decides where transactions
begin and end. All the decisions (what to validate, when a turn is stale, what the
status column says, how to retry) are made here, once.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import random
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from . import _paths, _tree, _turn
from ._idempotency import (
    Idem,
    Replayed,
    approval_parts,
    fingerprint,
    input_parts,
    produced_seq,
    recorded,
    replayed,
    started,
)
from ._idempotency import check as check_key
from ._operations import HistoryRead, Insert, Load, Sleep, Snapshot, Swap
from ._text import encodable
from .context import (
    FROM_VERSION,
    Context,
    Message,
    _is_summary_message,
    _parsed,
    check_joined,
    input_document,
    isoformat,
    joined_document,
    load_context,
    older_form,
    split,
    utcnow,
)
from .errors import (
    AgentSessionError,
    ApprovalPendingError,
    InputValidationError,
    SessionBusyError,
    SessionNotFoundError,
    StaleSessionError,
    StorageError,
    show_key,
)
from .history import BudgetLimits, LastTurns
from .llm import Model

if TYPE_CHECKING:
    from .agent import Agent

__all__ = [
    "WAITS",
    "Branch",
    "Claim",
    "Contention",
    "Insert",
    "Load",
    "SessionSpec",
    "SessionStatus",
    "Snapshot",
    "Swap",
    "Waits",
    "branch_flow",
    "charge_flow",
    "claim_flow",
    "continue_flow",
    "move_flow",
    "read_all_flow",
    "read_flow",
    "resume_session_flow",
    "start_flow",
]


class SessionStatus(enum.StrEnum):
    """Values of the optional status column."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    AWAITING_APPROVAL = "awaiting_approval"


@dataclass(frozen=True)
class Listing:
    """The columns ``list_sessions`` reads, which every turn keeps up to date."""

    title_attr: str
    turns_attr: str
    created_attr: str
    last_turn_attr: str
    keys: tuple[Any, ...]
    """The primary-key columns (the order of sessions with one last turn time)."""


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
    history_table: Any = field(default=None, compare=False, repr=False)
    """The companion table of history rows (``None``: the single-column layout)."""
    listing: Listing | None = field(default=None, compare=False, repr=False)
    """The listing's columns (``None``: the model does not list its sessions)."""

    @property
    def inline(self) -> bool:
        """The single-column layout: the head keeps every row."""
        return self.history_table is None

    @property
    def agent(self) -> Agent[Any]:
        agent: Agent[Any] = self.cls.__agent__
        return agent


_VALID_DOC = "_agent_session_valid_document"
_LAST_RESULT = "_agent_session_last_result"

Flow = Generator[Any, Any, Any]

logger = logging.getLogger("agent_session.flows")


def _naive_utc(moment: datetime) -> datetime:
    """Status timestamps are stored as naive UTC, which every backend keeps as is."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def read_document(snap: Snapshot, key: Any) -> dict[str, Any]:
    """The joined document of what a load read (the head and its rows), validated
    once; a document this library just wrote is trusted."""
    if snap.joined is not None:
        return snap.joined
    joined = joined_document(snap.document, snap.rows, key=key)
    try:
        check_joined(joined)
    except ValidationError:
        # The ContextError that names the problem (the check is never more lenient
        # than ``load_context``; should it be stricter, the document is valid).
        load_context(joined, key=key)
    return joined


def written_marker(instance: Any) -> tuple[Any, Any, Any] | None:
    """What this library last wrote on ``instance``: ``(head, joined document, history
    read)`` (``None`` if nothing)."""
    return getattr(instance, _VALID_DOC, None)


def covers(written: tuple[Any, Any, Any], history: HistoryRead) -> bool:
    """Whether a remembered joined document holds what a load of ``history`` reads."""
    joined = written[1]
    if joined is None:
        return history is None
    if history is None or history == written[2]:
        return True
    return bool(joined.get("loaded", 0) == 0 and history != "all")


def remember(
    instance: Any, head: Any, joined: dict[str, Any] | None, history: HistoryRead, result: Any
) -> None:
    """Mark ``head`` as written (valid) with the joined document it stores, and keep
    the turn's result on the instance. A windowed read's document is not kept (the
    next turn reads its window again: memory stays flat in the history's length)."""
    kept = None if isinstance(history, int) else joined
    object.__setattr__(instance, _VALID_DOC, (head, kept, history))
    object.__setattr__(instance, _LAST_RESULT, result)


def history_read(agent: Agent[Any]) -> HistoryRead:
    """The history rows a turn of ``agent`` reads: with compaction, the path after the
    summary's anchor; with ``LastTurns(n)``, the newest n turns; else the whole path."""
    if agent.compaction is not None:
        return "after_summary"
    window = agent.history
    if isinstance(window, LastTurns):
        return max(window.n, 1)
    return "path"


def _stored(
    spec: SessionSpec, document: dict[str, Any]
) -> tuple[dict[str, Any], tuple[Any, ...], dict[str, Any]]:
    """The head and new rows that store a joined document, and the joined document
    as stored (every message with its id)."""
    head, rows, after = split(document, inline=spec.inline)
    return head, tuple(rows), after


def _head_only(spec: SessionSpec, document: dict[str, Any]) -> dict[str, Any]:
    """What a write that changes only head fields stores: the head (no row is
    written), or a document not stored as rows yet in its own form."""
    if FROM_VERSION in document:
        return older_form(document)
    head, rows, _ = split(document, inline=spec.inline)
    if rows:
        raise AssertionError("a write of head fields found new messages")
    return head


TITLE_CHARS = 80
"""A derived title: the first user message, its whitespace collapsed, cut to this."""


def derived_title(document: Mapping[str, Any]) -> str | None:
    """The title of a conversation the app did not name: its first user message."""
    for message in document.get("messages") or ():
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return " ".join(message["content"].split())[:TITLE_CHARS] or None
    return None


def listing_values(
    spec: SessionSpec,
    document: Mapping[str, Any],
    now: datetime,
    *,
    instance: Any = None,
    first: bool = False,
) -> dict[str, Any]:
    """The listing's columns a turn writes in its compare-and-swap (none when the model
    does not list its sessions): the last turn time and the turn count; on the first
    turn of a conversation, the creation time and the title, unless the app set them."""
    listing = spec.listing
    if listing is None:
        return {}
    values: dict[str, Any] = {
        listing.last_turn_attr: _naive_utc(now),
        listing.turns_attr: int(document.get("turns") or 0),
    }
    if first and instance is not None:
        if getattr(instance, listing.created_attr, None) is None:
            values[listing.created_attr] = _naive_utc(now)
        if getattr(instance, listing.title_attr, None) is None:
            title = derived_title(document)
            if title is not None:
                values[listing.title_attr] = title
    return values


def start_flow(
    spec: SessionSpec,
    model: Model,
    input: Any,
    instruction_args: Any,
    values: Mapping[str, Any],
    *,
    limits: BudgetLimits | None = None,
    agent: Agent[Any] | None = None,
    chosen: Any = None,
) -> Flow:
    """Validate, call the model, then insert the new row with its first context.

    ``agent``: the agent with this call's model and settings (default: the class's).
    ``chosen``: the primary key the client chose (in ``values``): a row with it is
    this start retried when the stored start sent the same input (that session is
    returned, no model call), else ``IdempotencyKeyReusedError``.
    """
    agent = spec.agent if agent is None else agent
    plan = _turn.plan_first_turn(agent, input, instruction_args, limits=limits)
    instance = _new_instance(spec, values, "start_session")
    fp = None
    if chosen is not None:
        # A primary key the client chose: a retried start finds its session.
        fp = fingerprint("start", *input_parts(_turn.validate_input(agent, input)))
        try:
            found: Snapshot | None = yield Load(chosen)
        except SessionNotFoundError:
            found = None
        if found is not None:
            seq = started(found.document, fp, chosen)
            return (yield from replay_flow(spec, agent, chosen, (), seq))
    mode = agent.output_mode(model)  # after validation: may import LiteLLM
    result = yield from _turn.model_flow(agent, plan, mode)
    document = _turn.next_document(plan, result, None)
    document, result = yield from _turn.compaction_flow(agent, plan, document, result)
    head, rows, joined = _stored(spec, document)
    if fp is not None:
        head["started_with"] = joined["started_with"] = [fp, produced_seq(joined)]
    setattr(instance, spec.context_attr, head)
    setattr(instance, spec.revision_attr, 1)
    if spec.status_attr is not None:
        setattr(instance, spec.status_attr, _outcome(result).value)
        setattr(instance, spec.status_changed_attr or "", _naive_utc(plan.now))
    listed = listing_values(spec, document, utcnow(), instance=instance, first=True)
    for name, value in listed.items():
        setattr(instance, name, value)
    try:
        instance = yield Insert(instance, rows)
    except StorageError as exc:
        if fp is None:
            raise
        # The same start, retried while the first one ran: its row came first.
        try:
            found = yield Load(chosen)
        except Exception:
            raise exc from None
        seq = started(found.document if found is not None else None, fp, chosen)
        return (yield from replay_flow(spec, agent, chosen, (), seq))
    remember(instance, head, joined, "path", result)
    return instance


def replay_flow(
    spec: SessionSpec, agent: Agent[Any], key: Any, where: tuple[Any, ...], seq: int | None
) -> Flow:
    """A retried call whose turn is stored: the session, its ``last_result`` rebuilt
    from that turn's row (no model call, nothing written)."""
    history = None if seq is None or spec.inline else ("row", seq)
    snap: Snapshot = yield Load(key, None, where, history)
    result = None if seq is None else replayed(agent, snap.document, snap.rows, seq)
    if result is not None:
        remember(snap.instance, snap.document, None, None, result)
    return snap.instance


def _replay_if_stored(
    spec: SessionSpec, agent: Agent[Any], key: Any, where: tuple[Any, ...], idem: Idem | None
) -> Flow:
    """After a lost write: the session answered from the winner's turn when the winner
    was this call's retry (it holds this call's key); else ``None``."""
    if idem is None:
        return None
    snap: Snapshot = yield Load(key, None, where)
    try:
        check_key(snap.document if isinstance(snap.document, Mapping) else None, idem, key)
    except Replayed as replay:
        return (yield from replay_flow(spec, agent, key, where, replay.seq))
    return None


def _record_key(
    idem: Idem | None, values: dict[str, Any], joined: dict[str, Any], attr: str
) -> None:
    """This call's key into the head its turn writes (the same compare-and-swap)."""
    if idem is not None:
        head = values[attr]
        head["keys"] = joined["keys"] = recorded(head, idem, produced_seq(joined))


def _new_instance(spec: SessionSpec, values: Mapping[str, Any], call: str) -> Any:
    """A new row of ``spec.cls`` with the caller's column values (checked first)."""
    reserved = {spec.context_attr, spec.revision_attr, spec.status_attr, spec.status_changed_attr}
    clash = {name for name in reserved if name is not None and name in values}
    if clash:
        raise InputValidationError(
            f"{spec.cls.__name__}.{call}: {sorted(clash)} are managed by the library",
            errors=[],
            source="values",
        )
    unencodable = sorted(k for k, v in values.items() if isinstance(v, str) and not encodable(v))
    if unencodable:
        raise InputValidationError(
            f"{spec.cls.__name__}.{call}: {unencodable} hold a character that cannot "
            "be encoded as UTF-8 (a lone surrogate)",
            errors=[],
            source="values",
        )
    try:
        return spec.cls(**values)
    except TypeError as exc:
        raise InputValidationError(
            f"{spec.cls.__name__}.{call}: bad column values: {exc}",
            errors=[],
            source="values",
        ) from exc


def import_flow(
    spec: SessionSpec,
    messages: Any,
    instruction_args: Any,
    values: Mapping[str, Any],
    where: tuple[Any, ...] = (),
) -> Flow:
    """Validate an existing conversation and insert it as a new session (no model call).

    ``where``: criteria the new row must match (checked in the insert's transaction;
    a row outside them is an ``InputValidationError`` and nothing is stored)."""
    from ._import import imported_document

    agent = spec.agent
    instructions = _turn.validate_instructions(agent, instruction_args)
    now = utcnow()
    document = imported_document(agent, messages, instructions, now)
    instance = _new_instance(spec, values, "import_session")
    head, rows, _ = split(document, inline=spec.inline)
    for name, value in listing_values(spec, document, now, instance=instance, first=True).items():
        setattr(instance, name, value)
    del document
    setattr(instance, spec.context_attr, head)
    setattr(instance, spec.revision_attr, 1)
    if spec.status_attr is not None:
        setattr(instance, spec.status_attr, SessionStatus.COMPLETED.value)
        setattr(instance, spec.status_changed_attr or "", _naive_utc(now))
    instance = yield Insert(instance, tuple(rows), where)
    return instance


def messages_flow(
    spec: SessionSpec, key: Any, where: tuple[Any, ...], before: Any, limit: Any
) -> Generator[Any, Any, list[Message]]:
    """A page of the active path's messages: the ``limit`` newest before message id
    ``before`` (``None``: the newest), oldest first; reads only the rows of the page."""
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise InputValidationError(
            f"limit must be an int >= 0, got {limit!r}", errors=[], source="limit"
        )
    upto: tuple[int, int] | None = None
    if before is not None:
        upto = _message_id(before)
    if limit == 0:
        return []
    # A row holds one message at least: ``limit`` turns always hold the page.
    page = ("page", None if upto is None else upto[0], limit)
    snap: Snapshot = yield Load(key, None, where, None if spec.inline else page)
    joined = joined_document(snap.document, snap.rows, key=key)
    # The conversation's messages: neither the instruction nor summaries.
    messages = [m for m in joined.get("messages") or () if m.get("role") != "system"]
    if upto is not None:
        messages = [m for m in messages if m.get("id") and _before(m["id"], upto)]
    chosen = messages[-limit:]
    try:
        return [Message.model_validate(m) for m in _expand(joined, chosen)]
    except ValidationError as exc:
        load_context(joined, key=key)  # the ContextError that names the problem
        raise AssertionError("unreachable") from exc


def _expand(joined: dict[str, Any], messages: list[dict[str, Any]]) -> list[Any]:
    from .context import _expand_messages

    # Messages without ``created_at`` were created with the one before: a page's
    # first such message takes the time of its turn's user message.
    created: dict[str, Any] = {}
    for message in joined.get("messages") or ():
        ident = message.get("id") or ""
        at = (message.get("meta") or {}).get("created_at")
        if at is not None:
            created[ident.split(".", 1)[0]] = at
    expanded = []
    for message in messages:
        seq = (message.get("id") or "").split(".", 1)[0]
        expanded.extend(_expand_messages([message], created.get(seq, joined.get("created_at"))))
    return expanded


def _message_id(value: Any) -> tuple[int, int]:
    found = _tree.parse_id(value)
    if found is None:
        raise InputValidationError(
            f'before must be a message id such as "12.0", got {value!r}',
            errors=[],
            source="before",
        )
    return found


def _before(ident: str, upto: tuple[int, int]) -> bool:
    found = _tree.parse_id(ident)
    return found is not None and found < upto


def continue_flow(
    spec: SessionSpec,
    model: Model,
    key: Any,
    instance: Any,
    input: Any,
    conflict_retries: int,
    *,
    busy_timeout: float | None = None,
    waits: Waits | None = None,
    where: tuple[Any, ...] = (),
    limits: BudgetLimits | None = None,
    instruction_args: Any = None,
    agent: Agent[Any] | None = None,
    branch: Branch | None = None,
    idempotency_key: str | None = None,
) -> Flow:
    """Claim the row, call the model with the stored history, and compare-and-swap the result.

    ``claim_flow`` loads the row (waiting, within ``busy_timeout``, while another
    worker's turn is ``running``). A final write that loses the race is re-run on the
    newer history up to ``conflict_retries`` times, each after a jittered backoff; then
    ``StaleSessionError``. A row with no conversation yet (NULL context, revision 0)
    gets its first turn, the instruction rendered from ``instruction_args``, without a
    claim; on a row with one, ``instruction_args`` replace the stored ones from this
    turn on. Otherwise the system message is rendered from the agent's current
    instruction and the stored arguments (``_turn.current_instructions``).

    ``branch`` (regenerate, edit): the turn runs on the history it cuts from the
    stored one, with the input it gives (``input`` is then ``None``), and its row
    hangs from the cut path's last turn.
    """
    agent = spec.agent if agent is None else agent
    turn_input = None if branch is not None else _turn.validate_input(agent, input)
    given = (
        None if instruction_args is None else _turn.validate_instructions(agent, instruction_args)
    )
    contention = Contention.start(key, conflict_retries, busy_timeout, waits)
    mode = agent.output_mode(model)  # after validation: may import LiteLLM
    budget = _turn.session_budget(agent, limits)
    plan_turn = _next_turn(agent, key, turn_input, given, limits, branch)
    history = history_read(agent) if branch is None else branch.history(agent)
    idem = None
    if idempotency_key is not None:
        what = input_parts(turn_input) if branch is None else branch.parts()
        idem = Idem(idempotency_key, fingerprint(branch.verb if branch else "continue", *what))

    def check(document: dict[str, Any] | None) -> Planned:
        check_key(document, idem, key)  # before any other refusal: a retry is answered
        return plan_turn(document)

    while True:
        try:
            claim = yield from claim_flow(
                spec,
                key,
                instance,
                contention,
                where,
                check=check,
                # a key claims the session, so that its retry waits rather than runs
                mark=budget is not None or idem is not None,
                history=history,
            )
        except Replayed as replay:
            return (yield from replay_flow(spec, agent, key, where, replay.seq))
        instance = claim.instance
        plan: _turn.TurnPlan
        plan, base, first_rows = claim.prepared
        revision = claim.revision
        try:
            result = yield from _turn.model_flow(agent, plan, mode)
            new_document = _turn.next_document(plan, result, base)
            # A summary, if one is due, goes into the same compare-and-swap as the turn.
            new_document, result = yield from _turn.compaction_flow(
                agent, plan, new_document, result
            )
            values, rows, joined = _write(spec, new_document, _outcome(result), revision)
            values.update(
                listing_values(
                    spec, new_document, utcnow(), instance=instance, first=claim.document is None
                )
            )
            _record_key(idem, values, joined, spec.context_attr)
            # The first rows of this conversation replace any left under the key; a
            # document stored as rows for the first time (``first_rows``: by a branch).
            fresh = claim.document is None or FROM_VERSION in new_document or bool(first_rows)
            rows = (*first_rows, *rows)
            written = yield Swap(instance, key, revision, values, where, rows, fresh)
        except Exception:
            # The model call or the final write failed: with a status column, say
            # so (keeping the previous context) rather than leave it ``running``;
            # without one, take back this turn's claim, if it made one.
            back = None
            if spec.status_attr is not None and claim.document is not None:
                back = _status(spec, SessionStatus.FAILED, revision)
            elif claim.marker is not None:
                back = _unclaimed(spec, claim.snapshot)
            if back is not None:
                # The turn's own error is the one to report, not a failed status write.
                with contextlib.suppress(AgentSessionError):
                    yield Swap(instance, key, revision, back, where)
            raise
        if written:
            remember(instance, values[spec.context_attr], joined, history, result)
            return instance
        if budget is not None:
            # The calls were paid for: their usage counts against the budget.
            yield from charge_flow(spec, key, instance, where, result, claim.marker)
        answered = yield from _replay_if_stored(spec, agent, key, where, idem)
        if answered is not None:
            return answered
        yield from contention.lost(revision, claim=False)


Planned = tuple[_turn.TurnPlan, dict[str, Any] | None, tuple[Any, ...]]
"""A turn's plan, the document it goes on from, and rows to store before its own."""


def _next_turn(
    agent: Agent[Any],
    key: Any,
    turn_input: _turn.TurnInput | None,
    given: _turn.Instructions | None,
    limits: BudgetLimits | None,
    branch: Branch | None = None,
) -> Callable[[dict[str, Any] | None], Planned]:
    """Plan the turn on the stored document, before the row is claimed: a refusal
    (a paused session, missing instruction arguments, a spent budget, a message id
    ``branch`` refuses) leaves the row untouched. The plan comes with the document the
    turn goes on from (the stored one, or the history ``branch`` cut), and the rows
    that store a document of an earlier version before a branch cuts it."""
    paused = _not_paused(key)

    def plan(
        document: dict[str, Any] | None,
    ) -> Planned:
        if document is None and branch is not None:
            raise branch.nothing(key)
        first_rows: tuple[Any, ...] = ()
        if document is None:  # no conversation on this row yet: this turn starts it
            assert turn_input is not None
            planned = _turn.plan_first_turn(agent, turn_input, given, limits=limits)
        else:
            paused(document)
            this_input = turn_input
            if branch is not None:
                document, this_input, first_rows = branch.cut(agent, document, key)
            assert this_input is not None
            if given is not None:
                document = _turn.with_instructions(agent, document, given)
            else:
                document = _turn.current_instructions(agent, document, session=_session(key))
            planned = _turn.plan_next_turn(document, this_input, limits=limits)
        _turn.check_first_call_budget(agent, planned)
        return planned, document, first_rows

    return plan


CHARGE_ATTEMPTS = 5
"""Writes tried to add a lost turn's usage to the session's totals (each on a new load)."""


def charge_flow(
    spec: SessionSpec,
    key: Any,
    instance: Any,
    where: tuple[Any, ...],
    result: Any,
    marker: str | None,
) -> Flow:
    """Add the usage and cost of a turn whose write lost the race to the stored totals.

    Its model calls were paid for, so with a session budget they count although the
    turn is not stored: a write of the totals alone (the document as stored, its
    ``usage`` and ``cost`` raised, this turn's claim ``marker`` removed) under the
    compare-and-swap, tried again on a new load when it loses too. Each try also
    ends another turn's write that expected the older revision (that turn was taken
    over or ignored the claim): it is charged and re-run in turn.
    """
    for _ in range(CHARGE_ATTEMPTS):
        snap: Snapshot = yield Load(key, instance, where)
        instance = snap.instance
        document = _turn.charged_document(read_document(snap, key), result.usage, result.cost)
        if marker is not None and document.get("claimed_at") == marker:
            del document["claimed_at"]
        values = {
            spec.context_attr: _head_only(spec, document),
            spec.revision_attr: snap.revision + 1,
        }
        if (yield Swap(instance, key, snap.revision, values, where)):
            return
    logger.warning(
        "the usage of a turn of session %s that lost its write could not be added to the "
        "session's totals after %d tries",
        show_key(key),
        CHARGE_ATTEMPTS,
    )


def _unclaimed(spec: SessionSpec, seen: Snapshot) -> dict[str, Any]:
    """The values that put back the row as the claim found it, revision included: the
    row is then exactly what it was, so a refused or failed turn leaves nothing behind
    (a writer that read it before the claim may still write over it, rightly)."""
    return {spec.context_attr: seen.document, spec.revision_attr: seen.revision}


def _outcome(result: Any) -> SessionStatus:
    return SessionStatus.AWAITING_APPROVAL if result.pending_approvals else SessionStatus.COMPLETED


def _not_paused(key: Any) -> Callable[[dict[str, Any]], None]:
    def check(document: dict[str, Any]) -> None:
        pending = document.get("pending")
        if pending is not None:
            ids = [a["tool_call_id"] for a in pending["approvals"]]
            raise ApprovalPendingError(
                f"session {show_key(key)} waits for approvals of {ids}: resume it "
                "(resume_session) before continuing; nothing was run",
                key=key,
                pending=load_context(document, key=key).pending_approvals,
            )

    return check


def resume_session_flow(
    spec: SessionSpec,
    model: Model,
    key: Any,
    instance: Any,
    approvals: Any,
    conflict_retries: int,
    *,
    busy_timeout: float | None = None,
    waits: Waits | None = None,
    where: tuple[Any, ...] = (),
    limits: BudgetLimits | None = None,
    instruction_args: Any = None,
    agent: Agent[Any] | None = None,
    idempotency_key: str | None = None,
) -> Flow:
    """Claim a paused turn, run the approved calls, and go on to the end or the next pause.

    The claim is a compare-and-swap that marks the pause taken (``claimed_at`` in the
    pending part, and ``running`` with a status column) before any tool runs: of two
    resumes of one pause, the second finds it taken, or loses the swap, and gets
    ``StaleSessionError``. A resume that fails puts the pause back as it was. The
    system message is rendered as in ``continue_flow`` (``instruction_args`` replace
    the stored ones).
    """
    agent = spec.agent if agent is None else agent
    given = (
        None if instruction_args is None else _turn.validate_instructions(agent, instruction_args)
    )
    contention = Contention.start(key, conflict_retries, busy_timeout, waits)
    mode = agent.output_mode(model)

    def plan_resumed(document: dict[str, Any]) -> _turn.TurnPlan:
        if given is not None:
            document = _turn.with_instructions(agent, document, given)
        else:
            document = _turn.current_instructions(agent, document, session=_session(key))
        turn_input = _input_of(agent, document, key)
        return _turn.plan_resumed_turn(document, turn_input, limits=limits)

    def check(document: dict[str, Any]) -> None:
        _turn.check_first_call_budget(agent, plan_resumed(document), document["pending"])

    history = history_read(agent)
    idem = None
    if idempotency_key is not None:
        idem = Idem(idempotency_key, fingerprint("resume", *approval_parts(approvals)))
    while True:
        try:
            claim = yield from claim_pause_flow(
                spec,
                key,
                instance,
                contention,
                where,
                approvals,
                check=check,
                history=history,
                idem=idem,
            )
        except Replayed as replay:
            return (yield from replay_flow(spec, agent, key, where, replay.seq))
        instance = claim.instance
        paused = claim.document
        assert paused is not None  # a pause is stored in a document
        revision = claim.revision
        try:
            decided = _turn.check_approvals(paused["pending"], approvals, name=_session(key))
            plan = plan_resumed(paused)
            result = yield from _turn.resumed_turn_flow(
                agent, plan, paused["pending"], decided, mode
            )
            new_document = _turn.next_document(plan, result, paused)
            new_document, result = yield from _turn.compaction_flow(
                agent, plan, new_document, result
            )
            values, rows, joined = _write(spec, new_document, _outcome(result), revision)
            values.update(listing_values(spec, new_document, utcnow()))
            _record_key(idem, values, joined, spec.context_attr)
            fresh = FROM_VERSION in new_document
            written = yield Swap(instance, key, revision, values, where, rows, fresh)
        except Exception:
            # Put the pause back, unclaimed, so that it can be resumed again.
            back, _, _ = _write(spec, paused, SessionStatus.AWAITING_APPROVAL, revision, rows=False)
            with contextlib.suppress(AgentSessionError):
                yield Swap(instance, key, revision, back, where)
            raise
        if written:
            remember(instance, values[spec.context_attr], joined, history, result)
            return instance
        answered = yield from _replay_if_stored(spec, agent, key, where, idem)
        if answered is not None:
            return answered
        yield from contention.lost(revision, claim=False)


def _session(key: Any) -> str:
    return f"session {show_key(key)}"


def _input_of(agent: Agent[Any], document: dict[str, Any], key: Any) -> Any:
    """The paused turn's input, read back from its stored user message."""
    message = Message.model_validate(document["pending"]["messages"][0])
    try:
        return message.parse_input(agent)
    except Exception as exc:
        raise InputValidationError(
            f"the paused turn of {_session(key)} has an input the agent no longer accepts: {exc}",
            errors=[],
            source="input",
        ) from exc


def _decided_before(document: dict[str, Any], approvals: Any) -> bool:
    """Whether every id in ``approvals`` is a call already answered in the history."""
    if not isinstance(approvals, Mapping) or not approvals:
        return False
    answered = {
        m.get("tool_call_id") for m in document.get("messages", ()) if m.get("role") == "tool"
    }
    return all(key in answered for key in approvals)


def claim_pause_flow(
    spec: SessionSpec,
    key: Any,
    instance: Any,
    contention: Contention,
    where: tuple[Any, ...],
    approvals: Any,
    *,
    check: Callable[[dict[str, Any]], None] | None = None,
    history: HistoryRead = "path",
    idem: Idem | None = None,
) -> Generator[Any, Any, Claim]:
    """Load the row and claim its paused turn for this call, before anything runs.

    Decisions that do not match the pending calls are refused before the claim, and
    so is what ``check`` refuses (a spent budget). A
    pause that another resume has claimed (less than ``__running_timeout__`` ago) is
    waited for within ``busy_timeout``, then ``StaleSessionError``; a pause gone
    because another resume finished it is ``StaleSessionError`` too.
    """
    while True:
        snap: Snapshot = yield Load(key, instance, where, history)
        instance = snap.instance
        contention.check_visible(snap)
        document = read_document(snap, key)
        check_key(document, idem, key)  # a retry is answered before any other refusal
        pending = document.get("pending")
        if pending is None and _decided_before(document, approvals):
            raise StaleSessionError(
                f"{_session(key)}: these calls were already decided by another resume; "
                "nothing was run",
                key=key,
            )
        _turn.check_approvals(pending, approvals, name=_session(key))
        assert pending is not None
        if check is not None:
            check(document)
        age = _claimed_for(spec, pending)
        if age is not None:
            yield from contention.wait_busy(spec, age, taken=True)
            continue
        now = utcnow()
        claimed = {**document, "pending": {**pending, "claimed_at": isoformat(now)}}
        values, _, _ = _write(spec, claimed, SessionStatus.RUNNING, snap.revision, rows=False)
        if (yield Swap(instance, key, snap.revision, values, where)):
            unclaimed = Snapshot(instance, document, snap.revision, snap.status)
            return Claim(unclaimed, document, snap.revision + 1)
        yield from contention.lost(snap.revision, claim=True)


def _claimed_for(spec: SessionSpec, pending: Mapping[str, Any]) -> timedelta | None:
    """How long ago another resume claimed this pause, if that claim still holds."""
    raw = pending.get("claimed_at")
    if raw is None:
        return None
    since = datetime.fromisoformat(raw.replace("Z", "+00:00")) if isinstance(raw, str) else raw
    age = utcnow() - since
    return age if age < spec.running_timeout else None


# -- waiting for other writers ------------------------------------------------------


@dataclass(frozen=True)
class Waits:
    """How long a flow waits before a conflict retry or before it looks at a busy row again.

    Both are exponential backoff with full jitter: the ``n``-th delay (``n`` from 0)
    is drawn uniformly from ``[0, min(cap, base * 2**n)]``. Clients that lost the same
    race spread over the whole window instead of coming back together and racing
    again, which is what an immediate retry does.

    - Conflict retries (0.05 s doubling, at most 2 s): the first retry comes soon
      (two clients is the common race, and the loser only needs the newer history);
      the window reaches its cap at the seventh retry, and 2 s bounds what one retry adds
      to a turn a person may be waiting for.
    - Busy polls (0.05 s doubling, at most 0.5 s): a waiter looks at the running row
      again within half a second (a quarter on average), so it starts soon after the
      other turn ends, and 20 waiters cost some 80 reads a second.

    ``rng`` and ``clock`` are here so that tests can seed the jitter and control time;
    a ``retry_cap`` of 0 turns the conflict backoff off (no ``Sleep`` at all).
    """

    retry_base: float = 0.05
    retry_cap: float = 2.0
    poll_base: float = 0.05
    poll_cap: float = 0.5
    rng: random.Random = field(default_factory=random.Random, compare=False)
    clock: Callable[[], float] = time.monotonic

    def retry_delay(self, retry: int) -> float:
        """The wait before conflict retry ``retry`` (0 for the first)."""
        return self._jittered(self.retry_base, self.retry_cap, retry)

    def poll_delay(self, poll: int) -> float:
        """The wait before look ``poll + 1`` at a row another worker is running."""
        return self._jittered(self.poll_base, self.poll_cap, poll)

    def _jittered(self, base: float, cap: float, n: int) -> float:
        ceiling = min(cap, base * 2.0 ** min(n, 64))
        return self.rng.uniform(0.0, ceiling) if ceiling > 0 else 0.0


WAITS = Waits()
"""The waits every flow uses unless it is given others (tests seed ``WAITS.rng``)."""


@dataclass
class Contention:
    """What one call may still spend on other writers: conflict retries and time to wait.

    Made once per call, before any query (it validates ``conflict_retries`` and
    ``busy_timeout``), and handed to every ``claim_flow`` of that call, so the retry
    count, the busy deadline and the backoff carry over from one attempt to the next.
    """

    key: Any
    conflict_retries: int
    busy_timeout: float | None
    waits: Waits
    deadline: float
    retries: int = 0
    polls: int = 0
    lost_at: int | None = None
    """The revision the last lost compare-and-swap expected."""

    @classmethod
    def start(
        cls, key: Any, conflict_retries: int, busy_timeout: float | None, waits: Waits | None
    ) -> Contention:
        is_count = isinstance(conflict_retries, int) and not isinstance(conflict_retries, bool)
        if not is_count or conflict_retries < 0:
            raise InputValidationError(
                f"conflict_retries must be an int >= 0, got {conflict_retries!r}",
                errors=[],
                source="conflict_retries",
            )
        if busy_timeout is not None and not (
            isinstance(busy_timeout, int | float)
            and not isinstance(busy_timeout, bool)
            and busy_timeout >= 0  # also refuses NaN
        ):
            raise InputValidationError(
                f"busy_timeout must be None or a number of seconds >= 0, got {busy_timeout!r}",
                errors=[],
                source="busy_timeout",
            )
        waits = WAITS if waits is None else waits
        deadline = 0.0 if busy_timeout is None else waits.clock() + busy_timeout
        return cls(key, conflict_retries, busy_timeout, waits, deadline)

    def check_visible(self, snap: Snapshot) -> None:
        """After a lost race, a reload that still shows the revision that lost cannot
        see the winner (a caller-owned transaction under REPEATABLE READ sees its old
        snapshot): re-running could never succeed."""
        if self.lost_at is not None and snap.revision == self.lost_at:
            raise StaleSessionError(
                f"session {show_key(self.key)} was changed by another writer, and this transaction "
                "cannot see the newer revision (REPEATABLE READ snapshot); roll back and "
                "retry in a new transaction",
                key=self.key,
            )

    def wait_busy(
        self, spec: SessionSpec, age: timedelta, *, taken: bool = False
    ) -> Generator[Sleep, None, None]:
        """Another worker's turn is running: sleep a poll's delay, or raise when out of time.

        ``taken``: the running turn is another resume of the pause this call resumes;
        out of time, that is a ``StaleSessionError`` (the pause is that worker's).
        """
        remaining = 0.0 if self.busy_timeout is None else self.deadline - self.waits.clock()
        if remaining <= 0 and taken:
            raise StaleSessionError(
                f"session {show_key(self.key)}: another worker claimed this pause "
                f"{age.total_seconds():.1f}s ago and is resuming it; nothing was run",
                key=self.key,
            )
        if remaining <= 0:
            waited = (
                "" if self.busy_timeout is None else f"; still running after {self.busy_timeout}s"
            )
            raise SessionBusyError(
                f"session {show_key(self.key)} is running a turn in another worker (for "
                f"{age.total_seconds():.1f}s; it is taken over after "
                f"{spec.running_timeout.total_seconds():.0f}s){waited}",
                key=self.key,
            )
        delay = min(self.waits.poll_delay(self.polls), remaining)
        self.polls += 1
        yield Sleep(delay)

    def lost(self, revision: int, *, claim: bool) -> Generator[Sleep, None, None]:
        """A compare-and-swap expecting ``revision`` lost: go on (after a backoff) or raise.

        A lost claim spent no model call; with ``busy_timeout`` it is not a conflict
        but a turn to wait for, so the caller reloads at once and no retry is counted
        (within the deadline: after it, the winner's turn is one more busy turn).
        Anything else spends one of ``conflict_retries``.
        """
        self.lost_at = revision
        if claim and self.busy_timeout is not None:
            if self.waits.clock() >= self.deadline:
                raise SessionBusyError(
                    f"session {show_key(self.key)} was claimed by another worker, which is running "
                    f"a turn; still running after {self.busy_timeout}s",
                    key=self.key,
                )
            return
        if self.retries >= self.conflict_retries:
            raise StaleSessionError(
                f"session {show_key(self.key)} was changed by another writer during this turn "
                f"(revision {revision} is no longer current); nothing was written",
                key=self.key,
            )
        delay = self.waits.retry_delay(self.retries)
        self.retries += 1
        if delay > 0:
            yield Sleep(delay)


@dataclass(frozen=True)
class Claim:
    """A row this call may run a turn on."""

    snapshot: Snapshot
    """What the load saw (before this call's ``running`` claim)."""
    document: dict[str, Any] | None
    """The stored document, validated (upgraded to the current version); ``None`` on
    a row with no conversation yet."""
    revision: int
    """The revision the turn's write must expect: after the claim, if there was one."""
    prepared: Any = None
    """What ``claim_flow``'s ``check`` returned for the document (the turn's plan)."""
    marker: str | None = None
    """The ``claimed_at`` this call wrote into the document (a claim without a status
    column), else ``None``."""

    @property
    def instance(self) -> Any:
        return self.snapshot.instance


def claim_flow(
    spec: SessionSpec,
    key: Any,
    instance: Any,
    contention: Contention,
    where: tuple[Any, ...] = (),
    *,
    check: Callable[[dict[str, Any] | None], Any] | None = None,
    mark: bool = False,
    history: HistoryRead = "path",
) -> Generator[Any, Any, Claim]:
    """Load the row and make its next turn this call's.

    ``check`` sees the stored document (``None`` on a row with no conversation yet)
    before the claim and may refuse it (a session paused for approvals is not
    continued, a spent budget refuses the turn); what it returns is the claim's
    ``prepared``. ``mark``: without a status column, claim the session with a
    ``claimed_at`` in its document (a turn under a session budget).

    With a status column: while another worker's turn is ``running`` (and younger
    than ``__running_timeout__``), wait within ``busy_timeout`` and load again; then
    claim the row (``running``, a compare-and-swap on the revision). A lost claim
    costs no model call: the row is reloaded and, with ``busy_timeout``, waited for.
    Without a status column, ``mark`` (a session budget is set) claims the row the
    same way with a ``claimed_at`` in the document, so that concurrent turns cannot
    together spend past the budget. Otherwise nothing can be seen running: the load
    is the claim, and only conflict retries (with their backoff) help against
    concurrent turns.
    """
    while True:
        snap: Snapshot = yield Load(key, instance, where, history)
        instance = snap.instance
        contention.check_visible(snap)
        age = _running_for(spec, snap)
        if age is not None:
            yield from contention.wait_busy(spec, age)
            continue
        document = None if _no_conversation(snap) else read_document(snap, key)
        prepared = None if check is None else check(document)
        if document is None:
            # Nothing to claim on a row with no conversation: its first turn is
            # decided by the final compare-and-swap, and a failure writes nothing.
            return Claim(snap, document, snap.revision, prepared)
        marker = None
        if spec.status_attr is not None:
            values = _status(spec, SessionStatus.RUNNING, snap.revision)
        elif mark:
            marker = isoformat(utcnow())
            claimed = {**document, "claimed_at": marker}
            values = {
                spec.context_attr: _head_only(spec, claimed),
                spec.revision_attr: snap.revision + 1,
            }
        else:
            return Claim(snap, document, snap.revision, prepared)
        if (yield Swap(instance, key, snap.revision, values, where)):
            return Claim(snap, document, snap.revision + 1, prepared, marker)
        yield from contention.lost(snap.revision, claim=True)


def _no_conversation(snap: Snapshot) -> bool:
    """A row that never had a conversation: NULL context, revision 0 (as the migration
    that added the columns left it). A context set to NULL later is a ``ContextError``."""
    return snap.document is None and snap.revision == 0


def read_flow(
    spec: SessionSpec, key: Any, where: tuple[Any, ...] = (), *, path: Any = "active"
) -> Generator[Any, Any, Context]:
    """Load a row and its whole active path (``path="all"``: every row, see
    ``read_all_flow``), and validate its stored context."""
    if path == "all":
        return (yield from read_all_flow(spec, key, where))
    if path != "active":
        raise InputValidationError(
            f'path must be "active" or "all", got {path!r}', errors=[], source="path"
        )
    snap: Snapshot = yield Load(key, None, where, "path")
    return load_context(snap.document, key=key, rows=snap.rows)


def _write(
    spec: SessionSpec,
    document: dict[str, Any],
    status: SessionStatus,
    revision: int,
    *,
    rows: bool = True,
) -> tuple[dict[str, Any], tuple[Any, ...], dict[str, Any]]:
    """The values that store ``document`` over ``revision`` (its head, the next
    revision, and ``status`` when there is a status column), the new history rows,
    and the joined document as stored. ``rows=False``: a write of head fields only."""
    if rows:
        head, new_rows, joined = _stored(spec, document)
    else:
        head, new_rows, joined = _head_only(spec, document), (), document
    values: dict[str, Any] = {spec.context_attr: head}
    if spec.status_attr is not None:
        values.update(_status(spec, status, revision))
    else:
        values[spec.revision_attr] = revision + 1
    return values, new_rows, joined


def _status(spec: SessionSpec, status: SessionStatus, revision: int) -> dict[str, Any]:
    return {
        spec.status_attr or "": status.value,
        spec.status_changed_attr or "": _naive_utc(utcnow()),
        spec.revision_attr: revision + 1,
    }


def _running_for(spec: SessionSpec, snap: Snapshot) -> timedelta | None:
    """How long another worker's turn has been running, if it still blocks this one."""
    if spec.status_attr is None:
        document = snap.document
        return _claimed_for(spec, document) if isinstance(document, Mapping) else None
    if snap.status != SessionStatus.RUNNING.value:
        return None
    since = snap.status_changed_at
    if since is None:
        return None
    age = _naive_utc(utcnow()) - _naive_utc(since)
    return age if age < spec.running_timeout else None


# -- the tree of turns: regenerate, edit, switch, rewind ----------------------------


@dataclass(frozen=True)
class Branch:
    """Where a regenerated or edited turn goes: ``continue_flow`` runs it on the
    history ``cut`` gives, and its row hangs from that history's last turn (the old
    turn stays stored, a sibling of the new one).

    ``message_id`` ``None``: regenerate the newest turn (its stored input again);
    else edit that user message (``turn_input`` in its place).
    """

    message_id: str | None = None
    turn_input: _turn.TurnInput | None = None
    inline: bool = False
    """The single-column layout (``SessionSpec.inline``)."""

    @property
    def verb(self) -> str:
        return "regenerate" if self.message_id is None else "edit"

    def history(self, agent: Agent[Any]) -> HistoryRead:
        """The rows to read. Under ``LastTurns(n)`` (no compaction): for a regenerate
        the newest n + 1 turns (the newest is cut), for an edit the path from n turns
        before the edited one. Else the whole path (a summary may cover cut turns)."""
        window = agent.history
        if agent.compaction is not None or not isinstance(window, LastTurns):
            return "path"
        if self.message_id is None:
            return max(window.n, 1) + 1
        parsed = _tree.parse_id(self.message_id)
        return "path" if parsed is None else ("from", parsed[0], max(window.n, 1))

    def parts(self) -> list[Any]:
        """What an idempotency key's fingerprint holds of this branch."""
        if self.turn_input is None:
            return [self.message_id]
        return [self.message_id, *input_parts(self.turn_input)]

    def nothing(self, key: Any) -> InputValidationError:
        return InputValidationError(
            f"{_session(key)} has no stored turn to {self.verb}; nothing was run",
            errors=[],
            source="message_id" if self.message_id is not None else "session",
        )

    def cut(
        self, agent: Agent[Any], document: dict[str, Any], key: Any
    ) -> tuple[dict[str, Any], _turn.TurnInput, tuple[Any, ...]]:
        """The history the turn runs on, its input, and the rows that store a document
        of an earlier version (not stored as rows yet: its turns get their rows first,
        so that the cut one stays stored); refuses an id that is not a user message of
        the active path."""
        first_rows: tuple[Any, ...] = ()
        if FROM_VERSION in document:
            _, rows, document = split(document, inline=self.inline)
            first_rows = tuple(rows)
        path = list(_paths.seqs(document.get("path") or ()))
        messages: list[dict[str, Any]] = document["messages"]
        if self.message_id is None:
            if not path:
                raise self.nothing(key)
            seq = path[-1]
            at = _position(messages, _tree.message_id(seq, 0))
            if at is None or messages[at].get("role") != "user":
                # (the window reads the newest turn; a conversation imported from an
                # older version may start with a turn of its own without a user message)
                raise self.nothing(key)
            turn_input = _turn.validate_input(agent, _stored_input(agent, messages[at], key))
            return _cut(document, at, _tree.regenerate_base(path)), turn_input, first_rows
        seq, index, at = _on_path(document, path, self.message_id, key, verb="edit")
        message = messages[at]
        if index != 0 or message.get("role") != "user":
            raise InputValidationError(
                f"{self.message_id!r} is {_a(message.get('role'))} message of {_session(key)}: "
                "only a user message can be edited; nothing was run",
                errors=[],
                source="message_id",
            )
        assert self.turn_input is not None
        return _cut(document, at, _tree.edit_base(path, seq)), self.turn_input, first_rows


def _a(role: Any) -> str:
    return f"an {role}" if role == "assistant" else f"a {role}"


def _position(messages: list[dict[str, Any]], message_id: str) -> int | None:
    """Where the message ``message_id`` is in ``messages`` (newest first: edits and
    regenerates are mostly near the end)."""
    for at in range(len(messages) - 1, -1, -1):
        if messages[at].get("id") == message_id:
            return at
    return None


def _on_path(
    document: dict[str, Any], path: list[int], message_id: Any, key: Any, *, verb: str
) -> tuple[int, int, int]:
    """``(seq, index, position in messages)`` of a message of the active path;
    ``InputValidationError`` for anything else."""
    parsed = _tree.parse_id(message_id)
    if parsed is None:
        raise InputValidationError(
            f'{message_id!r} is not a message id (Message.id: "<turn>.<index>"); nothing was run',
            errors=[],
            source="message_id",
        )
    seq, index = parsed
    at = None
    if (seq == _tree.ROOT and index == 0) or seq in path:
        at = _position(document["messages"], message_id)
    if at is None:
        raise InputValidationError(
            f"{_session(key)} has no message {message_id!r} on its active path (to {verb} "
            "a message of another branch, switch_branch to it first); nothing was run",
            errors=[],
            source="message_id",
        )
    return seq, index, at


def _stored_input(agent: Agent[Any], message: dict[str, Any], key: Any) -> Any:
    """The input a stored user message was sent with."""
    meta = message.get("meta") or {}
    stored = meta.get("input")
    if stored is not None:
        return stored
    content = message.get("content")
    if not isinstance(content, str):
        raise InputValidationError(
            f"the newest user message of {_session(key)} has no text input to send again",
            errors=[],
            source="input",
        )
    try:
        return input_document(agent.single_input_field, content)
    except ValueError as exc:
        raise InputValidationError(
            f"the newest user message of {_session(key)} is not an input the agent accepts: {exc}",
            errors=[],
            source="input",
        ) from exc


def _cut(document: dict[str, Any], end: int, path: list[int]) -> dict[str, Any]:
    """``document`` with its messages up to ``end`` and its path ``path``. The head's
    ``last`` and ``summary`` are worked out again from what is left when it is stored
    (a summary of a cut turn is dropped: the next request sends the messages)."""
    cut = {k: v for k, v in document.items() if k != "last"}
    cut["messages"] = document["messages"][:end]
    cut["path"] = _paths.from_seqs(path)
    return cut


def move_flow(
    spec: SessionSpec,
    key: Any,
    instance: Any,
    message_id: Any,
    *,
    switch: bool,
    where: tuple[Any, ...] = (),
) -> Flow:
    """Rewind (``switch=False``) or switch the active path, with no model call: one
    compare-and-swap of the head; nothing stored is deleted.

    Rewind: ``message_id`` is the last message of a turn of the active path (or
    ``"0.0"``, the system message: no turn at all), which becomes the active leaf.
    Switch: any stored message; the newest turn under its turn becomes the active
    leaf (``"0.0"``: the newest turn of the whole tree). A paused session is
    ``ApprovalPendingError``; one running a turn in another worker,
    ``SessionBusyError``; a write that loses the race, ``StaleSessionError``.
    """
    contention = Contention.start(key, 0, None, None)
    snap: Snapshot = yield Load(key, instance, where, "all" if switch else "path")
    instance = snap.instance
    age = _running_for(spec, snap)
    if age is not None:
        yield from contention.wait_busy(spec, age)  # no busy_timeout: raises
    verb = "switch to" if switch else "rewind to"
    if _no_conversation(snap):
        raise InputValidationError(
            f"{_session(key)} has no conversation to {verb} {message_id!r} in",
            errors=[],
            source="message_id",
        )
    document = read_document(snap, key)
    _not_paused(key)(document)
    moved = _switched(snap, message_id, key) if switch else _rewound(document, message_id, key)
    values, _, joined = _write(spec, moved, SessionStatus.COMPLETED, snap.revision)
    if (yield Swap(instance, key, snap.revision, values, where)):
        remember(instance, values[spec.context_attr], joined, "path", None)
        return instance
    yield from contention.lost(snap.revision, claim=False)  # no retries: raises
    raise AssertionError("unreachable")


def _rewound(document: dict[str, Any], message_id: Any, key: Any) -> dict[str, Any]:
    path = list(_paths.seqs(document.get("path") or ()))
    messages = document["messages"]
    following: list[int] = []  # "0.0" is the root, with or without a system message
    if _tree.parse_id(message_id) != (_tree.ROOT, 0):
        seq, _, at = _on_path(document, path, message_id, key, verb="rewind to")
        after = _tree.parse_id(messages[at + 1].get("id")) if at + 1 < len(messages) else None
        if after is not None and after[1] != 0:  # the next turn, or a summary, starts there
            raise InputValidationError(
                f"{message_id!r} is not the last message of its turn in {_session(key)}: only "
                'a turn\'s last message (or "0.0") can be the active leaf; nothing was changed',
                errors=[],
                source="message_id",
            )
        following = _tree.rewind_base(path, seq)
    end = len(messages)
    if len(following) < len(path):
        found = _position(messages, _tree.message_id(path[len(following)], 0))
        end = end if found is None else found
    return _cut(document, end, following)


def tree_rows(snap: Snapshot) -> tuple[dict[int, int | None], dict[int, int], dict[int, Any]]:
    """The stored rows a load of every row read: the turns (``seq -> parent``), the
    summaries (``seq -> anchor``) and each row's data, rows at or past ``next`` left
    out (a write that never committed)."""
    head = snap.document
    rows = snap.rows if snap.rows is not None else (head.get("rows") or ())
    newest = int(head.get("next", 1))
    turns: dict[int, int | None] = {}
    summaries: dict[int, int] = {}
    data: dict[int, Any] = {}
    for seq, parent, raw in rows:
        if seq >= newest:
            continue
        parsed = _parsed(raw)
        data[seq] = parsed
        if len(parsed) == 1 and _is_summary_message(parsed[0]) and parent is not None:
            summaries[seq] = parent
        else:
            turns[seq] = parent
    return turns, summaries, data


def _switched(snap: Snapshot, message_id: Any, key: Any) -> dict[str, Any]:
    head = snap.document
    turns, _, data = tree_rows(snap)
    parsed = _tree.parse_id(message_id)
    known = parsed is not None and (
        parsed == (_tree.ROOT, 0) or (parsed[0] in turns and parsed[1] < len(data[parsed[0]]))
    )
    if parsed is None or not known:
        raise InputValidationError(
            f"{_session(key)} has no message {message_id!r} to switch to; nothing was changed",
            errors=[],
            source="message_id",
        )
    path = _tree.switch_path(turns, parsed[0])
    moved_head = {k: v for k, v in head.items() if k not in ("summary", "last")}
    moved_head["path"] = _paths.from_seqs(path)
    return joined_document(moved_head, snap.rows, key=key)


def branch_flow(
    spec: SessionSpec,
    model: Model,
    key: Any,
    instance: Any,
    message_id: Any,
    input: Any,
    conflict_retries: int,
    *,
    regenerate: bool,
    agent: Agent[Any] | None = None,
    **options: Any,
) -> Flow:
    """Regenerate the newest turn (``regenerate=True``) or edit the user message
    ``message_id`` with ``input``: a turn (``continue_flow``, its options) on the
    history before that turn; the old turn stays stored, a sibling of the new one.
    The new input and the id's form are checked before anything is read."""
    agent = spec.agent if agent is None else agent
    if regenerate:
        branch = Branch(inline=spec.inline)
    else:
        if _tree.parse_id(message_id) is None:
            raise InputValidationError(
                f'{message_id!r} is not a message id (Message.id: "<turn>.<index>"); '
                "nothing was run",
                errors=[],
                source="message_id",
            )
        branch = Branch(message_id, _turn.validate_input(agent, input), spec.inline)
    return (
        yield from continue_flow(
            spec,
            model,
            key,
            instance,
            None,
            conflict_retries,
            branch=branch,
            agent=agent,
            **options,
        )
    )


def read_all_flow(
    spec: SessionSpec, key: Any, where: tuple[Any, ...] = ()
) -> Generator[Any, Any, Context]:
    """Load a row and every stored row of its tree: a ``Context`` whose ``messages``
    are the system message and every row's messages (seq order, each with its id and
    parent); ``path`` is the active path."""
    snap: Snapshot = yield Load(key, None, where, "all")
    document = read_document(snap, key)
    if FROM_VERSION in document:  # not stored as rows yet: one path, no ids
        context = load_context(document, key=key)
        context._every_row = True
        return context
    turns, summaries, data = tree_rows(snap)
    system = [m for m in document["messages"][:1] if m.get("id") == "0.0"]
    messages: list[dict[str, Any]] = list(system)
    last_of: dict[int, str] = {}
    for seq in sorted(data):
        parent = turns[seq] if seq in turns else summaries[seq]
        previous = last_of.get(parent) if parent is not None else None
        for index, message in enumerate(data[seq]):
            ident = _tree.message_id(seq, index)
            entry = {**message, "id": ident}
            if previous is not None:
                entry["parent"] = previous
            messages.append(entry)
            if seq in turns:
                previous = ident
        if previous is not None and seq in turns:
            last_of[seq] = previous
    context = load_context({**document, "messages": messages}, key=key)
    context._every_row = True
    return context
