"""A fake Anthropic Messages API on 127.0.0.1, for driving the real `claude` binary in tests.

`FakeAnthropic` serves `POST /v1/messages` from a stdlib `ThreadingHTTPServer` on a thread of
its own, on an ephemeral port. It answers streaming requests (`"stream": true`) with the SSE
events the real API sends (message_start, content_block_start / content_block_delta with
text_delta or input_json_delta / content_block_stop, message_delta, message_stop) and other
requests with one JSON message (claude falls back to a non-streaming request after a broken
stream). What it answers is scripted per request with `Reply` values (plain text, tool_use
blocks, API errors, slow, stalled or broken streams, large or non-ASCII text), or by a function
of the request body; every request it receives is recorded. It never touches the network beyond its
loopback socket, and its lifetime is bounded: `close()` (or leaving the `with` block) stops
it, and so does a watchdog after `lifetime` seconds.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_LIFETIME_SECONDS = 600.0
"""A fake server shuts itself down after this long, even if a test forgets to."""

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
"""HTTP status -> the `error.type` the real API sends with it."""


@dataclass(frozen=True)
class Block:
    """One content block of a scripted answer: text, or a tool_use with its input."""

    type: str
    text: str = ""
    name: str = ""
    input: Any = None
    id: str = ""

    def as_content(self) -> dict[str, Any]:
        """The block as it appears in a complete (non-streamed) message."""
        if self.type == "text":
            return {"type": "text", "text": self.text}
        return {"type": "tool_use", "id": self.id, "name": self.name, "input": self.input}


@dataclass(frozen=True)
class Reply:
    """What the fake answers to one request.

    `status` >= 400 makes it an API error. `chunk_chars` splits text into deltas of that
    size; `delay` pauses before each delta (a slow stream); `break_after` closes the
    connection after that many deltas without finishing the message (a broken stream).
    `stall` holds the connection open for that many seconds without sending a byte (until
    `FakeAnthropic.release_stalls` or `close`), then answers as scripted: before the
    response headers when `stall_after` is None, else after that many deltas (mid-stream).
    """

    blocks: tuple[Block, ...] = ()
    stop_reason: str = "end_turn"
    status: int = 200
    error_message: str = ""
    chunk_chars: int = 64
    delay: float = 0.0
    break_after: int | None = None
    stall: float = 0.0
    stall_after: int | None = None
    input_tokens: int = 25
    output_tokens: int = 12


def text(answer: str, **options: Any) -> Reply:
    """A plain text answer (`options` as in `Reply`: chunk_chars, delay, break_after, ...)."""
    return Reply(blocks=(Block(type="text", text=answer),), **options)


def tool_use(
    name: str, tool_input: Any, *, preface: str = "", tool_use_id: str | None = None,
    **options: Any,
) -> Reply:
    """An answer that calls a tool (optionally after some text); its stop reason is tool_use."""
    blocks: list[Block] = []
    if preface:
        blocks.append(Block(type="text", text=preface))
    blocks.append(Block(type="tool_use", name=name, input=tool_input,
                        id=tool_use_id or f"toolu_{uuid.uuid4().hex[:24]}"))
    return Reply(blocks=tuple(blocks), stop_reason="tool_use", **options)


def error(status: int, message: str = "") -> Reply:
    """An API error with the real API's JSON body (`{"type": "error", "error": {...}}`)."""
    return Reply(status=status, error_message=message or f"fake API error {status}")


@dataclass
class ReceivedRequest:
    """One request the fake received: method, path, headers and the decoded JSON body."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float = field(default_factory=time.monotonic)

    @property
    def is_model_call(self) -> bool:
        """Whether this is a Messages API call (`POST /v1/messages...`)."""
        return self.method == "POST" and self.path.split("?")[0] == "/v1/messages"

    @property
    def streaming(self) -> bool:
        """Whether the request asked for an SSE stream."""
        return isinstance(self.body, dict) and self.body.get("stream") is True

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The `messages` array of the body (empty if there is none)."""
        found = self.body.get("messages") if isinstance(self.body, dict) else None
        return found if isinstance(found, list) else []

    def all_text(self) -> str:
        """Every text the request carries (system prompt excluded), joined: for assertions."""
        return "\n".join(_texts(self.messages))

    def user_texts(self) -> list[str]:
        """The text blocks of user messages, in order (tool results included as text)."""
        return list(_texts([m for m in self.messages if m.get("role") == "user"]))

    def tool_results(self) -> list[dict[str, Any]]:
        """Every tool_result block in the request's messages."""
        return [
            block for message in self.messages
            for block in _content_blocks(message) if block.get("type") == "tool_result"
        ]


def _content_blocks(message: Any) -> list[dict[str, Any]]:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [block for block in content if isinstance(block, dict)] if isinstance(content, list) \
        else []


def _texts(messages: list[dict[str, Any]]) -> Iterator[str]:
    for message in messages:
        for block in _content_blocks(message):
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                yield block["text"]
            elif block.get("type") == "tool_result":
                inner = block.get("content")
                if isinstance(inner, str):
                    yield inner
                elif isinstance(inner, list):
                    yield from (b["text"] for b in inner
                                if isinstance(b, dict) and isinstance(b.get("text"), str))


Responder = Callable[[ReceivedRequest], Reply]
"""Chooses the reply to a request from the request itself."""


class FakeAnthropic:
    """A scriptable fake Messages API on 127.0.0.1; a context manager. Thread-safe."""

    def __init__(
        self, default: Reply | Responder | None = None, *,
        lifetime: float = DEFAULT_LIFETIME_SECONDS,
    ) -> None:
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._default: Reply | Responder = default if default is not None else text("ok")
        self.requests: list[ReceivedRequest] = []
        self._arrived = threading.Condition(self._lock)
        self.stopping = threading.Event()
        self._released = threading.Event()
        self.stalled = threading.Semaphore(0)
        """Released once each time a reply starts its stall (tests wait on it)."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name="fake-anthropic", daemon=True,
        )
        self._thread.start()
        self._watchdog = threading.Timer(lifetime, self.close)
        self._watchdog.daemon = True
        self._watchdog.start()

    # -- set-up ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The ephemeral port the fake listens on."""
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """The value for ANTHROPIC_BASE_URL."""
        return f"http://127.0.0.1:{self.port}"

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next model calls, in order (then the default answers)."""
        with self._lock:
            self._script.extend(replies)

    def set_default(self, reply: Reply | Responder) -> None:
        """What to answer once the script is used up (a Reply, or a function of the request)."""
        with self._lock:
            self._default = reply

    def release_stalls(self) -> None:
        """End every stall now and any later one at once (they answer as scripted)."""
        self._released.set()

    def wait_for_stall(self, timeout: float = 10.0) -> bool:
        """Block until a reply has begun a stall (each stall is counted once)."""
        return self.stalled.acquire(timeout=timeout)

    def _stall(self, seconds: float) -> None:
        """Hold the calling handler for `seconds`, or until released or closing."""
        self.stalled.release()
        deadline = time.monotonic() + seconds
        while not (self._released.is_set() or self.stopping.is_set()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._released.wait(min(left, 0.05))

    def reset(self) -> None:
        """Forget the script and the recorded requests; answer "ok" by default."""
        with self._lock:
            self._script.clear()
            self._default = text("ok")
            self.requests.clear()

    # -- what it received --------------------------------------------------------------------

    def model_calls(self) -> list[ReceivedRequest]:
        """The Messages API calls received so far, in order."""
        with self._lock:
            return [request for request in self.requests if request.is_model_call]

    def wait_for_model_calls(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        """Block until at least `count` model calls have arrived (or `timeout` passed)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while sum(r.is_model_call for r in self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._arrived.wait(left)
        return self.model_calls()

    # -- serving (on the server's handler threads) --------------------------------------------

    def _receive(self, request: ReceivedRequest) -> Reply | None:
        """Record a request and choose its reply (None for requests that are not model calls)."""
        with self._arrived:
            self.requests.append(request)
            self._arrived.notify_all()
            if not request.is_model_call:
                return None
            if self._script:
                return self._script.popleft()
            default = self._default
        return default if isinstance(default, Reply) else default(request)

    def close(self) -> None:
        """Stop serving and end slow streams; idempotent, safe from any thread."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        self._watchdog.cancel()
        self._server.shutdown()
        self._server.server_close()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)

    def __enter__(self) -> FakeAnthropic:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _chunks(value: str, size: int) -> list[str]:
    size = max(1, size)
    return [value[i:i + size] for i in range(0, len(value), size)] or [""]


class _BrokenStream(Exception):
    """The script asked for the connection to be dropped mid-stream."""


class _Handler(BaseHTTPRequestHandler):
    """Serves one connection of the fake API. Runs on a server handler thread."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-anthropic/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Stay quiet: tests read the recorded requests instead."""

    @property
    def fake(self) -> FakeAnthropic:
        """The FakeAnthropic this handler serves."""
        return self.server.fake  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        """Anything but a model call: recorded, answered with an empty JSON object."""
        self.fake._receive(ReceivedRequest("GET", self.path, dict(self.headers), None))
        self._json(200, {})

    def do_HEAD(self) -> None:
        """A reachability probe: recorded, answered 200 with no body."""
        self.fake._receive(ReceivedRequest("HEAD", self.path, dict(self.headers), None))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        """A model call (or another POST, answered with `{}`)."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        request = ReceivedRequest("POST", self.path, dict(self.headers), body)
        reply = self.fake._receive(request)
        if reply is None:
            self._json(200, {})
            return
        if reply.stall and reply.stall_after is None:
            self.fake._stall(reply.stall)
        if reply.status >= 400:
            self._json(reply.status, {
                "type": "error",
                "error": {"type": ERROR_TYPES.get(reply.status, "api_error"),
                          "message": reply.error_message},
            })
            return
        model = body.get("model", "claude-fake") if isinstance(body, dict) else "claude-fake"
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        try:
            if request.streaming:
                self._stream(reply, message_id, model)
            else:
                self._json(200, self._whole_message(reply, message_id, model))
        except (_BrokenStream, BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- answers ------------------------------------------------------------------------------

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:24]}")
        self.end_headers()
        self.wfile.write(data)

    @staticmethod
    def _usage(reply: Reply, output_tokens: int) -> dict[str, Any]:
        return {"input_tokens": reply.input_tokens, "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}

    def _whole_message(self, reply: Reply, message_id: str, model: str) -> dict[str, Any]:
        return {
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [block.as_content() for block in reply.blocks],
            "stop_reason": reply.stop_reason, "stop_sequence": None,
            "usage": self._usage(reply, reply.output_tokens),
        }

    def _stream(self, reply: Reply, message_id: str, model: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("request-id", f"req_{uuid.uuid4().hex[:24]}")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._send("message_start", {"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": self._usage(reply, 1),
        }})
        deltas = 0
        for index, block in enumerate(reply.blocks):
            if block.type == "text":
                start: dict[str, Any] = {"type": "text", "text": ""}
                pieces = [{"type": "text_delta", "text": piece}
                          for piece in _chunks(block.text, reply.chunk_chars)]
            else:
                start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
                encoded = json.dumps(block.input, ensure_ascii=False)
                pieces = [{"type": "input_json_delta", "partial_json": piece}
                          for piece in _chunks(encoded, reply.chunk_chars)]
            self._send("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": start})
            for piece in pieces:
                if reply.break_after is not None and deltas >= reply.break_after:
                    raise _BrokenStream()
                if reply.stall and reply.stall_after == deltas:
                    self.fake._stall(reply.stall)
                if reply.delay and self.fake.stopping.wait(reply.delay):
                    raise _BrokenStream()
                self._send("content_block_delta", {"type": "content_block_delta",
                                                   "index": index, "delta": piece})
                deltas += 1
            self._send("content_block_stop", {"type": "content_block_stop", "index": index})
        self._send("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": reply.output_tokens},
        })
        self._send("message_stop", {"type": "message_stop"})

    def _send(self, event: str, data: dict[str, Any]) -> None:
        self.wfile.write(_sse(event, data))
        self.wfile.flush()
