"""Storage: PostgreSQL ``json`` vs ``jsonb`` for whole-document reads and writes.

The library reads the whole context document, and writes the whole document back,
once per turn; it never queries inside it on the server. This measures exactly that
access pattern on one table per column type, each holding the same documents of
100, 1,000 and 5,000 messages:

- write: ``UPDATE t SET context = :doc WHERE id = :id`` through SQLAlchemy (``sa.JSON``
  for ``json``, ``postgresql.JSONB`` for ``jsonb``), committed, the document as
  compact UTF-8 JSON text (as the library writes it);
- read: ``SELECT context FROM t WHERE id = :id``, decoded to Python by the driver;
- size: ``pg_column_size`` of one stored document (after TOAST compression) and
  ``pg_total_relation_size`` (heap, TOAST and index) per row, for rows written once
  and vacuumed; and the document's text (``octet_length``) against its bare chat
  messages (the compact UTF-8 JSON of each message's role and content).

Both the default TOAST compression (``pglz``) and ``lz4`` (``ALTER TABLE ... ALTER
COLUMN context SET COMPRESSION lz4``, PostgreSQL 14+) are measured. Variants are
interleaved round by round, on psycopg (sync) and asyncpg.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import create_async_engine

from ._fixtures import Databases, make_document
from ._harness import (
    BenchResult,
    Options,
    ainterleave,
    fmt_bytes,
    fmt_ratio,
    fmt_stats_ms,
    interleave,
    paired_ratios,
    stats,
)
from ._report import ROOT, replace_block

R = TypeVar("R")

NAME = "storage"
TITLE = "Storage: json vs jsonb"
STORAGE_MD = ROOT / "docs" / "storage.md"
SIZES = (100, 1000, 5000)
ROUNDS = {100: 60, 1000: 15, 5000: 6}
ROWS_FOR_SIZE = 10
VARIANTS: dict[str, tuple[Any, str | None]] = {
    "json": (sa.JSON(), None),
    "jsonb": (postgresql.JSONB(), None),
    "json, lz4": (sa.JSON(), "lz4"),
    "jsonb, lz4": (postgresql.JSONB(), "lz4"),
}


def _dumps(document: Any) -> str:
    """Compact UTF-8 JSON text: how the library binds the documents it writes."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def _tables(metadata: sa.MetaData) -> dict[str, sa.Table]:
    return {
        name: sa.Table(
            f"storage_{name.replace(', ', '_')}",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("context", type_),
        )
        for name, (type_, _) in VARIANTS.items()
    }


def _create(engine: sa.Engine, metadata: sa.MetaData, tables: dict[str, sa.Table]) -> None:
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        for name, (_, compression) in VARIANTS.items():
            if compression:
                conn.exec_driver_sql(
                    f"ALTER TABLE {tables[name].name} ALTER COLUMN context "
                    f"SET COMPRESSION {compression}"
                )


@contextmanager
def _filled(
    url: str, size: int, ids: Iterable[int]
) -> Iterator[tuple[sa.Engine, dict[str, sa.Table], dict[str, Any]]]:
    """(engine, table per variant, document): fresh tables whose rows ``ids`` hold a
    document of ``size`` messages; dropped, and the engine disposed, on exit."""
    metadata = sa.MetaData()
    tables = _tables(metadata)
    engine = sa.create_engine(url, json_serializer=_dumps)
    document = make_document(size)
    try:
        _create(engine, metadata, tables)
        with engine.begin() as conn:
            for table in tables.values():
                conn.execute(sa.insert(table), [{"id": i, "context": document} for i in ids])
        yield engine, tables, document
    finally:
        metadata.drop_all(engine)
        engine.dispose()


def _chat_bytes(document: dict[str, Any]) -> int:
    """The bare chat messages: compact UTF-8 JSON of role and content."""
    bare = [{"role": m["role"], "content": m["content"]} for m in document["messages"]]
    return len(json.dumps(bare, ensure_ascii=False, separators=(",", ":")).encode())


def _text_bytes(url: str, size: int) -> int:
    """``octet_length`` of one document as the ``json`` column holds it."""
    with _filled(url, size, [1]) as (engine, tables, _), engine.connect() as conn:
        column = sa.cast(tables["json"].c.context, sa.Text)
        return int(conn.execute(sa.select(sa.func.octet_length(column))).scalar_one())


def _sizes(url: str, size: int) -> dict[str, tuple[float, float]]:
    """(stored bytes of one document, total relation bytes per row) per variant."""
    with (
        _filled(url, size, range(ROWS_FOR_SIZE)) as (engine, tables, _),
        engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
    ):
        found = {}
        for name, table in tables.items():
            conn.exec_driver_sql(f"VACUUM ANALYZE {table.name}")
            column = conn.execute(
                sa.select(sa.func.avg(sa.func.pg_column_size(table.c.context)))
            ).scalar_one()
            total = conn.exec_driver_sql(
                f"SELECT pg_total_relation_size('{table.name}')"
            ).scalar_one()
            found[name] = (float(column), total / ROWS_FOR_SIZE)
        return found


def _by_table(
    tables: dict[str, sa.Table], write: Callable[[sa.Table], R], read: Callable[[sa.Table], R]
) -> dict[str, Callable[[], R]]:
    """The variants "write NAME" and "read NAME" of every table, in that order."""
    variants: dict[str, Callable[[], R]] = {}
    for name, table in tables.items():
        variants[f"write {name}"] = partial(write, table)
        variants[f"read {name}"] = partial(read, table)
    return variants


def _times_sync(url: str, size: int, rounds: int) -> dict[str, list[float]]:
    with _filled(url, size, [1]) as (engine, tables, document):

        def write(table: sa.Table) -> float:
            started = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(sa.update(table).where(table.c.id == 1).values(context=document))
            return time.perf_counter() - started

        def read(table: sa.Table) -> float:
            started = time.perf_counter()
            with engine.connect() as conn:
                value = conn.execute(sa.select(table.c.context).where(table.c.id == 1)).scalar_one()
            elapsed = time.perf_counter() - started
            assert len(value["messages"]) == size + 1
            return elapsed

        return interleave(_by_table(tables, write, read), rounds, warmup=2)


def _times_async(async_url: str, sync_url: str, size: int, rounds: int) -> dict[str, list[float]]:
    with _filled(sync_url, size, [1]) as (_, tables, document):

        async def main() -> dict[str, list[float]]:
            engine = create_async_engine(async_url, json_serializer=_dumps)

            async def write(table: sa.Table) -> float:
                started = time.perf_counter()
                async with engine.begin() as conn:
                    await conn.execute(
                        sa.update(table).where(table.c.id == 1).values(context=document)
                    )
                return time.perf_counter() - started

            async def read(table: sa.Table) -> float:
                started = time.perf_counter()
                async with engine.connect() as conn:
                    value = (
                        await conn.execute(sa.select(table.c.context).where(table.c.id == 1))
                    ).scalar_one()
                elapsed = time.perf_counter() - started
                assert len(value["messages"]) == size + 1
                return elapsed

            try:
                return await ainterleave(_by_table(tables, write, read), rounds, warmup=2)
            finally:
                await engine.dispose()

        return asyncio.run(main())


def run(opts: Options, dbs: Databases) -> BenchResult:
    result = BenchResult(
        name=NAME,
        title=TITLE,
        target="recommend a column type (no ratio target); details in docs/storage.md",
        description=__doc__ or "",
    )
    sync_url, async_url = dbs.postgres_url(), dbs.postgres_url(is_async=True)
    if sync_url is None or async_url is None:
        return result.skip(str(dbs.postgres_error))
    sizes = (100,) if opts.quick else SIZES
    time_rows, size_rows = [], []
    ratios: dict[tuple[int, str], list[float]] = {}
    lz4_write: dict[int, list[float]] = {}
    size_ratio: dict[int, float] = {}
    for size in sizes:
        rounds = 2 if opts.quick else ROUNDS[size]
        for driver, samples in (
            ("psycopg", _times_sync(sync_url, size, rounds)),
            ("asyncpg", _times_async(async_url, sync_url, size, rounds)),
        ):
            for op in ("write", "read"):
                base = samples[f"{op} json"]
                cells = [f"{size:,}", driver, op]
                for name in VARIANTS:
                    median, spread = fmt_stats_ms(stats(samples[f"{op} {name}"]))
                    cells.append(f"{median} ({spread})")
                ratio = paired_ratios(samples[f"{op} jsonb"], base)
                cells.append(fmt_ratio(ratio.median))
                ratios.setdefault((size, op), []).append(ratio.median)
                if op == "write":
                    lz4 = paired_ratios(samples["write json, lz4"], base).median
                    lz4_write.setdefault(size, []).append(lz4)
                time_rows.append(cells)
        found = _sizes(sync_url, size)
        text = _text_bytes(sync_url, size)
        size_rows.append(
            [f"{size:,}"]
            + [fmt_bytes(found[name][0]) for name in VARIANTS]
            + [fmt_bytes(found[name][1]) for name in ("json", "jsonb")]
            + [fmt_ratio(found["jsonb"][0] / found["json"][0])]
            + [fmt_bytes(text), fmt_ratio(text / _chat_bytes(make_document(size)))]
        )
        size_ratio[size] = found["jsonb"][0] / found["json"][0]
    result.add_table(
        "Whole-document write and read, ms: median (p25–p75); jsonb/json is the median "
        "of per-round ratios, default compression",
        ["messages", "driver", "operation", *VARIANTS, "jsonb/json"],
        time_rows,
    )
    result.add_table(
        f"Stored size of one document (pg_column_size) and table size per row "
        f"(pg_total_relation_size / {ROWS_FOR_SIZE} rows, default compression)",
        [
            "messages",
            *(f"{name} document" for name in VARIANTS),
            "json per row",
            "jsonb per row",
            "jsonb/json document",
            "json text",
            "text/chat messages",
        ],
        size_rows,
    )

    def both(size: int, op: str) -> str:
        return "/".join(f"{r:.2f}" for r in ratios[(size, op)])

    result.measured = "jsonb/json (psycopg/asyncpg): " + "; ".join(
        f"{size:,} msgs write {both(size, 'write')}x, read {both(size, 'read')}x, "
        f"size {size_ratio[size]:.2f}x"
        for size in sizes
    )
    key = 1000 if 1000 in sizes else sizes[-1]
    result.headline = (
        f"at {key:,} msgs jsonb is {both(key, 'write')}x to write, {both(key, 'read')}x to read, "
        f"{size_ratio[key]:.2f}x the size; keep json"
    )
    result.notes.append(
        "json with lz4 compression vs json with pglz, write time: "
        + ", ".join(
            f"{size:,} msgs {'/'.join(f'{r:.2f}' for r in values)}x"
            for size, values in lz4_write.items()
        )
        + " (psycopg/asyncpg)."
    )
    json_wins = all(
        r >= 1.0 for (size, _), values in ratios.items() if size >= 1000 for r in values
    )
    result.notes.append(
        "Recommendation: keep `json` (see docs/storage.md)."
        if json_wins
        else "jsonb was not slower everywhere here: re-read docs/storage.md against these numbers."
    )
    result.met = None
    if opts.write and not opts.quick:
        body = "\n\n".join(f"{heading}:\n\n{table}" for heading, table in result.sections)
        notes = "\n".join(f"- {note}" for note in [result.measured, *result.notes])
        replace_block(STORAGE_MD, "results", f"{body}\n\n{notes}\n")
    return result
