"""Streaming: time to the first delta and cost per delta, against LiteLLM streaming.

The fake OpenAI-compatible server of the test suite (``tests/support/fake_openai.py``, on
127.0.0.1, no delay between chunks) streams one reply of 200 text deltas (4
characters each) plus the usage chunk. Variants, interleaved round by round in one
process, each timing one whole streamed call from its start:

- LiteLLM directly: ``litellm.completion(..., stream=True, stream_options=
  {"include_usage": True})``, iterated to its end (the baseline);
- ``LiteLLMModel.stream``: the library's model stream (chunks, tool-call assembly,
  the cost priced from the rebuilt response at the end);
- a turn stream: ``run_stream(agent, ...)`` (what ``Agent.run(..., stream=True)``
  returns): validation and planning, the model stream, ``TextDelta`` events, the
  turn's ``Result``;
- the async twins of LiteLLM directly and of the turn stream.

Measured per call: the time to the first text delta, the time from the first to
the last delta divided by the deltas between them (the cost of one delta), and the
time after the last delta (usage, cost, the result). Over HTTP a delta costs LiteLLM
hundreds of microseconds, so the difference per delta is within the noise; a second
table times the library's own work per delta without I/O: turning LiteLLM's recorded
chunks into ``TextChunk`` items (``LiteLLMModel``'s assembly), and the turn stream's
driver over a model that yields prepared chunks, against iterating them bare.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from ._fixtures import Databases
from ._harness import BenchResult, Options, fmt_ms, stats

NAME = "streaming"
TITLE = "Streaming: first delta and per-delta overhead"
DELTAS = 200
TARGET_FIRST_MS = 1.0
TARGET_PER_DELTA_US = 50.0
MODEL = "openai/gpt-4o-mini"

BASE_SYNC, MODEL_SYNC, TURN_SYNC = "LiteLLM directly", "`LiteLLMModel.stream`", "turn stream"
BASE_ASYNC, TURN_ASYNC = "LiteLLM directly, async", "turn stream, async"

Timing = tuple[float, float, float]
"""(first delta, per delta, after the last delta), in seconds."""


def _fake_openai() -> Any:
    tests = Path(__file__).resolve().parent.parent / "tests"
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    from support import fake_openai

    return fake_openai


def _timing(started: float, stamps: list[float], ended: float) -> Timing:
    per_delta = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return stamps[0] - started, per_delta, ended - stamps[-1]


def _sync_timed(run: Callable[[], Iterator[str]]) -> Timing:
    stamps: list[float] = []
    started = time.perf_counter()
    for text in run():
        if text:
            stamps.append(time.perf_counter())
    ended = time.perf_counter()
    assert len(stamps) == DELTAS, len(stamps)
    return _timing(started, stamps, ended)


async def _async_timed(run: Callable[[], AsyncIterator[str]]) -> Timing:
    stamps: list[float] = []
    started = time.perf_counter()
    async for text in run():
        if text:
            stamps.append(time.perf_counter())
    ended = time.perf_counter()
    assert len(stamps) == DELTAS, len(stamps)
    return _timing(started, stamps, ended)


def run(opts: Options, dbs: Databases) -> BenchResult:
    result = BenchResult(
        name=NAME,
        title=TITLE,
        target=(
            f"first delta within {TARGET_FIRST_MS:g} ms of LiteLLM's; "
            f"< {TARGET_PER_DELTA_US:g} µs per delta"
        ),
        description=__doc__ or "",
    )
    from agent_session import Agent, LiteLLMModel, ModelRequest, TextChunk, TextDelta, llm
    from agent_session._streaming import arun_stream, run_stream

    litellm = llm.import_litellm()
    fake_openai = _fake_openai()
    rounds = opts.rounds(40, 3)
    text = "".join(f"{i:03d} " for i in range(DELTAS))  # LiteLLM refuses repeated chunks

    with fake_openai.running_fake_openai() as server:
        settings = {"api_base": server.base_url, "api_key": "bench"}
        messages = [{"role": "user", "content": "hi"}]
        kwargs = {
            "model": MODEL,
            "messages": messages,
            **settings,
            "stream": True,
            "stream_options": {"include_usage": True},
            "num_retries": 0,
            "max_retries": 0,
        }
        agent = Agent(MODEL, model_settings=settings)
        model = LiteLLMModel()
        request = ModelRequest(model=MODEL, messages=messages, settings=settings)

        def base_sync() -> Iterator[str]:
            for chunk in litellm.completion(**kwargs):
                if chunk.choices:
                    yield chunk.choices[0].delta.content or ""

        def model_sync() -> Iterator[str]:
            for chunk in model.stream(request):
                if isinstance(chunk, TextChunk):
                    yield chunk.text

        def turn_sync() -> Iterator[str]:
            with run_stream(agent, "hi") as stream:
                for event in stream:
                    if isinstance(event, TextDelta):
                        yield event.text

        async def base_async() -> AsyncIterator[str]:
            async for chunk in await litellm.acompletion(**kwargs):
                if chunk.choices:
                    yield chunk.choices[0].delta.content or ""

        async def turn_async() -> AsyncIterator[str]:
            async with await arun_stream(agent, "hi") as stream:
                async for event in stream:
                    if isinstance(event, TextDelta):
                        yield event.text

        sync_variants = {BASE_SYNC: base_sync, MODEL_SYNC: model_sync, TURN_SYNC: turn_sync}
        async_variants = {BASE_ASYNC: base_async, TURN_ASYNC: turn_async}
        samples: dict[str, list[Timing]] = {name: [] for name in [*sync_variants, *async_variants]}

        async def one_round(order: list[str], keep: bool) -> None:
            for name in order:
                server.enqueue_stream(text, chunk_chars=4)
                if name in sync_variants:
                    timing = _sync_timed(sync_variants[name])
                else:
                    timing = await _async_timed(async_variants[name])
                if keep:
                    samples[name].append(timing)

        async def all_rounds() -> None:
            rng = random.Random(3)
            names = list(samples)
            for index in range(rounds + 2):
                rng.shuffle(names)
                await one_round(names, keep=index >= 2)

        asyncio.run(all_rounds())

        server.enqueue_stream(text)
        recorded = list(litellm.completion(**kwargs))

    per_delta_rows = _without_io(recorded, request, rounds)

    def column(name: str, i: int) -> list[float]:
        return [timing[i] for timing in samples[name]]

    def first_delta_gap(name: str, base: str) -> float:
        return stats(
            [a[0] - b[0] for a, b in zip(samples[name], samples[base], strict=True)]
        ).median

    rows = []
    bases = {MODEL_SYNC: BASE_SYNC, TURN_SYNC: BASE_SYNC, TURN_ASYNC: BASE_ASYNC}
    for name in samples:
        first, per, after = (stats(column(name, i)) for i in range(3))
        base = bases.get(name)
        rows.append(
            [
                name + (" (baseline)" if base is None else ""),
                first.n,
                fmt_ms(first.median, 2),
                "" if base is None else f"{first_delta_gap(name, base) * 1000:+.2f}",
                f"{per.median * 1e6:.1f}",
                ""
                if base is None
                else f"{(per.median - stats(column(base, 1)).median) * 1e6:+.1f}",
                fmt_ms(after.median, 2),
            ]
        )
    result.add_table(
        f"One streamed reply of {DELTAS} deltas, medians of {rounds} interleaved rounds",
        [
            "variant",
            "runs",
            "first delta ms",
            "vs LiteLLM ms",
            "µs per delta",
            "vs LiteLLM µs",
            "after last delta ms",
        ],
        rows,
    )
    result.add_table(
        f"The library's work per delta without I/O, µs (medians of {rounds} rounds "
        f"of {DELTAS} deltas)",
        ["work", "µs per delta", "bare iteration µs", "added µs"],
        per_delta_rows,
    )
    gaps = {name: first_delta_gap(name, base) for name, base in bases.items()}
    over_http = max(
        (stats(column(name, 1)).median - stats(column(base, 1)).median) * 1e6
        for name, base in bases.items()
    )
    assembly_us = float(per_delta_rows[0][3])
    own_us = assembly_us + max(float(row[3]) for row in per_delta_rows[1:])
    worst_gap = max(gaps.values())
    result.notes.append(
        "Per delta, the verdict takes the library's own work without I/O (the assembly "
        "of a LiteLLM chunk plus the slower driver); over HTTP the difference of the "
        "medians is within the noise of LiteLLM's own cost per chunk."
    )
    result.notes.append(
        "The time after the last delta is mostly LiteLLM's own end of stream (the last "
        "chunks, `[DONE]` and its handling of a finished stream), which the baseline "
        "spends too; the library adds the pricing (`stream_chunk_builder` on the first, "
        "finish and usage chunks, then `completion_cost`, as for an unstreamed call), "
        "output parsing and the `Result`."
    )
    result.measured = (
        f"first delta {worst_gap * 1000:+.2f} ms vs LiteLLM's (worst variant); "
        f"{own_us:.1f} µs of library work per delta ({over_http:+.1f} µs over HTTP, "
        "worst variant)"
    )
    result.headline = (
        f"first delta {worst_gap * 1000:+.2f} ms vs LiteLLM; {own_us:.1f} µs per delta"
    )
    result.met = worst_gap * 1000 <= TARGET_FIRST_MS and own_us <= TARGET_PER_DELTA_US
    return result


def _without_io(recorded: list[Any], request: Any, rounds: int) -> list[list[str]]:
    """Per-delta cost of the assembly and of the turn driver, with no HTTP under them."""
    from agent_session import Agent, ModelResponse, StreamEnd, TextChunk
    from agent_session._streaming import arun_stream, run_stream
    from agent_session.llm import Model, _Assembly

    prepared = [TextChunk(f"{i:03d} ") for i in range(DELTAS)]
    end = StreamEnd(ModelResponse(text="".join(c.text for c in prepared)))

    class Prepared(Model):
        def complete(self, request: Any) -> Any:
            return end.response

        async def acomplete(self, request: Any) -> Any:
            return end.response

        def stream(self, request: Any) -> Any:
            yield from prepared
            yield end

        async def astream(self, request: Any) -> Any:
            for chunk in prepared:
                yield chunk
            yield end

    agent = Agent(Prepared())

    def bare(items: list[Any]) -> float:
        started = time.perf_counter()
        for _ in items:
            pass
        return (time.perf_counter() - started) / len(items)

    def assembly() -> float:
        feed = _Assembly(request).feed
        started = time.perf_counter()
        for chunk in recorded:
            feed(chunk)
        return (time.perf_counter() - started) / len(recorded)

    def driver() -> float:
        started = time.perf_counter()
        with run_stream(agent, "hi") as stream:
            for _ in stream:
                pass
        return (time.perf_counter() - started) / DELTAS

    async def adriver() -> float:
        started = time.perf_counter()
        async with await arun_stream(agent, "hi") as stream:
            async for _ in stream:
                pass
        return (time.perf_counter() - started) / DELTAS

    samples: dict[str, list[float]] = {k: [] for k in ("bare", "asm", "drv", "adrv")}
    for _ in range(max(rounds, 5) * 5):
        samples["bare"].append(bare(prepared))
        samples["asm"].append(assembly())
        samples["drv"].append(driver())
        samples["adrv"].append(asyncio.run(adriver()))
    base = stats(samples["bare"]).median

    def row(label: str, key: str) -> list[str]:
        median = stats(samples[key]).median
        return [label, f"{median * 1e6:.2f}", f"{base * 1e6:.2f}", f"{(median - base) * 1e6:.2f}"]

    return [
        row("`LiteLLMModel` assembly of a LiteLLM chunk", "asm"),
        row("turn stream driver, one `TextDelta` (whole turn / deltas)", "drv"),
        row("async turn stream driver, one `TextDelta` (whole turn / deltas)", "adrv"),
    ]
