"""The tree of turns: where edit, regenerate, switch and rewind take the active path.

A stored conversation is a tree of *turn rows*: each has a ``seq`` (allocated in
order, never reused) and a ``parent`` (the seq of the turn before it on its path, or
``None`` for a first turn). The active path is a list of seqs from a first turn down
to the active leaf. Summary rows are not turns: callers leave them out of the trees
given here.

A message's id is ``"<seq>.<index>"`` (its index in the turn row); ``"0.0"`` is the
system message. Every function here is pure, takes the tree as a mapping
``seq -> parent`` and paths as lists of seqs, and returns new values (callers store
paths as runs, see ``_paths``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = [
    "ROOT",
    "Tree",
    "children",
    "edit_base",
    "message_id",
    "newest_leaf",
    "parse_id",
    "path_to",
    "regenerate_base",
    "rewind_base",
    "siblings",
    "switch_path",
    "unreachable",
]

Tree = Mapping[int, int | None]
"""Turn rows: ``seq -> parent`` (``None`` for a first turn)."""

ROOT = 0
"""The seq of the system message's id (``"0.0"``): the root every first turn hangs from."""


def message_id(seq: int, index: int) -> str:
    """The id of message ``index`` of turn row ``seq``."""
    return f"{seq}.{index}"


def parse_id(value: object) -> tuple[int, int] | None:
    """``(seq, index)`` of a message id, or ``None`` when ``value`` is not one.

    Only the canonical spelling is an id (``"12.0"``, not ``"012.0"``, ``" 12.0"`` or
    ``"+12.0"``), so that one message has one id.
    """
    if not isinstance(value, str) or value.count(".") != 1:
        return None
    head, _, tail = value.partition(".")
    if not (_canonical(head) and _canonical(tail)):
        return None
    return int(head), int(tail)


def _canonical(text: str) -> bool:
    return text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0"))


def path_to(tree: Tree, seq: int) -> list[int]:
    """The path from the first turn down to ``seq`` (``[]`` for ``ROOT``).

    ``KeyError`` if ``seq`` (or one of its ancestors) is not a turn of ``tree``;
    ``ValueError`` if the parents loop (a parent is always older than its child).
    """
    if seq == ROOT:
        return []
    path: list[int] = []
    current: int | None = seq
    while current is not None:
        parent = tree[current]
        if parent is not None and parent >= current:
            raise ValueError(f"turn {current} has a parent ({parent}) that is not older")
        path.append(current)
        current = parent
    path.reverse()
    return path


def children(tree: Tree) -> dict[int | None, list[int]]:
    """Each turn's children (``None``: the first turns), oldest first."""
    found: dict[int | None, list[int]] = {}
    for seq in sorted(tree):
        found.setdefault(tree[seq], []).append(seq)
    return found


def siblings(tree: Tree, seq: int) -> list[int]:
    """The turns with ``seq``'s parent, ``seq`` included, oldest first."""
    parent = tree[seq]
    return sorted(other for other, its in tree.items() if its == parent)


def newest_leaf(tree: Tree, seq: int) -> int:
    """The newest turn under ``seq`` (``seq`` itself when it has none).

    The newest turn of a subtree is a leaf: a child is always newer than its parent.
    Under ``ROOT``, the newest turn of the whole tree (``ROOT`` when there is none).
    """
    if seq != ROOT and seq not in tree:
        raise KeyError(seq)
    below = children(tree)
    newest = seq
    stack: list[int | None] = [None if seq == ROOT else seq]
    while stack:
        for child in below.get(stack.pop(), ()):
            newest = max(newest, child)
            stack.append(child)
    return newest


def switch_path(tree: Tree, seq: int) -> list[int]:
    """The active path after switching to turn ``seq``: down to its newest leaf."""
    return path_to(tree, newest_leaf(tree, seq))


def regenerate_base(path: Sequence[int]) -> list[int]:
    """The path a regenerated newest turn hangs from: ``path`` without its last turn.

    ``ValueError`` when the path is empty (there is no turn to regenerate).
    """
    if not path:
        raise ValueError("the active path holds no turn")
    return list(path[:-1])


def edit_base(path: Sequence[int], seq: int) -> list[int]:
    """The path an edited turn ``seq`` hangs from: ``path`` before ``seq``.

    ``ValueError`` when ``seq`` is not on ``path``.
    """
    return list(path[: _index(path, seq)])


def rewind_base(path: Sequence[int], seq: int) -> list[int]:
    """``path`` ending with turn ``seq`` (``[]`` for ``ROOT``).

    ``ValueError`` when ``seq`` is not on ``path``.
    """
    if seq == ROOT:
        return []
    return list(path[: _index(path, seq) + 1])


def _index(path: Sequence[int], seq: int) -> int:
    try:
        return list(path).index(seq)
    except ValueError:
        raise ValueError(f"turn {seq} is not on the active path") from None


def unreachable(tree: Tree, summaries: Mapping[int, int] | None = None) -> set[int]:
    """The rows not reachable from the root: turns of ``tree`` whose parent is not a
    turn of ``tree`` or not older than them (and every turn below one), and summary
    rows (``summaries``: ``seq -> anchor``) anchored on no reachable turn. An empty set
    means every stored row hangs from the root."""
    reached: set[int] = set()
    below = children(tree)
    stack: list[int | None] = [None]
    while stack:
        for child in below.get(stack.pop(), ()):
            parent = tree[child]
            if child not in reached and (parent is None or parent < child):
                reached.add(child)
                stack.append(child)
    lost = set(tree) - reached
    for seq, anchor in (summaries or {}).items():
        if anchor not in reached:
            lost.add(seq)
    return lost
