"""Streamed turns, the public types: ``TurnStream`` and ``AsyncTurnStream``.

``agent.run(..., stream=True)``, ``Model.start_session(..., stream=True)`` and the
other ``stream=True`` calls return one (their ``a``-prefixed twins an
``AsyncTurnStream``); ``OnCancel`` is what their ``on_cancel=`` accepts. The
drivers behind them live in ``agent_session._streaming``; this module is imported
on the first stream, not with the package.
"""

from ._streaming import AsyncTurnStream, OnCancel, TurnStream

__all__ = ["AsyncTurnStream", "OnCancel", "TurnStream"]
