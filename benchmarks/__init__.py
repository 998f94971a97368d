"""Benchmarks for agent-session: ``python -m benchmarks`` (see docs/benchmarks.md).

Each benchmark is a module here with ``NAME``, ``TITLE`` and
``run(options, databases) -> BenchResult``. ``BENCHMARKS`` lists them in the
order the suite runs them and the page shows them.
"""

from __future__ import annotations

BENCHMARKS: dict[str, tuple[str, str]] = {
    "imports": ("import_cost", "Import cost"),
    "overhead": ("turn_overhead", "Per-turn overhead"),
    "tools": ("tool_turn", "Tool-turn overhead"),
    "growth": ("growth", "Growth with the conversation"),
    "window": ("window", "History windows at 10 to 10,000 messages"),
    "concurrency": ("concurrency", "Concurrency"),
    "peer": ("peer", "Peer: OpenAI Agents SDK SQLAlchemySession"),
    "large": ("large", "Large sessions: a turn at 10 to 100,000 stored messages"),
    "storage": ("storage", "Storage: json vs jsonb"),
    "profile": ("profile_turn", "Where a turn spends its time"),
    "hops": ("hops", "Hops: module crossings in one turn"),
    "streaming": ("streaming", "Streaming: first delta and per-delta overhead"),
    "tree": ("tree_ops", "Regenerate and edit beside a turn"),
    "listing": ("listing", "Listing a user's chats"),
    "load": ("load", "Load: the FastAPI example under uvicorn"),
}
"""Benchmark name -> (module in this package, title)."""
