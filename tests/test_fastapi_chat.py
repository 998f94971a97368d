"""The FastAPI chat example (``examples/fastapi_chat``), tested twice.

In process, through httpx's ASGI transport, on a SQLite file made by the example's
Alembic revisions: every route, and another user's id on every route (404, nothing
read or written, no model call). Then the same app as a real ``uvicorn`` on
127.0.0.1 against PostgreSQL (asyncpg): the other-user check again, 20 concurrent
clients on one chat (every committed turn exact), and an SSE client that goes away
mid-stream (the turn stores nothing and the status column says ``failed``, as the
README's Streaming section says).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from support.chat_app import chat_database, load_app, postgres_reachable, rows, serving, sync_engine
from support.databases import running_under_ci

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

chat_app = load_app()
WebChat = chat_app.WebChat
DemoModel = importlib.import_module("models").DemoModel
TABLES = ("web_chats", "web_chats_history")
NOT_FOUND = "https://agent-session.dev/problems/session-not-found"

needs_listing = pytest.mark.skipif(
    not hasattr(WebChat, "alist_sessions"),
    reason="GET /chats needs list_sessions/alist_sessions in the library",
)
needs_idempotency = pytest.mark.skipif(
    "idempotency_key" not in inspect.signature(WebChat.acontinue_session).parameters,
    reason="the Idempotency-Key header needs idempotency_key= on the turn methods",
)


def as_user(user: str) -> dict[str, str]:
    return {"X-User-Id": user}


def frames(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The server-sent events of a response body: (event, data) pairs."""
    out = []
    for block in text.strip().split("\n\n"):
        kind = block.split("\n")[0].removeprefix("event: ")
        data = json.loads(block.split("\n")[1].removeprefix("data: "))
        out.append((kind, data))
    return out


async def start(client: Any, user: str, message: str) -> dict[str, Any]:
    response = await client.post("/chats", json={"message": message}, headers=as_user(user))
    assert response.status_code == 201, response.text
    return dict(response.json())


async def paused_chat(client: Any, user: str) -> dict[str, Any]:
    """A chat whose newest turn waits for the approval of a refund."""
    chat = await start(client, user, "Where is order 42?")
    response = await client.post(
        f"/chats/{chat['id']}/messages",
        json={"message": "Refund 20, please"},
        headers=as_user(user),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "awaiting_approval"
    assert [p["tool_name"] for p in body["pending"]] == ["refund"]
    return dict(body)


# -- the scenarios, run in process and under uvicorn -------------------------------------


async def every_route(client: Any) -> None:
    ann = as_user("ann")
    chat = await start(client, "ann", "Where is order 42?")
    key = chat["id"]
    assert chat["status"] == "completed"
    assert "Where is order 42?" in chat["reply"]["answer"]

    response = await client.post(f"/chats/{key}/messages", json={"message": "And 43?"}, headers=ann)
    assert response.status_code == 200 and "And 43?" in response.json()["reply"]["answer"]

    # Streamed, by query parameter and by Accept header.
    for url, headers in [
        (f"/chats/{key}/messages?stream=1", ann),
        (f"/chats/{key}/messages", {**ann, "Accept": "text/event-stream"}),
    ]:
        response = await client.post(url, json={"message": "Faster?"}, headers=headers)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = frames(response.text)
        assert events[0][0] == "text_delta"
        assert events[-1] == ("completed", {"session_key": key})

    response = await client.get(f"/chats/{key}", headers=ann)
    assert response.status_code == 200
    transcript = response.json()
    messages = transcript["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * 4  # no system prompt
    assert [m["id"] for m in messages[:2]] == ["1.0", "1.1"]
    assert messages[0]["text"] == "Where is order 42?"
    assert "Where is order 42?" in messages[1]["output"]["answer"]  # parsed, not JSON text
    assert transcript["before"] is None

    # Paged: the newest two messages, then the two before them.
    page = (await client.get(f"/chats/{key}?limit=2", headers=ann)).json()
    assert [m["id"] for m in page["messages"]] == [m["id"] for m in messages[-2:]]
    older = (await client.get(f"/chats/{key}?limit=2&before={page['before']}", headers=ann)).json()
    assert [m["id"] for m in older["messages"]] == [m["id"] for m in messages[-4:-2]]

    response = await client.patch(
        f"/chats/{key}/messages/1.0", json={"message": "Where is order 44?"}, headers=ann
    )
    assert response.status_code == 200 and "order 44" in response.json()["reply"]["answer"]
    edited = (await client.get(f"/chats/{key}", headers=ann)).json()["messages"]
    assert [m["text"] for m in edited if m["role"] == "user"] == ["Where is order 44?"]

    before = edited[-1]["output"]["answer"]
    response = await client.post(f"/chats/{key}/regenerate", headers=ann)
    assert response.status_code == 200
    regenerated = (await client.get(f"/chats/{key}", headers=ann)).json()["messages"]
    assert regenerated[-1]["id"] != edited[-1]["id"]
    assert regenerated[-1]["output"]["answer"] != before

    paused = await paused_chat(client, "ann")
    pending = paused["pending"]
    # Continuing a paused chat: a problem document naming the calls.
    response = await client.post(
        f"/chats/{paused['id']}/messages", json={"message": "Hello?"}, headers=ann
    )
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["pending"] == [
        {"tool_call_id": p["tool_call_id"], "tool_name": "refund"} for p in pending
    ]
    response = await client.post(
        f"/chats/{paused['id']}/approvals",
        json={"approvals": {p["tool_call_id"]: True for p in pending}},
        headers=ann,
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    assert response.json()["reply"]["answer"] == "Done: refunded 20.00 on order 42."
    tool_turn = (await client.get(f"/chats/{paused['id']}", headers=ann)).json()["messages"][-4:]
    assert [m["role"] for m in tool_turn] == ["user", "assistant", "tool", "assistant"]
    [call] = tool_turn[1]["tool_calls"]
    assert call["name"] == "refund" and json.loads(call["arguments"])["order_id"] == "42"
    assert tool_turn[2]["text"] == "refunded 20.00 on order 42"

    # Problem documents for what the app itself refuses.
    response = await client.post(f"/chats/{key}/messages", json={"message": "x"})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    response = await client.post(f"/chats/{key}/messages", json={"message": ""}, headers=ann)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "message"]
    response = await client.patch(f"/chats/{key}/messages/9.9", json={"message": "x"}, headers=ann)
    assert (response.status_code, response.json()["type"].rpartition("/")[2]) == (
        422,
        "invalid-input",
    )

    response = await client.delete(f"/chats/{key}", headers=ann)
    assert response.status_code == 204
    response = await client.get(f"/chats/{key}", headers=ann)
    assert (response.status_code, response.json()["type"]) == (404, NOT_FOUND)


async def other_user_everywhere(client: Any, engine: sa.Engine) -> None:
    """Bob names Ann's chats on every route: 404 each time, no row read or written."""
    done = await start(client, "ann", "Where is order 42?")
    paused = await paused_chat(client, "ann")
    stored = rows(engine, *TABLES)
    bob = as_user("bob")
    calls = [
        ("POST", f"/chats/{done['id']}/messages", {"message": "Hi"}),
        ("POST", f"/chats/{done['id']}/messages?stream=1", {"message": "Hi"}),
        ("POST", f"/chats/{paused['id']}/approvals", {"approvals": {"x": True}}),
        (
            "POST",
            f"/chats/{paused['id']}/approvals",
            {"approvals": {p["tool_call_id"]: True for p in paused["pending"]}},
        ),
        ("POST", f"/chats/{done['id']}/regenerate", None),
        ("POST", f"/chats/{done['id']}/regenerate?stream=1", None),
        ("PATCH", f"/chats/{done['id']}/messages/1.0", {"message": "Hi"}),
        ("GET", f"/chats/{done['id']}", None),
        ("GET", f"/chats/{done['id']}?limit=1&before=1.1", None),
        ("DELETE", f"/chats/{done['id']}", None),
        ("DELETE", f"/chats/{paused['id']}", None),
    ]
    for method, url, body in calls:
        response = await client.request(method, url, json=body, headers=bob)
        assert response.status_code == 404, (method, url, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == NOT_FOUND
    assert rows(engine, *TABLES) == stored


async def listing(client: Any) -> None:
    first = await start(client, "carol", "First question")
    second = await start(client, "carol", "Second question")
    await start(client, "dave", "Not Carol's")
    response = await client.get("/chats", headers=as_user("carol"))
    assert response.status_code == 200
    chats = response.json()["chats"]
    assert [c["id"] for c in chats] == [second["id"], first["id"]]  # newest first
    assert [c["title"] for c in chats] == ["Second question", "First question"]
    page = (await client.get("/chats?limit=1", headers=as_user("carol"))).json()
    assert [c["id"] for c in page["chats"]] == [second["id"]]
    rest = await client.get(f"/chats?limit=1&before={page['before']}", headers=as_user("carol"))
    assert [c["id"] for c in rest.json()["chats"]] == [first["id"]]


# -- in process: httpx's ASGI transport, SQLite ------------------------------------------


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[tuple[Any, sa.Engine, Any]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'chat.sqlite3'}"
    chat_app.migrate(url)
    app = chat_app.create_app(url)
    model = DemoModel(0)
    transport = httpx.ASGITransport(app=app)
    engine = sync_engine(url)
    with chat_app.web_agent.override(model=model):
        async with httpx.AsyncClient(transport=transport, base_url="http://chat") as client:
            yield client, engine, model
    await app.state.engine.dispose()
    engine.dispose()


async def test_every_route_in_process(local: tuple[Any, sa.Engine, Any]) -> None:
    client, _, _ = local
    await every_route(client)


async def test_another_users_id_is_not_found_on_every_route(
    local: tuple[Any, sa.Engine, Any],
) -> None:
    client, engine, model = local
    await start(client, "ann", "warm")
    calls = len(model.requests)
    await other_user_everywhere(client, engine)
    assert len(model.requests) == calls + 3  # Ann's own turns only


@needs_listing
async def test_listing_in_process(local: tuple[Any, sa.Engine, Any]) -> None:
    client, _, _ = local
    await listing(client)


@needs_idempotency
async def test_a_retried_post_is_not_a_second_turn(local: tuple[Any, sa.Engine, Any]) -> None:
    client, _, model = local
    ann = {**as_user("ann"), "Idempotency-Key": "k1"}
    first = await client.post("/chats", json={"message": "Hi"}, headers=ann)
    again = await client.post("/chats", json={"message": "Hi"}, headers=ann)
    assert first.status_code == 201 and again.json()["id"] == first.json()["id"]
    key = first.json()["id"]
    turn = {**as_user("ann"), "Idempotency-Key": "k2"}
    calls = len(model.requests)
    replies = [
        await client.post(f"/chats/{key}/messages", json={"message": "Again"}, headers=turn)
        for _ in range(2)
    ]
    assert [r.status_code for r in replies] == [200, 200]
    assert replies[0].json() == replies[1].json()
    assert len(model.requests) == calls + 1
    conflict = await client.post(f"/chats/{key}/messages", json={"message": "Other"}, headers=turn)
    assert conflict.status_code == 409


# -- a real uvicorn on 127.0.0.1, PostgreSQL ----------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, sa.Engine]]:
    why = postgres_reachable()
    if why is not None:
        if running_under_ci():
            pytest.fail(why)
        pytest.skip(why)
    with chat_database() as url:
        env = {"AGENT_SESSION_DATABASE_URL": url, "CHAT_DEMO_DELAY": "0.05"}
        with serving(env) as server:
            engine = sync_engine(url)
            try:
                yield server.url, engine
            finally:
                engine.dispose()


@pytest.mark.slow
async def test_under_uvicorn_on_postgresql(served: tuple[str, sa.Engine]) -> None:
    base_url, engine = served
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await every_route(client)
        await other_user_everywhere(client, engine)


@pytest.mark.slow
async def test_twenty_concurrent_clients_on_one_chat(served: tuple[str, sa.Engine]) -> None:
    base_url, engine = served
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        chat = await start(client, "erin", "Let us count")
        key = chat["id"]

        async def post(number: int) -> tuple[int, httpx.Response]:
            async with httpx.AsyncClient(base_url=base_url, timeout=60) as own:
                return number, await own.post(
                    f"/chats/{key}/messages",
                    json={"message": f"message {number}"},
                    headers=as_user("erin"),
                )

        results = await asyncio.gather(*(post(n) for n in range(20)))
        committed = {n for n, r in results if r.status_code == 200}
        for _, response in results:
            assert response.status_code in (200, 409), response.text
        assert len(committed) >= 10, [r.status_code for _, r in results]
        transcript = (await client.get(f"/chats/{key}?limit=200", headers=as_user("erin"))).json()
    messages = transcript["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * (len(committed) + 1)
    users = [m["text"] for m in messages[2::2]]
    assert sorted(users) == sorted(f"message {n}" for n in committed)  # each once, no other
    for question, reply in zip(messages[2::2], messages[3::2], strict=True):
        assert f"You said: {question['text']!r}" in reply["output"]["answer"]
    with engine.connect() as conn:
        status = conn.execute(
            sa.text("SELECT status FROM web_chats WHERE id = :id"), {"id": key}
        ).scalar()
        history = conn.execute(
            sa.text("SELECT count(*) FROM web_chats_history WHERE session_id = :id"), {"id": key}
        ).scalar()
    assert status == "completed"
    assert history == len(committed) + 1


@pytest.mark.slow
async def test_an_sse_client_that_goes_away_ends_the_turn(served: tuple[str, sa.Engine]) -> None:
    base_url, engine = served
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        chat = await start(client, "fred", "Hello")
        key = chat["id"]
        stored = rows(engine, "web_chats_history")
        async with client.stream(
            "POST",
            f"/chats/{key}/messages",
            json={"message": "Tell me a long story"},
            headers={**as_user("fred"), "Accept": "text/event-stream"},
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("event: text_delta"):
                    with engine.connect() as conn:
                        seen_running = conn.execute(
                            sa.text("SELECT status FROM web_chats WHERE id = :id"), {"id": key}
                        ).scalar()
                    break  # the client goes away after the first token
        deadline = time.monotonic() + 15
        while True:
            with engine.connect() as conn:
                status = conn.execute(
                    sa.text("SELECT status FROM web_chats WHERE id = :id"), {"id": key}
                ).scalar()
            if status != "running" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert (seen_running, status) == ("running", "failed")
        assert rows(engine, "web_chats_history") == stored  # nothing of the turn stored
        transcript = (await client.get(f"/chats/{key}", headers=as_user("fred"))).json()
        assert [m["text"] for m in transcript["messages"] if m["role"] == "user"] == ["Hello"]
        assert transcript["status"] == "failed"
        # The chat goes on.
        response = await client.post(
            f"/chats/{key}/messages", json={"message": "Short one"}, headers=as_user("fred")
        )
        assert response.status_code == 200 and response.json()["status"] == "completed"
