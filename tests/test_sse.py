"""``agent_session.sse``: a turn stream as server-sent event frames, parsed back here."""

from __future__ import annotations

import json
import uuid
from collections.abc import Generator
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from agent_session import (
    Agent,
    AgentSessionMixin,
    ModelCallError,
    ModelRequest,
    ModelResponse,
    StreamEnd,
    TextChunk,
    TurnStream,
    Usage,
    _flows,
    _streaming,
    mixin,
    sse,
)
from agent_session._store import SyncStore
from agent_session.llm import Model, StreamChunk
from agent_session.testing import TestModel


class Answer(BaseModel):
    answer: str
    score: int


def parse(frames: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """Each frame as (event name, data); checks the wire form on the way."""
    events = []
    for frame in frames:
        assert frame.endswith("\n\n")
        lines = frame[:-2].split("\n")
        assert len(lines) == 2, frame
        assert lines[0].startswith("event: ")
        assert lines[1].startswith("data: ")
        data = json.loads(lines[1][len("data: ") :])
        assert isinstance(data, dict)
        events.append((lines[0][len("event: ") :], data))
    return events


async def _frames(agent: Agent[Any], mode: str) -> list[str]:
    if mode == "sync":
        return list(sse.encode(_streaming.run_stream(agent, "hi")))
    return [frame async for frame in sse.aencode(await _streaming.arun_stream(agent, "hi"))]


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_run_as_frames(mode: str) -> None:
    agent = Agent(TestModel(replies=['{"answer": "a\\nb", "score": 2}']), output_schema=Answer)

    events = parse(await _frames(agent, mode))

    kinds = [kind for kind, _ in events]
    assert kinds[-2:] == ["turn_completed", "completed"]
    assert set(kinds[:-2]) == {"text_delta", "output_delta"}
    text = "".join(data["text"] for kind, data in events if kind == "text_delta")
    assert text == '{"answer": "a\\nb", "score": 2}'
    assert events[-2][1]["output"] == {"answer": "a\nb", "score": 2}
    assert events[-2][1]["usage"]["total_tokens"] > 0
    assert events[-1][1] == {"session_key": None}
    partials = [data["partial"] for kind, data in events if kind == "output_delta"]
    assert partials[-1] == {"answer": "a\nb", "score": 2}


class Breaks(Model):
    """Streams two pieces, then fails (a provider error mid-stream)."""

    def complete(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("not used")

    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("not used")

    def stream(self, request: ModelRequest) -> Generator[StreamChunk, None, None]:
        yield TextChunk("Hel")
        yield TextChunk("lo")
        raise ModelCallError("model call to m failed (HTTP 400): bad", model="m", status_code=400)

    async def astream(self, request: ModelRequest) -> Any:
        for chunk in self.stream(request):
            yield chunk


async def test_an_error_mid_stream_becomes_an_error_frame(mode: str) -> None:
    events = parse(await _frames(Agent(Breaks()), mode))

    assert events == [
        ("text_delta", {"text": "Hel"}),
        ("text_delta", {"text": "lo"}),
        ("error", {"type": "ModelCallError", "message": "model call to m failed (HTTP 400): bad"}),
    ]


def test_a_client_that_goes_away_closes_the_stream() -> None:
    closed: list[bool] = []

    class Slow(TestModel):
        def stream(self, request: ModelRequest) -> Generator[StreamChunk, None, None]:
            try:
                yield TextChunk("one ")
                yield TextChunk("two")
                yield StreamEnd(ModelResponse(text="one two", usage=Usage()))
            finally:
                closed.append(True)

    stream = _streaming.run_stream(Agent(Slow()), "hi")
    frames = sse.encode(stream)
    assert parse([next(frames)]) == [("text_delta", {"text": "one "})]
    frames.close()  # what a server does when the client disconnects

    assert closed == [True]
    assert stream.result is None
    assert list(stream) == []


class Base(DeclarativeBase):
    pass


class Chat(AgentSessionMixin, Base):
    __tablename__ = "sse_chats"
    __agent__ = Agent(TestModel(text="hello there"))
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


def test_the_completed_frame_carries_the_stored_session_key(tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'sse.db'}")
    Base.metadata.create_all(engine)
    spec = mixin._spec(Chat)
    model = spec.agent.model
    flow = _flows.start_flow(spec, model, "Hi", None, {})
    stream: TurnStream[Any, Chat] = TurnStream(
        spec.agent, flow, SyncStore(spec, model, sessionmaker(engine)), model
    )

    events = parse(list(sse.encode(stream)))

    assert stream.session is not None
    key = events[-1][1]["session_key"]
    assert events[-1][0] == "completed"
    assert key == str(stream.session.id)
    with Session(engine) as db:
        stored = db.get(Chat, uuid.UUID(key))
        assert stored is not None and stored.last_output == "hello there"
    engine.dispose()


def test_frame_is_one_json_line() -> None:
    frame = sse.frame("x", {"text": "two\nlines", "n": uuid.UUID(int=1)})
    assert frame == (
        'event: x\ndata: {"text":"two\\nlines","n":"00000000-0000-0000-0000-000000000001"}\n\n'
    )
    assert sse.MEDIA_TYPE == "text/event-stream"


class Pair(Base):
    __tablename__ = "sse_pairs"
    a: Mapped[int] = mapped_column(primary_key=True)
    b: Mapped[str] = mapped_column(primary_key=True)


def test_session_key_is_a_list_for_a_composite_key_and_none_before_storing() -> None:
    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    pair = Pair(a=1, b="x")
    assert sse.session_key(None) is None
    assert sse.session_key(pair) is None  # transient: no identity yet
    with Session(engine) as db:
        db.add(pair)
        db.flush()
        assert sse.session_key(pair) == [1, "x"]
        assert sse.frame("completed", {"session_key": sse.session_key(pair)}) == (
            'event: completed\ndata: {"session_key":[1,"x"]}\n\n'
        )
    engine.dispose()
