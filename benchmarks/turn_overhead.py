"""Per-turn overhead: ``continue_session`` against a hand-written baseline.

A session of 10 stored messages (plus the system message) takes one more turn
through the zero-latency model double. The row is put back to those 10 messages
after every turn, outside the timing, so each turn does the same work. Variants,
interleaved round by round in one process:

- library, caller-owned ``Session``: ``with Session(engine) as db:
  Chat.continue_session(db, pk, text); db.commit()``;
- baseline, caller-owned ``Session``: the same ``with`` block around
  ``_fixtures.baseline_turn`` (SELECT, same validation, same model call, same output
  parsing, one compare-and-swap UPDATE);
- the same two with a ``sessionmaker`` (two short transactions each).

Async twins use ``AsyncSession``/``async_sessionmaker`` (aiosqlite, asyncpg).
MariaDB (PyMySQL, aiomysql) rows are included for reference (not with ``--quick``).
A cold run times the first turn of fresh processes against their later turns.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from ._fixtures import (
    USER_TEXT,
    ChatTable,
    Databases,
    Resetter,
    abaseline_turn,
    abaseline_turn_maker,
    baseline_turn,
    baseline_turn_maker,
    chat_table,
    forget_requests,
    instant_chat,
    make_document,
)
from ._harness import (
    BenchResult,
    Options,
    ainterleave,
    atimed_between,
    compare,
    fmt_ms,
    fmt_ratio,
    fmt_ratio_stats,
    fmt_stats_ms,
    interleave,
    stats,
    timed_between,
)

T = TypeVar("T")
V = TypeVar("V")

NAME = "overhead"
TITLE = "Per-turn overhead"
TARGET_RATIO = 1.3
MESSAGES = 10

LIB_OWNED, BASE_OWNED = "library, Session", "baseline, Session"
LIB_MAKER, BASE_MAKER = "library, sessionmaker", "baseline, sessionmaker"
ROWS = {LIB_OWNED: 1, BASE_OWNED: 2, LIB_MAKER: 3, BASE_MAKER: 4}
BASELINE_ROWS = (ROWS[BASE_OWNED], ROWS[BASE_MAKER])


def _variants(
    fx: ChatTable,
    wrap: Callable[[Callable[[], None], T, Callable[[], None]], V],
    *turns: T,
) -> dict[str, V]:
    """The turns, in ``ROWS`` order, as variants that time the turn alone: its row is put
    back before it and the double's requests are dropped after it."""
    forget = partial(forget_requests, fx.model)
    return {
        name: wrap(partial(fx.reset, pk), turn, forget)
        for (name, pk), turn in zip(ROWS.items(), turns, strict=True)
    }


def _sync_backend(url: str, rounds: int) -> dict[str, list[float]]:
    with chat_table(
        url, "overhead_sync", MESSAGES, list(ROWS.values()), baseline=BASELINE_ROWS
    ) as fx:
        chat, table, model, engine = fx.chat, fx.table, fx.model, fx.engine
        maker = sessionmaker(engine)

        def lib_owned() -> None:
            with Session(engine) as db:
                chat.continue_session(db, ROWS[LIB_OWNED], USER_TEXT)
                db.commit()

        def base_owned() -> None:
            with Session(engine) as db:
                baseline_turn(db, table, ROWS[BASE_OWNED], USER_TEXT, model)
                db.commit()

        def lib_maker() -> None:
            chat.continue_session(maker, ROWS[LIB_MAKER], USER_TEXT)

        def base_maker() -> None:
            baseline_turn_maker(maker, table, ROWS[BASE_MAKER], USER_TEXT, model)

        variants = _variants(fx, timed_between, lib_owned, base_owned, lib_maker, base_maker)
        return interleave(variants, rounds, warmup=5)


def _async_backend(url: str, sync_url: str, rounds: int) -> dict[str, list[float]]:
    with chat_table(
        sync_url, "overhead_async", MESSAGES, list(ROWS.values()), baseline=BASELINE_ROWS
    ) as fx:
        chat, table, model = fx.chat, fx.table, fx.model

        async def main() -> dict[str, list[float]]:
            engine = create_async_engine(url)
            maker = async_sessionmaker(engine)

            async def lib_owned() -> None:
                async with AsyncSession(engine) as db:
                    await chat.acontinue_session(db, ROWS[LIB_OWNED], USER_TEXT)
                    await db.commit()

            async def base_owned() -> None:
                async with AsyncSession(engine) as db:
                    await abaseline_turn(db, table, ROWS[BASE_OWNED], USER_TEXT, model)
                    await db.commit()

            async def lib_maker() -> None:
                await chat.acontinue_session(maker, ROWS[LIB_MAKER], USER_TEXT)

            async def base_maker() -> None:
                await abaseline_turn_maker(maker, table, ROWS[BASE_MAKER], USER_TEXT, model)

            turns = (lib_owned, base_owned, lib_maker, base_maker)
            try:
                return await ainterleave(_variants(fx, atimed_between, *turns), rounds, warmup=5)
            finally:
                await engine.dispose()

        return asyncio.run(main())


# -- cold start --------------------------------------------------------------------


def _cold_child(variant: str, url: str, turns: int) -> None:
    """Run in a fresh process: time the first turn and the ``turns - 1`` after it."""
    chat, table, model = instant_chat("overhead_cold")
    engine = sa.create_engine(url)
    document = make_document(MESSAGES, check=False)  # the turn validates first
    reset = Resetter(engine, table, document)
    with engine.connect() as conn:  # the pool is warm, as in a running application
        conn.exec_driver_sql("SELECT 1")
    pk = ROWS[LIB_OWNED] if variant == "library" else ROWS[BASE_OWNED]
    times = []
    for _ in range(turns):
        reset(pk)
        started = time.perf_counter()
        with Session(engine) as db:
            if variant == "library":
                chat.continue_session(db, pk, USER_TEXT)
            else:
                baseline_turn(db, table, pk, USER_TEXT, model)
            db.commit()
        times.append(time.perf_counter() - started)
    engine.dispose()
    print(json.dumps(times))


def _cold(url: str, processes: int, turns: int) -> dict[str, tuple[list[float], list[float]]]:
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    firsts: dict[str, list[float]] = {"library": [], "baseline": []}
    laters: dict[str, list[float]] = {"library": [], "baseline": []}
    with chat_table(
        url, "overhead_cold", MESSAGES, [ROWS[LIB_OWNED], ROWS[BASE_OWNED]], baseline=BASELINE_ROWS
    ):
        for _ in range(processes):
            for variant in ("library", "baseline"):
                out = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.turn_overhead",
                        "cold",
                        variant,
                        url,
                        str(turns),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=root,
                )
                times = json.loads(out.stdout.strip().splitlines()[-1])
                firsts[variant].append(times[0])
                laters[variant].extend(times[1:])
    return {v: (firsts[v], laters[v]) for v in firsts}


# -- the benchmark -----------------------------------------------------------------


def run(opts: Options, dbs: Databases) -> BenchResult:
    result = BenchResult(
        name=NAME,
        title=TITLE,
        target=f"caller-owned Session turn <= {TARGET_RATIO}x baseline",
        description=__doc__ or "",
    )
    rounds = opts.rounds(200, 5)
    pg_sync, pg_async = dbs.postgres_url(), dbs.postgres_url(is_async=True)
    backends: list[tuple[str, Callable[[], dict[str, list[float]]]]] = [
        ("SQLite (sqlite3)", lambda: _sync_backend(dbs.sqlite_url("overhead"), rounds)),
        (
            "SQLite (aiosqlite)",
            lambda: _async_backend(
                dbs.sqlite_url("overhead_async", is_async=True),
                dbs.sqlite_url("overhead_async"),
                rounds,
            ),
        ),
    ]
    if pg_sync and pg_async:
        backends += [
            ("PostgreSQL (psycopg)", lambda: _sync_backend(pg_sync, rounds)),
            ("PostgreSQL (asyncpg)", lambda: _async_backend(pg_async, pg_sync, rounds)),
        ]
    else:
        result.notes.append(f"PostgreSQL rows skipped: {dbs.postgres_error}")
    my_sync, my_async = dbs.mysql_url(), dbs.mysql_url(is_async=True)
    if my_sync and my_async and not opts.quick:
        backends += [
            ("MariaDB (pymysql)", lambda: _sync_backend(my_sync, rounds)),
            ("MariaDB (aiomysql)", lambda: _async_backend(my_async, my_sync, rounds)),
        ]
    elif not opts.quick:
        result.notes.append(f"MySQL/MariaDB rows skipped: {dbs.mysql_error}")

    rows = []
    owned_ratios: list[tuple[str, float]] = []
    for label, measure in backends:
        samples = measure()
        for mode, lib, base in (
            ("caller-owned Session", LIB_OWNED, BASE_OWNED),
            ("sessionmaker", LIB_MAKER, BASE_MAKER),
        ):
            c = compare(samples[lib], samples[base])
            if mode == "caller-owned Session":
                owned_ratios.append((label, c.ratio.median))
            rows.append(
                [
                    label,
                    mode,
                    *c.ms_cells(),
                    fmt_ms(c.subject.median - c.reference.median),
                    *fmt_ratio_stats(c.ratio),
                ]
            )
    result.add_table(
        f"Turn on a session of {MESSAGES} messages, {rounds} interleaved rounds "
        "(ms per turn; ratio = median of per-round library/baseline)",
        [
            "database (driver)",
            "mode",
            "library",
            "p25–p75",
            "baseline",
            "p25–p75",
            "extra ms",
            "ratio",
            "ratio p25–p75",
        ],
        rows,
    )

    # Cold start: first turn of a fresh process, SQLite and PostgreSQL, sync.
    processes, turns = (1, 3) if opts.quick else (4, 11)
    cold_rows = []
    cold_targets = [("SQLite (sqlite3)", dbs.sqlite_url("cold"))]
    if pg_sync and not opts.quick:
        cold_targets.append(("PostgreSQL (psycopg)", pg_sync))
    for label, url in cold_targets:
        for variant, (firsts, laters) in _cold(url, processes, turns).items():
            first, later = stats(firsts), stats(laters)
            cold_rows.append(
                [
                    label,
                    variant,
                    *fmt_stats_ms(first),
                    fmt_ms(later.median),
                    fmt_ratio(first.median / later.median),
                ]
            )
    result.add_table(
        f"Cold start: first turn of a fresh process vs its later turns ({processes} processes "
        f"per row, {turns - 1} later turns each; the pool is connected before the first turn)",
        [
            "database (driver)",
            "variant",
            "first turn ms",
            "p25–p75",
            "later turns ms",
            "first/later",
        ],
        cold_rows,
    )

    worst_label, worst = max(owned_ratios, key=lambda item: item[1])
    result.measured = (
        "caller-owned Session ratio "
        + ", ".join(f"{label} {fmt_ratio(r)}" for label, r in owned_ratios)
        + f"; worst {worst_label} {fmt_ratio(worst)}"
    )
    result.headline = (
        f"{min(r for _, r in owned_ratios):.2f}–{worst:.2f}x over {len(owned_ratios)} drivers "
        f"(worst {worst_label})"
    )
    result.met = worst <= TARGET_RATIO
    return result


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "cold":
        _cold_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit("usage: python -m benchmarks.turn_overhead cold VARIANT URL TURNS")
