"""Load: the FastAPI chat example under uvicorn, 4 workers, PostgreSQL, a model over HTTP.

``python -m benchmarks.load`` (or ``python -m benchmarks --only load``). The app is
``examples/fastapi_chat`` served by ``uvicorn --workers 4`` (``benchmarks/load_app.py``:
the example's routes, plus a hand-written turn for comparison) on a PostgreSQL database
of its own, tables from the example's Alembic revisions, ``pool_size=5,
max_overflow=0`` per worker (asyncpg). The model is ``openai/fake-model`` through
LiteLLM, answered by the fake OpenAI-compatible server of ``tests/support`` with a
fixed latency before each reply. Every client is an ``httpx`` task in this process,
one chat each, sending turns back to back (``POST /chats/{id}/messages``) until the
run's time is up.

- **Latency-bound**: 100 concurrent chats, a 500 ms model. The ideal is 100 / 0.5 s =
  200 turns/s; the figure is throughput / ideal (goal >= 0.9: nothing serializes turns,
  no connection is held across the model call).
- **CPU-bound**: 200 concurrent chats, a 10 ms model: the machine's cores are the
  limit. Against the same app's hand-written turn (``POST /raw/{id}/messages``: read
  the row, call LiteLLM, write the row) under the same load in the same run, goal
  >= 0.8; CPU time per turn of both (uvicorn's processes, user + system).
- Each is repeated with streaming (``?stream=1``, the whole SSE body read), and both
  shapes run the hand-written turn too: when it falls as short of the ideal as the
  library, the limit is the machine, not a wait in the library.

Reported for each run: turns/s, p50/p99 latency, the most PostgreSQL connections seen
open and the most busy at once (``pg_stat_activity``, sampled every 100 ms; the bound
is pool size x workers = 20), failed requests, and lost turns: a turn answered 200 whose
row is not stored, or a stored turn nobody was answered for (counted from the history
rows, or the raw table's messages, before and after).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ._fixtures import Databases
from ._harness import BenchResult, Options

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

NAME = "load"
TITLE = "Load: the FastAPI example under uvicorn"
WORKERS = 4
POOL_SIZE = 5
REPLY = '{"answer": "It ships today from the warehouse in Lyon.", "follow_up_question": null}'


@dataclass(frozen=True)
class Shape:
    name: str
    chats: int
    latency: float
    seconds: float
    ideal: bool
    """Judged against chats / latency (else against the hand-written turn)."""


@dataclass
class Run:
    label: str
    turns: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    cpu: float = 0.0
    open_max: int = 0
    busy_max: int = 0
    lost: int = 0

    @property
    def rate(self) -> float:
        return self.turns / self.seconds if self.seconds else 0.0

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu / self.turns if self.turns else float("nan")


class ConnectionSampler:
    """The most connections open, and busy, on the app's database while it runs."""

    def __init__(self, sync_url: str, database: str) -> None:
        self.engine = sa.create_engine(sync_url, poolclass=sa.pool.NullPool)
        self.database = database
        self.open_max = 0
        self.busy_max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        query = sa.text(
            "SELECT count(*), count(*) FILTER (WHERE state <> 'idle') FROM pg_stat_activity "
            "WHERE datname = :db AND pid <> pg_backend_pid()"
        )
        with self.engine.connect() as conn:
            while not self._stop.wait(0.1):
                opened, busy = conn.execute(query, {"db": self.database}).one()
                conn.rollback()
                self.open_max = max(self.open_max, opened)
                self.busy_max = max(self.busy_max, busy)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.engine.dispose()


async def _drive(
    base_url: str, paths: list[str], seconds: float, *, stream: bool, label: str
) -> Run:
    import httpx

    run = Run(label)
    limits = httpx.Limits(max_connections=len(paths) + 10, max_keepalive_connections=len(paths))
    headers = {"X-User-Id": "load"}
    query = "?stream=1" if stream else ""
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def chat(path: str) -> None:
            number = 0
            while time.perf_counter() < deadline:
                number += 1
                body = {"message": f"Question {number}: where is my order?"}
                sent = time.perf_counter()
                try:
                    if stream:
                        async with client.stream(
                            "POST", path + query, json=body, headers=headers
                        ) as response:
                            text = (await response.aread()).decode()
                        ok = response.status_code == 200 and "event: completed" in text
                        reason = "no completed frame" if response.status_code == 200 else ""
                    else:
                        response = await client.post(path, json=body, headers=headers)
                        ok = response.status_code == 200
                        reason = ""
                except httpx.HTTPError as exc:
                    ok, reason = False, type(exc).__name__
                    response = None
                if ok:
                    run.turns += 1
                    run.latencies.append(time.perf_counter() - sent)
                else:
                    status = response.status_code if response is not None else "-"
                    run.failures[f"{status} {reason}".strip()] += 1

        await asyncio.gather(*(chat(path) for path in paths))
        run.seconds = time.perf_counter() - started
    return run


def _stored_turns(engine: sa.Engine) -> tuple[int, int]:
    """(library turns stored, hand-written turns stored)."""
    with engine.connect() as conn:
        library = conn.execute(sa.text("SELECT count(*) FROM web_chats_history")).scalar_one()
        raw = sum(
            len(messages) // 2
            for (messages,) in conn.execute(sa.text("SELECT messages FROM raw_chats"))
        )
    return int(library), raw


async def _make_chats(base_url: str, count: int) -> list[str]:
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        semaphore = asyncio.Semaphore(25)

        async def start(number: int) -> str:
            async with semaphore:
                response = await client.post(
                    "/chats", json={"message": f"Hello {number}"}, headers={"X-User-Id": "load"}
                )
            response.raise_for_status()
            return str(response.json()["id"])

        return list(await asyncio.gather(*(start(n) for n in range(count))))


def _raw_chats(engine: sa.Engine, count: int) -> list[str]:
    from .load_app import RAW

    keys = [uuid.uuid4() for _ in range(count)]
    first = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": REPLY}]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(RAW), [{"id": k, "user_id": "load", "messages": first} for k in keys]
        )
    return [str(k) for k in keys]


def _measure(
    served: Any,
    engine: sa.Engine,
    sampler_url: str,
    database: str,
    paths: list[str],
    seconds: float,
    *,
    stream: bool,
    label: str,
    raw: bool,
) -> Run:
    before = _stored_turns(engine)
    cpu_before = served.cpu_seconds()
    with ConnectionSampler(sampler_url, database) as sampler:
        run = asyncio.run(_drive(served.url, paths, seconds, stream=stream, label=label))
    run.cpu = served.cpu_seconds() - cpu_before
    run.open_max, run.busy_max = sampler.open_max, sampler.busy_max
    after = _stored_turns(engine)
    stored = after[1] - before[1] if raw else after[0] - before[0]
    run.lost = abs(stored - run.turns)
    return run


def _row(run: Run, ideal: float | None, baseline: Run | None) -> list[str]:
    failures = ", ".join(f"{n} x {k}" for k, n in run.failures.most_common()) or "0"
    against = []
    if ideal:
        against.append(f"{run.rate / ideal:.2f} of ideal")
    if baseline is not None and baseline.rate:
        against.append(f"{run.rate / baseline.rate:.2f} of hand-written")
    versus = "; ".join(against)
    return [
        run.label,
        f"{run.turns}",
        f"{run.rate:.1f}",
        versus,
        f"{1000 * run.quantile(0.5):.0f}",
        f"{1000 * run.quantile(0.99):.0f}",
        f"{run.cpu_ms:.1f}",
        f"{run.open_max} / {run.busy_max}",
        failures,
        f"{run.lost}",
    ]


HEADERS = [
    "run",
    "turns",
    "turns/s",
    "against",
    "p50 ms",
    "p99 ms",
    "CPU ms/turn",
    "PG conns open / busy (max)",
    "failed",
    "lost",
]


def run(opts: Options, dbs: Databases) -> BenchResult:
    result = BenchResult(
        name=NAME,
        title=TITLE,
        target=(
            "latency-bound >= 0.9 of ideal; CPU-bound >= 0.8 of the hand-written turn; "
            f"connections <= {POOL_SIZE} x {WORKERS}; 0 lost turns"
        ),
        description=__doc__ or "",
    )
    if dbs.postgres_url() is None:
        return result.skip("no PostgreSQL server")
    from support.chat_app import chat_database, serving, sync_engine
    from support.fake_openai import Completion, running_fake_openai

    from .load_app import RAW

    workers = 1 if opts.quick else WORKERS
    if opts.quick:
        # Every code path (both routes, both modes), briefly: the numbers mean nothing.
        shapes = [Shape("CPU-bound", 2, 0.01, 0.5, ideal=False)]
    else:
        shapes = [
            Shape("latency-bound", 100, 0.5, 15.0, ideal=True),
            Shape("CPU-bound", 200, 0.01, 15.0, ideal=False),
        ]

    reply = Completion(REPLY, chunk_chars=12)
    runs: dict[str, list[tuple[Run, float | None, Run | None]]] = {}
    with running_fake_openai(default=reply) as fake, chat_database("agent_session_load") as url:
        engine = sync_engine(url)
        database = sa.make_url(url).database or ""
        sampler_url = engine.url.render_as_string(hide_password=False)
        RAW.create(engine)
        env = {
            "AGENT_SESSION_DATABASE_URL": url,
            "AGENT_SESSION_MODEL": "openai/fake-model",
            "OPENAI_API_BASE": fake.base_url,
            "OPENAI_API_KEY": "none",
            "CHAT_POOL_SIZE": str(POOL_SIZE),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        try:
            with serving(
                env, workers=workers, app="benchmarks.load_app:app", app_dir=ROOT, timeout=120
            ) as served:
                for shape in shapes:
                    fake.latency = shape.latency
                    library = [
                        f"/chats/{k}/messages"
                        for k in asyncio.run(_make_chats(served.url, shape.chats))
                    ]
                    raw = [f"/raw/{k}/messages" for k in _raw_chats(engine, shape.chats)]
                    if not opts.quick:
                        # Every worker imports LiteLLM and fills its pool before the clock runs.
                        for paths in (library, raw):
                            asyncio.run(_drive(served.url, paths, 2.0, stream=False, label="warm"))
                    ideal = shape.chats / shape.latency if shape.ideal else None
                    rows: list[tuple[Run, float | None, Run | None]] = []
                    for stream in (False, True):
                        kind = "streamed" if stream else "unstreamed"
                        measured = {}
                        for name, paths in (("library", library), ("hand-written", raw)):
                            measured[name] = _measure(
                                served,
                                engine,
                                sampler_url,
                                database,
                                paths,
                                shape.seconds,
                                stream=stream,
                                label=f"{name}, {kind}",
                                raw=name == "hand-written",
                            )
                        hand = measured["hand-written"]
                        rows += [(measured["library"], ideal, hand), (hand, ideal, None)]
                    runs[shape.name] = rows
        finally:
            engine.dispose()

    verdicts = []
    for shape in shapes:
        rows = runs[shape.name]
        title = (
            f"{shape.name}: {shape.chats} concurrent chats, a {shape.latency * 1000:g} ms model, "
            f"{shape.seconds:g} s per run, {workers} workers"
        )
        result.add_table(title, HEADERS, [_row(*row) for row in rows])
        for run_, ideal, baseline in rows:
            if baseline is None:
                continue  # the hand-written turn: a reference, not judged
            if ideal:
                verdicts.append((f"{shape.name} {run_.label}", run_.rate / ideal, 0.9, "of ideal"))
            elif baseline.rate:
                ratio = run_.rate / baseline.rate
                verdicts.append((f"{shape.name} {run_.label}", ratio, 0.8, "of hand-written"))
    all_runs = [r for rows in runs.values() for r, _, _ in rows]
    lost = sum(r.lost for r in all_runs)
    most_open = max(r.open_max for r in all_runs)
    bound = POOL_SIZE * workers
    met = all(value >= goal for _, value, goal, _ in verdicts) and lost == 0 and most_open <= bound
    parts = [f"{label} {value:.2f} {what}" for label, value, _, what in verdicts]
    result.measured = "; ".join(parts) + f"; {lost} lost; <= {most_open} connections"
    result.headline = ", ".join(f"{value:.2f}" for _, value, _, _ in verdicts)
    result.notes.append(
        "The machine is shared: 2 cores, with other builds and test suites running "
        "(see the load average); uvicorn's 4 workers, PostgreSQL, the fake model and the "
        "clients all run on those 2 cores."
    )
    result.met = met
    return result


if __name__ == "__main__":
    from .__main__ import main

    sys.exit(main(["--only", NAME, *sys.argv[1:]]))
