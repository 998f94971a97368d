"""Hops: the calls of one turn that cross from one agent_session module to another.

One stored ``continue_session`` turn (sync drivers, caller-owned ``Session``, the
zero-latency double, a SQLite file, a session of 10 stored messages), the whole of
``with Session(engine) as db: continue_session(...); db.commit()``, runs under
``sys.setprofile`` after a warm-up turn on another row of the same table (so lazy
imports and first-use caches are behind it). A *crossing* is a Python call whose
callee's code file is a module of the ``agent_session`` package and whose caller
frame is code of another module of that package; a generator or coroutine resumed
(``next``, ``send``, ``for``, ``yield from``) is a call too. Only direct calls count:
a call from ``agent_session.A`` into SQLAlchemy, pydantic or the standard library
that calls back into ``agent_session.B`` is not an A -> B crossing (the frame that
calls B is not agent_session code), and neither is code generated at run time
(``dataclasses``' ``__init__``). A C function between the two (``sorted(key=...)``,
``map``) leaves no frame of its own, so a call through one counts. The turn enters
the package from outside it (``mixin``) and the model double lives in
``agent_session.testing``: calls to it count like any other.

"Files touched" are the package's files with at least one frame run during the
turn, whether or not a crossing enters them. The control path lists the modules of
the crossings in order: each crossing adds its caller's module, then its callee's,
and consecutive repeats are merged, so a module shows again when a call has returned
to it and it calls out once more. A second row runs the same turn again to show the
count does not depend on the run. Nothing is timed; run ``python -m benchmarks.hops``
to print the same tables for the tree it is run in (any layout of ``agent_session``
with ``benchmarks._fixtures.chat_table``).
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy.orm import Session

from ._fixtures import USER_TEXT, Databases, chat_table
from ._harness import BenchResult, Options

NAME = "hops"
TITLE = "Hops: module crossings in one turn"
MESSAGES = 10
WARMUP_ROW, MEASURED_ROW, CHECK_ROW = 2, 1, 3


@dataclass(frozen=True)
class Trace:
    """What ``sys.setprofile`` saw of one turn, inside the agent_session package."""

    crossings: list[tuple[str, str]]
    """(caller module, callee module), in call order."""
    files: Counter[str]
    """Package file (relative path) -> frames entered in it."""

    def pairs(self) -> Counter[tuple[str, str]]:
        return Counter(self.crossings)

    def path(self) -> list[str]:
        """The modules of the crossings in order, consecutive repeats merged."""
        path: list[str] = []
        for caller, callee in self.crossings:
            for module in (caller, callee):
                if not path or path[-1] != module:
                    path.append(module)
        return path

    def crossing_files(self) -> set[str]:
        return {module for pair in self.crossings for module in pair}


def _package_dir() -> Path:
    import agent_session

    return Path(agent_session.__file__).resolve().parent


def _module_name(relative: str) -> str:
    """``_store.py`` -> ``_store``; ``sub/__init__.py`` -> ``sub``."""
    parts = list(Path(relative).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "__init__"


def trace(fn: Any) -> Trace:
    """Run ``fn()`` under ``sys.setprofile``; the crossings between package modules."""
    root = str(_package_dir()) + "/"
    known: dict[str, str | None] = {}  # code file -> module name, None outside the package

    def module_of(frame: FrameType) -> str | None:
        filename = frame.f_code.co_filename
        try:
            return known[filename]
        except KeyError:
            resolved = str(Path(filename).resolve()) if filename.endswith(".py") else ""
            inside = resolved.startswith(root)
            known[filename] = _module_name(resolved[len(root) :]) if inside else None
            return known[filename]

    crossings: list[tuple[str, str]] = []
    files: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        callee = module_of(frame)
        if callee is None:
            return
        files[callee] += 1
        caller_frame = frame.f_back
        if caller_frame is None:
            return
        caller = module_of(caller_frame)
        if caller is not None and caller != callee:
            crossings.append((caller, callee))

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(previous)
    return Trace(crossings, files)


def measure(url: str) -> tuple[Trace, Trace]:
    """(the measured turn, the same turn on another row) on a fresh table at ``url``."""
    with chat_table(url, "hops", MESSAGES, [MEASURED_ROW, WARMUP_ROW, CHECK_ROW]) as fx:
        chat, engine = fx.chat, fx.engine

        def turn(pk: int) -> Any:
            def one_turn() -> None:
                with Session(engine) as db:
                    chat.continue_session(db, pk, USER_TEXT)
                    db.commit()

            return one_turn

        turn(WARMUP_ROW)()
        return trace(turn(MEASURED_ROW)), trace(turn(CHECK_ROW))


def _wrapped_path(path: list[str], width: int = 96) -> str:
    """``a -> b -> c``, broken after an arrow so no line is longer than ``width``."""
    lines: list[str] = []
    line = ""
    for index, module in enumerate(path):
        step = module if index == len(path) - 1 else f"{module} ->"
        if line and len(line) + 1 + len(step) > width:
            lines.append(line)
            line = step
        else:
            line = f"{line} {step}" if line else step
    return "\n".join([*lines, line])


def run(opts: Options, dbs: Databases) -> BenchResult:
    result = BenchResult(
        name=NAME,
        title=TITLE,
        target="no target: crossings between agent_session modules in one turn",
        description=__doc__ or "",
    )
    measured, check = measure(dbs.sqlite_url("hops"))
    count, touched = len(measured.crossings), len(measured.files)
    result.measured = (
        f"{count} crossings between agent_session modules, {touched} package files touched "
        f"({len(measured.crossing_files())} of them in crossings), SQLite, "
        f"{MESSAGES} stored messages"
    )
    result.headline = f"{count} crossings, {touched} files"
    result.met = None
    path = measured.path()
    result.add_text(
        f"Control path of the turn's crossings ({count} crossings, {len(path)} steps once "
        "consecutive repeats are merged)",
        f"```text\n{_wrapped_path(path)}\n```",
    )
    result.add_table(
        "Crossings per (caller module, callee module)",
        ["from", "to", "crossings"],
        [
            [f"`{a}`", f"`{b}`", str(n)]
            for (a, b), n in sorted(measured.pairs().items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    )
    result.add_table(
        "Package files touched: frames entered (calls and generator resumptions), and "
        "crossings into and out of each",
        ["module", "frames", "crossings in", "crossings out"],
        [
            [
                f"`{module}`",
                str(frames),
                str(sum(n for (_, b), n in measured.pairs().items() if b == module)),
                str(sum(n for (a, _), n in measured.pairs().items() if a == module)),
            ]
            for module, frames in sorted(measured.files.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
    )
    if check.crossings == measured.crossings and check.files == measured.files:
        result.notes.append("A second row's turn made the same crossings in the same order.")
    else:
        result.notes.append(
            f"A second row's turn differed: {len(check.crossings)} crossings, "
            f"{len(check.files)} files touched."
        )
    return result


def main() -> int:
    """Print the tables for the ``agent_session`` this interpreter imports."""
    from ._report import print_result

    dbs = Databases()
    try:
        print(f"agent_session imported from {_package_dir()}")
        print_result(run(Options(quick=True), dbs))
    finally:
        dbs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
