"""A plain in-memory model of a conversation tree, to check stored trees against.

Every operation of a session's tree (continue, regenerate, edit, switch, rewind) is
written here directly over node objects, without seqs, runs or ids: a turn is a
``Node`` with a parent node, and the active path is a list of nodes. Turn ``n`` is
the ``n``-th turn created (what a store numbers ``seq`` when it writes one row per
turn). ``random_ops`` draws a sequence of operations both the model and a store can
replay.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "Node", "Op", "TreeModel", "check_stored_trees", "random_ops"]


@dataclass(eq=False)
class Node:
    number: int
    parent: Node | None
    input: str


Op = tuple[str, int, str]
"""``(kind, pick, input)``: ``pick`` chooses a turn (modulo what there is to choose)."""


@dataclass
class TreeModel:
    nodes: list[Node] = field(default_factory=list)
    active: list[Node] = field(default_factory=list)

    def _new(self, parent: Node | None, input: str) -> Node:
        node = Node(len(self.nodes) + 1, parent, input)
        self.nodes.append(node)
        return node

    def continue_(self, input: str) -> Node:
        node = self._new(self.active[-1] if self.active else None, input)
        self.active.append(node)
        return node

    def regenerate(self) -> Node:
        last = self.active[-1]
        node = self._new(last.parent, last.input)
        self.active[-1] = node
        return node

    def edit(self, at: int, input: str) -> Node:
        """Edit the user message of the ``at``-th turn of the active path."""
        node = self._new(self.active[at].parent, input)
        self.active[at:] = [node]
        return node

    def switch(self, node: Node | None) -> None:
        """Make the newest turn under ``node`` (``None``: the root) the active leaf."""
        under = [n for n in self.nodes if node is None or self._below(n, node)]
        leaf = max(under, key=lambda n: n.number, default=None)
        self.active = self.path(leaf)

    def rewind(self, at: int) -> None:
        """Keep the active path up to its ``at``-th turn (``-1``: no turn at all)."""
        del self.active[at + 1 :]

    def siblings(self, node: Node) -> list[Node]:
        return [n for n in self.nodes if n.parent is node.parent]

    @staticmethod
    def _below(node: Node, top: Node) -> bool:
        current: Node | None = node
        while current is not None:
            if current is top:
                return True
            current = current.parent
        return False

    @staticmethod
    def path(node: Node | None) -> list[Node]:
        found = []
        while node is not None:
            found.append(node)
            node = node.parent
        return found[::-1]

    def apply(self, op: Op) -> str | None:
        """Apply ``op`` if it applies (``None`` when there is nothing it could do);
        returns what it did, spelled for a test's message."""
        kind, pick, input = op
        if kind == "continue":
            self.continue_(input)
        elif kind == "regenerate":
            if not self.active:
                return None
            self.regenerate()
        elif kind == "edit":
            if not self.active:
                return None
            self.edit(pick % len(self.active), input)
        elif kind == "switch":
            if not self.nodes:
                return None
            self.switch(self.nodes[pick % len(self.nodes)])
        elif kind == "rewind":
            self.rewind(pick % (len(self.active) + 1) - 1)
        return kind


KINDS: tuple[str, ...] = ("continue", "continue", "regenerate", "edit", "switch", "rewind")


def random_ops(rng: random.Random, count: int) -> list[Op]:
    """``count`` operations, continues twice as likely as the others."""
    return [(rng.choice(KINDS), rng.randrange(1000), f"u{i}") for i in range(count)]


def check_stored_trees(database: Any, table: Any, history: Any = None) -> int:
    """Every stored session of ``table`` (and its ``history`` table; ``None``: the
    single-column layout) is a whole tree: every row hangs from the root, the active
    path is a chain of turns from a first turn, and the messages on it are paired (no
    call without its result, no result without its call). Returns the rows checked."""
    import json

    from agent_session import _paths, _tree
    from agent_session.context import _is_summary_message
    from support.invariants import check_history
    from support.sessions import stored_rows

    by_session: dict[Any, list[tuple[int, Any, list[Any]]]] = {}
    if history is not None:
        [fk] = [c.name for c in history.columns if c.name.startswith("session_")]
        for row in stored_rows(database, history):
            data = row["data"] if isinstance(row["data"], list) else json.loads(row["data"])
            by_session.setdefault(row[fk], []).append((row["seq"], row["parent"], data))
    checked = 0
    for session in stored_rows(database, table):
        head = session["context"]
        if head is None or "messages" in head:
            continue  # no conversation, or a document of an earlier version
        rows = by_session.get(session["id"], [])
        if history is None:
            rows = [(seq, parent, data) for seq, parent, data in head.get("rows") or []]
        turns: dict[int, int | None] = {}
        summaries: dict[int, int] = {}
        data_of: dict[int, list[Any]] = {}
        for seq, parent, data in rows:
            assert seq < head["next"], (session["id"], seq, "a row at or past next")
            data_of[seq] = data
            if len(data) == 1 and _is_summary_message(data[0]):
                summaries[seq] = parent
            else:
                turns[seq] = parent
        where = f"session {session['id']}"
        assert _tree.unreachable(turns, summaries) == set(), where
        path = list(_paths.seqs(head["path"]))
        if path:
            assert _tree.path_to(turns, path[-1]) == path, (where, path)
        messages = [m for seq in path for m in data_of[seq]]
        check_history(messages, where=where)
        summary = head.get("summary")
        if summary is not None:
            assert summary["anchor"] in set(path), (where, "a summary off the active path")
        checked += len(rows)
    return checked
