"""Listing a user's chats: ``list_sessions`` at 100 and at 100,000 sessions.

Two tables of the same model (``__last_turn_attribute__``, ``__listed_by__ =
("owner",)``), seeded with one bulk ``INSERT`` each (not turns): 100 sessions of one
user, and 100,000 sessions of 1,000 users (100 each), every row with a stored head of
about 1 KiB in its context column and distinct last turn times. Timed, interleaved
round by round through a ``sessionmaker``: the first page (50) of one user, the page
after it (the cursor), and the first page of ``all=True``. A page reads the listing's
columns through the index ``(owner, last_turn_at, id)``, never a context document, so
the table's size should not show: the target is a page at 100,000 sessions within 2x
of a page at 100.
"""

from __future__ import annotations

import json
import random
import time
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from agent_session import Agent, AgentSessionMixin

from ._fixtures import Databases, instant_model
from ._harness import BenchResult, Options, fmt_ratio, fmt_stats_ms, paired_ratios, stats

NAME = "listing"
TITLE = "Listing a user's chats"
TARGET_RATIO = 2.0
SIZES = (100, 100_000)
PER_USER = 100
PAGE = 50


def _model(tablename: str, scope: tuple[str, ...]) -> type[Any]:
    class Base(DeclarativeBase):
        pass

    class Listed(AgentSessionMixin, Base):
        __tablename__ = tablename
        __agent__ = Agent(instant_model(), instruction="Be brief.")
        __last_turn_attribute__ = "last_turn_at"
        __listed_by__ = scope
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        owner: Mapped[str] = mapped_column(sa.String(20))

    return Listed


def _head(index: int) -> dict[str, Any]:
    return {
        "version": 4,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "turns": 3,
        "usage": {"i": 300, "o": 90},
        "system": {"role": "system", "content": "Be brief. " * 20},
        "path": [[1, 3]],
        "next": 4,
        "last": {"role": "assistant", "content": f"reply {index} " + "x" * 600},
    }


def _seed(engine: sa.Engine, model: type[Any], size: int) -> None:
    table = model.__table__
    with engine.begin() as conn:
        table.metadata.drop_all(conn)
        table.metadata.create_all(conn)
    start = datetime(2026, 1, 1)
    rng = random.Random(size)
    order = list(range(size))
    rng.shuffle(order)  # last turn times not in key order
    users = max(size // PER_USER, 1)
    rows = [
        {
            "id": i + 1,
            "owner": f"u{i % users}",
            "context": json.dumps(_head(i)),
            "context_revision": 3,
            "title": f"question {i}",
            "turn_count": 3,
            "created_at": start,
            "last_turn_at": start + timedelta(seconds=order[i]),
        }
        for i in range(size)
    ]
    insert = sa.text(
        f"INSERT INTO {table.name} (id, owner, context, context_revision, title, turn_count, "
        "created_at, last_turn_at) VALUES (:id, :owner, :context, :context_revision, :title, "
        ":turn_count, :created_at, :last_turn_at)"
    )
    with engine.begin() as conn:
        for first in range(0, size, 10_000):
            conn.execute(insert, rows[first : first + 10_000])
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql(f"ANALYZE {table.name}")


def _first(m: Any, maker: Any) -> Any:
    return m.list_sessions(maker, where=m.owner == "u0", limit=PAGE)


def _second(m: Any, maker: Any) -> Any:
    return m.list_sessions(maker, where=m.owner == "u0", limit=PAGE, before=_first(m, maker).next)


def _every(m: Any, maker: Any) -> Any:
    return m.list_sessions(maker, all=True, limit=PAGE)


def _time(fn: Any, *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def run(opts: Options, dbs: Databases) -> BenchResult:
    result = BenchResult(
        name=NAME,
        title=TITLE,
        target=f"a page at 100,000 sessions <= {TARGET_RATIO}x a page at 100",
        description=__doc__ or "",
    )
    rounds = opts.rounds(200, 3)
    sizes = (SIZES[0], 2_000) if opts.quick else SIZES  # a quick run's numbers mean nothing
    rows = []
    worst = 0.0
    for label, url in dbs.sqlite_and_postgres("listing", result.notes):
        engine = sa.create_engine(url)
        maker = sessionmaker(engine, expire_on_commit=False)
        scoped = {size: _model(f"bench_listed_{size}", ("owner",)) for size in sizes}
        unscoped = {size: _model(f"bench_listed_all_{size}", ()) for size in sizes}
        for size in sizes:
            _seed(engine, scoped[size], size)
            _seed(engine, unscoped[size], size)

        cases = {
            "first page of a user": (_first, scoped, True),
            "second page of a user (cursor)": (_second, scoped, True),
            "first page, all=True, index (last_turn_at, id)": (_every, unscoped, True),
            "first page, all=True, index (owner, last_turn_at, id)": (_every, scoped, False),
        }
        samples: dict[tuple[str, int], list[float]] = {}
        for case, (fn, models, _) in cases.items():
            for model in models.values():  # warm up, and check the page
                page = fn(model, maker)
                assert len(page.items) == PAGE, (case, len(page.items))
        for _ in range(rounds):
            for case, (fn, models, _) in cases.items():
                for size, model in models.items():
                    samples.setdefault((case, size), []).append(_time(fn, model, maker))
        for case, (_, _, judged) in cases.items():
            small, large = samples[(case, sizes[0])], samples[(case, sizes[1])]
            ratio = paired_ratios(large, small)
            if judged:
                worst = max(worst, ratio.median)
            rows.append(
                [
                    label,
                    case + ("" if judged else " (not served by the index)"),
                    *fmt_stats_ms(stats(small)),
                    *fmt_stats_ms(stats(large)),
                    fmt_ratio(ratio.median),
                ]
            )
        with engine.begin() as conn:
            for model in [*scoped.values(), *unscoped.values()]:
                model.__table__.metadata.drop_all(conn)
        engine.dispose()
    result.add_table(
        f"One page of {PAGE} through a sessionmaker, wall ms ({rounds} interleaved rounds; "
        "the cursor case times the first page and the page after it)",
        [
            "database",
            "listing",
            "100 sessions: median",
            "p25–p75",
            "100,000 sessions: median",
            "p25–p75",
            "ratio (median of paired)",
        ],
        rows,
    )
    result.notes.append(
        "`all=True` is served by the listing index only when `__listed_by__` is empty "
        "(the index then starts with the last turn time); with `__listed_by__` set, a "
        "listing of every user reads the table (the last row, not judged)."
    )
    result.measured = f"worst median ratio {fmt_ratio(worst)} (100,000 vs 100 sessions)"
    result.headline = fmt_ratio(worst)
    result.met = worst <= TARGET_RATIO
    return result
