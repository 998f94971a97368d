"""Quickstart: a three-turn support conversation stored in a SQLite file.

Runs offline by default, with a scripted test double instead of a provider. Each
run starts from empty tables: it drops and recreates the example's own tables
(``support_chats``, ``tracked_chats``) in the database file, so running it again
gives the same output and leaves one conversation, not one more per run.

To talk to a real model instead, set (read by ``examples/models.py`` and LiteLLM):

- ``AGENT_SESSION_MODEL``: a LiteLLM model string, e.g. ``openai/gpt-4o-mini``, or
  ``openai/<model>`` for an OpenAI-compatible server (llama.cpp, vLLM, Ollama, LM Studio);
- ``OPENAI_API_BASE``: that server's URL, e.g. ``http://127.0.0.1:8080/v1``;
- ``OPENAI_API_KEY`` (or the provider's own key variable): any value for a server
  that checks none;
- ``AGENT_SESSION_MAX_TOKENS`` (optional): a cap on each reply, sent as ``max_tokens``.

    python examples/quickstart.py [path/to/database.sqlite3]
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_session.testing import FunctionModel
from models import Base, Reply, SupportChat, support_agent

QUESTIONS = [
    "Hello! How do I reset my password?",
    "I did not get the reset email.",
    "Thanks, it worked.",
]


def offline_reply(messages: list[dict[str, Any]]) -> Reply:
    """A stand-in model: answers from the last user message, deterministically."""
    question = messages[-1]["content"]
    turn = sum(1 for m in messages if m["role"] == "user")
    return Reply(
        answer=f"(offline reply {turn}) You asked: {question!r}.",
        follow_up_question="Is there anything else I can help with?" if turn < 3 else None,
    )


@contextlib.contextmanager
def model_in_use() -> Iterator[str]:
    model = os.environ.get("AGENT_SESSION_MODEL")
    if model:
        base = os.environ.get("OPENAI_API_BASE")
        yield f"{model} at {base}" if base and model.startswith("openai/") else model
    else:
        with support_agent.override(model=FunctionModel(offline_reply, name="offline")):
            yield "offline test double (set AGENT_SESSION_MODEL for a real provider)"


def main(path: str = "quickstart.sqlite3") -> dict[str, Any]:
    engine = sa.create_engine(f"sqlite:///{path}")
    Base.metadata.drop_all(engine)  # a fresh start on every run: the example's tables only
    Base.metadata.create_all(engine)
    with model_in_use() as model, Session(engine) as db:
        print(f"model: {model}\n")
        chat = None
        for turn, question in enumerate(QUESTIONS, start=1):
            print(f"turn {turn} > {question}")
            if chat is None:
                chat = SupportChat.start_session(
                    db,
                    {"message": question},
                    instruction_args={"company_name": "Acme"},
                    user_id="u1",
                )
            else:
                chat = SupportChat.continue_session(db, chat, {"message": question})
            db.commit()
            print(f"  last_output: {chat.last_output!r}\n")
        assert chat is not None
        chat_id = chat.id
    with Session(engine) as db:
        context = SupportChat.get_context(db, chat_id)
        rows = db.scalar(sa.select(sa.func.count()).select_from(SupportChat))
    print(f"rows in {SupportChat.__tablename__}: {rows}\n\nstored conversation:")
    for message in context.messages:
        print(f"{message.role:>9}: {message.content}")
    print(f"\nturns: {context.turns}, tokens: {context.usage.total_tokens}, cost: {context.cost}")
    document = context.to_document()
    print("\nstored context:\n" + json.dumps(document, indent=2, ensure_ascii=False))
    engine.dispose()
    return document


if __name__ == "__main__":
    main(*sys.argv[1:2])
