"""Rows that already exist: ``continue_session`` gives a row its first conversation.

An application adds the mixin to a table it has (tickets, orders): its rows have a
NULL context. Their first turn is a ``continue_session`` (or its twin, or a stream)
that renders the instruction from ``instruction_args``, through the same
compare-and-swap as any turn; ``instruction_args`` on a later turn replace the
stored ones from that turn on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import (
    Agent,
    AgentSessionMixin,
    InputValidationError,
    ModelCallError,
    SessionNotFoundError,
    StaleSessionError,
)
from agent_session.testing import FunctionModel
from support.databases import Database
from support.sessions import Api, joined_rows, stream_text

during_next_call: list[Callable[[], Awaitable[Any]]] = []
"""What the next model call runs before it answers (another writer, for races)."""


async def _reply(messages: list[dict[str, Any]]) -> str:
    if during_next_call:
        await during_next_call.pop()()
    return f"noted ({len(messages)} messages)"


class Customer(BaseModel):
    customer: str


model = FunctionModel(_reply)
agent = Agent(model, instruction="You help {{ customer }}.", instruction_schema=Customer)


class Base(DeclarativeBase):
    pass


class Ticket(AgentSessionMixin[str], Base):
    __tablename__ = "existing_tickets"
    __agent__ = agent
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    subject: Mapped[str] = mapped_column(sa.String(50))
    owner: Mapped[str] = mapped_column(sa.String(20))


class TrackedTicket(AgentSessionMixin[str], Base):
    """With a status column: the turn claims the row (``running``) before the model call."""

    __tablename__ = "existing_tracked_tickets"
    __agent__ = agent
    __status_attribute__ = "status"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    subject: Mapped[str] = mapped_column(sa.String(50))


def _existing_rows(database: Database) -> None:
    """The tables as an application has them before its first turn: rows, no context."""
    during_next_call.clear()
    database.create_all(Base.metadata)
    with database.sync_engine().begin() as conn:
        conn.execute(
            sa.insert(Ticket.__table__),
            [
                {"id": 7, "subject": "printer", "owner": "alice"},
                {"id": 8, "subject": "scanner", "owner": "bob"},
            ],
        )
        conn.execute(sa.insert(TrackedTicket.__table__), [{"id": 7, "subject": "fax"}])


async def test_an_existing_row_takes_its_first_turn(database: Database) -> None:
    _existing_rows(database)
    api = Api(database, Ticket)
    before = joined_rows(database, Ticket.__table__)
    assert [row["context"] for row in before] == [None, None]
    calls = len(model.requests)

    async with api.session() as db:
        # Missing instruction arguments, an unknown key, a key outside where=: refused
        # before any model call, nothing written.
        with pytest.raises(InputValidationError, match="customer"):
            await api.cont(db, 7, "hello")
        with pytest.raises(SessionNotFoundError):
            await api.cont(db, 99, "hello", instruction_args={"customer": "Ada"})
        with pytest.raises(SessionNotFoundError):
            await api.cont(
                db, 7, "hello", instruction_args={"customer": "Ada"}, where=Ticket.owner == "bob"
            )
        assert len(model.requests) == calls
        await api.rollback(db)
    assert joined_rows(database, Ticket.__table__) == before

    async with api.session() as db:
        ticket = await api.cont(
            db,
            7,
            "my printer is on fire",
            instruction_args={"customer": "Ada"},
            where=Ticket.owner == "alice",
        )
        await api.commit(db)
    assert ticket.id == 7 and ticket.last_output == "noted (2 messages)"
    first = await api.context(_maker(api), 7)
    assert first.turns == 1
    assert [(m.role, m.content) for m in first.messages[:2]] == [
        ("system", "You help Ada."),
        ("user", "my printer is on fire"),
    ]
    assert first.instruction_args == {"customer": "Ada"}

    # Later turns: new instruction arguments replace the stored ones from that turn on.
    async with api.session() as db:
        await api.cont(db, 7, "it still burns", instruction_args=Customer(customer="Bob"))
        assert model.last_request.messages[0] == {"role": "system", "content": "You help Bob."}
        await api.cont(db, 7, "thanks")
        assert model.last_request.messages[0] == {"role": "system", "content": "You help Bob."}
        await api.commit(db)
    context = await api.context(_maker(api), 7)
    assert context.turns == 3 and context.instruction_args == {"customer": "Bob"}
    assert [m.role for m in context.messages].count("system") == 1

    rows = {row["id"]: row for row in joined_rows(database, Ticket.__table__)}
    assert rows[7]["subject"] == "printer" and rows[7]["context_revision"] == 3
    assert rows[8] == next(row for row in before if row["id"] == 8)  # untouched


def _maker(api: Api) -> Any:
    """A sessionmaker on the api's engine (``get_context`` in its own transaction)."""
    return async_sessionmaker(api.engine) if api.is_async else sessionmaker(api.engine)


async def test_a_streamed_first_turn_on_a_row_with_a_status(database: Database) -> None:
    _existing_rows(database)
    api = Api(database, TrackedTicket, maker=True)
    calls = len(model.requests)
    with pytest.raises(InputValidationError, match="customer"):
        await stream_text(await api.cont(None, 7, "hello", stream=True))
    assert len(model.requests) == calls
    [row] = joined_rows(database, TrackedTicket.__table__)
    # Refused before the row was claimed: still as the application left it.
    assert (row["status"], row["context_revision"], row["context"]) == ("pending", 0, None)

    stream = await api.cont(None, 7, "hello", stream=True, instruction_args={"customer": "Cy"})
    text = await stream_text(stream)
    assert stream.session.last_output == "noted (2 messages)" and text == "noted (2 messages)"
    [row] = joined_rows(database, TrackedTicket.__table__)
    # No claim on a row without a conversation: the first write is revision 1.
    assert row["status"] == "completed" and row["context_revision"] == 1
    assert row["context"]["messages"][0] == {"role": "system", "content": "You help Cy."}


async def test_a_failed_first_turn_leaves_the_row_as_it_was(database: Database) -> None:
    _existing_rows(database)
    api = Api(database, TrackedTicket, maker=True)
    before = joined_rows(database, TrackedTicket.__table__)

    async def provider_down() -> None:
        raise ModelCallError("provider down", model="function-model", status_code=400)

    during_next_call.append(provider_down)
    with pytest.raises(ModelCallError):
        await api.cont(None, 7, "hello", instruction_args={"customer": "Di"})
    assert joined_rows(database, TrackedTicket.__table__) == before  # still pending, revision 0
    ticket = await api.cont(None, 7, "hello again", instruction_args={"customer": "Di"})
    assert ticket.status == "completed" and ticket.context_revision == 1


@pytest.mark.parametrize("retries", [0, 1])
async def test_two_first_turns_racing_leave_one_conversation(
    database: Database, retries: int
) -> None:
    _existing_rows(database)
    api = Api(database, Ticket, maker=True)
    # While the first turn waits for its model, another worker starts the conversation.
    during_next_call.append(
        lambda: api.cont(None, 7, "from worker 2", instruction_args={"customer": "Ada"})
    )
    if retries == 0:
        with pytest.raises(StaleSessionError):
            await api.cont(None, 7, "from worker 1", instruction_args={"customer": "Bob"})
    else:
        await api.cont(
            None,
            7,
            "from worker 1",
            instruction_args={"customer": "Bob"},
            conflict_retries=retries,
        )
    row = next(row for row in joined_rows(database, Ticket.__table__) if row["id"] == 7)
    messages = row["context"]["messages"]
    users = [m["content"] for m in messages if m["role"] == "user"]
    systems = [m["content"] for m in messages if m["role"] == "system"]
    if retries == 0:
        # The loser wrote nothing: the winner's conversation alone.
        assert users == ["from worker 2"] and systems == ["You help Ada."]
        assert row["context_revision"] == 1
    else:
        # The loser ran again, as the second turn of the winner's conversation.
        assert users == ["from worker 2", "from worker 1"] and systems == ["You help Bob."]
        assert row["context_revision"] == 2 and row["context"]["turns"] == 2
