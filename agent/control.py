"""The control protocol's lines, and the control side of a cold run that keeps stdin open.

An agent started with `--input-format stream-json` takes its prompt as a `user` line and
speaks the control protocol on the same pipes: with `--permission-prompt-tool stdio` it asks
`can_use_tool` on stdout and waits for our `control_response` on stdin. The live process
(`live.py`) and a cold run (`ColdControl`, used by the runner) build those lines here. A
`ColdControl` owns the run's stdin: one writer thread writes the prompt line and later
answers in order, so no write ever blocks the run loop, and stdin is closed (EOF: the agent
exits) once the turn's result has been read. It takes the control lines out of stdout
before the dialect's reader sees them and hands `can_use_tool` requests to the caller's
handler, who answers later (any thread) with `answer_permission`; the time a request waits
is added to the run's deadline. Nothing here knows a session or records anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import IO, Any, Protocol

from .output_readers import LineSplitter

logger = logging.getLogger(__name__)

CONTROL_PREFIX = b'{"type":"control_'
"""How the agent starts its control lines (its JSON puts `type` first)."""


class PermissionAnswerer(Protocol):
    """Whoever can give an agent the answer to its `can_use_tool` request."""

    def answer_permission(self, request_id: str, allow: bool, *, message: str | None = None,
                          updated_input: Mapping[str, Any] | None = None) -> bool:
        """Answer the request; whether the answer could be written."""
        ...


ColdPermissionHandler = Callable[[dict[str, Any], PermissionAnswerer], None]
"""Receives a cold run's `can_use_tool` request (its `request_id` and `request`) on the
run's thread, with whom to answer it later."""


def encode_line(message: Mapping[str, Any]) -> bytes:
    """One JSON line for the agent's stdin."""
    return json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"


def user_line(prompt: str, turn_id: str) -> dict[str, Any]:
    """The `user` line that carries a turn's prompt (`turn_id` becomes its uuid)."""
    return {"type": "user", "message": {"role": "user", "content": prompt},
            "parent_tool_use_id": None, "session_id": "", "uuid": turn_id}


def permission_answer(request_id: str, allow: bool, *, message: str | None = None,
                      updated_input: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Our `control_response` to a `can_use_tool` request."""
    decision: dict[str, Any] = {"behavior": "allow" if allow else "deny"}
    if allow:
        decision["updatedInput"] = dict(updated_input or {})
    else:
        decision["message"] = message or "denied"
    return {"type": "control_response", "response": {
        "subtype": "success", "request_id": request_id, "response": decision}}


def refusal(request_id: str, subtype: object) -> dict[str, Any]:
    """Our `control_response` to a request we do not serve (so the agent does not wait)."""
    return {"type": "control_response", "response": {
        "subtype": "error", "request_id": request_id,
        "error": f"chatledger does not serve {subtype!r} here"}}


class PausedWaits:
    """The tool requests put to the caller, and the time spent waiting for their answers (by
    which a run's deadline moves back). Any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._asked: dict[str, float] = {}
        self.seconds = 0.0
        """Time spent waiting for answers, over the life of the owner."""

    def asked(self, request_id: str) -> None:
        """A request was put to the caller: its wait starts now."""
        with self._lock:
            self._asked[request_id] = time.monotonic()

    def answered(self, request_id: str) -> None:
        """A request was answered: its wait is added to `seconds`."""
        with self._lock:
            asked_at = self._asked.pop(request_id, None)
            if asked_at is not None:
                self.seconds += time.monotonic() - asked_at

    @property
    def pending(self) -> bool:
        """Whether a request still waits for its answer."""
        return bool(self._asked)


class ColdControl:
    """The control side of one cold run with stream-json input; see the module docstring."""

    def __init__(self, stdin: IO[bytes], on_permission: ColdPermissionHandler | None,
                 name: str) -> None:
        self.on_permission = on_permission
        self._stdin = stdin
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._splitter = LineSplitter()
        self._lock = threading.Lock()
        self.waits = PausedWaits()
        self._closed = False
        self._writer = threading.Thread(target=self._write_all, name=f"{name}-stdin",
                                        daemon=True)

    def start(self, prompt: str, turn_id: str | None = None) -> None:
        """Start the writer with the prompt's user line first."""
        self._send(user_line(prompt, turn_id or str(uuid.uuid4())))
        self._writer.start()

    @property
    def waiting(self) -> bool:
        """Whether a tool request waits for the caller's answer."""
        return self.waits.pending

    @property
    def paused_seconds(self) -> float:
        """Time spent waiting for the caller's answers, over the run."""
        return self.waits.seconds

    def filter(self, chunk: bytes) -> bytes:
        """The part of a stdout chunk for the dialect's reader (whole lines); the control
        lines in it are served here. The run's thread."""
        kept: list[bytes] = []
        for line in self._splitter.feed(chunk):
            if line.startswith(CONTROL_PREFIX):
                self._on_control_line(line)
            else:
                kept.append(line + b"\n")
        return b"".join(kept)

    def rest(self) -> bytes:
        """What stdout left after its last newline (once it has ended)."""
        return self._splitter.rest()

    def end_input(self) -> None:
        """Close stdin once what is queued is written (the result was read; any thread)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._outbox.put(None)

    def answer_permission(self, request_id: str, allow: bool, *, message: str | None = None,
                          updated_input: Mapping[str, Any] | None = None) -> bool:
        """Answer the agent's `can_use_tool` request (any thread); False once stdin is closed."""
        self.waits.answered(request_id)
        return self._send(permission_answer(request_id, allow, message=message,
                                            updated_input=updated_input))

    def _send(self, message: Mapping[str, Any]) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._outbox.put(encode_line(message))
        return True

    def _on_control_line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("type") != "control_request":
            return  # a response to a request of ours: a cold run sends none
        request = message.get("request")
        request_id = message.get("request_id")
        if not isinstance(request, dict) or not isinstance(request_id, str):
            return
        if request.get("subtype") != "can_use_tool":
            self._send(refusal(request_id, request.get("subtype")))
            return
        if self.on_permission is None:
            self._send(permission_answer(
                request_id, False, message="nobody is there to approve this tool call"))
            return
        self.waits.asked(request_id)
        try:
            self.on_permission(message, self)
        except Exception:
            logger.exception("the permission handler raised; the tool is denied")
            self.answer_permission(request_id, False, message="chatledger failed")

    def _write_all(self) -> None:
        """Write queued lines in order until told to close; then close stdin. Own thread."""
        broken = False
        while True:
            data = self._outbox.get()
            if data is None:
                break
            if broken:
                continue
            try:
                view = memoryview(data)
                while view:  # an unbuffered pipe may take a large line in parts
                    view = view[self._stdin.write(view) or len(view):]
            except (OSError, ValueError):  # the agent is gone: drop what is left
                broken = True
        with contextlib.suppress(OSError, ValueError):
            self._stdin.close()
