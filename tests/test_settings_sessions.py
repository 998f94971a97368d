"""``start_session(values=)`` on the six drivers: column values in a mapping, beside
(or instead of) extra keywords, also for columns named like an option."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import Agent, AgentSessionMixin, InputValidationError
from agent_session.testing import TestModel
from support.databases import Database
from support.sessions import Api, stored_rows

agent = Agent(TestModel(text="noted"))


class ValuesBase(DeclarativeBase):
    pass


class Ticket(AgentSessionMixin[str], ValuesBase):
    __tablename__ = "values_tickets"
    __agent__ = agent
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    user_id: Mapped[str] = mapped_column(sa.String(40))
    # Columns named like options, under attribute names that are not.
    streamed: Mapped[bool] = mapped_column("stream", default=False)
    place: Mapped[str | None] = mapped_column("where", sa.String(40), default=None)


def _columns(database: Database) -> list[tuple[Any, ...]]:
    return [
        (row["id"], row["user_id"], bool(row["stream"]), row["where"], row["context"] is not None)
        for row in stored_rows(database, Ticket.__table__)  # type: ignore[arg-type]
    ]


async def test_values_sets_the_columns(database: Database) -> None:
    database.create_all(ValuesBase.metadata)
    api = Api(database, Ticket, maker=True)
    values = {"id": 1, "user_id": "u1", "streamed": True, "place": "here"}
    first = await api.start(None, "hi", values=values)
    assert (first.id, first.user_id, first.streamed, first.place) == (1, "u1", True, "here")
    await api.start(None, "hi", values={"id": 2, "user_id": "u2"}, place="there")
    await api.start(None, "hi", id=3, user_id="u3")  # keywords alone, as before
    stored = [(1, "u1", True, "here", True), (2, "u2", False, "there", True)]
    assert _columns(database) == [*stored, (3, "u3", False, None, True)]

    before = stored_rows(database, Ticket.__table__)  # type: ignore[arg-type]
    with pytest.raises(InputValidationError, match=r"^user_id given both in values= and as a "):
        await api.start(None, "hi", values={"id": 4, "user_id": "u4"}, user_id="u4")
    with pytest.raises(InputValidationError, match=r"values= must be a mapping") as caught:
        await api.start(None, "hi", values=[("id", 5), ("user_id", "u5")])
    assert caught.value.source == "values"
    assert stored_rows(database, Ticket.__table__) == before  # type: ignore[arg-type]
