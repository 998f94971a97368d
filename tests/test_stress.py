"""Stress: 8 processes x 25 turns on 4 shared sessions, on PostgreSQL and MariaDB.

Sessionmaker mode, a fake model with 0-20 ms of random latency, one conflict
retry. Half of the workers use the sync driver, half the async one. No committed
turn may be lost or duplicated, every history must alternate user/assistant with
each reply echoing its own message, and the only error a worker may see is
``StaleSessionError``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from support.databases import Database
from support.stress_worker import Harness, async_twin, check_race, make_chat, run_race

WORKERS = 8
TURNS = 25
SESSIONS = 4
CONFLICT_RETRIES = 1


@pytest.mark.stress
async def test_processes_hammer_shared_sessions(server_database: Database, tmp_path: Path) -> None:
    h = Harness(server_database, make_chat(table="stress_chats"))
    keys = [(await h.start(f"hello [s{n}]")).id for n in range(1, SESSIONS + 1)]
    assert keys == list(range(1, SESSIONS + 1))
    urls = [server_database.sync_url, async_twin(server_database.sync_url)] * (WORKERS // 2)

    started = time.monotonic()
    reports = run_race(
        urls,
        table="stress_chats",
        keys=keys,
        turns=TURNS,
        retries=CONFLICT_RETRIES,
        workdir=tmp_path,
        latency_ms=20,
        timeout=90,
    )
    elapsed = time.monotonic() - started
    counts = check_race(h, reports)

    assert counts["turns"] == WORKERS * TURNS
    assert counts["committed"] + counts["conflicts"] == WORKERS * TURNS
    assert counts["committed"] > 0
    # Each model call either committed, lost a race for good, or was re-run once.
    assert counts["model_calls"] <= WORKERS * TURNS * (1 + CONFLICT_RETRIES)
    per_session = {row["id"]: row["context"]["turns"] - 1 for row in h.rows()}
    print(
        f"\nstress {server_database.name}: {WORKERS} processes x {TURNS} turns on "
        f"{SESSIONS} sessions in {elapsed:.1f}s: {counts['committed']} committed, "
        f"{counts['conflicts']} StaleSessionError, {counts['model_calls']} model calls "
        f"(re-runs included); committed per session {per_session}"
    )
