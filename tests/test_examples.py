"""The examples run, so they never rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_runs_offline(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AGENT_SESSION_MODEL"}
    database = tmp_path / "quickstart.sqlite3"
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), str(database)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "offline test double" in run.stdout
    assert "'litellm'" not in run.stderr
    conversation, _, stored = run.stdout.partition("stored context:\n")
    assert conversation.count("     user: ") == 3
    assert conversation.count("assistant: ") == 3
    document = json.loads(stored)
    assert document["version"] == 2 and document["turns"] == 3
    assert [m["role"] for m in document["messages"]] == ["system"] + ["user", "assistant"] * 3
    assert database.exists()


def test_quickstart_main_returns_the_stored_document(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import quickstart

        document = quickstart.main(str(tmp_path / "q.sqlite3"))
    finally:
        sys.path.remove(str(EXAMPLES))
    assert document["messages"][0]["content"].startswith("You are a friendly support assistant")
    assert json.loads(document["messages"][-1]["content"])["follow_up_question"] is None
