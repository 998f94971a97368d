"""Import cost: wall time of a fresh interpreter that imports the package.

Each variant is ``python -c "<statement>"`` in a new process, timed from spawn to
exit, interleaved round by round (shuffled order). ``import litellm`` runs with
``LITELLM_LOCAL_MODEL_COST_MAP=True`` (no network) and only every fourth round,
since it takes seconds (not at all with ``--quick``). ``python -c pass`` is the
interpreter's own start-up; "import only" columns subtract it. The baseline is the three libraries
agent-session depends on, imported the way ``import x`` imports them (pydantic and
SQLAlchemy load some submodules lazily); "dependencies as used" imports the
submodules agent-session actually needs (``sqlalchemy.orm``, ``pydantic.BaseModel``,
``jinja2.sandbox``), so the difference to it is agent-session's own code.
Bytecode is cached, as in an installed application: a warm-up round writes it
(whatever ``PYTHONDONTWRITEBYTECODE`` the run has), and the timed rounds read it.

The target is what an application pays for the whole library:
``from agent_session import Agent, AgentSessionMixin`` (everything a stored turn
needs) against "dependencies as used", paired round by round. ``import agent_session``
alone loads only the package and its errors (the other public names are imported on
first use), and ``from agent_session import Agent`` leaves out the SQLAlchemy ORM:
their rows are information. So is "dependencies with a model and the MySQL types":
what any application that defines a Pydantic model pays as well (``pydantic.fields``
and the entry-point scan of Pydantic's plugins, both on the first model), plus the
MySQL column types the mixin's columns name; against it, what is left is this
library's own code. The breakdown lists what the library's own modules cost once the
dependencies as used are imported.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time

from ._fixtures import Databases
from ._harness import (
    BenchResult,
    Options,
    fmt_ms,
    fmt_ratio,
    fmt_ratio_stats,
    fmt_stats_ms,
    paired_ratios,
    stats,
)

NAME = "imports"
TITLE = "Import cost"
TARGET_RATIO = 1.15

VARIANTS = {
    "python -c pass": "pass",  # interpreter start-up
    "import sqlalchemy, pydantic, jinja2 (baseline)": "import sqlalchemy, pydantic, jinja2",
    "dependencies as used": (
        "import sqlalchemy.orm, jinja2.sandbox; from pydantic import BaseModel"
    ),
    "dependencies with a model and the MySQL types": (
        "import sqlalchemy.orm, sqlalchemy.dialects.mysql, jinja2.sandbox; "
        "from pydantic import Field, create_model; create_model('M', x=(int, Field(0)))"
    ),
    "import agent_session": "import agent_session",
    "from agent_session import Agent": "from agent_session import Agent",
    "Agent and AgentSessionMixin": "from agent_session import Agent, AgentSessionMixin",
    "import litellm": "import litellm",
}
BASELINE = "import sqlalchemy, pydantic, jinja2 (baseline)"
SUBJECT = "import agent_session"
FULL = "Agent and AgentSessionMixin"
USED = "dependencies as used"
MODELS = "dependencies with a model and the MySQL types"
STARTUP = "python -c pass"
SLOW = "import litellm"


def _env() -> dict[str, str]:
    # An installed application has its bytecode compiled (pip does it at install):
    # with PYTHONDONTWRITEBYTECODE set, the warm-up round would not write it, and
    # every process would compile the changed modules again.
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _spawn(statement: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, env=_env())
    return time.perf_counter() - started


def _import_breakdown(runs: int) -> list[tuple[int, str, float]]:
    """What the library's modules add once the dependencies as used are imported
    (``-X importtime``). They are imported with ``import`` statements, not through
    the package's lazy names, whose ``importlib`` import ``-X importtime`` does not
    list."""
    per_module: dict[tuple[int, str], list[float]] = {}
    statement = f"{VARIANTS[USED]}; import agent_session.agent, agent_session.mixin"
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", statement],
            check=True,
            capture_output=True,
            text=True,
            env=_env(),
        ).stderr
        entries = []
        for line in out.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            _, micros, name = line.split("|")
            depth = (len(name) - len(name.lstrip()) - 1) // 2
            entries.append((depth, int(micros) / 1e6, name.strip()))
        start = max(i for i, (_, _, name) in enumerate(entries) if name == "agent_session")
        for depth, cumulative, name in entries[start:]:
            if depth <= 4:
                per_module.setdefault((depth, name), []).append(cumulative)
            if depth == 0 and name == "agent_session.mixin":
                break
    rows = [(depth, name, statistics.median(v)) for (depth, name), v in per_module.items()]
    return [row for row in rows if row[2] >= 0.002 or row[0] == 0]


def run(opts: Options, dbs: Databases) -> BenchResult:
    result = BenchResult(
        name=NAME,
        title=TITLE,
        target=(
            f"`from agent_session import Agent, AgentSessionMixin` <= {TARGET_RATIO}x "
            f"its dependencies as used (`{VARIANTS[USED]}`)"
        ),
        description=__doc__ or "",
    )
    rounds = opts.rounds(15, 1)
    variants = [name for name in VARIANTS if name != SLOW or not opts.quick]
    samples: dict[str, list[float]] = {name: [] for name in variants}
    paired: dict[str, list[float]] = {name: [] for name in variants}
    rng = random.Random(7)
    if not opts.quick:
        for name in variants:  # warm the bytecode caches
            if name != SLOW:
                _spawn(VARIANTS[name])
    for index in range(rounds):
        names = [n for n in variants if n != SLOW or index % 4 == 0]
        rng.shuffle(names)
        for name in names:
            samples[name].append(_spawn(VARIANTS[name]))
        for name in variants:
            paired[name].append(samples[name][-1] if name in names else float("nan"))

    startup = stats(samples[STARTUP]).median
    base = stats(samples[BASELINE])
    rows = []
    for name in variants:
        s = stats(samples[name])
        ratio = paired_ratios(
            [v for v, b in zip(paired[name], paired[BASELINE], strict=True) if v == v],
            [b for v, b in zip(paired[name], paired[BASELINE], strict=True) if v == v],
        )
        as_used = paired_ratios(
            [v for v, u in zip(paired[name], paired[USED], strict=True) if v == v],
            [u for v, u in zip(paired[name], paired[USED], strict=True) if v == v],
        )
        own = (s.median - startup) / (base.median - startup) if name != STARTUP else float("nan")
        label = {BASELINE: " (baseline)", USED: " (dependencies as used)", FULL: " (target)"}
        rows.append(
            [
                f"`python -c '{VARIANTS[name]}'`" + label.get(name, ""),
                s.n,
                *fmt_stats_ms(s, 0),
                *fmt_ratio_stats(ratio),
                *fmt_ratio_stats(as_used),
                fmt_ms(s.median - startup, 0) if name != STARTUP else "",
                fmt_ratio(own) if name != STARTUP else "",
            ]
        )
    result.add_table(
        f"Fresh interpreter, wall ms ({rounds} interleaved rounds; litellm every fourth)",
        [
            "command",
            "runs",
            "median ms",
            "p25–p75",
            "vs baseline",
            "ratio p25–p75",
            "vs dependencies as used",
            "ratio p25–p75",
            "import only ms",
            "import only vs baseline",
        ],
        rows,
    )

    breakdown = _import_breakdown(1 if opts.quick else 3)
    result.add_table(
        "What `import agent_session.agent, agent_session.mixin` adds after the dependencies "
        "as used (`python -X importtime`, cumulative ms, median of runs, modules of 2 ms or "
        "more down to depth 4; children are listed before their parent)",
        ["depth", "module", "cumulative ms"],
        [[depth, f"`{name}`", fmt_ms(t, 1)] for depth, name, t in breakdown],
    )

    check = subprocess.run(
        [sys.executable, "-c", "import sys, agent_session; print('litellm' in sys.modules)"],
        check=True,
        capture_output=True,
        text=True,
        env=_env(),
    ).stdout.strip()
    result.notes.append(
        "`import agent_session` leaves LiteLLM unimported: "
        + ("yes" if check == "False" else "NO, it imports litellm")
        + "."
    )
    subject = paired_ratios(samples[SUBJECT], samples[BASELINE]).median
    litellm = (
        f"; `import litellm` {fmt_ms(stats(samples[SLOW]).median, 0)} ms" if SLOW in samples else ""
    )
    full = paired_ratios(samples[FULL], samples[BASELINE]).median
    full_vs_used = paired_ratios(samples[FULL], samples[USED]).median
    full_vs_models = paired_ratios(samples[FULL], samples[MODELS]).median
    full_ms = fmt_ms(stats(samples[FULL]).median, 0)
    used_ms = fmt_ms(stats(samples[USED]).median, 0)
    result.measured = (
        f"{fmt_ratio(full_vs_used)} ({full_ms} ms vs {used_ms} ms, paired); "
        f"{fmt_ratio(full_vs_models)} of the dependencies with a model built and the MySQL "
        f"types; {fmt_ratio(full)} of `import sqlalchemy, pydantic, jinja2`; "
        f"`import agent_session` {fmt_ratio(subject)} of it "
        f"({fmt_ms(stats(samples[SUBJECT]).median, 0)} ms{litellm})"
    )
    result.headline = f"{fmt_ratio(full_vs_used)} ({full_ms} vs {used_ms} ms)"
    result.met = full_vs_used <= TARGET_RATIO
    return result
