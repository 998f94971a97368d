"""A small fake OpenAI-compatible chat completions server, for tests.

It runs in a background thread on ``127.0.0.1`` (a free port), serves
``POST /v1/chat/completions`` (and ``/chat/completions``), records every request
and answers from a script::

    with running_fake_openai() as server:
        server.enqueue_completion('{"answer": "42"}', prompt_tokens=12)
        server.enqueue_tool_calls([("get_order", '{"order_id": "A-1"}')])
        server.enqueue_error(429, "slow down", error_type="rate_limit_error", retry_after=2)
        server.enqueue_delay(5.0)  # longer than the client's timeout
        ...  # point a client at server.base_url
        assert len(server.requests) == 4

A request with ``"stream": true`` gets the same scripted reply as server-sent events
(``chat.completion.chunk`` objects, OpenAI's wire form): the text in pieces of
``chunk_chars`` characters, each tool call as a first delta with its id and name and
then its arguments in pieces, a last delta with the ``finish_reason``, the usage chunk
when ``stream_options.include_usage`` is set, and ``data: [DONE]``. The body is sent
with chunked transfer encoding, so a dropped connection is visible to the client.
``enqueue_stream`` scripts the stream's shape: a delay between chunks (a slow model,
for cancellation tests), a connection dropped after some chunks, or an error event.
``enqueue_endless_stream`` scripts a stream that never ends: the same text delta
forever, as fast as the client reads (``chunk_delay=0``) or one every ``chunk_delay``
seconds (a slow drip, whose client is seen leaving between two chunks).
``server.streams`` records each stream: chunks scripted, chunks sent, and whether the
client went away before the end::

    server.enqueue_stream("Hello there", chunk_delay=0.05)
    ...  # a client reads two deltas and closes the stream
    record = server.streams[0]
    assert record.wait() and record.client_gone and record.sent < record.scripted

The same server speaks Anthropic's Messages wire format on ``POST /v1/messages``
(LiteLLM's ``anthropic/...`` models with ``api_base=server.anthropic_base_url``):
the scripted replies are the same objects, rendered as Anthropic content blocks
(``text`` and ``tool_use``), so a test can check what LiteLLM translates both ways.

A request that finds the script empty gets an HTTP 500 and is recorded like any
other, so a test that counts requests sees hidden retries; unless ``default`` is set,
a reply given to every request the script does not answer. ``latency`` delays every
reply by that many seconds (a model that takes its time; a load test's model)::

    with running_fake_openai(latency=0.5, default=Completion('{"answer": "ok"}')) as server:
        ...  # every request is answered after 500 ms, as many at once as come in
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "CONTEXT_SERVERS",
    "Completion",
    "Delay",
    "ErrorReply",
    "FakeOpenAI",
    "FakeToolCall",
    "RawReply",
    "RecordedRequest",
    "StreamRecord",
    "context_window_error",
    "prompt_tokens",
    "running_fake_openai",
]

CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
ANTHROPIC_PATHS = frozenset({"/v1/messages"})

_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


@dataclass(frozen=True)
class FakeToolCall:
    """One tool call of a scripted reply; ``arguments`` is the raw text sent as is."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Completion:
    """A successful chat completion, with tool calls if ``tool_calls`` is not empty."""

    content: str | None
    prompt_tokens: int = 10
    completion_tokens: int = 5
    model: str = "gpt-4o-mini"
    finish_reason: str = "stop"
    tool_calls: tuple[FakeToolCall, ...] = ()
    chunk_chars: int = 4
    """Streamed: characters of text (or of tool arguments) per delta."""
    chunk_delay: float = 0.0
    """Streamed: seconds between two chunks (a slow model)."""
    cut_after: int | None = None
    """Streamed: drop the connection after this many chunks, without ``[DONE]``."""
    error_after: int | None = None
    """Streamed: send an error event after this many chunks, then end the stream."""
    endless: bool = False
    """Streamed: after the first chunk, send the text as one delta again and again."""

    def body(self, number: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
        return {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            },
        }

    def chunks(self, number: int, *, include_usage: bool) -> list[dict[str, Any]]:
        """The reply as the ``chat.completion.chunk`` objects of a stream, in order."""
        size = max(1, self.chunk_chars)
        head = {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": None,
        }

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**head, "choices": [choice]}

        made = [chunk({"role": "assistant", "content": ""})]
        text = self.content or ""
        made += [chunk({"content": text[i : i + size]}) for i in range(0, len(text), size)]
        for index, call in enumerate(self.tool_calls):
            first = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            made.append(chunk({"tool_calls": [first]}))
            made += [
                chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                for piece in (
                    call.arguments[i : i + size] for i in range(0, len(call.arguments), size)
                )
            ]
        made.append(chunk({}, self.finish_reason))
        if include_usage:
            usage = self.body(number)["usage"]
            made.append({**head, "choices": [], "usage": usage})
        return made

    def anthropic_body(self, number: int) -> dict[str, Any]:
        """The same reply in Anthropic's Messages form (tool arguments must be JSON)."""
        blocks: list[dict[str, Any]] = []
        if self.content:
            blocks.append({"type": "text", "text": self.content})
        blocks += [
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": json.loads(call.arguments),
            }
            for call in self.tool_calls
        ]
        return {
            "id": f"msg_fake_{number}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": blocks,
            "stop_reason": _ANTHROPIC_STOP.get(self.finish_reason, self.finish_reason),
            "stop_sequence": None,
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": self.completion_tokens},
        }


@dataclass(frozen=True)
class ErrorReply:
    """An HTTP error with an OpenAI-style error body."""

    status: int
    message: str = "error"
    error_type: str = "invalid_request_error"
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (``Retry-After``, ...)."""
    raw: dict[str, Any] | None = None
    """The body as a given server sends it, instead of OpenAI's form."""

    def body(self) -> dict[str, Any]:
        if self.raw is not None:
            return self.raw
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": None,
                "code": self.code,
            }
        }

    def anthropic_body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.error_type, "message": self.message}}


CONTEXT_SERVERS = ("openai", "vllm", "llama.cpp")


def context_window_error(server: str, limit: int, prompt: int, completion: int = 0) -> ErrorReply:
    """The "request too long" error of ``server`` (one of ``CONTEXT_SERVERS``), with
    its HTTP status and body as that server sends them."""
    if server == "openai":
        message = (
            f"This model's maximum context length is {limit} tokens. However, your messages "
            f"resulted in {prompt} tokens. Please reduce the length of the messages."
        )
        return ErrorReply(400, message, "invalid_request_error", "context_length_exceeded")
    if server == "vllm":  # vLLM's OpenAI-compatible server: a flat error object
        message = (
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the "
            "completion). Please reduce the length of the messages or completion."
        )
        raw = {"object": "error", "message": message, "type": "BadRequestError", "param": None}
        return ErrorReply(400, message, raw={**raw, "code": 400})
    if server == "llama.cpp":  # llama-server started with -c LIMIT
        message = (
            f"request ({prompt} tokens) exceeds the available context size ({limit} tokens), "
            "try increasing it"
        )
        error = {"code": 400, "message": message, "type": "exceed_context_size_error"}
        return ErrorReply(
            400, message, raw={"error": {**error, "n_prompt_tokens": prompt, "n_ctx": limit}}
        )
    raise ValueError(f"unknown server {server!r}; one of {CONTEXT_SERVERS}")


def prompt_tokens(body: Any) -> int:
    """The fake's tokenizer: 4 per message and one per 3 characters of its content
    (it counts more than LiteLLM's counter does, as a server's own tokenizer may)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    total = 0
    for message in messages or []:
        content = message.get("content") if isinstance(message, dict) else None
        text = content if isinstance(content, str) else json.dumps(content or "")
        total += 4 + len(text) // 3
    return total


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds`` (to provoke a client timeout), then answer with ``then``."""

    seconds: float
    then: Completion | ErrorReply | None = None


@dataclass(frozen=True)
class RawReply:
    """A response body sent exactly as given: JSON no encoder would write, such as a
    lone surrogate escape (``"\\ud83d"`` without its pair) in a completion."""

    body: str
    status: int = 200


Reply = Completion | ErrorReply | Delay | RawReply


@dataclass
class StreamRecord:
    """What happened to one streamed reply (``FakeOpenAI.streams``)."""

    scripted: int
    """Chunks the script would send (``[DONE]`` not counted; 0 for an endless stream)."""
    sent: int = 0
    """Chunks written before the stream ended or the client went away."""
    client_gone: bool = False
    """A write failed: the client closed the connection before the end."""
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait until the server has finished with this stream; ``True`` if it has."""
        return self.done.wait(timeout)


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased."""
    body: Any
    """The parsed JSON body (``None`` if it was not JSON)."""
    at: float = field(default_factory=time.monotonic)
    """When it arrived (``time.monotonic()``)."""


@dataclass
class FakeOpenAI:
    """The script, the record and the address of a running fake server."""

    base_url: str = ""
    """``http://127.0.0.1:PORT/v1``: what an OpenAI client takes as its base URL."""
    anthropic_base_url: str = ""
    """``http://127.0.0.1:PORT``: LiteLLM's ``api_base`` for ``anthropic/...`` models."""
    port: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    streams: list[StreamRecord] = field(default_factory=list)
    """One record per streamed reply, in order."""
    context_size: tuple[str, int] | None = None
    """``(server, tokens)``: refuse a chat request longer than ``tokens`` (its prompt by
    ``prompt_tokens``, plus its ``max_tokens`` except for llama.cpp) with that server's
    error, as a server with that context size does; the script is left as it is."""
    default: Reply | None = None
    """The reply to a request the script does not answer (``None``: an HTTP 500)."""
    latency: float = 0.0
    """Seconds every reply waits before its first byte."""
    _script: deque[Reply] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closing: threading.Event = field(default_factory=threading.Event)
    _call_ids: int = 0

    # -- the script --------------------------------------------------------

    def enqueue(self, *replies: Reply) -> None:
        """Append replies to the script, answered in order, one per request."""
        with self._lock:
            self._script.extend(replies)

    def enqueue_completion(
        self,
        content: str,
        *,
        prompt_tokens: int = 10,
        completion_tokens: int = 5,
        model: str = "gpt-4o-mini",
        finish_reason: str = "stop",
    ) -> None:
        self.enqueue(Completion(content, prompt_tokens, completion_tokens, model, finish_reason))

    def enqueue_stream(
        self,
        content: str | None,
        *,
        tool_calls: list[tuple[str, str | dict[str, Any]] | tuple[str, str | dict[str, Any], str]]
        | None = None,
        prompt_tokens: int = 10,
        completion_tokens: int = 5,
        model: str = "gpt-4o-mini",
        finish_reason: str | None = None,
        chunk_chars: int = 4,
        chunk_delay: float = 0.0,
        cut_after: int | None = None,
        error_after: int | None = None,
    ) -> list[FakeToolCall]:
        """A reply shaped for a streamed request (also answers an unstreamed one).

        ``chunk_delay`` waits between chunks, ``cut_after`` drops the connection after
        that many chunks, ``error_after`` sends an error event after that many chunks.
        Returns the tool calls, with their ids.
        """
        made = self._calls(tool_calls or [])
        reason = finish_reason or ("tool_calls" if made else "stop")
        self.enqueue(
            Completion(
                content,
                prompt_tokens,
                completion_tokens,
                model,
                reason,
                tuple(made),
                chunk_chars,
                chunk_delay,
                cut_after,
                error_after,
            )
        )
        return made

    def _calls(
        self,
        calls: list[tuple[str, str | dict[str, Any]] | tuple[str, str | dict[str, Any], str]],
    ) -> list[FakeToolCall]:
        made: list[FakeToolCall] = []
        for entry in calls:
            name, arguments = entry[0], entry[1]
            with self._lock:
                self._call_ids += 1
                default_id = f"call_fake_{self._call_ids}"
            call_id = entry[2] if len(entry) > 2 else default_id  # type: ignore[misc]
            text = arguments if isinstance(arguments, str) else json.dumps(arguments)
            made.append(FakeToolCall(call_id, name, text))
        return made

    def enqueue_tool_calls(
        self,
        calls: list[tuple[str, str | dict[str, Any]] | tuple[str, str | dict[str, Any], str]],
        *,
        content: str | None = None,
        prompt_tokens: int = 10,
        completion_tokens: int = 5,
        model: str = "gpt-4o-mini",
    ) -> list[FakeToolCall]:
        """A reply that calls tools: ``(name, arguments)`` or ``(name, arguments, id)``.

        A string ``arguments`` is sent as it is (it may be invalid JSON, as a small
        model's slip); a dict is encoded. Returns the calls, with their ids.
        """
        made = self._calls(calls)
        self.enqueue(
            Completion(content, prompt_tokens, completion_tokens, model, "tool_calls", tuple(made))
        )
        return made

    def enqueue_error(
        self,
        status: int,
        message: str = "error",
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        retry_after: float | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """An error reply; ``retry_after`` sets the ``Retry-After`` header (seconds or a date)."""
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        self.enqueue(ErrorReply(status, message, error_type, code, extra))

    def enqueue_endless_stream(self, text: str = "x", *, chunk_delay: float = 0.0) -> None:
        """A stream that never ends: ``text`` as a delta, again and again, every
        ``chunk_delay`` seconds, until the client goes away."""
        self.enqueue(Completion(text, chunk_chars=len(text), chunk_delay=chunk_delay, endless=True))

    def enqueue_delay(self, seconds: float, then: Completion | ErrorReply | None = None) -> None:
        self.enqueue(Delay(seconds, then))

    def enqueue_raw(self, body: str | dict[str, Any], *, status: int = 200) -> None:
        """A response body sent as it is (a dict: encoded with ``json.dumps``, which
        writes a lone surrogate as its ``\\uXXXX`` escape)."""
        self.enqueue(RawReply(body if isinstance(body, str) else json.dumps(body), status))

    def completion_body(self, content: str, **fields: Any) -> dict[str, Any]:
        """The body of a plain completion with ``content``, for ``enqueue_raw``."""
        return Completion(content, **fields).body(len(self.requests) + 1)

    @property
    def pending(self) -> int:
        """How many scripted replies are still unused."""
        with self._lock:
            return len(self._script)

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies of the requests received so far."""
        with self._lock:
            return [request.body for request in self.requests]

    # -- used by the handler -----------------------------------------------

    def _receive(self, request: RecordedRequest) -> tuple[int, Reply | None]:
        with self._lock:
            self.requests.append(request)
            number = len(self.requests)
            refused = self._too_long(request.body)
            if refused is not None:
                return number, refused
            reply = self._script.popleft() if self._script else self.default
        return number, reply

    def _too_long(self, body: Any) -> ErrorReply | None:
        if self.context_size is None or not isinstance(body, dict) or "messages" not in body:
            return None
        server, limit = self.context_size
        prompt = prompt_tokens(body)
        completion = 0 if server == "llama.cpp" else int(body.get("max_tokens") or 0)
        if prompt + completion <= limit:
            return None
        return context_window_error(server, limit, prompt, completion)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = self.path.split("?", 1)[0]
        recorded = RecordedRequest(
            method="POST",
            path=path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        if path not in CHAT_PATHS and path not in ANTHROPIC_PATHS:
            fake._receive(recorded)
            self._send(404, ErrorReply(404, f"no route {path}", "not_found_error").body())
            return
        anthropic = path in ANTHROPIC_PATHS
        number, reply = fake._receive(recorded)
        if fake.latency and fake._closing.wait(fake.latency):
            return  # shutting down: drop the connection
        if isinstance(reply, Delay):
            if fake._closing.wait(reply.seconds):
                return  # shutting down: drop the connection
            reply = reply.then or Completion("late")
        if reply is None:
            reply = ErrorReply(500, "fake server: no scripted reply", "server_error")
        if isinstance(reply, RawReply):
            self._send_bytes(reply.status, reply.body.encode("ascii", "backslashreplace"))
        elif isinstance(reply, ErrorReply):
            self._send(
                reply.status, reply.anthropic_body() if anthropic else reply.body(), reply.headers
            )
        elif not anthropic and isinstance(body, dict) and body.get("stream") is True:
            options = body.get("stream_options") or {}
            self._stream(number, reply, include_usage=bool(options.get("include_usage")))
        else:
            self._send(200, reply.anthropic_body(number) if anthropic else reply.body(number))

    def _stream(self, number: int, reply: Completion, *, include_usage: bool) -> None:
        """Send ``reply`` as server-sent events, chunk by chunk (chunked encoding)."""
        fake = self.server.fake
        chunks = reply.chunks(number, include_usage=include_usage)
        if reply.endless:
            self._endless(chunks[0], chunks[1], reply.chunk_delay)
            return
        if reply.cut_after is not None:
            chunks = chunks[: reply.cut_after]
        elif reply.error_after is not None:
            error = ErrorReply(500, "the model crashed mid-stream", "server_error").body()
            chunks = [*chunks[: reply.error_after], error]
        record = self._start_stream(len(chunks))
        try:
            self._send_stream_headers()
            for index, chunk in enumerate(chunks):
                if index and reply.chunk_delay and fake._closing.wait(reply.chunk_delay):
                    return
                self._write_chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                record.sent += 1
            if reply.cut_after is not None:
                return  # drop the connection: no [DONE], no final empty chunk
            self._write_chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            record.client_gone = True
        finally:
            record.done.set()

    def _start_stream(self, scripted: int) -> StreamRecord:
        record = StreamRecord(scripted=scripted)
        with self.server.fake._lock:
            self.server.fake.streams.append(record)
        self.close_connection = True
        return record

    def _send_stream_headers(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()

    def _endless(self, first: dict[str, Any], delta: dict[str, Any], delay: float) -> None:
        """Send ``first``, then ``delta`` forever (every ``delay`` seconds) until the
        client goes away or the server shuts down."""
        fake = self.server.fake
        record = self._start_stream(0)
        try:
            self._send_stream_headers()
            chunk = first
            while not fake._closing.is_set():
                self._write_chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                record.sent += 1
                chunk = delta
                if delay and self._client_left_within(delay):
                    record.client_gone = True
                    return
        except OSError:
            record.client_gone = True
        finally:
            record.done.set()

    def _client_left_within(self, seconds: float) -> bool:
        """Wait ``seconds``; ``True`` as soon as the client closes the connection."""
        fake = self.server.fake
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not fake._closing.is_set():
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
            if not readable:
                continue
            try:
                if not self.connection.recv(1, socket.MSG_PEEK):
                    return True
            except OSError:
                return True
            time.sleep(0.05)  # the client sent something: look again later
        return False

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        self._send(404, ErrorReply(404, "not found", "not_found_error").body())

    def _send(
        self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        self._send_bytes(status, json.dumps(payload).encode("utf-8"), headers)

    def _send_bytes(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        # The client may have given up (a timeout test): that is not an error here.
        with suppress(OSError):
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # a load test's hundreds of connections at once

    def __init__(self, fake: FakeOpenAI) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up is expected in timeout tests; stay quiet."""


@contextmanager
def running_fake_openai(
    *, latency: float = 0.0, default: Reply | None = None
) -> Iterator[FakeOpenAI]:
    """Start a fake server on a free loopback port; stop it on exit."""
    fake = FakeOpenAI(latency=latency, default=default)
    server = _Server(fake)
    fake.port = server.server_address[1]
    fake.anthropic_base_url = f"http://127.0.0.1:{fake.port}"
    fake.base_url = f"{fake.anthropic_base_url}/v1"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        fake._closing.set()  # wake handlers that are delaying
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
