"""The web stacks most applications have: Flask-SQLAlchemy, and FastAPI with SQLModel.

A Flask app passes ``db.session`` (a ``scoped_session``) as it is; a FastAPI app
passes SQLModel's ``AsyncSession``. Either way the library flushes and the app
commits (or not); an ``async_scoped_session`` works like an ``AsyncSession``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI
from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from agent_session import Agent, AgentSessionMixin, ConfigurationError
from agent_session.testing import TestModel

agent = Agent(TestModel(text="on it"), instruction="You help with {{ topic }}.")


class FlaskBase(DeclarativeBase):
    pass


flask_db = SQLAlchemy(model_class=FlaskBase)


class SupportTicket(AgentSessionMixin[str], flask_db.Model):  # type: ignore[misc]
    __agent__ = agent
    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(sa.String(50))


def _flask_app(tmp_path: Path) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'flask.sqlite3'}"
    flask_db.init_app(app)

    @app.post("/tickets/<int:ticket_id>/messages")
    def post_message(ticket_id: int) -> dict[str, Any]:
        body = request.get_json()
        ticket = SupportTicket.continue_session(
            flask_db.session, ticket_id, body["text"], instruction_args={"topic": "printers"}
        )
        if body.get("commit", True):
            flask_db.session.commit()
        return {"reply": ticket.last_output, "revision": ticket.context_revision}

    return app


def test_a_flask_app_passes_db_session(tmp_path: Path) -> None:
    app = _flask_app(tmp_path)
    with app.app_context():
        flask_db.create_all()
        flask_db.session.add(SupportTicket(id=7, subject="printer on fire"))
        flask_db.session.commit()
    client = app.test_client()

    # Not committed by the app: the turn was only flushed, and ends with the request.
    response = client.post("/tickets/7/messages", json={"text": "help", "commit": False})
    assert response.json == {"reply": "on it", "revision": 1}
    with app.app_context():
        assert flask_db.session.get(SupportTicket, 7).context is None  # type: ignore[union-attr]

    for revision in (1, 2):
        response = client.post("/tickets/7/messages", json={"text": f"turn {revision}"})
        assert response.status_code == 200 and response.json["revision"] == revision
    with app.app_context():
        context = SupportTicket.get_context(flask_db.session, 7)
        flask_db.drop_all()
    assert context.turns == 2
    assert [(m.role, m.content) for m in context.messages][:3] == [
        ("system", "You help with printers."),
        ("user", "turn 1"),
        ("assistant", "on it"),
    ]


class Receipt(AgentSessionMixin[str], SQLModel, table=True):
    __agent__ = agent
    __status_attribute__ = "status"
    id: int | None = Field(default=None, primary_key=True)
    number: str = Field(max_length=20)


class Message(BaseModel):
    text: str


async def _session() -> AsyncIterator[AsyncSession]:
    raise NotImplementedError  # each app overrides it with a session of its database
    yield


Db = Annotated[AsyncSession, Depends(_session)]


def _fastapi_app(maker: async_sessionmaker[AsyncSession]) -> FastAPI:
    app = FastAPI()

    async def session() -> AsyncIterator[AsyncSession]:
        async with maker() as db:
            yield db

    app.dependency_overrides[_session] = session

    @app.post("/receipts")
    async def start(message: Message, db: Db) -> dict[str, Any]:
        receipt = await Receipt.astart_session(
            db, message.text, instruction_args={"topic": "receipts"}, number="A-1"
        )
        await db.commit()
        return {"id": receipt.id, "reply": receipt.last_output}

    @app.post("/receipts/{receipt_id}/messages")
    async def reply(receipt_id: int, message: Message, db: Db) -> dict[str, Any]:
        receipt = await Receipt.acontinue_session(db, receipt_id, message.text)
        await db.commit()
        return {"reply": receipt.last_output, "status": receipt.status}

    @app.get("/receipts/{receipt_id}")
    async def read(receipt_id: int, db: Db) -> dict[str, Any]:
        context = await Receipt.aget_context(db, receipt_id)
        return {"turns": context.turns, "number": (await db.get(Receipt, receipt_id)).number}  # type: ignore[union-attr]

    return app


def _create_receipts(connection: Any) -> None:
    """The receipts table and its history table (the session model's two tables)."""
    table: Any = Receipt.__table__  # type: ignore[attr-defined]
    history = table.metadata.tables[f"{table.name}_history"]
    table.metadata.create_all(connection, tables=[table, history])


async def test_a_fastapi_app_takes_async_turns_with_sqlmodel(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'fastapi.sqlite3'}")
    async with engine.begin() as conn:
        await conn.run_sync(_create_receipts)
    maker = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
    transport = httpx.ASGITransport(app=_fastapi_app(maker))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.post("/receipts", json={"text": "hello"})
            started = response.json()
            assert started["reply"] == "on it", response.text
            key = started["id"]
            for question in ("when is it due?", "can I pay later?"):
                answer = await client.post(f"/receipts/{key}/messages", json={"text": question})
                assert answer.json() == {"reply": "on it", "status": "completed"}
            read = (await client.get(f"/receipts/{key}")).json()
    finally:
        await engine.dispose()
    assert read == {"turns": 3, "number": "A-1"}


async def test_an_async_scoped_session_works_like_its_session(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'scoped.sqlite3'}")
    async with engine.begin() as conn:
        await conn.run_sync(_create_receipts)
    scoped = async_scoped_session(
        async_sessionmaker(engine, class_=AsyncSession), scopefunc=asyncio.current_task
    )
    try:
        receipt = await Receipt.astart_session(
            scoped, "hi", instruction_args={"topic": "receipts"}, number="B-2"
        )
        assert receipt in scoped() and receipt.context_revision == 1
        await scoped.rollback()  # flushed, never committed: the rollback leaves nothing
        async with engine.connect() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).select_from(Receipt.__table__))  # type: ignore[attr-defined]
        assert count == 0
        with pytest.raises(ConfigurationError, match="db must be a Session or a sessionmaker"):
            Receipt.start_session(scoped, "hi", number="B-3")  # type: ignore[arg-type]
    finally:
        await scoped.remove()
        await engine.dispose()
