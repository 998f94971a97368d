"""A chat service on FastAPI: the routes a chat UI needs, on the library's async API.

Run it (SQLite file, offline test double, http://127.0.0.1:8000/)::

    .venv/bin/python examples/fastapi_chat/app.py

Environment (all optional):

- ``AGENT_SESSION_DATABASE_URL``: an async SQLAlchemy URL, e.g.
  ``postgresql+asyncpg://postgres@127.0.0.1:5432/test``; default a SQLite file
  (``fastapi_chat.sqlite3`` in the working directory). The tables come from the
  Alembic revisions in ``migrations/`` (``main()`` upgrades the database first).
- ``AGENT_SESSION_MODEL``: a LiteLLM model string (``openai/gpt-4o-mini``, or
  ``openai/<name>`` with ``OPENAI_API_BASE`` for an OpenAI-compatible server); unset,
  an offline test double answers (``examples/models.py``).
- ``CHAT_POOL_SIZE``: database connections per process (default 5, no overflow).
- ``CHAT_HOST`` / ``CHAT_PORT``: where ``main()`` listens (127.0.0.1:8000).

Every route is scoped to the caller with ``where=``: a chat of another user is
answered exactly like one that does not exist (404), and nothing of it is read or
written. Every error of the library goes through one exception handler that answers
with an RFC 9457 problem document (``agent_session.http.problem``). The turn routes
stream server-sent events when asked (``Accept: text/event-stream`` or ``?stream=1``);
a client that goes away mid-stream ends the turn: nothing is stored, and the status
column says ``failed``.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

import agent_session
from agent_session import AgentSessionError, Denied, SessionNotFoundError, http, sse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/models.py

from models import Base, WebChat, web_agent

EXAMPLES = Path(__file__).resolve().parent.parent
ROOT = EXAMPLES.parent
STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_URL = "sqlite+aiosqlite:///fastapi_chat.sqlite3"
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0b6a4e-3f55-4c0e-9d7e-1f4a8c2d9e61")


# -- Tables: the Alembic revisions, not create_all ----------------------------------


def sync_url(url: str) -> str:
    """The same database through a sync driver, for Alembic."""
    url_object = sa.make_url(url)
    drivers = {"sqlite+aiosqlite": "sqlite", "postgresql+asyncpg": "postgresql+psycopg"}
    name = drivers.get(url_object.drivername, url_object.drivername)
    return url_object.set(drivername=name).render_as_string(hide_password=False)


def migrate(url: str) -> None:
    """``alembic upgrade head`` on ``url``, with the environment in ``migrations/``."""
    from argparse import Namespace

    from alembic import command
    from alembic.config import Config

    config = Config(str(ROOT / "migrations" / "alembic.ini"))
    config.cmd_opts = Namespace(x=[f"url={sync_url(url)}"])
    config.attributes["configure_logger"] = False
    config.attributes["target_metadata"] = Base.metadata
    command.upgrade(config, "head")


# -- The caller ----------------------------------------------------------------------


async def current_user(x_user_id: Annotated[str | None, Header()] = None) -> str:
    """Who is calling. The place for real authentication: check a session cookie or a
    bearer token here and return the user's id. This example trusts an ``X-User-Id``
    header, which only a demo may do."""
    if not x_user_id:
        raise HTTPException(401, "send an X-User-Id header (the example's stand-in for auth)")
    return x_user_id


User = Annotated[str, Depends(current_user)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def mine(user: str) -> sa.ColumnElement[bool]:
    return WebChat.user_id == user


# -- Bodies and views ------------------------------------------------------------------


class NewChat(BaseModel):
    message: str = Field(min_length=1)
    title: str | None = Field(default=None, max_length=200)


class NewMessage(BaseModel):
    message: str = Field(min_length=1)


class Decisions(BaseModel):
    approvals: dict[str, bool]
    """Every pending ``tool_call_id``: ``true`` runs it, ``false`` refuses it."""
    reason: str | None = None
    """Told to the model for each refused call."""


def chat_view(chat: WebChat) -> dict[str, Any]:
    """A chat after a turn: its status, the reply, the calls waiting for a decision."""
    reply = chat.last_output
    return {
        "id": str(chat.id),
        "title": chat.title,
        "status": chat.status,
        "reply": reply.model_dump() if reply is not None else None,
        "pending": [
            {"tool_call_id": p.tool_call_id, "tool_name": p.tool_name, "arguments": p.arguments}
            for p in chat.pending_approvals
        ],
    }


def wants_stream(request: Request, stream: bool) -> bool:
    return stream or "text/event-stream" in request.headers.get("accept", "")


def idempotency(key: str | None) -> dict[str, Any]:
    """``idempotency_key=`` for a turn of an existing chat, when the client sent one."""
    return {"idempotency_key": key} if key else {}


# -- The app ---------------------------------------------------------------------------


def create_app(database_url: str | None = None, *, pool_size: int | None = None) -> FastAPI:
    url = database_url or os.environ.get("AGENT_SESSION_DATABASE_URL") or DEFAULT_URL
    size = pool_size or int(os.environ.get("CHAT_POOL_SIZE", "5"))
    options: dict[str, Any] = {}
    if not url.startswith("sqlite"):
        options = {"pool_size": size, "max_overflow": 0, "pool_timeout": 60}
    engine: AsyncEngine = create_async_engine(url, **options)
    maker = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if isinstance(web_agent.model, str):
            await agent_session.awarm_up()  # LiteLLM imported before the first request
        yield
        await engine.dispose()

    app = FastAPI(title="agent-session chat example", lifespan=lifespan)
    app.state.engine = engine
    app.state.maker = maker

    @app.exception_handler(AgentSessionError)
    async def problem_response(request: Request, exc: AgentSessionError) -> JSONResponse:
        status, headers, body = http.problem(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_problem(request: Request, exc: HTTPException) -> JSONResponse:
        body = {"type": "about:blank", "title": str(exc.detail), "status": exc.status_code}
        return JSONResponse(
            body, status_code=exc.status_code, media_type="application/problem+json"
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        body = {
            "type": "about:blank",
            "title": "Unprocessable Content",
            "status": 422,
            "detail": "the request does not match the route's parameters or body",
            "errors": errors,
        }
        return JSONResponse(body, status_code=422, media_type="application/problem+json")

    def answer(result: Any, status: int = 200) -> Response:
        if isinstance(result, WebChat):
            return JSONResponse(chat_view(result), status_code=status)
        return StreamingResponse(sse.aencode(result), media_type=sse.MEDIA_TYPE)

    @app.post("/chats")
    async def start_chat(
        body: NewChat,
        request: Request,
        user: User,
        key: IdempotencyKey = None,
        stream: bool = False,
    ) -> Response:
        # A retried start with the same Idempotency-Key names the same primary key.
        values: dict[str, Any] = {"user_id": user}
        if body.title:  # else the library's: the first message, cut to 80 characters
            values["title"] = body.title
        if key:
            values["id"] = uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{user}\n{key}")
        result = await WebChat.astart_session(
            maker,
            {"message": body.message},
            values=values,
            stream=wants_stream(request, stream),
        )
        return answer(result, 201)

    @app.post("/chats/{chat_id}/messages")
    async def post_message(
        chat_id: uuid.UUID,
        body: NewMessage,
        request: Request,
        user: User,
        key: IdempotencyKey = None,
        stream: bool = False,
    ) -> Response:
        result = await WebChat.acontinue_session(
            maker,
            chat_id,
            {"message": body.message},
            where=mine(user),
            conflict_retries=2,
            busy_timeout=30,
            stream=wants_stream(request, stream),
            **idempotency(key),
        )
        return answer(result)

    @app.post("/chats/{chat_id}/approvals")
    async def decide(
        chat_id: uuid.UUID,
        body: Decisions,
        request: Request,
        user: User,
        key: IdempotencyKey = None,
        stream: bool = False,
    ) -> Response:
        refused = Denied(body.reason or "refused by the user")
        approvals = {call: True if ok else refused for call, ok in body.approvals.items()}
        result = await WebChat.aresume_session(
            maker,
            chat_id,
            approvals=approvals,
            where=mine(user),
            stream=wants_stream(request, stream),
            **idempotency(key),
        )
        return answer(result)

    @app.post("/chats/{chat_id}/regenerate")
    async def regenerate(
        chat_id: uuid.UUID,
        request: Request,
        user: User,
        key: IdempotencyKey = None,
        stream: bool = False,
    ) -> Response:
        result = await WebChat.aregenerate_session(
            maker,
            chat_id,
            where=mine(user),
            stream=wants_stream(request, stream),
            **idempotency(key),
        )
        return answer(result)

    @app.patch("/chats/{chat_id}/messages/{message_id}")
    async def edit(
        chat_id: uuid.UUID,
        message_id: str,
        body: NewMessage,
        request: Request,
        user: User,
        key: IdempotencyKey = None,
        stream: bool = False,
    ) -> Response:
        result = await WebChat.aedit_session(
            maker,
            chat_id,
            message_id,
            {"message": body.message},
            where=mine(user),
            stream=wants_stream(request, stream),
            **idempotency(key),
        )
        return answer(result)

    @app.get("/chats/{chat_id}")
    async def transcript(
        chat_id: uuid.UUID,
        user: User,
        before: str | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        """The chat's messages, newest page first (``before``: the first id of the page
        shown), without the system prompt."""
        async with maker() as db:
            chat = await db.scalar(sa.select(WebChat).where(WebChat.id == chat_id, mine(user)))
        if chat is None:
            raise SessionNotFoundError(f"no chat {chat_id}", key=chat_id)
        messages = await WebChat.aget_messages(
            maker, chat_id, before=before, limit=limit, where=mine(user)
        )
        view = chat_view(chat)
        view["messages"] = http.transcript(messages, web_agent)
        view["before"] = messages[0].id if len(messages) == limit else None
        return view

    @app.get("/chats")
    async def list_chats(
        user: User,
        before: str | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        """The caller's chats, newest activity first: columns only, no conversation."""
        page = await WebChat.alist_sessions(maker, where=mine(user), before=before, limit=limit)
        return {
            "chats": [
                {
                    "id": str(item.key),
                    "title": item.title,
                    "status": item.status,
                    "turns": item.turns,
                    "created_at": item.created_at and item.created_at.isoformat(),
                    "last_turn_at": item.last_turn_at.isoformat(),
                }
                for item in page.items
            ],
            "before": page.next,
        }

    @app.delete("/chats/{chat_id}", status_code=204)
    async def delete_chat(chat_id: uuid.UUID, user: User) -> Response:
        async with maker.begin() as db:
            chat = await db.scalar(sa.select(WebChat).where(WebChat.id == chat_id, mine(user)))
            if chat is None:
                raise SessionNotFoundError(f"no chat {chat_id}", key=chat_id)
            await db.delete(chat)  # its history rows go with it
        return Response(status_code=204)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    return app


app = create_app()


def main() -> None:
    import uvicorn

    url = os.environ.get("AGENT_SESSION_DATABASE_URL") or DEFAULT_URL
    migrate(url)
    host = os.environ.get("CHAT_HOST", "127.0.0.1")
    port = int(os.environ.get("CHAT_PORT", "8000"))
    print(f"chat example on http://{host}:{port}/ (database {sa.make_url(url)!r})")
    uvicorn.run(app, host=host, port=port)


if __name__ == "__main__":
    main()
