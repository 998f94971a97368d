"""Secrets kept out of what the library shows: error messages, logs, SSE frames, spans.

A provider that refuses a key often echoes it (``Incorrect API key provided:
sk-...``), and that text would otherwise reach ``str(exc)``, a web client's error
frame, a log file and a tracing backend. ``mask`` replaces:

- every secret of the agents' ``model_settings`` (``api_key``, and any string under
  a key whose name looks like a secret: ``*key*``, ``*token*``, ``*secret*``,
  ``*password*``, ``*credential*``, ``Authorization``, in ``extra_headers`` too),
  registered by ``remember`` when an ``Agent`` is built;
- the values of environment variables whose names look like a secret
  (``OPENAI_API_KEY``, ...), which LiteLLM reads when no ``api_key`` is given;
- anything shaped like an API token: ``sk-...``, ``Bearer ...``, ``Basic ...``.

Values shorter than ``MIN_SECRET_CHARS`` are not masked by value (they would hide
ordinary words). The library's loggers carry ``MaskingFilter``, so their records
(messages and tracebacks, DEBUG included) are masked before any handler sees them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ._lazy import lazy_compile

__all__ = ["MASK", "MaskingFilter", "get_logger", "mask", "remember", "secret_values"]

MASK = "****"
MIN_SECRET_CHARS = 6
"""Shorter values are not masked by value, only by shape."""

_SECRET_NAME = re.compile(r"key|token|secret|passw|credential|authorization|cookie", re.IGNORECASE)
_NOT_SECRET_NAMES = frozenset({"max_tokens", "max_completion_tokens", "max_input_tokens"})
_TOKEN = lazy_compile(
    r"(?<![A-Za-z0-9])(?:(sk-)[A-Za-z0-9_\-]{4,}|((?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=\-]{6,})",
    re.IGNORECASE,
)

_known: frozenset[str] = frozenset()
"""Replaced, never changed in place: ``mask`` reads it without the lock."""
_lock = threading.Lock()


def _is_secret_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name.lower() not in _NOT_SECRET_NAMES
        and bool(_SECRET_NAME.search(name))
    )


def _values(value: Any, secret: bool) -> Iterator[str]:
    if isinstance(value, Mapping):
        for name, item in value.items():
            yield from _values(item, secret or _is_secret_name(name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _values(item, secret)
    elif secret and isinstance(value, str):
        yield value
        scheme, _, credential = value.strip().partition(" ")
        if credential and scheme.lower() in ("bearer", "basic", "token"):
            yield credential.strip()


def secret_values(settings: Mapping[str, Any] | None) -> set[str]:
    """The secrets held by ``settings`` (nested mappings such as ``extra_headers`` too)."""
    if not settings:
        return set()
    return {value for value in _values(settings, False) if len(value) >= MIN_SECRET_CHARS}


def remember(settings: Mapping[str, Any] | None) -> None:
    """Mask the secrets of ``settings`` from now on (an ``Agent``'s ``model_settings``)."""
    global _known
    found = secret_values(settings)
    if found and not found <= _known:
        with _lock:
            _known = _known | found


def _environment_secrets() -> Iterator[str]:
    for name, value in list(os.environ.items()):
        if len(value) >= MIN_SECRET_CHARS and _is_secret_name(name):
            yield value


def _hide(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2) or "") + MASK


def mask(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every known secret (and ``extra``), and every token-shaped
    string, replaced by ``****``."""
    secrets = {*_known, *_environment_secrets(), *extra}
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return _TOKEN.sub(_hide, text)


class MaskingFilter(logging.Filter):
    """Masks a record's message and traceback (``exc_info``) before it is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: left to the handler to report
            return True
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            text = record.exc_text or "".join(traceback.format_exception(*record.exc_info))
            hidden = mask(text.rstrip("\n"))
            if hidden != text.rstrip("\n"):
                # The traceback as text only: a handler cannot format the original again.
                record.exc_info, record.exc_text = None, hidden
        return True


_FILTER = MaskingFilter()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, its records masked (every library logger is one)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
