"""Every message docs/errors.md quotes is the message really raised.

The convention of the page: in a table row, a message is quoted as the code span that
follows a colon (``ErrorName ...: `the message```), and it is the WHOLE message, with
``...`` standing for any text left out (at either end too). Each quote is a key of
``RAISERS`` below: a function that provokes that error (on SQLite, with test doubles)
and returns it. The test checks the class the row names and matches the message;
a quote without a raiser, or a raiser whose quote left the page, fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from agent_session import Agent, AgentSessionMixin, Tool, _flows, _store, llm
from agent_session.llm import ModelResponse
from agent_session.testing import FunctionModel, TestModel
from agent_session.tools import ToolCall

PAGE = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
_QUOTE = re.compile(r":\s+`([^`]+)`")
_ERROR_NAME = re.compile(r"`(\w+Error)`")


def quoted_messages() -> dict[str, str]:
    """Each quoted message of the page's table rows -> the error class its row names."""
    quotes: dict[str, str] = {}
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        for cell in line.strip("|").split("|"):
            names = _ERROR_NAME.findall(cell)
            for quote in _QUOTE.findall(cell):
                if names and not re.match(r"\.\w+=|\w+Error$", quote):  # not `.attempts=3`
                    quotes[quote] = names[0]
    return quotes


def matches(quote: str, message: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in re.split(r"\s*\.\.\.\s*", quote))
    return re.fullmatch(pattern, message, flags=re.DOTALL) is not None


# -- the models the raisers use --------------------------------------------------


class Question(BaseModel):
    message: str = Field(min_length=1)
    priority: int = 1


class Company(BaseModel):
    company: str


class Base(DeclarativeBase):
    pass


def pay(amount: float) -> str:
    """Pay an amount."""
    return "paid"


class Chat(AgentSessionMixin, Base):
    __tablename__ = "chats"
    __agent__ = Agent(TestModel(call_tools="none"), tools=[Tool(pay, requires_approval=True)])
    id: Mapped[int] = mapped_column(primary_key=True)


class StatusChat(AgentSessionMixin, Base):
    __tablename__ = "status_chats"
    __agent__ = Agent(TestModel())
    __status_attribute__ = "status"
    id: Mapped[int] = mapped_column(primary_key=True)


class Note(AgentSessionMixin, Base):
    __tablename__ = "notes"
    __agent__ = Agent(TestModel())
    id: Mapped[int] = mapped_column(primary_key=True)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    path = tmp_path_factory.mktemp("error_docs") / "chats.sqlite3"
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.1})
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


Raiser = Callable[[sa.Engine, pytest.MonkeyPatch], BaseException]
RAISERS: dict[str, Raiser] = {}


def raises(quote: str) -> Callable[[Raiser], Raiser]:
    def register(fn: Raiser) -> Raiser:
        RAISERS[quote] = fn
        return fn

    return register


def caught(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("nothing was raised")


def fresh(engine: sa.Engine, model: Any, key: int, **values: Any) -> Any:
    """A stored session with primary key ``key`` and one finished turn."""
    with Session(engine) as db:
        db.execute(sa.delete(model).where(model.id == key))
        db.commit()
    with Session(engine, expire_on_commit=False) as db:
        chat = model.start_session(db, "hi", id=key, **values)
        db.commit()
    return chat


def set_context(engine: sa.Engine, key: int, value: Any) -> None:
    with engine.begin() as connection:
        connection.execute(sa.update(Chat).where(Chat.id == key).values(context=value))


def paused(engine: sa.Engine, key: int, call_id: str = "pay") -> None:
    """Session ``key`` waits for the approval of the call ``call_id`` (of ``pay``)."""
    model = TestModel(replies=[ToolCall("pay", '{"amount": 5}', id=call_id)])
    with Chat.__agent__.override(model=model):
        fresh(engine, Chat, key)


# -- bad input -----------------------------------------------------------------------


@raises("invalid input for Question: 1 validation error ...")
def _invalid_input(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Agent(TestModel(), input_schema=Question).run({"message": ""}))


@raises("a plain string input needs an input schema with one field; Question has 2")
def _plain_string(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Agent(TestModel(), input_schema=Question).run("hi"))


@raises("invalid instruction_args for Company: ... Field required ...")
def _instruction_args(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    agent = Agent(TestModel(), instruction="For {{ company }}.", instruction_schema=Company)
    return caught(lambda: agent.run("hi", instruction_args={}))


@raises("instruction template: 'company' is undefined")
def _undefined(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    agent = Agent(TestModel(), instruction="For {{ company }}.")
    return caught(lambda: agent.run("hi", instruction_args={"compnay": "Acme"}))


@raises(
    "the stored instruction_args of session 71 no longer fit the agent's instruction (was "
    "instruction or instruction_schema changed?); pass instruction_args= to continue_session "
    "or resume_session, which replace them; nothing was sent or stored: invalid "
    "instruction_args for Company: ... Field required ..."
)
def _stored_args(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    fresh(engine, Note, 71)  # no instruction, no arguments
    agent = Agent(TestModel(), instruction="For {{ company }}.", instruction_schema=Company)
    mp.setattr(Note, "__agent__", agent)  # the next release
    return caught(lambda: Note.continue_session(sessionmaker(engine), 71, "hi"))


@raises(
    "model_settings may not set 'stream': the library makes each call and needs the whole reply"
)
def _call_settings(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Agent(TestModel()).run("hi", model_settings={"stream": True}))


@raises("model must be a LiteLLM model string or a Model, got 42")
def _call_model(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Agent(TestModel()).run("hi", model=42))  # type: ignore[arg-type]


@raises("instruction_args must be a dict, got list")
def _args_list(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    agent = Agent(TestModel(), instruction="For {{ company }}.")
    return caught(lambda: agent.run("hi", instruction_args=["Acme"]))  # type: ignore[arg-type]


@raises(
    "instruction template: unsafe operation: access to attribute '__class__' of 'str' "
    "object is unsafe."
)
def _sandbox(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    agent = Agent(TestModel(), instruction="{{ company.__class__.__mro__ }}")
    return caught(lambda: agent.run("hi", instruction_args={"company": "Acme"}))


@raises("instruction template has a syntax error on line 1: ...")
def _syntax(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Agent(TestModel(), instruction="Hello {{ company "))


@raises("no Chat session with primary key 1042")
def _unknown_key(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Chat.continue_session(sessionmaker(engine), 1042, "hi"))


@raises("Chat: bad primary key abc: id holds int values")
def _bad_key(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Chat.continue_session(sessionmaker(engine), "abc", "hi"))


@raises("expected a Chat or its primary key, got a Note")
def _other_model(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Chat.continue_session(sessionmaker(engine), Note(id=1), "hi"))


@raises(
    "stored context of session 1 is invalid: 3 error(s): messages: Input should be "
    "a valid list; ..."
)
def _invalid_context(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    stored = fresh(engine, Chat, 1).context
    set_context(engine, 1, {**stored, "messages": "many", "meta": [], "extra": 1})
    return caught(lambda: Chat.get_context(sessionmaker(engine), 1))


@raises(
    "stored context of session 1 has version 99, written by a newer agent-session; "
    "this release reads versions 1 to 4"
)
def _newer(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    fresh(engine, Chat, 1)
    set_context(engine, 1, {"version": 99, "messages": []})
    return caught(lambda: Chat.get_context(sessionmaker(engine), 1))


@raises("stored row of Chat session 1 cannot be read: JSONDecodeError: ...")
def _not_json(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    fresh(engine, Chat, 1)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE chats SET context = '{\"version\": 1, oops'"))
    return caught(lambda: Chat.get_context(sessionmaker(engine), 1))


@raises("stored context of session 1 is not a context document (got NULL)")
def _null(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    fresh(engine, Chat, 1)
    set_context(engine, 1, sa.null())
    return caught(lambda: Chat.get_context(sessionmaker(engine), 1))


@raises("input message is 1026 bytes; the limit is 1024 (Agent(max_input_bytes=...))")
def _size(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Agent(TestModel(), max_input_bytes=1024).run("é" * 513))


@raises(
    "model_settings may not set 'num_retries': use Agent(model_retries=...) for retries "
    "of failed calls"
)
def _owned_setting(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Agent(TestModel(), model_settings={"num_retries": 2}))


@raises("model_settings['timeout'] must be a number of seconds > 0, got '30'")
def _timeout_type(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Agent(TestModel(), model_settings={"timeout": "30"}))


@raises(
    "structured_output must be one of 'auto', 'json_schema', 'json_object', 'prompt', got 'json'"
)
def _structured_output(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Agent(TestModel(), structured_output="json"))  # type: ignore[arg-type]


@raises("Chat.start_session: ['context'] are managed by the library")
def _managed(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Chat.start_session(sessionmaker(engine), "hi", context={}))


@raises(
    "Chat: bad where= criteria: users.id = :id_1 uses users; criteria may only use the "
    "columns of chats (e.g. Chat.user_id == user.id)"
)
def _where(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    maker = sessionmaker(engine)
    return caught(lambda: Chat.continue_session(maker, 1, "hi", where=User.id == 1))


@raises("conflict_retries must be an int >= 0, got -1")
def _conflict_retries(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    maker = sessionmaker(engine)
    return caught(lambda: Chat.continue_session(maker, 1, "hi", conflict_retries=-1))


@raises("busy_timeout must be None or a number of seconds >= 0, got -1")
def _busy_timeout(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    maker = sessionmaker(engine)
    return caught(lambda: Chat.continue_session(maker, 1, "hi", busy_timeout=-1))


@raises('on_cancel=\'kept\': expected "discard" or "keep", with stream=True')
def _on_cancel(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    maker = sessionmaker(engine)
    return caught(
        lambda: Chat.continue_session(maker, 1, "hi", stream=True, on_cancel="kept")  # type: ignore[call-overload]
    )


@raises(
    "Chat: db must be a Session or a sessionmaker, got Engine (use the a-prefixed methods "
    "with AsyncSession)"
)
def _db_type(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Chat.continue_session(engine, 1, "hi"))  # type: ignore[arg-type]


@raises(
    "approvals must decide every pending call of session 3 exactly (pending: ['pay']): "
    "missing decisions for ['pay']"
)
def _approvals(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    paused(engine, 3)
    return caught(lambda: Chat.resume_session(sessionmaker(engine), 3, approvals={}))


@raises("session 3 has no pending approvals: there is nothing to resume")
def _nothing_pending(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    fresh(engine, Chat, 3)
    maker = sessionmaker(engine)
    return caught(lambda: Chat.resume_session(maker, 3, approvals={"pay": True}))


@raises(
    "session 3 waits for approvals of ['pay']: resume it (resume_session) before continuing; "
    "nothing was run"
)
def _paused(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    paused(engine, 3)
    return caught(lambda: Chat.continue_session(sessionmaker(engine), 3, "hello?"))


@raises(
    "'1.1' is an assistant message of session 4: only a user message can be edited; nothing was run"
)
def _edit_a_reply(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    fresh(engine, Chat, 4)
    return caught(lambda: Chat.edit_session(sessionmaker(engine), 4, "1.1", "hi"))


@raises(
    "session 4 has no message '9.0' on its active path (to edit a message of another branch, "
    "switch_branch to it first); nothing was run"
)
def _edit_unknown(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    fresh(engine, Chat, 4)
    return caught(lambda: Chat.edit_session(sessionmaker(engine), 4, "9.0", "hi"))


@raises(
    "input holds a character that cannot be encoded as UTF-8 (a lone surrogate, '\\ud83d', "
    "at position 4)"
)
def _surrogate(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Agent(TestModel()).run("bad \ud83d reply"))


@raises(
    "Chat: bad where= criteria: an empty list scopes nothing; pass criteria (e.g. "
    "Chat.user_id == user.id), or where=None for none"
)
def _empty_where(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return caught(lambda: Chat.continue_session(sessionmaker(engine), 1, "hi", where=[]))


@raises(
    "instruction_args must be JSON-serialisable to be stored: Maximum serialization depth exceeded"
)
def _deep(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    deep: dict[str, Any] = {}
    for _ in range(100_000):
        deep = {"a": deep}
    maker = sessionmaker(engine)
    return caught(lambda: Chat.start_session(maker, "hi", instruction_args={"data": deep}))


@raises("... approval 'p1' (other) is not a call of the paused reply")
def _foreign_approval(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    paused(engine, 3, "p1")
    with engine.connect() as connection:
        document = connection.scalar(sa.select(Chat.context).where(Chat.id == 3))
    document["pending"]["approvals"][0]["tool_name"] = "other"
    set_context(engine, 3, document)
    return caught(lambda: Chat.resume_session(sessionmaker(engine), 3, approvals={"p1": True}))


# -- faults during a turn ----------------------------------------------------------


@raises(
    "... was cut off at the token limit (finish_reason 'length') ...: raise "
    "model_settings['max_tokens'] (now 8)"
)
def _cut_off(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    cut = ModelResponse(text='{"answer": "4', finish_reason="length")
    agent = Agent(TestModel(replies=[cut]), output_schema=Company, model_settings={"max_tokens": 8})
    return caught(lambda: agent.run("hi"))


@raises(
    "new Chat session: database error while inserting: ... The connection was lost, and your "
    "transaction with it: nothing was written. Roll the session back and retry; an engine "
    "created with pool_pre_ping=True replaces a dead pooled connection before using it"
)
def _lost_connection(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    """The PostgreSQL case of tests/test_faults.py, here with the driver error made up."""
    lost = sa_exc.OperationalError("INSERT ...", {}, Exception("server closed the connection"))
    lost.connection_invalidated = True

    def fail() -> None:
        with _store._database_errors("inserting", None, lambda _: "new Chat session", owned=False):
            raise lost

    return caught(fail)


@raises(
    "session 1 was changed by another writer during this turn (revision 3 is no longer "
    "current); nothing was written"
)
def _stale(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    maker = sessionmaker(engine)
    fresh(engine, Chat, 1)
    while _revision(engine) < 3:
        Chat.continue_session(maker, 1, "more")

    def interfere(messages: list[dict[str, Any]]) -> str:
        with Chat.__agent__.override(model=TestModel()):
            Chat.continue_session(maker, 1, "meanwhile")
        return "late"

    with Chat.__agent__.override(model=FunctionModel(interfere)):
        return caught(lambda: Chat.continue_session(maker, 1, "mine"))


def _revision(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.select(Chat.context_revision).where(Chat.id == 1)))


@raises(
    "... this transaction cannot see the newer revision (REPEATABLE READ snapshot); roll "
    "back and retry in a new transaction"
)
def _snapshot(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    """MariaDB's case in tests/test_concurrency.py, here with the reload made up."""
    contention = _flows.Contention.start(1, 1, None, None)
    contention.lost_at = 3

    class Reloaded:
        revision = 3

    return caught(lambda: contention.check_visible(Reloaded()))  # type: ignore[arg-type]


@raises(
    "... another writer held or changed the row while writing (OperationalError: database "
    "is locked); nothing was written ..."
)
def _locked(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    fresh(engine, Chat, 1)
    with engine.connect() as holder:
        holder.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            return caught(lambda: Chat.continue_session(sessionmaker(engine), 1, "hi"))
        finally:
            holder.rollback()


def _running(engine: sa.Engine, mp: pytest.MonkeyPatch, seconds: float) -> None:
    """Session 1 of ``StatusChat`` runs a turn in another worker, started ``seconds`` ago."""
    fresh(engine, StatusChat, 1)
    now = _flows.utcnow()
    mp.setattr(_flows, "utcnow", lambda: now)
    with engine.begin() as connection:
        connection.execute(
            sa.update(StatusChat)
            .where(StatusChat.id == 1)
            .values(
                status="running",
                status_changed_at=_flows._naive_utc(now) - timedelta(seconds=seconds),
            )
        )


@raises("session 1 is running a turn in another worker (for 0.2s; it is taken over after 600s)")
def _busy(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    _running(engine, mp, 0.2)
    return caught(lambda: StatusChat.continue_session(sessionmaker(engine), 1, "hi"))


@raises("... (for 5.1s; it is taken over after 600s); still running after 5s")
def _still_busy(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    _running(engine, mp, 5.1)
    ticks = iter(range(0, 1000, 10))  # the busy_timeout deadline passes at the first look
    mp.setattr(_flows, "WAITS", replace(_flows.WAITS, clock=lambda: float(next(ticks))))
    maker = sessionmaker(engine)
    return caught(lambda: StatusChat.continue_session(maker, 1, "hi", busy_timeout=5))


@raises(
    "model call to openai/gpt-4o-mini failed: no API key is set: set OPENAI_API_KEY in the "
    "environment, or api_key in model_settings (any value, for a server that checks none)"
)
def _no_key(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    for name in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL"):
        mp.delenv(name, raising=False)
    return caught(lambda: Agent("openai/gpt-4o-mini", model_retries=0).run("hi"))


@raises(
    "model call to openai/gpt-4o-mini failed: LiteLLM imports the module 'mcp', which is not "
    "installed; install it (pip install mcp)"
)
def _no_module(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    """tests/test_setup_errors_wire.py fails LiteLLM's import for real; here the error is given."""
    missing = ModuleNotFoundError("No module named 'mcp'", name="mcp")
    error = llm._setup_error(missing, "openai/gpt-4o-mini")
    assert error is not None
    return error


@raises("... Incorrect API key provided: ****")
def _echoed_key(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    from support.fake_openai import running_fake_openai

    with running_fake_openai() as server:
        server.enqueue_error(401, "Incorrect API key provided: sk-echoed-4242")
        settings = {"api_base": server.base_url, "api_key": "sk-echoed-4242"}
        return caught(lambda: Agent("openai/x", model_settings=settings).run("hi"))


def _endless(**options: Any) -> BaseException:
    """Read a streamed reply of the fake server's that never ends, under ``options``."""
    from support.fake_openai import running_fake_openai

    with running_fake_openai() as server:
        server.enqueue_endless_stream("x")
        settings = {"api_base": server.base_url, "api_key": "k"}
        settings.update(options.pop("model_settings", {}))
        agent = Agent("openai/gpt-4o-mini", model_settings=settings, **options)

        def read() -> None:
            for _ in agent.run("hi", stream=True):
                pass

        return caught(read)


@raises(
    "the stream of openai/gpt-4o-mini passed the turn's model time, turn_timeout=1s "
    "(Agent(turn_timeout=...)); it was stopped and nothing was stored"
)
def _endless_stream(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return _endless(turn_timeout=1)


@raises(
    "the streamed reply of openai/gpt-4o-mini passed max_tokens=10 (model_settings); the "
    "stream was stopped and nothing was stored"
)
def _past_max_tokens(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    return _endless(model_settings={"max_tokens": 10})


@raises(
    "new Chat session: database error while inserting: IntegrityError: Duplicate entry '...' "
    "for key 'code' (error 1062)"
)
def _duplicate(engine: sa.Engine, mp: pytest.MonkeyPatch) -> BaseException:
    """MariaDB's case in tests/test_hostile_data_wire.py, here with the driver error made up."""
    import pymysql

    refused = pymysql.err.IntegrityError(1062, "Duplicate entry 'private-4242' for key 'code'")

    def fail() -> None:
        with _store._database_errors("inserting", None, lambda _: "new Chat session"):
            raise sa_exc.IntegrityError("INSERT ...", {}, refused)

    return caught(fail)


# -- the tests -------------------------------------------------------------------


def test_every_quoted_message_has_a_raiser() -> None:
    quoted = set(quoted_messages())
    assert len(quoted) > 30
    assert sorted(quoted - set(RAISERS)) == [], "quoted in docs/errors.md, never raised here"
    assert sorted(set(RAISERS) - quoted) == [], "raised here, no longer quoted in the page"


@pytest.mark.parametrize("quote", sorted(quoted_messages()))
def test_the_quoted_message_is_the_one_raised(
    quote: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    raiser = RAISERS.get(quote)
    if raiser is None:
        pytest.fail(f"no raiser for {quote!r}")
    error = raiser(engine, monkeypatch)
    assert type(error).__name__ == quoted_messages()[quote], repr(error)
    assert matches(quote, str(error)), f"docs/errors.md quotes\n  {quote}\nraised\n  {error}"


def test_the_matching_convention() -> None:
    assert matches("a ... c", "a b c")
    assert matches("... c", "a b c")
    assert not matches("b c", "a b c")  # the whole message, not a part of it
    assert not matches("stored row of session 1", "stored row of Chat session 1")
