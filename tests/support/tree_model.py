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

__all__ = ["KINDS", "Node", "Op", "TreeModel", "random_ops"]


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
