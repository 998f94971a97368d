"""Stored size of the context, measured in the database, on the whole matrix.

A session of 20 turns must take at most 1.5 times the bytes of its bare chat
messages (the compact UTF-8 JSON of each message's role and content), for
plain-text and structured agents, in ASCII and in CJK with emoji. Non-ASCII text is
stored as UTF-8, never as ``\\u`` escapes, whatever ``json_serializer`` the engine
was created with. The messages have the sizes of a support chat: user messages of
100 to 300 characters, replies of 300 to 800.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from agent_session import Agent, AgentSessionMixin, ModelResponse, Usage
from agent_session.context import load_context, split_document
from agent_session.testing import FunctionModel
from support.databases import Database
from support.sessions import Api

TURNS = 20
LIMIT = 1.5
DATA = Path(__file__).parent / "data"

_ASCII = (
    "account billing invoice password reset email server domain backup restore "
    "the a to and of for your we you can please check settings page support plan "
    "upgrade storage limit error message minutes hours today again thanks sorry "
    "open choose click link team order shipped refund renew certificate dns"
)
_CJK = (
    "東京 大阪 請求書 パスワード 再設定 メール サーバー ドメイン バックアップ 復元 "
    "お客様 確認 設定 画面 サポート プラン 容量 エラー 今日 ありがとう 申し訳 "
    "注文 発送 返金 証明書 更新 账户 发票 密码 邮件 服务器 域名 备份 恢复 谢谢 "
    "🙂 🎉 🍣 🚀 ✅ 👩‍💻"
)
ASCII_WORDS, CJK_WORDS = _ASCII.split(), _CJK.split()


def _text(rng: random.Random, words: list[str], low: int, high: int) -> str:
    """Word salad of ``low`` to ``high`` characters (different every call)."""
    target = rng.randint(low, high)
    parts: list[str] = []
    size = 0
    while size < target:
        word = rng.choice(words)
        parts.append(word)
        size += len(word) + 1
    return " ".join(parts)[:target].strip() + "."


class Ticket(BaseModel):
    subject: str
    body: str
    priority: int


class Answer(BaseModel):
    answer: str
    follow_up_question: str | None
    tags: list[str]


def _model(words: list[str], structured: bool, seed: int) -> FunctionModel:
    rng = random.Random(seed)

    def reply(messages: list[dict[str, Any]]) -> ModelResponse:
        if structured:
            text = Answer(
                answer=_text(rng, words, 250, 650),
                follow_up_question=_text(rng, words, 40, 100),
                tags=[rng.choice(words), rng.choice(words)],
            ).model_dump_json()
        else:
            text = _text(rng, words, 300, 800)
        prompt = sum(len(str(m.get("content", ""))) for m in messages) // 4
        completion = len(text) // 4
        return ModelResponse(
            text=text,
            usage=Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
            ),
            cost=prompt * 0.15e-6 + completion * 0.6e-6,
            model="gpt-4o-mini-2024-07-18",
            finish_reason="stop",
        )

    return FunctionModel(reply, name="openai/gpt-4o-mini")


class Base(DeclarativeBase):
    pass


INSTRUCTION = "You are a friendly support assistant for {{ company }}. Answer briefly."
AGENTS = {
    "plain-ascii": Agent(_model(ASCII_WORDS, False, 1), instruction=INSTRUCTION),
    "plain-cjk-emoji": Agent(_model(CJK_WORDS, False, 2), instruction=INSTRUCTION),
    "structured-ascii": Agent(
        _model(ASCII_WORDS, True, 3),
        instruction=INSTRUCTION,
        input_schema=Ticket,
        output_schema=Answer,
    ),
    "structured-cjk-emoji": Agent(
        _model(CJK_WORDS, True, 4),
        instruction=INSTRUCTION,
        input_schema=Ticket,
        output_schema=Answer,
    ),
}
SESSIONS: dict[str, Any] = {}
for _kind, _agent in AGENTS.items():
    SESSIONS[_kind] = type(
        f"Chat_{_kind.replace('-', '_')}",
        (AgentSessionMixin, Base),
        {
            "__tablename__": f"size_{_kind.replace('-', '_')}",
            "__agent__": _agent,
            "__annotations__": {"id": Mapped[int]},
            "id": mapped_column(primary_key=True, autoincrement=True),
        },
    )


class Legacy(AgentSessionMixin, Base):
    """A plain-text agent whose rows may hold version-1 documents."""

    __tablename__ = "size_legacy"
    __agent__ = Agent(_model(CJK_WORDS, False, 5))
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


BOUND: list[Any] = []


class RecordingJSON(TypeDecorator[Any]):
    """An application's own JSON type: it sees every value bound to the column."""

    impl = sa.JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        BOUND.append(value)
        return value


class OwnType(AgentSessionMixin, Base):
    __tablename__ = "size_own_type"
    __agent__ = Agent(_model(CJK_WORDS, False, 6))
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    context: Mapped[Any] = mapped_column(RecordingJSON(), nullable=True)


def _input(kind: str, rng: random.Random) -> Any:
    words = CJK_WORDS if "cjk" in kind else ASCII_WORDS
    if kind.startswith("structured"):
        return Ticket(
            subject=_text(rng, words, 20, 60),
            body=_text(rng, words, 60, 200),
            priority=rng.randint(1, 3),
        )
    return _text(rng, words, 100, 300)


_TEXT = {"postgresql": "context::text", "mysql": "context", "sqlite": "context"}
_BYTES = {
    "postgresql": "octet_length(context::text)",
    "mysql": "octet_length(context)",
    "sqlite": "length(CAST(context AS BLOB))",
}


_ROW_BYTES = {
    "postgresql": "octet_length(data)",
    "mysql": "octet_length(data)",
    "sqlite": "length(CAST(data AS BLOB))",
}


def stored(database: Database, table: sa.Table, key: int) -> tuple[str, int]:
    """The context of row ``key`` as the database holds it: its text and its bytes."""
    query = sa.text(
        f"SELECT {_TEXT[database.dialect]}, {_BYTES[database.dialect]} "
        f"FROM {table.name} WHERE id = :id"
    )
    with database.sync_engine().connect() as conn:
        text, size = conn.execute(query, {"id": key}).one()
    return str(text), int(size)


def stored_rows(database: Database, table: sa.Table, key: int) -> tuple[str, int]:
    """The history rows of session ``key`` as the database holds them: their data
    (joined by newlines) and their bytes."""
    query = sa.text(
        f"SELECT data, {_ROW_BYTES[database.dialect]} FROM {table.name}_history "
        "WHERE session_id = :id ORDER BY seq"
    )
    with database.sync_engine().connect() as conn:
        rows = conn.execute(query, {"id": key}).all()
    return "\n".join(str(text) for text, _ in rows), sum(int(size) for _, size in rows)


def bare_bytes(context: Any) -> int:
    """The compact UTF-8 JSON of the chat messages' role and content."""
    if isinstance(context, dict):
        context = load_context(context)
    bare = [{"role": m.role, "content": m.content} for m in context.messages]
    return len(json.dumps(bare, ensure_ascii=False, separators=(",", ":")).encode())


def _escaping(value: Any) -> str:
    """A serializer that escapes all non-ASCII and indents: what the library must not use."""
    return json.dumps(value, ensure_ascii=True, indent=2)


@pytest.mark.parametrize("kind", list(AGENTS))
async def test_twenty_turns_store_at_most_one_and_a_half_times_the_messages(
    database: Database, kind: str
) -> None:
    database.create_all(Base.metadata)
    cls = SESSIONS[kind]
    api = Api(database, cls)
    rng = random.Random(kind)
    async with api.session() as db:
        chat = await api.start(db, _input(kind, rng), instruction_args={"company": "Acme"})
        for _ in range(TURNS - 1):
            chat = await api.cont(db, chat, _input(kind, rng))
        await api.commit(db)
        key, document = chat.id, chat.context
        context = await api.context(db, key)

    text, size = stored(database, cls.__table__, key)
    rows_text, rows_size = stored_rows(database, cls.__table__, key)
    assert json.loads(text) == document
    assert document["turns"] == TURNS
    assert size + rows_size <= LIMIT * bare_bytes(context)
    # The head is small: the instruction, the totals and the newest reply.
    assert size - len(json.dumps(document["last"], ensure_ascii=False).encode()) < 1_000
    assert "\\u" not in text and "\\u" not in rows_text


async def test_non_ascii_is_stored_as_utf8_whatever_the_engine_serializer(
    database: Database,
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, SESSIONS["structured-cjk-emoji"], json_serializer=_escaping)
    ticket = Ticket(subject="東京 🍣", body="請求書が届きません 👩‍💻 Köln", priority=2)
    async with api.session() as db:
        chat = await api.start(db, ticket, instruction_args={"company": "Ünï 🚀"})
        chat = await api.cont(db, chat, ticket)
        await api.commit(db)
        key, document = chat.id, chat.context
    async with api.session() as db:
        context = await api.context(db, key)  # read back through the engine's deserializer

    text, size = stored(database, api.model.__table__, key)
    rows_text, _ = stored_rows(database, api.model.__table__, key)
    compact = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    assert "\\u" not in text and "\\u" not in rows_text
    assert "Ünï 🚀" in text
    assert "東京 🍣" in rows_text and "👩‍💻 Köln" in rows_text
    assert size == len(compact.encode())
    assert split_document(context.to_document(), inline=False) == (document, [])
    assert context.messages[1].parse_input(api.model.__agent__) == ticket


@pytest.mark.parametrize(
    "size", [pytest.param(28_000, id="28KB"), pytest.param(8_000_000, id="8MB")]
)
async def test_a_large_cjk_and_emoji_message_is_stored_once_as_utf8(
    database: Database, size: int
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, Legacy)
    unit = "東京の請求書について 🍣🙂 "  # 36 bytes of UTF-8
    message = (unit * (size // len(unit.encode()) + 1)).encode()[:size].decode(errors="ignore")
    async with api.session() as db:
        chat = await api.start(db, message)
        await api.commit(db)
        context = await api.context(db, chat.id)
    text, head_size = stored(database, Legacy.__table__, chat.id)
    rows_text, rows_size = stored_rows(database, Legacy.__table__, chat.id)
    assert "\\u" not in text and "\\u" not in rows_text
    # Stored once, as UTF-8 (in its turn's row, not in the head): the chat messages
    # and a few hundred bytes of metadata.
    assert message not in text and head_size < 5_000
    assert len(message.encode()) < bare_bytes(context) < rows_size
    assert rows_size - bare_bytes(context) < 1_000


async def test_a_version_1_row_continues_and_is_written_back_as_current_version(
    database: Database,
) -> None:
    database.create_all(Base.metadata)
    v1 = json.loads((DATA / "context_v1_plain_text.json").read_text(encoding="utf-8"))
    v2 = json.loads((DATA / "context_v2_plain_text.json").read_text(encoding="utf-8"))
    with database.sync_engine().begin() as conn:
        key = conn.execute(
            sa.insert(Legacy.__table__).values(context=v1).returning(Legacy.__table__.c.id)
        ).scalar_one()
    api = Api(database, Legacy)
    async with api.session() as db:
        chat = await api.cont(db, key, "Ich habe keine E-Mail bekommen 📧")
        await api.commit(db)

    text, _ = stored(database, Legacy.__table__, key)
    rows_text, _ = stored_rows(database, Legacy.__table__, key)
    head = json.loads(text)
    assert head["version"] == 4 and "messages" not in head
    async with api.session() as db:
        document = (await api.context(db, key)).to_document()
    messages = [{k: v for k, v in m.items() if k != "id"} for m in document["messages"]]
    assert messages[:-2] == v2["messages"]
    assert document["created_at"] == v2["created_at"]
    assert document["instruction_args"] == v1["instruction_args"]
    assert document["turns"] == 3
    assert messages[-2]["content"] == "Ich habe keine E-Mail bekommen 📧"
    assert "\\u" not in text and "\\u" not in rows_text
    assert chat.last_output == messages[-1]["content"]


async def test_a_context_column_of_the_applications_own_type_keeps_its_processing(
    database: Database,
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, OwnType)
    BOUND.clear()
    async with api.session() as db:
        chat = await api.start(db, "東京 🍣")
        chat = await api.cont(db, chat, "again")
        await api.commit(db)
        key = chat.id
    async with api.session() as db:
        context = await api.context(db, key)
    assert [value is not None and value["turns"] for value in BOUND] == [1, 2]
    assert split_document(context.to_document(), inline=False) == (chat.context, [])
