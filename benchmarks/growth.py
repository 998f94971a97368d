"""Growth: one turn on sessions of 10 to 5,000 stored messages.

The stored document is written directly in the library's format (checked with
``load_context``), then one more turn runs, and the row is put back (not timed).
Per size, interleaved round by round, caller-owned ``Session``, sync drivers:

- library: ``continue_session`` in a ``Session``, committed;
- baseline: the hand-written turn of ``_fixtures.baseline_turn``;
- floor: what any design that keeps the conversation in one JSON column pays:
  SELECT the document as text, ``json.loads`` it, append two messages,
  ``json.dumps`` it, UPDATE the row, commit. Its parts are timed separately.

"Validate" is ``agent_session.context.load_context`` on the same document, the
validation a turn does on what it reads. Bytes are those of the stored document
(the whole document is rewritten every turn); on PostgreSQL also its stored size
after TOAST compression and the write-ahead log written by one library turn
(smallest over the rounds, since other sessions on the server only add to it).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from agent_session.context import load_context

from ._fixtures import USER_TEXT, Databases, baseline_turn, chat_table, forget_requests
from ._harness import (
    BenchResult,
    Options,
    fmt_bytes,
    fmt_ms,
    fmt_ratio,
    fmt_ratio_stats,
    fmt_stats_ms,
    interleave,
    paired_ratios,
    stats,
)

NAME = "growth"
TITLE = "Growth with the conversation"
TARGET_RATIO = 2.0
TARGET_SIZE = 1000
SIZES = (10, 100, 1000, 5000)
ROUNDS = {10: 60, 100: 40, 1000: 20, 5000: 8}

LIB, BASE, FLOOR = "library", "baseline", "floor"


class _GcClock:
    """Time spent in the cyclic garbage collector between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.total = 0.0
        self._since = 0.0
        self._running = False
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if not self._running:
            return
        if phase == "start":
            self._since = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._since

    def start(self) -> None:
        self.total, self._running = 0.0, True

    def stop(self) -> float:
        self._running = False
        return self.total

    def close(self) -> None:
        gc.callbacks.remove(self._callback)


def _measure(url: str, size: int, rounds: int) -> dict[str, Any]:
    with chat_table(url, f"growth_{size}", size, [1, 2, 3], baseline=[2, 3]) as fx:
        chat, table, model, engine = fx.chat, fx.table, fx.model, fx.engine
        document, reset = fx.document, fx.reset
        postgres = engine.dialect.name == "postgresql"
        as_text = sa.cast(table.c.context, sa.Text)
        update_text = sa.text(
            f"UPDATE {table.name} SET context = "
            + ("CAST(:doc AS JSON)" if postgres else ":doc")
            + ", context_revision = context_revision + 1 WHERE id = :id"
        )
        parts: dict[str, list[float]] = {
            "select": [],
            "decode": [],
            "encode": [],
            "update": [],
            "gc library": [],
            "gc baseline": [],
        }
        gc_clock = _GcClock()
        wal: list[int] = []

        def lsn() -> int:
            with engine.connect() as conn:
                return int(
                    conn.exec_driver_sql(
                        "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"
                    ).scalar()
                    or 0
                )

        def library() -> float:
            reset(1)
            before = lsn() if postgres else 0
            gc_clock.start()
            started = time.perf_counter()
            with Session(engine) as db:
                chat.continue_session(db, 1, USER_TEXT)
                db.commit()
            elapsed = time.perf_counter() - started
            parts["gc library"].append(gc_clock.stop())
            if postgres:
                wal.append(lsn() - before)
            forget_requests(model)
            return elapsed

        def baseline() -> float:
            reset(2)
            gc_clock.start()
            started = time.perf_counter()
            with Session(engine) as db:
                baseline_turn(db, table, 2, USER_TEXT, model)
                db.commit()
            elapsed = time.perf_counter() - started
            parts["gc baseline"].append(gc_clock.stop())
            forget_requests(model)
            return elapsed

        def floor() -> float:
            reset(3)
            new_messages = document["messages"][-2:]
            t0 = time.perf_counter()
            with engine.begin() as conn:
                raw = conn.execute(sa.select(as_text).where(table.c.id == 3)).scalar_one()
                t1 = time.perf_counter()
                doc = json.loads(raw)
                t2 = time.perf_counter()
                doc["messages"] += new_messages
                encoded = json.dumps(doc)
                t3 = time.perf_counter()
                conn.execute(update_text, {"doc": encoded, "id": 3})
            t4 = time.perf_counter()
            floor_parts = ("select", "decode", "encode", "update")
            for key, value in zip(floor_parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[key].append(value)
            return t4 - t0

        def validate() -> float:
            started = time.perf_counter()
            load_context(document)
            return time.perf_counter() - started

        variants: dict[str, Callable[[], float]] = {
            LIB: library,
            BASE: baseline,
            FLOOR: floor,
            "validate": validate,
        }
        try:
            samples = interleave(variants, rounds, warmup=1 if size >= 1000 else 3)
            with engine.connect() as conn:
                row = conn.execute(
                    sa.select(
                        sa.func.octet_length(as_text)
                        if postgres
                        else sa.func.length(sa.cast(table.c.context, sa.LargeBinary)),
                        sa.func.pg_column_size(table.c.context) if postgres else sa.null(),
                    ).where(table.c.id == 1)
                ).one()
        finally:
            gc_clock.close()
    warmup = 1 if size >= 1000 else 3
    return {
        **samples,
        **{key: values[warmup:] for key, values in parts.items()},
        "bytes": row[0],
        "stored": row[1],
        "wal": min(wal) if wal else None,
    }


def run(opts: Options, dbs: Databases) -> BenchResult:
    result = BenchResult(
        name=NAME,
        title=TITLE,
        target=f"library turn <= {TARGET_RATIO:g}x the floor (SELECT + decode + encode + "
        f"UPDATE) at {TARGET_SIZE:,} messages",
        description=__doc__ or "",
    )
    sizes = (10, 100) if opts.quick else SIZES
    backends = dbs.sqlite_and_postgres("growth", result.notes)

    time_rows, part_rows, byte_rows = [], [], []
    at_target: list[tuple[str, float]] = []
    for label, url in backends:
        for size in sizes:
            rounds = 2 if opts.quick else ROUNDS[size]
            m = _measure(url, size, rounds)
            lib, base, floor = stats(m[LIB]), stats(m[BASE]), stats(m[FLOOR])
            vs_floor = paired_ratios(m[LIB], m[FLOOR])
            vs_base = paired_ratios(m[LIB], m[BASE])
            if size == TARGET_SIZE:
                at_target.append((label, vs_floor.median))
            time_rows.append(
                [
                    label,
                    f"{size:,}",
                    rounds,
                    *fmt_stats_ms(lib),
                    fmt_ms(base.median),
                    fmt_ms(floor.median),
                    fmt_ratio(vs_base.median),
                    *fmt_ratio_stats(vs_floor),
                ]
            )
            validate = stats(m["validate"]).median
            select, decode = stats(m["select"]).median, stats(m["decode"]).median
            encode, update = stats(m["encode"]).median, stats(m["update"]).median
            rest = lib.median - (validate + select + decode + encode + update)
            gc_lib, gc_base = stats(m["gc library"]).median, stats(m["gc baseline"]).median

            def share(part: float, total: float = lib.median) -> str:
                return f"{fmt_ms(part)} ({100 * part / total:.0f}%)"

            if size >= 1000:
                floor_parts = select + decode + encode + update
                result.notes.append(
                    f"{label}, {size:,} messages: the floor's own work (SELECT, decode, encode, "
                    f"UPDATE) is {100 * floor_parts / lib.median:.0f}% of a library turn "
                    f"(UPDATE+commit alone {100 * update / lib.median:.0f}%), validating the "
                    f"stored document {100 * validate / lib.median:.0f}%, everything else "
                    f"{100 * rest / lib.median:.0f}%; the garbage collector ran for "
                    f"{100 * gc_lib / lib.median:.0f}% of the library turn "
                    f"({fmt_ms(gc_lib)} ms, baseline turn {fmt_ms(gc_base)} ms)."
                )
            dominant = max(
                ("validate", validate),
                ("SELECT", select),
                ("decode", decode),
                ("encode", encode),
                ("UPDATE+commit", update),
                ("rest", rest),
                key=lambda item: item[1],
            )[0]
            part_rows.append(
                [
                    label,
                    f"{size:,}",
                    fmt_ms(lib.median),
                    share(gc_lib),
                    fmt_ms(gc_base),
                    share(validate),
                    share(select),
                    share(decode),
                    share(encode),
                    share(update),
                    share(rest),
                    dominant,
                ]
            )
            byte_rows.append(
                [
                    label,
                    f"{size:,}",
                    fmt_bytes(m["bytes"]),
                    fmt_bytes(m["stored"]) if m["stored"] is not None else "",
                    fmt_bytes(m["wal"]) if m["wal"] is not None else "",
                ]
            )
    result.add_table(
        "Time per turn, ms (library and baseline in a caller-owned Session; ratios are "
        "medians of per-round ratios)",
        [
            "database",
            "messages",
            "rounds",
            "library",
            "p25–p75",
            "baseline",
            "floor",
            "library/baseline",
            "library/floor",
            "l/f p25–p75",
        ],
        time_rows,
    )
    result.add_table(
        "Where a library turn goes: the floor's parts and validation timed on their own, "
        "as ms (share of the library turn); rest = everything else the turn does. GC is the "
        "time the cyclic garbage collector ran during the turns themselves (gc.callbacks); "
        "it falls on whatever allocates, mostly the validation, so it overlaps the other "
        "columns, most of all rest",
        [
            "database",
            "messages",
            "library",
            "GC in library turn",
            "GC in baseline turn",
            "validate",
            "SELECT",
            "decode",
            "encode",
            "UPDATE+commit",
            "rest",
            "largest",
        ],
        part_rows,
    )
    result.add_table(
        "Bytes written per turn (the whole document is rewritten)",
        ["database", "messages", "document", "stored (TOAST)", "WAL per library turn"],
        byte_rows,
    )
    if at_target:
        worst = max(ratio for _, ratio in at_target)
        result.measured = f"library/floor at {TARGET_SIZE:,} messages: " + ", ".join(
            f"{label} {fmt_ratio(r)}" for label, r in at_target
        )
        result.headline = ", ".join(f"{label} {fmt_ratio(r)}" for label, r in at_target)
        result.met = worst <= TARGET_RATIO
    else:
        result.measured = f"{TARGET_SIZE:,} messages not measured (quick run)"
        result.met = None
    return result
