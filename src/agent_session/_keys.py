"""The primary key of a stored session row, read from its identity (never a load).

Shared by the mixin, the observability layer and ``sse`` (which import it only for
a stored session, so an application without the ORM does not load SQLAlchemy here).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect

__all__ = ["identity"]


def identity(instance: Any) -> Any:
    """The row's primary key, from its identity: never a load (an expired instance
    would need one, and in async code that raises ``MissingGreenlet``). ``None`` for
    an instance not stored yet; a tuple for a composite key."""
    key = inspect(instance).identity
    if key is None:  # transient or pending: not stored yet
        return None
    values = tuple(key)
    return values[0] if len(values) == 1 else values
