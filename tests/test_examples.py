"""The examples run, so they never rot."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from support.fake_openai import running_fake_openai

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
QUESTIONS = 3

# Variables that would point the quickstart at a real provider: never inherited.
_PROVIDER_VARIABLES = ("AGENT_SESSION_", "OPENAI_")


def run_quickstart(database: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROVIDER_VARIABLES)}
    env.update(variables)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), str(database)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def stored_rows(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        (count,) = connection.execute("SELECT count(*) FROM support_chats").fetchone()
    return int(count)


def printed_outputs(stdout: str) -> list[str]:
    """The ``last_output`` lines the quickstart prints, one per turn."""
    return re.findall(r"^  last_output: (.*)$", stdout, flags=re.MULTILINE)


def test_quickstart_runs_offline_twice_the_same_way(tmp_path: Path) -> None:
    database = tmp_path / "quickstart.sqlite3"
    runs = [run_quickstart(database) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert "offline test double" in run.stdout
        assert "'litellm'" not in run.stderr
        outputs = printed_outputs(run.stdout)
        assert len(outputs) == QUESTIONS
        assert outputs[0].startswith("Reply(answer=\"(offline reply 1) You asked: 'Hello!")
        assert outputs[-1].endswith("follow_up_question=None)")
        conversation, _, stored = run.stdout.partition("stored context:\n")
        assert "rows in support_chats: 1\n" in conversation
        assert conversation.count("     user: ") == QUESTIONS
        assert conversation.count("assistant: ") == QUESTIONS
        document = json.loads(stored)
        assert document["version"] == 4 and document["turns"] == QUESTIONS
        roles = [m["role"] for m in document["messages"]]
        assert roles == ["system"] + ["user", "assistant"] * QUESTIONS
        assert stored_rows(database) == 1
    # Only the timestamps in the stored document may differ between the two runs.
    first, second = (run.stdout.partition("stored context:\n")[0] for run in runs)
    assert first == second


def test_quickstart_against_an_openai_compatible_server(tmp_path: Path) -> None:
    database = tmp_path / "quickstart.sqlite3"
    with running_fake_openai() as server:
        for turn in range(1, QUESTIONS + 1):
            reply = {"answer": f"served answer {turn}", "follow_up_question": None}
            server.enqueue_completion(json.dumps(reply), model="local-model")
        run = run_quickstart(
            database,
            AGENT_SESSION_MODEL="openai/local-model",
            OPENAI_API_BASE=server.base_url,
            OPENAI_API_KEY="none",
            AGENT_SESSION_MAX_TOKENS="256",
        )
        assert run.returncode == 0, run.stderr
        assert len(server.requests) == QUESTIONS
        bodies = server.bodies
    assert f"model: openai/local-model at {server.base_url}" in run.stdout
    assert [body["model"] for body in bodies] == ["local-model"] * QUESTIONS
    assert [body["max_tokens"] for body in bodies] == [256] * QUESTIONS
    assert [len(body["messages"]) for body in bodies] == [2, 4, 6]
    assert printed_outputs(run.stdout) == [
        f"Reply(answer='served answer {turn}', follow_up_question=None)"
        for turn in range(1, QUESTIONS + 1)
    ]
    assert stored_rows(database) == 1


def test_quickstart_main_returns_the_stored_document(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import quickstart

        document = quickstart.main(str(tmp_path / "q.sqlite3"))
    finally:
        sys.path.remove(str(EXAMPLES))
    assert document["messages"][0]["content"].startswith("You are a friendly support assistant")
    assert json.loads(document["messages"][-1]["content"])["follow_up_question"] is None
