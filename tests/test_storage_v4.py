"""Format 4 on the whole database matrix: a small head, the history in rows.

A turn writes only its new rows and a head whose size does not grow with the history;
a lost compare-and-swap writes no row; a windowed turn reads only its window's rows;
``where=`` scopes the history reads; deleting a session deletes its rows; a version-3
document is read, takes a turn and is then stored as rows; the single-column layout
keeps everything in the context column. ``get_messages`` and ``import_session``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agent_session import (
    Agent,
    AgentSessionMixin,
    ConfigurationError,
    InputValidationError,
    SessionNotFoundError,
    StaleSessionError,
)
from agent_session.history import LastTurns, Summarize
from agent_session.testing import FunctionModel, TestModel
from support.databases import Database
from support.sessions import Api, history_rows, joined_rows, stored_rows

DATA = Path(__file__).parent / "data"

agent = Agent(TestModel(text="fine"), instruction="You help.")
windowed = Agent(TestModel(text="fine"), instruction="You help.", history=LastTurns(2))


class Base(DeclarativeBase):
    pass


class V4Chat(AgentSessionMixin, Base):
    __tablename__ = "v4_chats"
    __agent__ = agent
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(16), default="a")


class V4Windowed(AgentSessionMixin, Base):
    __tablename__ = "v4_windowed"
    __agent__ = windowed
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


class V4Budget(AgentSessionMixin, Base):
    """A session budget without a status column: each turn claims the row first."""

    __tablename__ = "v4_budget"
    __agent__ = Agent(TestModel(text="fine"), instruction="You help.", max_session_tokens=10**9)
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


class V4Inline(AgentSessionMixin, Base):
    __tablename__ = "v4_inline"
    __agent__ = agent
    __history_table__ = None
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


def _head(database: Database, table: sa.Table, key: Any) -> dict[str, Any]:
    [row] = [r for r in stored_rows(database, table) if r["id"] == key]
    head = row["context"]
    return json.loads(head) if isinstance(head, str) else head


def _rows_of(database: Database, table: sa.Table, key: Any) -> list[dict[str, Any]]:
    return [r for r in history_rows(database, table) if r["session_id"] == key]


@pytest.fixture(params=["session", "maker"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_the_history_table_is_on_the_models_metadata() -> None:
    table = Base.metadata.tables["v4_chats_history"]
    assert [c.name for c in table.primary_key.columns] == ["session_id", "seq"]
    [fk] = table.foreign_keys
    assert fk.column is V4Chat.__table__.c.id and fk.ondelete == "CASCADE"
    assert "v4_inline_history" not in Base.metadata.tables


async def test_a_turn_writes_only_its_new_rows(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, V4Chat, maker=True)
    chat = await api.start(None, "hello")
    sizes = []
    for turn in range(2, 12):
        chat = await api.cont(None, chat.id, f"turn {turn} " + "x" * 200)
        rows = _rows_of(database, V4Chat.__table__, chat.id)
        assert [r["seq"] for r in rows] == list(range(1, turn + 1))
        assert [r["parent"] for r in rows] == [None, *range(1, turn)]
        head = _head(database, V4Chat.__table__, chat.id)
        assert head["path"] == [[1, turn]] and head["next"] == turn + 1
        assert "messages" not in head
        sizes.append(len(json.dumps(head)))
    # The head does not grow with the history (a few digits of the totals may).
    assert max(sizes) - min(sizes) < 40, sizes
    # Each row is written once: the first row is unchanged by every later turn.
    first = json.loads(_rows_of(database, V4Chat.__table__, chat.id)[0]["data"])
    assert [m["role"] for m in first] == ["user", "assistant"]
    context = await api.context(None, chat.id)
    assert context.turns == 11 and len(context.messages) == 23
    assert context.messages[0].id == "0.0" and context.messages[1].id == "1.0"
    assert context.messages[2].parent == "1.0" and context.messages[3].parent == "1.1"


async def test_a_lost_compare_and_swap_leaves_no_rows(database: Database, mode: str) -> None:
    database.create_all(Base.metadata)
    bumped: list[int] = []

    def interfering(messages: list[dict[str, Any]]) -> str:
        if messages[-1]["content"] == "race" and not bumped:
            table = V4Chat.__table__
            with database.sync_engine().begin() as conn:
                conn.execute(sa.update(table).values(context_revision=table.c.context_revision + 1))
            bumped.append(1)
        return "fine"

    api = Api(database, V4Chat, maker=mode == "maker")
    with V4Chat.__agent__.override(model=FunctionModel(interfering)):
        async with api.session() as db:
            chat = await api.start(None if api.maker else db, "hello")
            await api.commit(db)
            key = chat.id
        async with api.session() as db:
            with pytest.raises(StaleSessionError):
                await api.cont(None if api.maker else db, key, "race")
            await api.commit(db)
    assert bumped
    assert [r["seq"] for r in _rows_of(database, V4Chat.__table__, key)] == [1]
    assert _head(database, V4Chat.__table__, key)["next"] == 2


async def test_a_windowed_turn_reads_only_its_window(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, V4Windowed, maker=True)
    chat = await api.start(None, "hello")
    for turn in range(8):
        chat = await api.cont(None, chat.id, f"turn {turn}")
    fetched: list[int] = []

    def count_rows(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "v4_windowed_history" in statement and statement.lstrip().upper().startswith("SELECT"):
            fetched.append(1)

    engine = api.engine.sync_engine if api.is_async else api.engine
    rows_seen: list[int] = []
    table = V4Windowed.__table__
    sa.event.listen(engine, "before_cursor_execute", count_rows)
    from agent_session import _store

    real = _store._StoreBase.rows_statement
    real_both = _store._StoreBase.snapshot_and_rows

    def spy(self: Any, op: Any, snap: Any) -> Any:
        read = real(self, op, snap)
        if read is not None:
            rows_seen.append(read[1]["last"] - read[1]["first"] + 1)
        return read

    def spy_both(self: Any, op: Any, found: Any, newest: int) -> Any:
        rows_seen.append(sum(1 for row in found if row[1] is not None))
        return real_both(self, op, found, newest)

    _store._StoreBase.rows_statement = spy  # type: ignore[method-assign]
    _store._StoreBase.snapshot_and_rows = spy_both  # type: ignore[method-assign]
    try:
        chat = await api.cont(None, chat.id, "last")
    finally:
        _store._StoreBase.rows_statement = real  # type: ignore[method-assign]
        _store._StoreBase.snapshot_and_rows = real_both  # type: ignore[method-assign]
        sa.event.remove(engine, "before_cursor_execute", count_rows)
    # One statement reads the head and the window's two rows, and no other row.
    assert fetched == [1] and rows_seen == [2]
    assert len(_rows_of(database, table, chat.id)) == 10
    # The request sent the window: system, 2 turns, the new message.
    request = V4Windowed.__agent__.model.requests[-1]  # type: ignore[attr-defined]
    assert [m["role"] for m in request.messages] == ["system", *["user", "assistant"] * 2, "user"]


async def test_where_scopes_the_history_reads(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, V4Chat, maker=True)
    chat = await api.start(None, "hello", owner="a")
    chat = await api.cont(None, chat.id, "more")
    mine = V4Chat.owner == "a"
    other = V4Chat.owner == "b"
    assert len(await api.messages(None, chat.id, where=mine)) == 4
    assert (await api.context(None, chat.id, where=mine)).turns == 2
    for read in (api.messages, api.context):
        with pytest.raises(SessionNotFoundError):
            await read(None, chat.id, where=other)


async def test_deleting_a_session_deletes_its_rows(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, V4Chat)
    async with api.session() as db:
        chat = await api.start(db, "hello")
        chat = await api.cont(db, chat, "more")
        other = await api.start(db, "other")
        await api.commit(db)
        key, other_key = chat.id, other.id
    assert len(_rows_of(database, V4Chat.__table__, key)) == 2
    async with api.session() as db:
        await api.delete(db, await api.get(db, key))
        await api.commit(db)
    assert _rows_of(database, V4Chat.__table__, key) == []
    assert len(_rows_of(database, V4Chat.__table__, other_key)) == 1


async def test_claims_write_the_head_only(database: Database) -> None:
    """With a session budget and no status column a turn claims the row (a write of
    the head) before its model call: the claim adds no row, the turn adds one."""
    database.create_all(Base.metadata)
    api = Api(database, V4Budget, maker=True)
    chat = await api.start(None, "hello")
    for turn in range(2, 5):
        chat = await api.cont(None, chat.id, f"turn {turn}")
        rows = [r for r in history_rows(database, V4Budget.__table__) if r["session_id"] == chat.id]
        assert [r["seq"] for r in rows] == list(range(1, turn + 1))
        assert chat.context_revision == 2 * turn - 1  # a claim and a turn each
    assert "claimed_at" not in _head(database, V4Budget.__table__, chat.id)


@pytest.mark.parametrize("model", [V4Chat, V4Budget], ids=["plain", "claimed"])
async def test_a_version_3_document_takes_a_turn_and_is_then_in_rows(
    database: Database, model: Any
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, model)
    v3 = json.loads((DATA / "context_v3_tool_calls.json").read_text())
    table = model.__table__
    with database.sync_engine().begin() as conn:
        key = conn.execute(
            sa.insert(table).values(context=v3, context_revision=1)
        ).inserted_primary_key[0]
    async with api.session() as db:
        before = await api.context(db, key)
        assert before.messages[1].id is None and before.path == []
        await api.cont(db, key, "one more")
        await api.commit(db)
        after = await api.context(db, key)
    head = _head(database, table, key)
    assert head["version"] == 4 and "messages" not in head
    turns = v3["turns"]
    assert head["path"] == [[1, turns + 1]]
    assert [r["seq"] for r in _rows_of(database, table, key)] == list(range(1, turns + 2))
    assert [m.role for m in after.messages[:-2]] == [m.role for m in before.messages]
    # The instruction is the agent's own from this turn on; the turns are as they were.
    assert [m.content for m in after.messages[1:-2]] == [m.content for m in before.messages[1:]]
    assert after.turns == turns + 1


async def test_the_single_column_layout_keeps_every_row_in_the_head(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, V4Inline, maker=True)
    chat = await api.start(None, "hello")
    chat = await api.cont(None, chat.id, "more")
    [row] = [r for r in stored_rows(database, V4Inline.__table__) if r["id"] == chat.id]
    head = row["context"]
    head = json.loads(head) if isinstance(head, str) else head
    assert [r[0] for r in head["rows"]] == [1, 2] and head["path"] == [[1, 2]]
    context = await api.context(None, chat.id)
    assert [m.id for m in context.messages] == ["0.0", "1.0", "1.1", "2.0", "2.1"]
    page = await api.messages(None, chat.id, limit=3)
    assert [m.id for m in page] == ["1.1", "2.0", "2.1"]


async def test_get_messages_pages_back_from_the_newest(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, V4Chat, maker=True)
    chat = await api.start(None, "t1")
    for turn in range(2, 6):
        chat = await api.cont(None, chat.id, f"t{turn}")
    pages = []
    before = None
    read: list[int] = []
    from agent_session import _store

    real = _store._StoreBase.rows_statement

    def spy(self: Any, op: Any, snap: Any) -> Any:
        found = real(self, op, snap)
        if found is not None:
            read.append(found[1]["last"] - found[1]["first"] + 1)
        return found

    _store._StoreBase.rows_statement = spy  # type: ignore[method-assign]
    try:
        while True:
            page = await api.messages(None, chat.id, before=before, limit=3)
            if not page:
                break
            pages.append([m.id for m in page])
            before = page[0].id
    finally:
        _store._StoreBase.rows_statement = real  # type: ignore[method-assign]
    # Each page reads the rows of at most ``limit`` turns, up to the page's end.
    assert read == [3, 3, 3, 1, 1]
    assert pages == [
        ["4.1", "5.0", "5.1"],
        ["3.0", "3.1", "4.0"],
        ["1.1", "2.0", "2.1"],
        ["1.0"],
    ]
    assert (await api.messages(None, chat.id, limit=0)) == []
    with pytest.raises(InputValidationError):
        await api.messages(None, chat.id, before="nonsense")
    with pytest.raises(InputValidationError):
        await api.messages(None, chat.id, limit=-1)


TOOL_CONVERSATION = [
    {"role": "system", "content": "ignored: the agent has an instruction"},
    {"role": "user", "content": "weather?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    {"role": "assistant", "content": "Sunny."},
    {"role": "user", "content": "thanks"},
    {"role": "assistant", "content": "You're welcome."},
]


async def test_import_session_stores_the_conversation_as_rows(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, V4Chat, maker=True)
    chat = await api.import_(None, TOOL_CONVERSATION, owner="z")
    context = await api.context(None, chat.id)
    assert context.turns == 2
    assert [m.role for m in context.messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert context.messages[0].content == "You help."
    assert [r["seq"] for r in _rows_of(database, V4Chat.__table__, chat.id)] == [1, 2]
    chat = await api.cont(None, chat.id, "and tomorrow?")
    assert chat.last_output == "fine"


@pytest.mark.parametrize(
    ("messages", "index"),
    [
        ([{"role": "assistant", "content": "hi"}], 0),
        ([{"role": "user", "content": "a"}], 0),
        ([{"role": "user", "content": "a"}, {"role": "tool", "tool_call_id": "x"}], 1),
        (TOOL_CONVERSATION[:3] + TOOL_CONVERSATION[4:], 2),
        ([*TOOL_CONVERSATION[1:3], {**TOOL_CONVERSATION[3], "tool_call_id": "c9"}], 2),
        ([{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}], 1),
        ([{"role": "user", "content": "a", "audio": {"x": 1}}], 0),
        ([*TOOL_CONVERSATION[1:4], {"role": "system", "content": "x"}], 3),
    ],
)
async def test_a_bad_imported_message_is_named_and_nothing_is_stored(
    database: Database, messages: list[Any], index: int
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, V4Chat, maker=True)
    with pytest.raises(InputValidationError, match=f"message {index} "):
        await api.import_(None, messages)
    assert stored_rows(database, V4Chat.__table__) == []
    assert history_rows(database, V4Chat.__table__) == []


async def test_import_where_the_new_row_does_not_match_stores_nothing(
    database: Database, mode: str
) -> None:
    database.create_all(Base.metadata)
    api = Api(database, V4Chat, maker=mode == "maker")
    async with api.session() as db:
        with pytest.raises(InputValidationError, match="where"):
            await api.import_(
                None if api.maker else db,
                TOOL_CONVERSATION,
                owner="a",
                where=V4Chat.owner == "b",
            )
        await api.commit(db)
    assert stored_rows(database, V4Chat.__table__) == []
    assert history_rows(database, V4Chat.__table__) == []


@pytest.mark.slow
async def test_import_a_hundred_thousand_messages(tmp_path: Path) -> None:
    from support.databases import open_database

    async with open_database("sqlite", tmp_path) as database:
        database.create_all(Base.metadata)
        api = Api(database, V4Windowed, maker=True)
        messages: list[dict[str, Any]] = []
        for turn in range(50_000):
            messages.append({"role": "user", "content": f"question {turn}"})
            messages.append({"role": "assistant", "content": f"answer {turn}"})
        chat = await api.import_(None, messages)
        assert len(_rows_of(database, V4Windowed.__table__, chat.id)) == 50_000
        page = await api.messages(None, chat.id, limit=2)
        assert [m.content for m in page] == ["question 49999", "answer 49999"]
        chat = await api.cont(None, chat.id, "one more")
        assert _head(database, V4Windowed.__table__, chat.id)["path"] == [[1, 50_001]]
        assert joined_rows(database, V4Windowed.__table__)[0]["context"]["turns"] == 50_001


def test_a_history_table_name_taken_by_another_table_is_refused() -> None:
    class Other(DeclarativeBase):
        pass

    sa.Table("clash_history", Other.metadata, sa.Column("id", sa.Integer, primary_key=True))
    with pytest.raises(ConfigurationError, match="clash_history"):

        class Clash(AgentSessionMixin, Other):
            __tablename__ = "clash"
            __agent__ = agent
            id: Mapped[int] = mapped_column(primary_key=True)


def test_a_named_history_table_and_a_composite_key() -> None:
    class Own(DeclarativeBase):
        pass

    class Composite(AgentSessionMixin, Own):
        __tablename__ = "composite_chats"
        __agent__ = agent
        __history_table__ = "composite_turns"
        tenant: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
        number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)

    table = Own.metadata.tables["composite_turns"]
    assert [c.name for c in table.primary_key.columns] == [
        "session_tenant",
        "session_number",
        "seq",
    ]
    engine = sa.create_engine("sqlite://")
    Own.metadata.create_all(engine)
    from sqlalchemy.orm import Session

    with Session(engine) as db:
        chat = Composite.start_session(db, "hi", tenant="t", number=1)
        Composite.continue_session(db, chat, "more")
        assert Composite.get_context(db, ("t", 1)).turns == 2
        assert [m.id for m in Composite.get_messages(db, ("t", 1), limit=1)] == ["2.1"]
        db.delete(chat)
        db.flush()
        assert db.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0


def _replies(messages: list[dict[str, Any]]) -> str:
    if str(messages[0].get("content", "")).startswith("You summarize"):
        return "a summary of the turns so far"
    return "fine " + "y" * 40


def _length(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content") or "")) for m in messages)


class V4Compact(AgentSessionMixin, Base):
    __tablename__ = "v4_compact"
    __agent__ = Agent(
        FunctionModel(_replies),
        instruction="You help.",
        compaction=Summarize(when_tokens_over=200, keep_last_turns=1, counter=_length),
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


async def test_compaction_reads_the_turns_after_the_summary_only(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, V4Compact, maker=True)
    chat = await api.start(None, "turn 1 " + "x" * 60)
    for turn in range(2, 7):
        chat = await api.cont(None, chat.id, f"turn {turn} " + "x" * 60)
    head = _head(database, V4Compact.__table__, chat.id)
    summary = head["summary"]
    rows = _rows_of(database, V4Compact.__table__, chat.id)
    by_seq = {r["seq"]: r for r in rows}
    # The head's summary is a row of its own, anchored at a turn on the path, which
    # it follows; the turns after the anchor are on the path, the summary is not.
    assert by_seq[summary["seq"]]["parent"] == summary["anchor"]
    path = [seq for first, last in head["path"] for seq in range(first, last + 1)]
    assert summary["anchor"] in path and summary["seq"] not in path
    after = path[path.index(summary["anchor"]) + 1 :]
    read: list[tuple[int, int]] = []
    from agent_session import _store

    real = _store._StoreBase.rows_statement

    def spy(self: Any, op: Any, snap: Any) -> Any:
        found = real(self, op, snap)
        if found is not None:
            read.append((found[1]["first"], found[1]["last"]))
        return found

    _store._StoreBase.rows_statement = spy  # type: ignore[method-assign]
    try:
        chat = await api.cont(None, chat.id, "one more")
    finally:
        _store._StoreBase.rows_statement = real  # type: ignore[method-assign]
    assert read and read[0][0] == (after[0] if after else None)
    # The whole context still holds every turn, each summary right after its anchor.
    context = await api.context(None, chat.id)
    assert context.turns == 7
    by_seq = {r["seq"]: r for r in _rows_of(database, V4Compact.__table__, chat.id)}
    ids = [m.id for m in context.messages]
    assert sum(m.meta.summary is not None for m in context.messages) >= 2
    for message in context.messages:
        if message.meta.summary is not None:
            before = ids[ids.index(message.id) - 1]
            assert (
                int(str(before).split(".")[0])
                == by_seq[int(str(message.id).split(".")[0])]["parent"]
            )


class V4CompactInline(AgentSessionMixin, Base):
    __tablename__ = "v4_compact_inline"
    __agent__ = V4Compact.__agent__
    __history_table__ = None
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)


async def test_compaction_in_the_single_column_layout(database: Database) -> None:
    database.create_all(Base.metadata)
    api = Api(database, V4CompactInline, maker=True)
    chat = await api.start(None, "turn 1 " + "x" * 60)
    for turn in range(2, 7):
        chat = await api.cont(None, chat.id, f"turn {turn} " + "x" * 60)
    [row] = [r for r in stored_rows(database, V4CompactInline.__table__) if r["id"] == chat.id]
    head = row["context"]
    head = json.loads(head) if isinstance(head, str) else head
    summary = head["summary"]
    rows = {seq: (parent, data) for seq, parent, data in head["rows"]}
    assert rows[summary["seq"]][0] == summary["anchor"]
    assert rows[summary["seq"]][1] == [summary["message"]]
    context = await api.context(None, chat.id)
    assert context.turns == 6
    assert [m.role for m in context.messages if m.role != "system"] == ["user", "assistant"] * 6
    assert any(m.meta.summary is not None for m in context.messages)
