"""Smoke test of the benchmark suite: ``python -m benchmarks --quick --no-write``.

The quick run takes about half a minute: every benchmark runs its smallest case, so
a change that breaks one (an API it calls, a document it builds that no longer
validates) fails here rather than when someone next measures. Its numbers mean
nothing and are not checked. Without a PostgreSQL server, or without the ``bench``
extra (``openai-agents``, ``pyinstrument``; the ``dev`` extra includes it), the
affected parts report "skipped" and the run still passes, except under ``CI=true``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "storage.md")


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _names() -> list[str]:
    listed = _run("--list", timeout=60)
    assert listed.returncode == 0, listed.stderr
    return [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]


def test_list_names_every_benchmark() -> None:
    names = _names()
    assert {"imports", "overhead", "growth", "concurrency", "peer", "storage"} <= set(names)


@pytest.mark.slow
@pytest.mark.timeout(200)  # the load benchmark starts uvicorn: ~20 s of the run
def test_quick_run_of_every_benchmark() -> None:
    under_ci = os.environ.get("CI", "").strip().lower() in {"true", "1"}
    before = {path: path.stat().st_mtime_ns for path in DOCS if path.exists()}
    result = _run("--quick", "--no-write", timeout=190)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    for name in _names():
        verdicts = [line for line in result.stdout.splitlines() if f"verdict [{name}]" in line]
        assert verdicts, f"no verdict line for {name}:\n{output[-4000:]}"
        assert "error:" not in verdicts[0], verdicts[0]
        if under_ci:  # the dev extra brings the bench peers, and CI has the servers
            assert "skipped" not in verdicts[0], verdicts[0]
    after = {path: path.stat().st_mtime_ns for path in DOCS if path.exists()}
    assert after == before, "a --quick run must not rewrite the docs"
