"""Quickstart: a three-turn support conversation stored in a SQLite file.

Runs offline by default, with a scripted test double instead of a provider.
Set ``AGENT_SESSION_MODEL`` (a LiteLLM model string such as
``openai/gpt-4o-mini``) and that provider's key (``OPENAI_API_KEY``, ...) to
talk to a real model instead.

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
    if os.environ.get("AGENT_SESSION_MODEL"):
        yield os.environ["AGENT_SESSION_MODEL"]
    else:
        with support_agent.override(model=FunctionModel(offline_reply, name="offline")):
            yield "offline test double (set AGENT_SESSION_MODEL for a real provider)"


def main(path: str = "quickstart.sqlite3") -> dict[str, Any]:
    engine = sa.create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    questions = [
        "Hello! How do I reset my password?",
        "I did not get the reset email.",
        "Thanks, it worked.",
    ]
    with model_in_use() as model, Session(engine) as db:
        print(f"model: {model}\n")
        chat = SupportChat.start_session(
            db, {"message": questions[0]}, instruction_args={"company_name": "Acme"}, user_id="u1"
        )
        for question in questions[1:]:
            db.commit()
            chat = SupportChat.continue_session(db, chat, {"message": question})
        db.commit()
        chat_id = chat.id
    with Session(engine) as db:
        context = SupportChat.get_context(db, chat_id)
    for message in context.messages:
        print(f"{message.role:>9}: {message.content}")
    print(f"\nturns: {context.turns}, tokens: {context.usage.total_tokens}, cost: {context.cost}")
    document = context.to_document()
    print("\nstored context:\n" + json.dumps(document, indent=2, ensure_ascii=False))
    engine.dispose()
    return document


if __name__ == "__main__":
    main(*sys.argv[1:2])
