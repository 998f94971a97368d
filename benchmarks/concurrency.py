"""Concurrency: 32 conversations on a pool of 2 connections, model latency 100 ms.

Each of 32 conversations (its own row, 10 stored messages to start with) runs 10
turns one after the other; the 32 run at once. The model double sleeps
100 ms per call (``asyncio.sleep`` for asyncio, ``time.sleep`` for threads). The
engine has ``pool_size=2, max_overflow=0``. With the model the only wait, the ideal
throughput is 32 / 0.1 s = 320 turns/s.

- sessionmaker mode: ``Chat.acontinue_session(async_sessionmaker, pk, text)`` under
  ``asyncio.gather``, and ``Chat.continue_session(sessionmaker, pk, text)`` from a
  ``ThreadPoolExecutor`` of 32 threads. Each turn checks a connection out twice,
  briefly, and holds none while the model runs.
- caller-owned ``Session`` mode on the same pool: each turn is ``with Session(engine)
  as db: continue_session(db, ...); db.commit()``, so the connection that read the
  row stays checked out through the model call: 2 connections allow at most
  2 / 0.1 s = 20 turns/s. This is why sessionmaker mode exists.

The hand-written baseline (``_fixtures.baseline_turn_maker``: the same two short
transactions) runs under the same conditions, to separate what the library costs
from what SQLAlchemy, the driver and a 2-core machine allow. Throughput is turns /
wall time of the whole batch, repeated; the table gives the median and range of
the repeats. "CPU ms per turn" is the benchmark process's CPU time (all threads)
per turn: asyncio runs on one core, and threads share one through the GIL, so
throughput cannot exceed 1 / that, whatever the pool.

Contention: 20 clients (threads, sessionmaker mode) continue the same session at
once, released together by a barrier, one turn each; the model double sleeps 20 ms.
The figure is model calls per committed turn (1.00 is no call wasted), with how many
of the 20 turns committed and what the others raised, over a few rounds. "Before"
rows run the flow with the conflict backoff turned off (``Waits(retry_cap=0)``: a
lost race is retried at once), which is how retries behaved before it existed.
Without a status column nothing shows a turn running, so every client calls the
model and all but one lose the write; the backoff spreads the retries so fewer of
them collide. With the status column and ``busy_timeout`` a client that finds the
session running waits for it, and one that loses the claim reloads without calling
the model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from agent_session import AgentSessionError, _flows

from ._fixtures import (
    USER_TEXT,
    Databases,
    abaseline_turn_maker,
    async_sleeping_model,
    baseline_turn_maker,
    forget_requests,
    make_agent,
    make_document,
    put_rows,
    session_class,
    sleeping_model,
)
from ._harness import BenchResult, Options, fmt_ms, stats

NAME = "concurrency"
TITLE = "Concurrency"
TARGET_FRACTION = 0.8
CONVERSATIONS = 32
LATENCY = 0.100
TURNS = 10
POOL = {"pool_size": 2, "max_overflow": 0, "pool_timeout": 120}
MAKER, BASELINE, OWNED = (
    "library, sessionmaker",
    "baseline, sessionmaker",
    "library, caller-owned Session",
)


def _classes(tag: str, latency: float) -> tuple[type[Any], type[Any], sa.Table]:
    threaded = session_class(f"concurrency_{tag}", make_agent(sleeping_model(latency)))
    asynced = session_class(f"concurrency_{tag}", make_agent(async_sleeping_model(latency)))
    return threaded, asynced, threaded.__table__


def _threads(
    chat: type[Any], engine: sa.Engine, conversations: int, turns: int, mode: str
) -> tuple[float, float]:
    maker = sessionmaker(engine)
    table = chat.__table__
    model = chat.__agent__.model

    def conversation(pk: int) -> None:
        for _ in range(turns):
            if mode == BASELINE:
                baseline_turn_maker(maker, table, pk, USER_TEXT, model)
            elif mode == OWNED:
                with Session(engine) as db:
                    chat.continue_session(db, pk, USER_TEXT)
                    db.commit()
            else:
                chat.continue_session(maker, pk, USER_TEXT)

    with ThreadPoolExecutor(max_workers=conversations) as pool:
        cpu, started = time.process_time(), time.perf_counter()
        list(pool.map(conversation, range(1, conversations + 1)))
        return time.perf_counter() - started, time.process_time() - cpu


async def _gather(
    chat: type[Any], engine: Any, conversations: int, turns: int, mode: str
) -> tuple[float, float]:
    maker = async_sessionmaker(engine)
    table = chat.__table__
    model = chat.__agent__.model

    async def conversation(pk: int) -> None:
        for _ in range(turns):
            if mode == BASELINE:
                await abaseline_turn_maker(maker, table, pk, USER_TEXT, model)
            elif mode == OWNED:
                async with AsyncSession(engine) as db:
                    await chat.acontinue_session(db, pk, USER_TEXT)
                    await db.commit()
            else:
                await chat.acontinue_session(maker, pk, USER_TEXT)

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(conversation(pk) for pk in range(1, conversations + 1)))
    return time.perf_counter() - started, time.process_time() - cpu


def _measure(
    sync_url: str,
    async_url: str,
    tag: str,
    conversations: int,
    turns: int,
    repeats: int,
    latency: float,
    modes: tuple[str, ...],
) -> dict[str, list[float]]:
    threaded, asynced, table = _classes(tag, latency)
    engine = sa.create_engine(sync_url, **POOL)
    if engine.dialect.name == "sqlite":
        _wal(engine)
    table.metadata.create_all(engine)
    document = make_document(10)
    ids = list(range(1, conversations + 1))
    samples: dict[str, list[float]] = {}

    def record(name: str, times: tuple[float, float], turns_run: int) -> None:
        samples.setdefault(name, []).append(turns_run / times[0])
        samples.setdefault(f"{name} cpu", []).append(times[1] / turns_run)

    async def async_round(mode: str, turns_run: int) -> tuple[float, float]:
        aengine = create_async_engine(async_url, **POOL)
        if aengine.dialect.name == "sqlite":
            _wal(aengine.sync_engine)
        try:
            put_rows(engine, table, document, ids)
            await _gather(asynced, aengine, conversations, 1, MAKER)  # connect the pool
            put_rows(engine, table, document, ids)
            return await _gather(asynced, aengine, conversations, turns_run, mode)
        finally:
            await aengine.dispose()

    try:
        put_rows(engine, table, document, ids)
        _threads(threaded, engine, conversations, 1, MAKER)  # connect the pool
        for index in range(repeats):
            for mode in modes:
                if mode == OWNED and index > 0:
                    continue  # bound by the pool, not by noise: once is enough
                # Caller-owned mode is 16x slower by design: one turn each is enough.
                turns_run = 1 if mode == OWNED else turns
                put_rows(engine, table, document, ids)
                times = _threads(threaded, engine, conversations, turns_run, mode)
                record(f"threads, {mode}", times, conversations * turns_run)
                times = asyncio.run(async_round(mode, turns_run))
                record(f"asyncio, {mode}", times, conversations * turns_run)
                forget_requests(threaded.__agent__.model)
                forget_requests(asynced.__agent__.model)
    finally:
        table.metadata.drop_all(engine)
        engine.dispose()
    return samples


def _wal(engine: sa.Engine) -> None:
    """SQLite in WAL mode: readers no longer block the writer's commit."""

    @sa.event.listens_for(engine, "connect")
    def _journal(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()


# -- contention: many clients, one session ------------------------------------------

CONTENDERS = 20
CONTENTION_LATENCY = 0.020
CONTENTION = (
    # label, status column, continue_session keywords, conflict backoff
    ("before: conflict_retries=25, retried at once", False, {"conflict_retries": 25}, False),
    ("conflict_retries=25, jittered backoff", False, {"conflict_retries": 25}, True),
    ("before: status column, conflict_retries=3", True, {"conflict_retries": 3}, False),
    ("status column, busy_timeout=60", True, {"busy_timeout": 60.0}, True),
)


@contextmanager
def _backoff(enabled: bool) -> Iterator[None]:
    """Run with the library's waits, or with the conflict backoff turned off."""
    saved = _flows.WAITS
    if not enabled:
        _flows.WAITS = _flows.Waits(retry_cap=0.0)
    try:
        yield
    finally:
        _flows.WAITS = saved


def _contend(
    chat: type[Any], maker: sessionmaker[Session], clients: int, kwargs: dict[str, Any]
) -> tuple[list[str], int, float]:
    """``clients`` threads continue session 1 at once: (outcomes, model calls, seconds)."""
    model = chat.__agent__.model
    calls = len(model.requests)
    barrier = threading.Barrier(clients)

    def client(_: int) -> str:
        barrier.wait()
        try:
            chat.continue_session(maker, 1, USER_TEXT, **kwargs)
        except AgentSessionError as exc:
            return type(exc).__name__
        return "committed"

    with ThreadPoolExecutor(max_workers=clients) as pool:
        started = time.perf_counter()
        outcomes = list(pool.map(client, range(clients)))
        elapsed = time.perf_counter() - started
    return outcomes, len(model.requests) - calls, elapsed


def _measure_contention(
    url: str, tag: str, clients: int, rounds: int, latency: float
) -> list[list[str]]:
    engine = sa.create_engine(url, pool_size=clients, max_overflow=0, pool_timeout=120)
    if engine.dialect.name == "sqlite":
        _wal(engine)
    maker = sessionmaker(engine)
    document = make_document(10)
    classes = {
        status: session_class(
            f"contention_{'status_' if status else ''}{tag}",
            make_agent(sleeping_model(latency)),
            status=status,
        )
        for status in (False, True)
    }
    for chat in classes.values():
        chat.metadata.create_all(engine)
    samples: dict[str, list[tuple[list[str], int, float]]] = {c[0]: [] for c in CONTENTION}
    try:
        for _ in range(rounds):
            for label, status, kwargs, backoff in CONTENTION:
                chat = classes[status]
                put_rows(engine, chat.__table__, document, [1])
                with _backoff(backoff):
                    samples[label].append(_contend(chat, maker, clients, kwargs))
                forget_requests(chat.__agent__.model)
    finally:
        for chat in classes.values():
            chat.metadata.drop_all(engine)
        engine.dispose()

    rows = []
    for label, runs in samples.items():
        per_turn = [calls / max(1, outcomes.count("committed")) for outcomes, calls, _ in runs]
        errors = Counter(o for outcomes, _, _ in runs for o in outcomes if o != "committed")
        committed = sum(outcomes.count("committed") for outcomes, _, _ in runs)
        s = stats(per_turn)
        rows.append(
            [
                label,
                f"{committed / len(runs):.1f}",
                ", ".join(f"{n / len(runs):.1f} {name}" for name, n in errors.items()) or "none",
                f"{s.median:.2f}",
                f"{min(per_turn):.2f}–{max(per_turn):.2f}",
                f"{stats([seconds for _, _, seconds in runs]).median:.2f}",
            ]
        )
    return rows


def run(opts: Options, dbs: Databases) -> BenchResult:
    result = BenchResult(
        name=NAME,
        title=TITLE,
        target=f"sessionmaker mode >= {TARGET_FRACTION} of the ideal 320 turns/s (PostgreSQL)",
        description=__doc__ or "",
    )
    conversations, turns, repeats, latency = (
        (8, 1, 1, 0.02) if opts.quick else (CONVERSATIONS, TURNS, 2, LATENCY)
    )
    ideal = conversations / latency
    targets = []
    if (pg := dbs.postgres_url()) is not None:
        targets.append(("PostgreSQL", pg, dbs.postgres_url(is_async=True)))
    else:
        result.notes.append(f"PostgreSQL rows skipped: {dbs.postgres_error}")
    targets.append(
        (
            "SQLite (WAL)",
            dbs.sqlite_url("concurrency"),
            dbs.sqlite_url("concurrency", is_async=True),
        )
    )
    rows = []
    fractions: dict[str, float] = {}
    for label, sync_url, async_url in targets:
        assert async_url is not None
        modes = (MAKER, BASELINE, OWNED) if label == "PostgreSQL" else (MAKER, BASELINE)
        samples = _measure(
            sync_url, async_url, label.lower(), conversations, turns, repeats, latency, modes
        )
        for name, values in samples.items():
            if name.endswith(" cpu"):
                continue
            s = stats(values)
            workers = name.split(",")[0]
            versus = ""
            if name.endswith(MAKER):
                baseline = stats(samples[f"{workers}, {BASELINE}"]).median
                versus = f"{s.median / baseline:.2f}"
            rows.append(
                [
                    label,
                    name,
                    f"{s.median:.0f}",
                    f"{min(values):.0f}–{max(values):.0f}",
                    f"{s.median / ideal:.2f}",
                    versus,
                    fmt_ms(stats(samples[f"{name} cpu"]).median),
                ]
            )
            if name.endswith(MAKER):
                fractions[f"{label} {name.split(',')[0]}"] = s.median / ideal
    result.add_table(
        f"{conversations} conversations, pool 2+0, model latency {latency * 1000:.0f} ms, "
        f"ideal {ideal:.0f} turns/s ({repeats} repeats; sessionmaker rows run {turns} turns "
        "per conversation, caller-owned rows 1)",
        [
            "database",
            "workers, mode",
            "turns/s",
            "min–max",
            "of ideal",
            "library/baseline",
            "CPU ms per turn",
        ],
        rows,
    )
    pg_fractions = {k: v for k, v in fractions.items() if k.startswith("PostgreSQL")}
    judged = pg_fractions or fractions
    result.measured = (
        "sessionmaker mode "
        + ", ".join(f"{name} {value:.2f}" for name, value in fractions.items())
        + " of ideal"
    )
    result.headline = ", ".join(f"{name} {value:.2f}" for name, value in judged.items())
    result.met = min(judged.values()) >= TARGET_FRACTION
    if opts.quick:
        result.notes.append("quick run: 8 conversations, 20 ms latency")

    clients, rounds, latency = (4, 1, 0.005) if opts.quick else (CONTENDERS, 3, CONTENTION_LATENCY)
    contention_rows = []
    per_turn: dict[str, list[str]] = {}
    for label, sync_url, _ in targets:
        for row in _measure_contention(
            sync_url, label.split()[0].lower(), clients, rounds, latency
        ):
            contention_rows.append([label, *row])
            per_turn.setdefault(label, []).append(row[3])
    result.add_table(
        f"Contention: {clients} clients continue one session at once, model latency "
        f"{latency * 1000:.0f} ms ({rounds} rounds; per-round figures are medians, errors "
        "are per round)",
        [
            "database",
            "variant",
            "committed",
            "errors",
            "model calls per committed turn",
            "min–max",
            "seconds",
        ],
        contention_rows,
    )
    first = next(iter(per_turn))
    result.measured += (
        f"; {clients} contending clients ({first}): "
        + " / ".join(per_turn[first])
        + " model calls per committed turn (no backoff / backoff / status column "
        "without and with busy_timeout)"
    )
    return result
