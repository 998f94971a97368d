"""Text that cannot be encoded as UTF-8: found in the caller's input, repaired in replies.

A Python string may hold a lone surrogate (``"\\ud83d"`` without its pair): a JSON
reply can carry one as an escape, and a tool can return one. No database driver
can store it (``UnicodeEncodeError``), so text that came from a model or a tool is
stored with U+FFFD in place of each lone surrogate; a surrogate pair split across
two pieces of a stream is joined back into its character. The caller's own input
is refused instead (``InputValidationError``): it is the caller's to fix.
"""

from __future__ import annotations

from typing import Any

__all__ = ["clean_json", "clean_text", "encodable", "first_unencodable", "lone_surrogates"]


def encodable(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (holds no lone surrogate)."""
    return text.isascii() or first_unencodable(text) is None


def first_unencodable(text: str) -> int | None:
    """The position of the first character UTF-8 cannot encode, or ``None``."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (pairs joined)."""
    if encodable(text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def lone_surrogates(text: str) -> int:
    """How many U+FFFD ``clean_text`` puts in ``text`` (a split pair counts none)."""
    if encodable(text):
        return 0
    return clean_text(text).count("\ufffd") - text.count("\ufffd")


def clean_json(value: Any) -> Any:
    """JSON-like data with every string (keys included) passed through ``clean_text``."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_json(key): clean_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(item) for item in value]
    return value
