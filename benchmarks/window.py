"""History windows: one turn on sessions of 10, 1,000 and 10,000 stored messages.

The stored document is written directly in the library's format, then one more turn
runs with the zero-latency model double, and the row is put back (not timed). Per
size, interleaved round by round, caller-owned ``Session``, SQLite (and PostgreSQL
when a server is configured), sync API:

- window: ``continue_session`` with ``Agent(history=LastTurns(20))``, committed;
- no window: the same turn with ``history=None`` (the double is no LiteLLM model, so
  the default sends everything);
- baseline: the hand-written turn of ``_fixtures.baseline_turn`` (whole history sent).

"select" is ``history.select_messages`` alone on the stored messages (what the window
adds to a turn); "sent" is the number of messages in the request. The window makes
the request small, but the turn still reads, validates and rewrites the whole stored
document, so its cost still grows with the stored history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from agent_session import Agent, LastTurns
from agent_session.history import select_messages

from ._fixtures import (
    INSTRUCTION,
    USER_TEXT,
    BenchInput,
    Databases,
    Reply,
    baseline_turn,
    chat_table,
    forget_requests,
)
from ._harness import (
    BenchResult,
    Options,
    fmt_ms,
    fmt_ratio,
    fmt_stats_ms,
    interleave,
    paired_ratios,
    stats,
)

NAME = "window"
TITLE = "History windows at 10 to 10,000 messages"
TARGET_RATIO = 1.1
TARGET_SIZE = 10_000
SIZES = (10, 1000, 10_000)
ROUNDS = {10: 40, 1000: 15, 10_000: 6}
WINDOW = LastTurns(20)

WIN, ALL, BASE = "window", "no window", "baseline"


def _agent(model: Any, history: Any) -> Agent[Reply]:
    return Agent(
        model,
        instruction=INSTRUCTION,
        input_schema=BenchInput,
        output_schema=Reply,
        output_retries=2,
        history=history,
    )


def _measure(url: str, size: int, rounds: int) -> dict[str, Any]:
    with chat_table(url, f"window_{size}", size, [1, 2, 3], baseline=[3]) as fx:
        chat, table, model, engine = fx.chat, fx.table, fx.model, fx.engine
        windowed, unwindowed = _agent(model, WINDOW), _agent(model, None)
        sent: dict[str, int] = {}

        def turn(pk: int, agent: Agent[Reply], label: str) -> Callable[[], float]:
            def run() -> float:
                fx.reset(pk)
                chat.__agent__ = agent
                started = time.perf_counter()
                with Session(engine) as db:
                    chat.continue_session(db, pk, USER_TEXT)
                    db.commit()
                elapsed = time.perf_counter() - started
                sent[label] = len(model.requests[-1].messages)
                forget_requests(model)
                return elapsed

            return run

        def baseline() -> float:
            fx.reset(3)
            started = time.perf_counter()
            with Session(engine) as db:
                baseline_turn(db, table, 3, USER_TEXT, model)
                db.commit()
            elapsed = time.perf_counter() - started
            sent[BASE] = len(model.requests[-1].messages)
            forget_requests(model)
            return elapsed

        stored = fx.document["messages"]
        new = [{"role": "user", "content": USER_TEXT}]

        def select() -> float:
            started = time.perf_counter()
            select_messages(WINDOW, stored, new)
            return time.perf_counter() - started

        variants: dict[str, Callable[[], float]] = {
            WIN: turn(1, windowed, WIN),
            ALL: turn(2, unwindowed, ALL),
            BASE: baseline,
            "select": select,
        }
        samples = interleave(variants, rounds, warmup=1 if size >= 1000 else 3)
    return {**samples, "sent": sent}


def run(opts: Options, dbs: Databases) -> BenchResult:
    result = BenchResult(
        name=NAME,
        title=TITLE,
        target=f"a turn with LastTurns(20) <= {TARGET_RATIO:g}x a turn without a window at "
        f"{TARGET_SIZE:,} stored messages",
        description=__doc__ or "",
    )
    sizes = (10, 1000) if opts.quick else SIZES
    backends = dbs.sqlite_and_postgres("window", result.notes)
    rows = []
    at_target: list[tuple[str, float]] = []
    for label, url in backends:
        for size in sizes:
            rounds = 2 if opts.quick else ROUNDS[size]
            m = _measure(url, size, rounds)
            win, everything, base = stats(m[WIN]), stats(m[ALL]), stats(m[BASE])
            ratio = paired_ratios(m[WIN], m[ALL])
            if size == TARGET_SIZE:
                at_target.append((label, ratio.median))
            rows.append(
                [
                    label,
                    f"{size:,}",
                    rounds,
                    *fmt_stats_ms(win),
                    fmt_ms(everything.median),
                    fmt_ms(base.median),
                    fmt_ratio(ratio.median),
                    fmt_ms(stats(m["select"]).median),
                    m["sent"].get(WIN, ""),
                    m["sent"].get(ALL, ""),
                ]
            )
    result.add_table(
        "Time per turn, ms (caller-owned Session, committed; ratio = median of per-round "
        "ratios); sent = messages in the request",
        [
            "database",
            "stored messages",
            "rounds",
            "LastTurns(20)",
            "p25–p75",
            "no window",
            "baseline",
            "window/no window",
            "select alone",
            "sent (window)",
            "sent (no window)",
        ],
        rows,
    )
    result.notes.append(
        "The window bounds what is sent, not what is read and written: a turn still "
        "loads, validates and rewrites the whole stored document, so its cost grows with "
        "the stored history with or without a window. Windowed reads and database-side "
        "appends are not built yet."
    )
    if at_target:
        worst = max(ratio for _, ratio in at_target)
        result.measured = f"window/no window at {TARGET_SIZE:,} messages: " + ", ".join(
            f"{label} {fmt_ratio(r)}" for label, r in at_target
        )
        result.headline = ", ".join(f"{label} {fmt_ratio(r)}" for label, r in at_target)
        result.met = worst <= TARGET_RATIO
    else:
        result.measured = f"{TARGET_SIZE:,} messages not measured (quick run)"
        result.met = None
    return result
