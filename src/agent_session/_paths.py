"""Paths of stored turns: the seqs of the active path, kept as inclusive runs.

A path is the list of turn-row seqs a conversation follows, oldest first, stored
compactly as runs ``[[first, last], ...]`` (``[[1, 40], [43, 44]]`` is 1..40 then 43
and 44). A session that was never edited nor compacted has one run. Every function
here is pure and returns new lists; none changes its argument.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeAlias

__all__ = [
    "Path",
    "append",
    "contains",
    "count",
    "from_seqs",
    "last",
    "last_seqs",
    "position",
    "seqs",
    "truncate_after",
    "truncate_before",
    "valid",
]

Path: TypeAlias = list[list[int]]


def seqs(path: Sequence[Sequence[int]]) -> Iterator[int]:
    """The seqs of ``path``, oldest first."""
    for first, end in path:
        yield from range(first, end + 1)


def count(path: Sequence[Sequence[int]]) -> int:
    """How many turns ``path`` holds."""
    return sum(end - first + 1 for first, end in path)


def last(path: Sequence[Sequence[int]]) -> int | None:
    """The newest seq of ``path`` (``None`` when it is empty)."""
    return path[-1][1] if path else None


def append(path: Sequence[Sequence[int]], seq: int) -> Path:
    """``path`` with ``seq`` after its last turn (merged into the last run when it
    follows it)."""
    runs = [list(run) for run in path]
    if runs and runs[-1][1] + 1 == seq:
        runs[-1][1] = seq
    else:
        runs.append([seq, seq])
    return runs


def from_seqs(values: Iterable[int]) -> Path:
    """The path of these seqs, in this order."""
    runs: Path = []
    for seq in values:
        if runs and runs[-1][1] + 1 == seq:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return runs


def last_seqs(path: Sequence[Sequence[int]], n: int) -> list[int]:
    """The newest ``n`` seqs of ``path`` (all of them when it holds fewer), oldest first."""
    found: list[int] = []
    for first, end in reversed(path):
        if len(found) >= n:
            break
        take = min(n - len(found), end - first + 1)
        found.extend(range(end, end - take, -1))
    found.reverse()
    return found


def position(path: Sequence[Sequence[int]], seq: int) -> int | None:
    """The index of ``seq`` in ``path`` (``None`` when it is not on it)."""
    before = 0
    for first, end in path:
        if first <= seq <= end:
            return before + seq - first
        before += end - first + 1
    return None


def contains(path: Sequence[Sequence[int]], seq: int) -> bool:
    """Whether ``seq`` is on ``path``."""
    return any(first <= seq <= end for first, end in path)


def truncate_after(path: Sequence[Sequence[int]], seq: int) -> Path:
    """``path`` up to and including ``seq`` (``ValueError`` if it is not on it)."""
    runs: Path = []
    for first, end in path:
        if first <= seq <= end:
            runs.append([first, seq])
            return runs
        runs.append([first, end])
    raise ValueError(f"turn {seq} is not on the path")


def truncate_before(path: Sequence[Sequence[int]], seq: int) -> Path:
    """``path`` up to ``seq``, without it (``ValueError`` if it is not on it)."""
    runs: Path = []
    for first, end in path:
        if first <= seq <= end:
            if seq > first:
                runs.append([first, seq - 1])
            return runs
        runs.append([first, end])
    raise ValueError(f"turn {seq} is not on the path")


def valid(path: Any) -> bool:
    """Whether ``path`` is a well-formed path: runs of ints >= 1, ``first <= last``,
    no seq twice."""
    if not isinstance(path, list):
        return False
    for run in path:
        if (
            not isinstance(run, list)
            or len(run) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in run)
            or run[0] < 1
            or run[0] > run[1]
        ):
            return False
    ordered = sorted(path)
    return all(before[1] < after[0] for before, after in itertools.pairwise(ordered))
