"""Where a turn spends its time: pyinstrument on ``continue_session``.

Sync drivers, caller-owned ``Session``, the zero-latency double; sessions of 10 and
1,000 stored messages. Many turns run under a sampling profiler (100 µs interval);
the row is put back between turns, and only the time inside the turn itself
(``with Session(engine) as db: continue_session(...); db.commit()``) counts as 100%.

Each line adds up the time of every call to the functions it names, counted once
where they nest (a category may contain another: "UPDATE" contains the JSON
encode). The sampler slows Python code more than C code, so shares are a guide to
where to look, not exact costs. Run ``python -m benchmarks --only profile`` to
see the same tables, and ``PROFILE_HTML=dir`` to also save pyinstrument's HTML
reports there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ._fixtures import USER_TEXT, Databases, chat_table, forget_requests, make_document
from ._harness import BenchResult, Options

NAME = "profile"
TITLE = "Where a turn spends its time"
TURNS = {10: 300, 1000: 40}

# (label, qualified-name pattern, file pattern): inclusive time of matching frames.
# Qualified names are pyinstrument's "Class.function" (or "function").
_STDLIB_JSON = r"(^|/)json/__init__\.py$"
CATEGORIES: list[tuple[str, str, str]] = [
    (
        "load the row: `Session.get(populate_existing=True)` in `_load`",
        r"^SyncStore\._load$",
        r"agent_session",
    ),
    ("  of which JSON decode (`json.loads`)", r"^loads$", _STDLIB_JSON),
    (
        "validate the stored document: `load_context` in `read_document`",
        r"^load_context$",
        r"agent_session",
    ),
    ("run the UPDATE: `_swap`", r"^SyncStore\._swap$", r"agent_session"),
    ("  of which building the statement: `swap_statement`", r"swap_statement$", r"agent_session"),
    ("  of which JSON encode (`json.dumps`)", r"^dumps$", _STDLIB_JSON),
    ("  of which `after_swap` / `set_committed_value`", r"after_swap$", r"agent_session"),
    ("`commit` (the caller's, flush included)", r"^Session\.commit$", r"sqlalchemy"),
    ("`Session` close", r"^Session\.(__exit__|close)$", r"sqlalchemy"),
    (
        "model double (`FunctionModel.complete`)",
        r"^FunctionModel\.complete$",
        r"agent_session/testing",
    ),
    (
        "plan the turn: `validate_input`, `plan_next_turn`",
        r"^(validate_input|plan_next_turn)$",
        r"agent_session",
    ),
    (
        "request: `outgoing_messages` (strip `meta` from history)",
        r"^outgoing_messages$",
        r"agent_session",
    ),
    ("parse and validate the output: `Agent.parse_output`", r"parse_output$", r"agent_session"),
    ("build the new document: `next_document`", r"^next_document$", r"agent_session"),
    (
        "class-method entry: `_spec`, `_key_and_instance`, store set-up",
        r"(^|\.)(_spec|_key_and_instance|_structured)$|^SyncStore\.__init__$",
        r"agent_session/(mixin|_store)",
    ),
]


def _qualname(frame: Any) -> str:
    function = frame.function or ""
    return f"{frame.class_name}.{function}" if frame.class_name else function


def _walk(frame: Any, visit: Callable[[Any, list[Any]], None], path: list[Any]) -> None:
    visit(frame, path)
    path.append(frame)
    for child in frame.children:
        _walk(child, visit, path)
    path.pop()


def _shares(root: Any) -> tuple[float, dict[str, float], list[tuple[str, float, float]]]:
    """(turn seconds, category -> seconds, top agent_session functions by inclusive time)."""
    turns: list[Any] = []
    _walk(root, lambda f, _: turns.append(f) if f.function == "_one_turn" else None, [])
    total = sum(f.time for f in turns)
    compiled = [(label, re.compile(fn), re.compile(fp)) for label, fn, fp in CATEGORIES]
    found = {label: 0.0 for label, _, _ in CATEGORIES}
    functions: dict[str, list[float]] = {}

    def matches(frame: Any, fn: re.Pattern[str], fp: re.Pattern[str]) -> bool:
        return bool(fn.search(_qualname(frame))) and bool(fp.search(frame.file_path or ""))

    for turn in turns:

        def visit(frame: Any, path: list[Any]) -> None:
            for label, fn, fp in compiled:
                if matches(frame, fn, fp) and not any(matches(p, fn, fp) for p in path):
                    found[label] += frame.time
            file_path = frame.file_path or ""
            if "agent_session" in file_path and "benchmarks" not in file_path:
                key = f"{_qualname(frame)} ({Path(file_path).name}:{frame.line_no})"
                own = functions.setdefault(key, [0.0, 0.0])
                if not any(
                    p.function == frame.function and p.file_path == frame.file_path for p in path
                ):
                    own[0] += frame.time
                own[1] += frame.total_self_time

        _walk(turn, visit, [])
    top = sorted(((k, v[0], v[1]) for k, v in functions.items()), key=lambda r: -r[1])
    return total, found, top


def _profile(
    url: str, size: int, turns: int, html_dir: str | None
) -> tuple[float, dict[str, float], list[tuple[str, float, float]], int]:
    from pyinstrument import Profiler

    with chat_table(url, f"profile_{size}", size, [1]) as fx:
        chat, model, engine, reset = fx.chat, fx.model, fx.engine, fx.reset

        def _one_turn() -> None:
            with Session(engine) as db:
                chat.continue_session(db, 1, USER_TEXT)
                db.commit()

        for _ in range(5):
            reset(1)
            _one_turn()
        profiler = Profiler(interval=0.0001)
        profiler.start()
        for _ in range(turns):
            reset(1)
            _one_turn()
            forget_requests(model)
        session = profiler.stop()
        if html_dir:
            Path(html_dir).mkdir(parents=True, exist_ok=True)
            name = f"turn_{engine.dialect.name}_{size}.html"
            (Path(html_dir) / name).write_text(profiler.output_html(), encoding="utf-8")
        root = session.root_frame()
        total, found, top = _shares(root)
        return total, found, top, session.sample_count


def _micro(url: str, quick: bool) -> list[list[str]]:
    """Steps of a turn against their plain-Core equivalents, best of 5 ``timeit`` runs.

    Uses the library's internals (``SyncStore.swap_statement``), so it is skipped,
    not failed, when they change.
    """
    import gc
    import timeit

    from agent_session._flows import Swap
    from agent_session._store import SyncStore
    from agent_session.context import load_context

    with chat_table(url, "profile_micro", 10, [1]) as fx:
        chat, table, model, engine, small = fx.chat, fx.table, fx.model, fx.engine, fx.document
        large = make_document(1000)
        store = SyncStore(chat.__agent_session_spec__, model, Session(engine))
        with Session(engine, expire_on_commit=False) as db:
            instance = db.get(chat, 1)
        op = Swap(instance, 1, 0, {"context": small, "context_revision": 0})
        core_update = (
            sa.update(table)
            .where(table.c.id == 1, table.c.context_revision == 0)
            .values(context=small, context_revision=0)
        )

        def in_session(fn: Callable[[Session], Any]) -> Callable[[], None]:
            def run() -> None:
                with Session(engine) as db:
                    fn(db)
                    db.commit()

            return run

        def no_gc(fn: Callable[[], Any]) -> Callable[[], None]:
            def run() -> None:
                gc.disable()
                try:
                    fn()
                finally:
                    gc.enable()

            return run

        steps: list[tuple[str, Callable[[], Any]]] = [
            ("empty `Session` + commit", in_session(lambda db: None)),
            (
                "`Session.get(populate_existing=True)` (the library's load)",
                in_session(lambda db: db.get(chat, 1, populate_existing=True)),
            ),
            (
                "Core `select(context, context_revision)` (the baseline's load)",
                in_session(
                    lambda db: db.execute(
                        sa.select(table.c.context, table.c.context_revision).where(table.c.id == 1)
                    ).one()
                ),
            ),
            (
                "`swap_statement` (cached Core UPDATE + parameters)",
                lambda: store.swap_statement(op),
            ),
            (
                "execute `swap_statement` (the library's write)",
                in_session(lambda db: db.execute(*store.swap_statement(op))),
            ),
            (
                "execute a Core `update(table)`, built each time (the baseline's write)",
                in_session(
                    lambda db: db.execute(
                        sa.update(table)
                        .where(table.c.id == 1, table.c.context_revision == 0)
                        .values(context=small, context_revision=0)
                    )
                ),
            ),
            (
                "execute a prebuilt Core `update(table)`",
                in_session(lambda db: db.execute(core_update)),
            ),
            ("`load_context`, 10 messages", lambda: load_context(small)),
            ("`load_context`, 1,000 messages", lambda: load_context(large)),
            ("`load_context`, 1,000 messages, GC disabled", no_gc(lambda: load_context(large))),
        ]
        rows = []
        for label, fn in steps:
            number = 20 if "1,000" in label else 200
            if quick:
                number = 5
            for _ in range(3):
                fn()
            best = min(timeit.repeat(fn, number=number, repeat=2 if quick else 5)) / number
            rows.append([label, f"{best * 1e6:.0f}"])
        return rows


def _top_level(shares: dict[str, float]) -> float:
    return sum(v for k, v in shares.items() if not k.startswith("  ") and k != "__total")


def run(opts: Options, dbs: Databases) -> BenchResult:
    result = BenchResult(
        name=NAME,
        title=TITLE,
        target="no target: shares of a library turn, to find hotspots",
        description=__doc__ or "",
    )
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        return result.skip("pyinstrument is not installed; pip install -e '.[bench]'")
    targets = [("SQLite", dbs.sqlite_url("profile"))]
    if (pg := dbs.postgres_url()) is not None:
        targets.append(("PostgreSQL", pg))
    else:
        result.notes.append(f"PostgreSQL skipped: {dbs.postgres_error}")
    html_dir = os.environ.get("PROFILE_HTML")
    columns: list[str] = []
    shares: list[dict[str, float]] = []
    tops: list[list[tuple[str, float, float]]] = []
    for label, url in targets:
        for size in (10,) if opts.quick else (10, 1000):
            turns = 20 if opts.quick else TURNS[size]
            total, found, top, _ = _profile(url, size, turns, html_dir)
            per_turn = total / turns
            columns.append(f"{label}, {size:,} msgs ({per_turn * 1000:.1f} ms/turn)")
            shares.append({k: v / total for k, v in found.items()} | {"__total": total})
            tops.append([(k, incl / total, own / total) for k, incl, own in top])
    rows = []
    for label, _, _ in CATEGORIES:
        name = label.strip()
        if label.startswith("  "):
            name = f"↳ {name}"
        rows.append([name, *(f"{100 * s[label]:.1f}%" for s in shares)])
    rows.append(
        [
            "**sum of the lines above, without the ↳ lines**",
            *(f"{100 * _top_level(s):.1f}%" for s in shares),
        ]
    )
    result.add_table(
        "Share of the turn's time, per category (pyinstrument, inclusive time)",
        ["category", *columns],
        rows,
    )
    for column, top in zip(columns, tops, strict=True):
        result.add_table(
            f"Top agent_session functions, {column}: inclusive share (callees included) and "
            "self share",
            ["function", "inclusive", "self"],
            [[f"`{k}`", f"{100 * incl:.1f}%", f"{100 * own:.1f}%"] for k, incl, own in top[:10]],
        )
    labels = {
        key: label
        for key, label in zip(
            ("load", "decode", "validate", "update"), (c[0] for c in CATEGORIES), strict=False
        )
    }
    try:
        micro = _micro(dbs.sqlite_url("profile_micro"), opts.quick)
    except (AttributeError, ImportError, TypeError) as exc:
        result.notes.append(f"step timings skipped: the library's internals changed ({exc!r})")
    else:
        result.add_table(
            "Steps of a turn against their Core equivalents, SQLite, 10 stored messages "
            "unless named (µs, best of 5 timeit runs, no profiler)",
            ["step", "µs"],
            micro,
        )
    result.measured = "; ".join(
        f"{column.split(' (')[0]}: load {100 * s[labels['load']]:.0f}%, "
        f"validate {100 * s[labels['validate']]:.0f}%, UPDATE {100 * s[labels['update']]:.0f}%"
        for column, s in zip(columns, shares, strict=True)
    )
    result.met = None
    return result
