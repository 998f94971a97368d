"""The model seam: what a turn sends, what comes back, and the LiteLLM backend.

This is the only module that touches LiteLLM, and it imports it lazily, on the
first call, because ``import litellm`` costs seconds. Test doubles
(``agent_session.testing``) implement the same ``Model`` interface, so parsing,
validation and re-asks run the same code for real and fake models.

Offline price map: at import LiteLLM fetches its model price map over the network
unless ``LITELLM_LOCAL_MODEL_COST_MAP`` is true; on a network that hangs this
stalls the first call. Before the lazy import the library sets that variable to
``True`` (and ``LITELLM_OFFLINE_MODE`` likewise) **only when the user has not set
it**, so LiteLLM uses the price map bundled with the installed release. Set
``LITELLM_LOCAL_MODEL_COST_MAP=False`` to get the remote map.
"""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from .context import Usage
from .errors import ModelCallError
from .tools import ToolCall

__all__ = ["LiteLLMModel", "Model", "ModelRequest", "ModelResponse"]


@dataclass(frozen=True)
class ModelRequest:
    """One call to a model: the messages and everything needed to send them."""

    model: str
    messages: list[dict[str, Any]]
    response_format: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    output_schema: type[BaseModel] | None = None
    """The schema the output must match (for test doubles; not sent)."""
    tools: list[dict[str, Any]] | None = None
    """Tool definitions (OpenAI function-tool form), sent as ``tools`` when set."""


@dataclass(frozen=True)
class ModelResponse:
    """What one call returned."""

    text: str
    usage: Usage = field(default_factory=Usage)
    cost: float | None = None
    model: str = ""
    finish_reason: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    """The calls the model asked for, arguments as the raw text it sent."""


class Model(ABC):
    """A chat model backend: LiteLLM in production, a test double in tests."""

    name: str = "model"

    @abstractmethod
    def complete(self, request: ModelRequest) -> ModelResponse:
        """Call the model (blocking)."""

    @abstractmethod
    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        """Call the model (async)."""

    def supports_structured_output(self, model: str) -> bool:
        """Whether ``response_format`` with a JSON schema may be sent for ``model``."""
        return True


_litellm: ModuleType | None = None
_import_lock = threading.Lock()


def import_litellm() -> ModuleType:
    """Import LiteLLM once, with its offline price map unless the user chose otherwise."""
    global _litellm
    if _litellm is None:
        with _import_lock:
            if _litellm is None:
                os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
                os.environ.setdefault("LITELLM_OFFLINE_MODE", "True")
                import litellm

                _litellm = litellm
    return _litellm


class LiteLLMModel(Model):
    """Calls any provider through ``litellm.completion`` / ``litellm.acompletion``."""

    name = "litellm"

    def __init__(self) -> None:
        self._schema_support: dict[str, bool] = {}

    def supports_structured_output(self, model: str) -> bool:
        cached = self._schema_support.get(model)
        if cached is None:
            litellm = import_litellm()
            try:
                cached = bool(litellm.supports_response_schema(model=model))
            except Exception:
                cached = False
            self._schema_support[model] = cached
        return cached

    def _kwargs(self, request: ModelRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": request.model, "messages": request.messages}
        if request.response_format is not None:
            kwargs["response_format"] = request.response_format
        if request.tools:
            kwargs["tools"] = request.tools
        kwargs.update(request.settings)
        return kwargs

    def complete(self, request: ModelRequest) -> ModelResponse:
        litellm = import_litellm()
        try:
            raw = litellm.completion(**self._kwargs(request))
        except Exception as exc:
            raise _model_call_error(exc, request.model) from exc
        return _to_response(litellm, raw, request.model)

    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        litellm = import_litellm()
        try:
            raw = await litellm.acompletion(**self._kwargs(request))
        except Exception as exc:
            raise _model_call_error(exc, request.model) from exc
        return _to_response(litellm, raw, request.model)


def _to_response(litellm: ModuleType, raw: Any, model: str) -> ModelResponse:
    try:
        choice = raw.choices[0]
        text = choice.message.content or ""
        finish_reason = choice.finish_reason
        tool_calls = _tool_calls(choice.message)
        usage_obj = getattr(raw, "usage", None)
        usage = Usage(
            prompt_tokens=int(getattr(usage_obj, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage_obj, "completion_tokens", 0) or 0),
            total_tokens=int(getattr(usage_obj, "total_tokens", 0) or 0),
        )
    except (AttributeError, IndexError, TypeError, ValueError) as exc:
        raise ModelCallError(f"unexpected response shape from {model}: {exc}", model=model) from exc
    try:
        cost: float | None = float(litellm.completion_cost(completion_response=raw))
    except Exception:
        cost = None
    return ModelResponse(
        text=text,
        usage=usage,
        cost=cost,
        model=str(getattr(raw, "model", None) or model),
        finish_reason=finish_reason,
        tool_calls=tool_calls,
    )


def _tool_calls(message: Any) -> tuple[ToolCall, ...]:
    """The message's tool calls; their arguments stay the raw text, valid JSON or not."""
    calls = []
    for raw in getattr(message, "tool_calls", None) or ():
        function = raw.function
        arguments = function.arguments
        if arguments is None:
            arguments = ""
        elif not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append(ToolCall(str(function.name), arguments, id=raw.id or None))
    return tuple(calls)


_NO_RESPONSE_KINDS = frozenset(
    {
        # LiteLLM and the OpenAI SDK
        "Timeout",
        "APITimeoutError",
        "APIConnectionError",
        # httpx, under the SDKs and LiteLLM's own handlers
        "ConnectError",
        "ConnectTimeout",
        "ReadTimeout",
        "WriteTimeout",
        "PoolTimeout",
    }
)


def _no_response_cause(exc: BaseException) -> BaseException | None:
    """The link of ``exc``'s chain that says no HTTP response arrived, if any.

    LiteLLM re-raises some transport failures as HTTP errors it makes up: a refused
    connection to an OpenAI-compatible server becomes ``InternalServerError`` with
    ``status_code`` 500. The transport error stays in the chain, so look there.
    """
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < 20:
        seen.add(id(link))
        if type(link).__name__ in _NO_RESPONSE_KINDS or isinstance(
            link, TimeoutError | ConnectionError
        ):
            return link
        link = link.__cause__ or link.__context__
    return None


def _model_call_error(exc: Exception, model: str) -> ModelCallError:
    """Map a LiteLLM (or transport) exception to ``ModelCallError``."""
    kind = type(exc).__name__
    transport = _no_response_cause(exc)
    status = None if transport is not None else getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = None
    message = str(exc).strip() or kind
    where = f"HTTP {status}" if status is not None else type(transport or exc).__name__
    return ModelCallError(
        f"model call to {model} failed ({where}): {message}", model=model, status_code=status
    )
