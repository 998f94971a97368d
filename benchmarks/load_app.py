"""The app the load benchmark serves: the FastAPI chat example, plus a hand-written turn.

``uvicorn benchmarks.load_app:app`` (from the repository root) serves the example's
routes unchanged and ``POST /raw/{id}/messages``: what an app writes without the
library, on a table of its own (``raw_chats``: the conversation as a JSON list). Read
the row, call LiteLLM (the same model, system prompt and response format), write the
row back, under the same caller scoping (the same tool definitions sent, though the
fake model never calls them). With ``?stream=1`` the reply streams as
server-sent events and the row is written at the end. No revision check, no status,
no budgets, no validation of the reply beyond parsing it: a baseline, not an
alternative.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from agent_session import sse
from fastapi_chat.app import NewMessage, SessionNotFoundError, User, create_app, web_agent
from models import Reply

RAW = sa.Table(
    "raw_chats",
    sa.MetaData(),
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("user_id", sa.String(64), nullable=False, index=True),
    sa.Column("messages", sa.JSON, nullable=False),
)

TOOLS = [  # the example's refund tool, as an app would write it by hand
    {
        "type": "function",
        "function": {
            "name": "refund",
            "description": "Refund part of an order. A person approves every refund.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
                "required": ["order_id", "amount"],
                "additionalProperties": False,
            },
        },
    }
]
MODEL = os.environ.get("AGENT_SESSION_MODEL", "openai/fake-model")
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "Reply", "schema": Reply.model_json_schema(), "strict": False},
}

app = create_app()
maker = app.state.maker


def system_message() -> dict[str, Any]:
    return {"role": "system", "content": str(web_agent.instruction)}


async def _read(chat_id: uuid.UUID, user: str) -> list[dict[str, Any]]:
    async with maker() as db:
        stored = await db.scalar(
            sa.select(RAW.c.messages).where(RAW.c.id == chat_id, RAW.c.user_id == user)
        )
    if stored is None:
        raise SessionNotFoundError(f"no chat {chat_id}", key=chat_id)
    return list(stored)


async def _write(chat_id: uuid.UUID, messages: list[dict[str, Any]]) -> None:
    async with maker.begin() as db:
        await db.execute(sa.update(RAW).where(RAW.c.id == chat_id).values(messages=messages))


@app.post("/raw/{chat_id}/messages")
async def raw_turn(
    chat_id: uuid.UUID, body: NewMessage, request: Request, user: User, stream: bool = False
) -> Response:
    import litellm

    history = await _read(chat_id, user)
    messages = [*history, {"role": "user", "content": body.message}]
    request_messages = [system_message(), *messages]
    if not stream:
        response = await litellm.acompletion(
            model=MODEL, messages=request_messages, tools=TOOLS, response_format=RESPONSE_FORMAT
        )
        text = response.choices[0].message.content
        reply = json.loads(text)
        await _write(chat_id, [*messages, {"role": "assistant", "content": text}])
        return JSONResponse({"id": str(chat_id), "reply": reply})

    async def frames() -> AsyncIterator[str]:
        pieces: list[str] = []
        chunks = await litellm.acompletion(
            model=MODEL,
            messages=request_messages,
            tools=TOOLS,
            response_format=RESPONSE_FORMAT,
            stream=True,
        )
        async for chunk in chunks:
            text = chunk.choices[0].delta.content if chunk.choices else None
            if text:
                pieces.append(text)
                yield sse.frame("text_delta", {"text": text})
        text = "".join(pieces)
        json.loads(text)
        await _write(chat_id, [*messages, {"role": "assistant", "content": text}])
        yield sse.frame("completed", {"session_key": str(chat_id)})

    return StreamingResponse(frames(), media_type=sse.MEDIA_TYPE)
