"""Printing results and writing them to ``docs/benchmarks.md``.

The page is regenerated whole on every write: fixed prose from this module, a
summary table, the machine, then one block per benchmark. Each block sits between
``<!-- begin NAME -->`` and ``<!-- end NAME -->``; a run with ``--only`` replaces
its own blocks and keeps the others as they were, each with its own date.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sqlite3
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from ._harness import BenchResult, markdown_table

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"

_PACKAGES = (
    "agent-session",
    "sqlalchemy",
    "pydantic",
    "pydantic-core",
    "jinja2",
    "litellm",
    "psycopg",
    "asyncpg",
    "aiosqlite",
    "openai-agents",
    "pyinstrument",
)

_BLOCK = re.compile(r"<!-- begin (?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- end (?P=name) -->", re.S)
_SUMMARY = re.compile(r"<!-- summary (?P<json>\{.*?\}) -->")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine(postgres_version: str | None) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": postgres_version or "not reachable",
        "packages": versions(),
    }


def machine_markdown(info: dict[str, Any]) -> str:
    rows = [
        ["date", info["date"]],
        ["CPUs (os.cpu_count)", str(info["cpus"])],
        ["CPU", info["cpu"]],
        ["Python", info["python"]],
        ["OS", info["os"]],
        ["SQLite library", info["sqlite"]],
        ["PostgreSQL server", info["postgresql"]],
    ]
    rows += [[name, version] for name, version in info["packages"].items()]
    return markdown_table(["", ""], rows)


# -- console -------------------------------------------------------------------


def print_result(result: BenchResult) -> None:
    out = sys.stdout
    print(f"\n=== {result.title} [{result.name}] ===", file=out)
    for heading, body in result.sections:
        print(f"\n{heading}\n", file=out)
        print(body, file=out)
    for note in result.notes:
        print(f"\nnote: {note}", file=out)
    print(f"\n{result.verdict}   ({result.seconds:.1f} s)", file=out, flush=True)


# -- docs/benchmarks.md --------------------------------------------------------


def block_markdown(result: BenchResult, info: dict[str, Any]) -> str:
    summary = {
        "name": result.name,
        "title": result.title,
        "target": result.target,
        "measured": result.measured,
        "headline": result.headline or result.measured,
        "met": result.met,
        "date": info["date"],
        "seconds": round(result.seconds, 1),
    }
    status = _status(result.met, result.measured, bold=True)
    parts = [
        f"<!-- summary {json.dumps(summary, ensure_ascii=False)} -->",
        f"_Measured {info['date']} in {result.seconds:.0f} s"
        + (
            f", 1-minute load average {result.load[0]:.1f} before and {result.load[1]:.1f} after"
            if result.load
            else ""
        )
        + f" on {os.cpu_count()} CPUs; the machine is described above._",
        "",
        f"**Target:** {result.target}. **Measured:** {result.measured}. **Verdict:** {status}.",
    ]
    description = _description(result.description)
    if description:
        parts += ["", description]
    for heading, body in result.sections:
        parts += ["", f"{heading}:", "", body]
    if result.notes:
        parts.append("")
        parts += [f"- {note}" for note in result.notes]
    return "\n".join(parts) + "\n"


def _description(doc: str) -> str:
    """The module docstring without its first line (that is the section title)."""
    lines = doc.strip().splitlines()
    return "\n".join(lines[1:]).strip() if len(lines) > 1 else ""


def read_blocks(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return {m["name"]: m["body"] for m in _BLOCK.finditer(path.read_text(encoding="utf-8"))}


def write_benchmarks_md(
    results: list[BenchResult], info: dict[str, Any], order: list[tuple[str, str]], total: float
) -> Path:
    """Regenerate ``docs/benchmarks.md`` with ``results`` replacing their blocks."""
    blocks = read_blocks(BENCHMARKS_MD)
    for result in results:
        blocks[result.name] = block_markdown(result, info)
    blocks["machine"] = machine_markdown(info) + "\n"
    if {name for name, _ in order} <= {r.name for r in results}:
        blocks["suite"] = f"The whole suite took {total:.0f} s on this machine ({info['date']}).\n"

    summary_rows = []
    for name, title in order:
        match = _SUMMARY.search(blocks.get(name, ""))
        if match is None:
            summary_rows.append([title, "", "not run yet", "", ""])
            continue
        data = json.loads(match["json"])
        status = _status(data["met"], data["measured"])
        summary_rows.append(
            [
                f"[{title}](#{_anchor(title)})",
                data["target"],
                data.get("headline") or data["measured"],
                status,
                data["date"],
            ]
        )
    blocks["summary"] = (
        markdown_table(["benchmark", "target", "measured", "verdict", "measured on"], summary_rows)
        + "\n"
    )

    text = [_INTRO]
    text += ["## Summary", "", _wrap("summary", blocks["summary"])]
    if "suite" in blocks:
        text += [_wrap("suite", blocks["suite"])]
    text += ["## Machine", "", _wrap("machine", blocks["machine"])]
    for name, title in order:
        text += [f"## {title}", "", _wrap(name, blocks.get(name, "_Not run yet._\n"))]
    BENCHMARKS_MD.parent.mkdir(parents=True, exist_ok=True)
    BENCHMARKS_MD.write_text("\n".join(text), encoding="utf-8")
    return BENCHMARKS_MD


def _status(met: bool | None, measured: str, *, bold: bool = False) -> str:
    if met is None:
        return "skipped" if measured.startswith(("skipped", "error")) else "reported (no target)"
    text = "met" if met else "not met"
    return f"**{text}**" if bold else text


def _wrap(name: str, body: str) -> str:
    return f"<!-- begin {name} -->\n{body}<!-- end {name} -->\n"


def _anchor(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def replace_block(path: Path, name: str, body: str) -> None:
    """Replace one generated block in a hand-written page (``docs/storage.md``)."""
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"<!-- begin {name} -->\n.*?<!-- end {name} -->\n", re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no block {name!r}")
    path.write_text(pattern.sub(lambda _: _wrap(name, body), text), encoding="utf-8")


_INTRO = """\
# Benchmarks

What agent-session costs on top of the work any implementation has to do, how it
grows with the conversation, how it behaves under concurrency, and how it compares
with a peer. Everything below is generated by `python -m benchmarks`; the prose of
each section comes from the benchmark's own module in `benchmarks/`.

## Running the suite

From the repository root, in the development virtualenv (`pip install -e '.[dev,bench]'`):

```console
python -m benchmarks                  # every benchmark; rewrites this page and storage.md's tables
python -m benchmarks --only overhead  # one benchmark (repeatable); keeps the other sections
python -m benchmarks --quick          # smoke run: fewest rounds and sizes, writes nothing
python -m benchmarks --no-write       # full run, print only
python -m benchmarks --list           # the benchmark names
```

Each benchmark prints its tables and a one-line verdict against its target. The
process exits non-zero only if a benchmark fails with an error; a missed target is
reported, not an error.

- PostgreSQL: the suite creates its own database `agent_session_bench_<pid>` on the
  server of `AGENT_SESSION_BENCH_POSTGRES_URL` (default
  `postgresql+psycopg://postgres@127.0.0.1:5432/test`; the user needs CREATEDB) and
  drops it at the end. If the server does not answer, the PostgreSQL rows are skipped.
  That database has `synchronous_commit = off`, for the same reason as the next point:
  the wait for the disk flush at commit is the same for every variant and only adds
  noise (the write-ahead log volume is still measured).
- SQLite databases are files in a temporary directory, in memory (`/dev/shm`) where
  available: a disk flush costs every variant the same and only adds noise.
- MySQL/MariaDB (`AGENT_SESSION_BENCH_MYSQL_URL`, default
  `mysql+pymysql://root@127.0.0.1:3306/test`) gets the same treatment; it is used
  for reference rows of the per-turn overhead and of the large sessions.
- `peer` and `large` need `openai-agents` and `profile` needs `pyinstrument` (the
  `bench` extra, which also brings the async drivers); without them those report
  "skipped". `large` reads the write-ahead log with PostgreSQL's `pg_walinspect`
  extension (PostgreSQL 15+, created in the run's own database).
- The whole suite takes a few minutes on a 2-core machine; `--quick` well under a
  minute.

How to read the numbers: compared variants run interleaved, round by round, in one
process, so machine load hits them alike; the tables give medians with the 25th–75th
percentile range, and ratios are the median of per-round ratios. Absolute times
depend on the machine; the ratios are the result. The model is a test double from
`agent_session.testing` (zero latency for overhead, a fixed sleep for concurrency),
so no network is involved.
"""
