"""Measurement plumbing shared by every benchmark: statistics, interleaving, tables.

Benchmarks compare variants (the library and a baseline doing the same work) in
one process, round by round: each round runs every variant once, in a shuffled
order, so drift in machine load hits all variants alike. A variant is a callable
that returns the seconds it measured itself, which lets it keep set-up and reset
work (restoring a row between turns, say) out of the measurement.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BenchResult",
    "Comparison",
    "Options",
    "Stats",
    "ainterleave",
    "atimed_between",
    "compare",
    "fmt_ms",
    "fmt_ratio",
    "fmt_ratio_stats",
    "fmt_stats_ms",
    "interleave",
    "markdown_table",
    "paired_ratios",
    "stats",
    "timed_between",
    "verdict_line",
]


@dataclass(frozen=True)
class Options:
    """Command-line options every benchmark sees."""

    quick: bool = False
    """A smoke run: fewest rounds and sizes, numbers not meaningful."""
    write: bool = False
    """Whether benchmarks that own a page of their own (``storage``) may rewrite it."""

    def rounds(self, full: int, quick: int = 3) -> int:
        return quick if self.quick else full


@dataclass(frozen=True)
class Stats:
    """Median and interquartile range of a sample."""

    median: float
    p25: float
    p75: float
    n: int

    @property
    def iqr(self) -> float:
        return self.p75 - self.p25


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    position = (len(sorted_values) - 1) * q
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    frac = position - low
    return sorted_values[low] * (1 - frac) + sorted_values[high] * frac


def stats(samples: Sequence[float]) -> Stats:
    values = sorted(samples)
    return Stats(
        median=statistics.median(values) if values else float("nan"),
        p25=_quantile(values, 0.25),
        p75=_quantile(values, 0.75),
        n=len(values),
    )


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> Stats:
    """Statistics of the per-round ratios ``numerator[i] / denominator[i]``."""
    return stats([a / b for a, b in zip(numerator, denominator, strict=True) if b > 0])


@dataclass(frozen=True)
class Comparison:
    """A variant against a reference: the statistics of each and of their per-round ratios."""

    subject: Stats
    reference: Stats
    ratio: Stats

    def ms_cells(self) -> list[str]:
        """Subject median, its p25–p75, reference median, its p25–p75, in milliseconds."""
        return [*fmt_stats_ms(self.subject), *fmt_stats_ms(self.reference)]


def compare(subject: Sequence[float], reference: Sequence[float]) -> Comparison:
    return Comparison(stats(subject), stats(reference), paired_ratios(subject, reference))


class _Schedule:
    """Variant names, round by round, each round in a shuffled order; ``record`` keeps
    what a variant measured unless its round is a warm-up."""

    def __init__(self, names: Iterable[str], rounds: int, warmup: int, seed: int) -> None:
        self.samples: dict[str, list[float]] = {name: [] for name in names}
        self._rounds, self._warmup, self._seed = rounds, warmup, seed
        self._kept = False

    def __iter__(self) -> Iterator[str]:
        rng = random.Random(self._seed)
        order = list(self.samples)
        for index in range(self._warmup + self._rounds):
            rng.shuffle(order)
            self._kept = index >= self._warmup
            yield from order

    def record(self, name: str, elapsed: float) -> None:
        if self._kept:
            self.samples[name].append(elapsed)


def interleave(
    variants: Mapping[str, Callable[[], float]],
    rounds: int,
    *,
    warmup: int = 1,
    seed: int = 1,
) -> dict[str, list[float]]:
    """Run every variant once per round in shuffled order; keep the timed rounds."""
    schedule = _Schedule(variants, rounds, warmup, seed)
    for name in schedule:
        schedule.record(name, variants[name]())
    return schedule.samples


async def ainterleave(
    variants: Mapping[str, Callable[[], Awaitable[float]]],
    rounds: int,
    *,
    warmup: int = 1,
    seed: int = 1,
) -> dict[str, list[float]]:
    """``interleave`` for coroutine variants, run one at a time on the running loop."""
    schedule = _Schedule(variants, rounds, warmup, seed)
    for name in schedule:
        schedule.record(name, await variants[name]())
    return schedule.samples


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


async def atimed(fn: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


def timed_between(
    before: Callable[[], Any], fn: Callable[[], Any], after: Callable[[], Any]
) -> Callable[[], float]:
    """A variant that times ``fn`` alone: ``before`` and ``after`` it run untimed."""

    def variant() -> float:
        before()
        elapsed = timed(fn)
        after()
        return elapsed

    return variant


def atimed_between(
    before: Callable[[], Any], fn: Callable[[], Awaitable[Any]], after: Callable[[], Any]
) -> Callable[[], Awaitable[float]]:
    """``timed_between`` for a coroutine ``fn`` (``before`` and ``after`` stay sync)."""

    async def variant() -> float:
        before()
        elapsed = await atimed(fn)
        after()
        return elapsed

    return variant


# -- formatting --------------------------------------------------------------------


def fmt_ms(seconds: float, digits: int | None = None) -> str:
    ms = seconds * 1000
    if digits is None:
        digits = 3 if ms < 1 else 2 if ms < 10 else 1 if ms < 1000 else 0
    return f"{ms:.{digits}f}"


def fmt_stats_ms(s: Stats, digits: int | None = None) -> tuple[str, str]:
    """(median, "p25–p75") in milliseconds."""
    return fmt_ms(s.median, digits), f"{fmt_ms(s.p25, digits)}–{fmt_ms(s.p75, digits)}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def fmt_ratio_stats(s: Stats) -> tuple[str, str]:
    """(median, "p25–p75") of a ratio."""
    return fmt_ratio(s.median), f"{s.p25:.2f}–{s.p75:.2f}"


def fmt_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.2f} MiB"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table, padded so it also reads well in a terminal."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        any(_looks_numeric(row[i]) for row in cells[1:])
        and all(_looks_numeric(row[i]) or not row[i] for row in cells[1:])
        for i in range(len(headers))
    ]

    def line(row: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(row, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2))
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _looks_numeric(text: str) -> bool:
    stripped = text.replace("x", "").replace("%", "").replace(",", "").replace("–", "")
    stripped = stripped.replace(".", "").replace(" ", "").replace("-", "")
    for unit in ("KiB", "MiB", "B"):
        stripped = stripped.replace(unit, "")
    return stripped.isdigit()


def verdict_line(
    name: str, measured: str, target: str, met: bool | None, judged: bool = True
) -> str:
    if not judged:
        status = "quick run, not judged"
    elif met is None:
        status = "skipped" if measured.startswith(("skipped", "error")) else "reported (no target)"
    else:
        status = "MET" if met else "NOT MET"
    return f"verdict [{name}]: {measured} (target {target}): {status}"


# -- results -----------------------------------------------------------------------


@dataclass
class BenchResult:
    """What one benchmark reports: tables, notes and a verdict against its target."""

    name: str
    title: str
    target: str
    measured: str = "not measured"
    met: bool | None = None
    headline: str = ""
    """A short form of ``measured`` for the summary table (``measured`` if empty)."""
    load: tuple[float, float] | None = None
    """1-minute load average before and after the run."""
    description: str = ""
    sections: list[tuple[str, str]] = field(default_factory=list)
    """(heading, markdown body) pairs, printed and written in order."""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    judged: bool = True
    """False for ``--quick`` runs, whose numbers mean nothing."""

    @property
    def verdict(self) -> str:
        return verdict_line(self.name, self.measured, self.target, self.met, self.judged)

    def add_table(self, heading: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
        table = markdown_table(headers, rows)
        self.sections.append((heading, table))
        return table

    def add_text(self, heading: str, text: str) -> None:
        self.sections.append((heading, text))

    def skip(self, reason: str) -> BenchResult:
        self.met = None
        self.measured = f"skipped: {reason}"
        return self
