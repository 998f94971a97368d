"""Regenerate and edit: what they cost beside a turn, at 10 and 10,000 stored messages.

A session of that many messages is imported (``import_session``), then turns,
regenerates of the newest turn and edits of the newest user message run interleaved,
round by round in shuffled order, through a sessionmaker on SQLite (and PostgreSQL
when a server is configured), with the zero-latency model double. Each keeps the
active path as long as it was (a regenerate or an edit replaces the newest turn by a
sibling; a turn adds one), so every round sees about the same history. Twice: with
``LastTurns(20)`` (a turn reads its 20 newest rows) and with no window (a turn reads
the whole path). "ratio" is the median of the per-round ratios to the turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import Agent, AgentSessionMixin, LastTurns

from ._fixtures import Databases, forget_requests, instant_model
from ._harness import BenchResult, Options, fmt_ms, fmt_ratio, interleave, paired_ratios, stats

NAME = "tree"
TITLE = "Regenerate and edit beside a turn"
TARGET_RATIO = 1.5
TARGET_SIZE = 10_000
SIZES = (10, 10_000)
ROUNDS = {10: 30, 10_000: 8}
WINDOWS: dict[str, Any] = {"LastTurns(20)": LastTurns(20), "no window": None}
TURN, REGENERATE, EDIT = "turn", "regenerate", "edit"


def _session_class(tablename: str, agent: Agent[Any]) -> type[Any]:
    class Base(DeclarativeBase):
        pass

    namespace: dict[str, Any] = {
        "__tablename__": tablename,
        "__agent__": agent,
        "__annotations__": {"id": Mapped[int]},
        "id": mapped_column(primary_key=True, autoincrement=True),
    }
    return type("TreeBench", (AgentSessionMixin, Base), namespace)


def _conversation(messages: int) -> list[dict[str, str]]:
    turns = []
    for i in range(messages // 2):
        turns.append({"role": "user", "content": f"Where is order {i}? It was due on Monday."})
        turns.append({"role": "assistant", "content": f"Order {i} was delivered on Monday."})
    return turns


def _measure(url: str, window: Any, size: int, rounds: int) -> dict[str, list[float]]:
    engine = sa.create_engine(url)
    agent = Agent(instant_model(), instruction="You help with orders.", history=window)
    cls = _session_class(f"tree_bench_{size}", agent)
    cls.metadata.drop_all(engine)
    cls.metadata.create_all(engine)
    maker = sessionmaker(engine)
    try:
        key = cls.import_session(maker, _conversation(size)).id
        newest: dict[str, str] = {}

        def note(chat: Any) -> None:
            runs = chat.context["path"]
            newest["user"] = f"{runs[-1][1]}.0"

        note(cls.continue_session(maker, key, "And order 42?"))

        def timed(call: Callable[[], Any]) -> Callable[[], float]:
            def run() -> float:
                started = time.perf_counter()
                chat = call()
                elapsed = time.perf_counter() - started
                note(chat)
                forget_requests(agent.model)
                return elapsed

            return run

        variants = {
            TURN: timed(lambda: cls.continue_session(maker, key, "And order 42?")),
            REGENERATE: timed(lambda: cls.regenerate_session(maker, key)),
            EDIT: timed(lambda: cls.edit_session(maker, key, newest["user"], "Order 43?")),
        }
        return interleave(variants, rounds, warmup=1)
    finally:
        cls.metadata.drop_all(engine)
        engine.dispose()


def run(opts: Options, dbs: Databases) -> BenchResult:
    result = BenchResult(
        name=NAME,
        title=TITLE,
        target=f"a regenerate and an edit <= {TARGET_RATIO:g}x a turn at {TARGET_SIZE:,} "
        "stored messages",
        description=__doc__ or "",
    )
    sizes = (10,) if opts.quick else SIZES
    rows = []
    at_target: list[float] = []
    backends = dbs.sqlite_and_postgres("tree", result.notes)
    windows = list(WINDOWS.items())
    if opts.quick:  # a smoke run: one case is enough to see that it still runs
        backends, windows = backends[:1], windows[:1]
    for label, url in backends:
        for name, window in windows:
            for size in sizes:
                rounds = 2 if opts.quick else ROUNDS[size]
                m = _measure(url, window, size, rounds)
                regenerate = paired_ratios(m[REGENERATE], m[TURN]).median
                edit = paired_ratios(m[EDIT], m[TURN]).median
                if size == TARGET_SIZE:
                    at_target.extend([regenerate, edit])
                rows.append(
                    [
                        label,
                        name,
                        f"{size:,}",
                        rounds,
                        fmt_ms(stats(m[TURN]).median),
                        fmt_ms(stats(m[REGENERATE]).median),
                        fmt_ratio(regenerate),
                        fmt_ms(stats(m[EDIT]).median),
                        fmt_ratio(edit),
                    ]
                )
    result.add_table(
        "Time per call, ms (sessionmaker; ratio = median of per-round ratios to the turn)",
        [
            "database",
            "window",
            "stored messages",
            "rounds",
            "turn",
            "regenerate",
            "ratio",
            "edit",
            "ratio",
        ],
        rows,
    )
    if at_target:
        worst = max(at_target)
        result.measured = f"worst ratio to a turn at {TARGET_SIZE:,} messages: {fmt_ratio(worst)}"
        result.headline = fmt_ratio(worst)
        result.met = worst <= TARGET_RATIO
    else:
        result.measured = f"{TARGET_SIZE:,} messages not measured (quick run)"
        result.met = None
    return result
