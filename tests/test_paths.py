"""The pure helpers for the active path's runs (``agent_session._paths``)."""

from __future__ import annotations

import pytest

from agent_session import _paths


def test_seqs_and_count() -> None:
    path = [[1, 3], [7, 8]]
    assert list(_paths.seqs(path)) == [1, 2, 3, 7, 8]
    assert _paths.count(path) == 5
    assert _paths.count([]) == 0
    assert _paths.last(path) == 8
    assert _paths.last([]) is None


def test_append_merges_a_following_seq_into_the_last_run() -> None:
    assert _paths.append([], 1) == [[1, 1]]
    path = [[1, 3]]
    assert _paths.append(path, 4) == [[1, 4]]
    assert _paths.append(path, 6) == [[1, 3], [6, 6]]
    assert path == [[1, 3]]  # unchanged


def test_from_seqs() -> None:
    assert _paths.from_seqs([1, 2, 3, 5, 6, 9]) == [[1, 3], [5, 6], [9, 9]]
    assert _paths.from_seqs([]) == []


def test_last_seqs_crosses_runs() -> None:
    path = [[1, 3], [7, 8]]
    assert _paths.last_seqs(path, 0) == []
    assert _paths.last_seqs(path, 1) == [8]
    assert _paths.last_seqs(path, 3) == [3, 7, 8]
    assert _paths.last_seqs(path, 10) == [1, 2, 3, 7, 8]


def test_position_and_contains() -> None:
    path = [[1, 3], [7, 8]]
    assert [_paths.position(path, s) for s in (1, 3, 7, 8)] == [0, 2, 3, 4]
    assert _paths.position(path, 5) is None
    assert _paths.contains(path, 2) and not _paths.contains(path, 4)


def test_truncate() -> None:
    path = [[1, 3], [7, 8]]
    assert _paths.truncate_after(path, 2) == [[1, 2]]
    assert _paths.truncate_after(path, 7) == [[1, 3], [7, 7]]
    assert _paths.truncate_before(path, 1) == []
    assert _paths.truncate_before(path, 7) == [[1, 3]]
    assert _paths.truncate_before(path, 8) == [[1, 3], [7, 7]]
    with pytest.raises(ValueError):
        _paths.truncate_after(path, 5)
    with pytest.raises(ValueError):
        _paths.truncate_before(path, 5)


def test_valid() -> None:
    assert _paths.valid([]) and _paths.valid([[1, 3], [7, 8]]) and _paths.valid([[5, 5], [1, 2]])
    for bad in (None, [[0, 1]], [[3, 1]], [[1, 3], [2, 4]], [[1]], [["1", 2]], [[True, 2]], {}):
        assert not _paths.valid(bad), bad
