"""The tree of turns (``_tree``): navigation, truncations, and random operation
sequences checked against a plain model of the tree (``support.tree_model``)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_session import _tree
from support.tree_model import KINDS, Op, TreeModel, random_ops

# 1 <- 2 <- 3, 1 <- 4 <- 6, 1 <- 5; 7 is a second first turn.
TREE = {1: None, 2: 1, 3: 2, 4: 1, 5: 1, 6: 4, 7: None}


def test_ids_round_trip_and_only_canonical_spellings_parse() -> None:
    assert _tree.parse_id(_tree.message_id(12, 3)) == (12, 3)
    assert _tree.parse_id("0.0") == (0, 0)
    for bad in ["12", "12.", ".3", "012.0", "12.01", " 12.0", "+1.0", "1.0.0", "１.0", 12, None]:
        assert _tree.parse_id(bad) is None, bad


def test_path_to_follows_parents_from_the_first_turn() -> None:
    assert _tree.path_to(TREE, 6) == [1, 4, 6]
    assert _tree.path_to(TREE, 7) == [7]
    assert _tree.path_to(TREE, _tree.ROOT) == []
    with pytest.raises(KeyError):
        _tree.path_to(TREE, 8)
    with pytest.raises(ValueError, match="not older"):
        _tree.path_to({1: 2, 2: 1}, 2)


def test_siblings_and_children_are_oldest_first() -> None:
    assert _tree.siblings(TREE, 5) == [2, 4, 5]
    assert _tree.siblings(TREE, 1) == [1, 7]
    assert _tree.children(TREE)[1] == [2, 4, 5]
    assert _tree.children(TREE)[None] == [1, 7]


def test_newest_leaf_is_the_newest_turn_of_the_subtree() -> None:
    assert _tree.newest_leaf(TREE, 1) == 6
    assert _tree.newest_leaf(TREE, 2) == 3
    assert _tree.newest_leaf(TREE, 5) == 5
    assert _tree.newest_leaf(TREE, _tree.ROOT) == 7
    assert _tree.newest_leaf({}, _tree.ROOT) == _tree.ROOT
    assert _tree.switch_path(TREE, 4) == [1, 4, 6]
    with pytest.raises(KeyError):
        _tree.newest_leaf(TREE, 9)


def test_truncations() -> None:
    path = [1, 4, 6]
    assert _tree.regenerate_base(path) == [1, 4]
    assert _tree.edit_base(path, 4) == [1]
    assert _tree.edit_base(path, 1) == []
    assert _tree.rewind_base(path, 4) == [1, 4]
    assert _tree.rewind_base(path, _tree.ROOT) == []
    with pytest.raises(ValueError):
        _tree.regenerate_base([])
    with pytest.raises(ValueError, match="not on the active path"):
        _tree.edit_base(path, 2)
    with pytest.raises(ValueError, match="not on the active path"):
        _tree.rewind_base(path, 3)
    assert path == [1, 4, 6]  # never changed in place


def test_unreachable_finds_orphans_loops_and_lost_summaries() -> None:
    assert _tree.unreachable(TREE, {8: 6}) == set()
    assert _tree.unreachable({1: None, 2: 9, 3: 2}) == {2, 3}
    assert _tree.unreachable({1: None, 2: 3, 3: 2}) == {2, 3}
    assert _tree.unreachable({1: None}, {2: 5}) == {2}


@dataclass
class SeqStore:
    """The flows' side in miniature: rows by seq, the active path, the next seq; every
    operation goes through ``_tree`` the way the stored operations do."""

    rows: dict[int, tuple[int | None, str]] = field(default_factory=dict)
    path: list[int] = field(default_factory=list)
    next: int = 1

    def tree(self) -> dict[int, int | None]:
        return {seq: parent for seq, (parent, _) in self.rows.items()}

    def _turn(self, base: list[int], input: str) -> None:
        seq, self.next = self.next, self.next + 1
        self.rows[seq] = (base[-1] if base else None, input)
        self.path = [*base, seq]

    def apply(self, op: Op) -> None:
        kind, pick, input = op
        if kind == "continue":
            self._turn(self.path, input)
        elif kind == "regenerate" and self.path:
            self._turn(_tree.regenerate_base(self.path), self.rows[self.path[-1]][1])
        elif kind == "edit" and self.path:
            self._turn(_tree.edit_base(self.path, self.path[pick % len(self.path)]), input)
        elif kind == "switch" and self.rows:
            seq, _ = _tree.parse_id(f"{pick % len(self.rows) + 1}.1") or (0, 0)
            self.path = _tree.switch_path(self.tree(), seq)
        elif kind == "rewind":
            at = pick % (len(self.path) + 1) - 1
            self.path = _tree.rewind_base(self.path, self.path[at] if at >= 0 else _tree.ROOT)


def check_against_model(ops: list[Op]) -> None:
    model, store = TreeModel(), SeqStore()
    for step, op in enumerate(ops):
        model.apply(op)
        store.apply(op)
        where = f"after step {step} {op}"
        assert store.path == [n.number for n in model.active], where
        assert [store.rows[s][1] for s in store.path] == [n.input for n in model.active], where
        assert _tree.unreachable(store.tree()) == set(), where
        for node in model.active:
            assert _tree.siblings(store.tree(), node.number) == [
                n.number for n in model.siblings(node)
            ], where


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 999), st.just("")), max_size=40))
def test_random_operations_keep_the_active_path_of_the_model(ops: list[Op]) -> None:
    check_against_model([(kind, pick, f"u{i}") for i, (kind, pick, _) in enumerate(ops)])


def test_long_seeded_sequences_match_the_model() -> None:
    rng = random.Random(20)
    for _ in range(20):
        check_against_model(random_ops(rng, 200))


def test_an_edit_under_a_window_reads_from_the_window_before_the_turn() -> None:
    from agent_session.context import seq_range

    head = {"version": 4, "path": [[1, 3], [6, 8]], "next": 10}
    assert seq_range(head, ("from", 6, 2)) == (2, 9)  # turns 2, 3, then 6.. the end
    assert seq_range(head, ("from", 2, 5)) == (1, 9)
    assert seq_range(head, ("from", 8, 0)) == (8, 9)
    assert seq_range(head, ("from", 4, 1)) is None  # not on the path: nothing to read
