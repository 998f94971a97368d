"""The README's FastAPI streaming endpoint, run under uvicorn and called over HTTP.

The endpoint is the README's own block (taken from the page, not copied), executed
with a ``ChatAgent`` of this test: a status column, a tool that needs approval, a
small ``max_input_bytes`` and a session token budget, so that every early error can
be provoked. Errors known before the model is called must come back as problem
documents (404/422/409/429, ``agent_session.http``), not as a 200 whose body is an
``error`` frame; a good request streams its frames.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import NullPool

from agent_session import Agent, AgentSessionMixin, Tool, ToolCall
from agent_session.testing import TestModel
from test_docs import ROOT, python_blocks

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")


class UserMessage(BaseModel):
    message: str


def transfer(to: str) -> str:
    """Send money (needs a person's approval)."""
    return f"sent to {to}"


SERVED = TestModel(text="It ships today", call_tools="none")
"""Answers the server's requests: an override would not reach uvicorn's thread."""

AGENT = Agent(
    SERVED,
    input_schema=UserMessage,
    tools=[Tool(transfer, requires_approval=True)],
    max_input_bytes=64,
    max_session_tokens=200,
    model_retries=0,
)


class Base(DeclarativeBase):
    pass


class ChatAgent(AgentSessionMixin[str], Base):
    __tablename__ = "fastapi_chats"
    __agent__ = AGENT
    __status_attribute__ = "status"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[str] = mapped_column(sa.String(32))


def _endpoint_block() -> str:
    [block] = [
        b for b in python_blocks(ROOT / "README.md") if "StreamingResponse(sse.aencode" in b.source
    ]
    return block.source


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """The README's app on uvicorn at 127.0.0.1 (a free port); the base URL and a
    sync sessionmaker on the same SQLite file."""
    url = f"sqlite:///{tmp_path / 'chats.db'}"
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    async_engine = create_async_engine(
        url.replace("sqlite", "sqlite+aiosqlite"), poolclass=NullPool
    )
    namespace: dict[str, Any] = {
        "__name__": "readme_endpoint",
        "uuid": uuid,
        "UserMessage": UserMessage,
        "ChatAgent": ChatAgent,
        "amaker": async_sessionmaker(async_engine),
    }
    exec(compile(_endpoint_block(), "README.md", "exec"), namespace)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(namespace["app"], log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", sessionmaker(engine)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        engine.dispose()


def _rows(maker: Any) -> list[dict[str, Any]]:
    with maker() as db:
        rows = db.execute(sa.select(ChatAgent.__table__).order_by(ChatAgent.id)).mappings()
        return [dict(row) for row in rows]


def test_the_readme_endpoint_answers_early_errors_with_their_status(
    served: tuple[str, Any],
) -> None:
    base_url, maker = served
    with AGENT.override(model=TestModel(text="Hello", call_tools="none")):
        chat = ChatAgent.start_session(maker, {"message": "Hi"}, user_id="ann")
        busy = ChatAgent.start_session(maker, {"message": "Hi"}, user_id="ann")
    with AGENT.override(model=TestModel(replies=["word " * 250])):  # past max_session_tokens
        spent = ChatAgent.start_session(maker, {"message": "Hi"}, user_id="ann")
    pay = ToolCall("transfer", {"to": "bo"}, id="pay")
    with AGENT.override(model=TestModel(replies=[pay])):
        paused = ChatAgent.start_session(maker, {"message": "Pay"}, user_id="ann")
    with maker.begin() as db:
        db.execute(
            sa.update(ChatAgent)
            .where(ChatAgent.id == busy.id)
            .values(status="running", status_changed_at=datetime.now())
        )
    before = _rows(maker)

    def post(key: Any, text: str, user: str = "ann") -> Any:
        return client.post(
            f"/chats/{key}/messages", json={"message": text}, headers={"X-User-Id": user}
        )

    def problem_type(response: Any) -> str:
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["status"] == response.status_code
        return str(body["type"]).rpartition("/")[2]

    with httpx.Client(base_url=base_url, timeout=10) as client:
        expected = [
            (post(uuid.uuid4(), "Hi"), 404, "session-not-found"),
            (post(chat.id, "Hi", user="bob"), 404, "session-not-found"),
            (post(chat.id, "x" * 100), 422, "invalid-input"),
            (post(paused.id, "Hi"), 409, "approval-pending"),
            (post(busy.id, "Hi"), 409, "session-busy"),
            (post(spent.id, "Hi"), 429, "budget-exceeded"),
        ]
        for response, status, name in expected:
            assert (response.status_code, problem_type(response)) == (status, name)
        assert expected[3][0].json()["pending"] == [
            {"tool_call_id": "pay", "tool_name": "transfer"}
        ]
        assert SERVED.requests == []
        assert _rows(maker) == before

        response = post(chat.id, "Where is it?")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = response.text.split("\n\n")
    assert frames[0].startswith("event: text_delta")
    assert f'"session_key":"{chat.id}"' in response.text
    assert len(SERVED.requests) == 1
    assert ChatAgent.get_context(maker, chat.id).messages[-1].content == "It ships today"
