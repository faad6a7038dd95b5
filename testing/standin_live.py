"""The stand-in's live mode (`--input-format stream-json`): many turns in one process, and
claude's control protocol, so warm sessions, interrupts and tool approvals run offline.

Lines on stdin, one JSON object each: `control_request` (`initialize`, `interrupt`, any other
subtype answered `success`), `control_response` (answers to our `can_use_tool` requests) and
`user` messages (one turn each, run one after another in arrival order). Each turn prints
claude's `system/init` ... `result`; `total_cost_usd` and `modelUsage` are cumulative over
the process, as claude's are. `interrupt` ends the running turn with an `error_during_execution` result and
the process lives on; SIGINT ends the process after that result (as claude does); stdin EOF
ends it once the running turn is done. With `--permission-prompt-tool stdio` a tool call
outside the allow-list is put to the caller as a `can_use_tool` request. With
$CHATLEDGER_STANDIN_TRANSCRIPTS set it keeps a transcript file as claude does (a user entry
whose uuid is the user line's, then the answer, under HOME/.claude/projects) and a
`--resume` remembers what that file holds; a message with `[[unflushed]]` is answered but
left out of the file, as claude loses a turn killed in its flush window. A reader thread
takes stdin; turns run on the main thread. It never talks to a network.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import sys
import threading
import uuid
from types import FrameType
from typing import Any

from .standin import (
    Options,
    SessionStore,
    _exit_on_sigterm,
    choose_behaviour,
    current_message,
    record_prompt,
    without_markers,
)
from .standin_agent import HANDLERS, SLEEP_STEP, Agent, Interrupted, behave_prompt
from .standin_mirror import transcript_path

UNFLUSHED = "[[unflushed]]"
"""In a message: answer it, but leave the turn out of the transcript file."""


def message_text(message: Any) -> str:
    """The text of a user line's message: a string, or its text blocks joined."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(block.get("text", "")) for block in content
                         if isinstance(block, dict) and block.get("type") == "text")
    return ""


class LiveStandin:
    """One live stand-in process: its session, its running turn and its pending requests."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.sessions = SessionStore(os.environ.get("CHATLEDGER_STANDIN_SESSIONS"))
        self.turns: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.current: Agent | None = None
        self.answers: dict[str, dict[str, Any]] = {}
        self.answered = threading.Condition(self.lock)
        self.total_cost = 0.0
        self.total_model_usage: dict[str, float] = {}
        self.signalled = False
        self.session_id = options.session_id or options.resume or str(uuid.uuid4())
        self.earlier: list[dict[str, str]] = []
        self.keeps_transcript = bool(os.environ.get("CHATLEDGER_STANDIN_TRANSCRIPTS"))
        self.last_uuid: str | None = None

    # -- the transcript file (with $CHATLEDGER_STANDIN_TRANSCRIPTS) --------------------------

    def transcript(self) -> str:
        """Where claude would keep this session's transcript."""
        return transcript_path(os.environ, os.getcwd(), self.session_id)

    def read_transcript(self, session_id: str) -> list[dict[str, str]] | None:
        """The turns a transcript file holds (prompts and answers); None if there is none."""
        path = transcript_path(os.environ, os.getcwd(), session_id)
        try:
            with open(path, encoding="utf-8") as handle:
                entries = [json.loads(line) for line in handle if line.strip()]
        except FileNotFoundError:
            return None
        turns: list[dict[str, str]] = []
        for entry in entries:
            message = entry.get("message") or {}
            if entry.get("type") == "user":
                turns.append({"prompt": message_text(message), "answer": ""})
            elif entry.get("type") == "assistant" and turns:
                turns[-1]["answer"] += message_text(message)
            self.last_uuid = entry.get("uuid") or self.last_uuid
        return turns

    def write_transcript(self, line: dict[str, Any], prompt: str, answer: str) -> None:
        """Append one turn's user and assistant entries to the transcript file."""
        path = self.transcript()
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        user_uuid = str(line.get("uuid") or uuid.uuid4())
        answer_uuid = str(uuid.uuid4())
        entries = [
            {"type": "user", "uuid": user_uuid, "parentUuid": self.last_uuid,
             "sessionId": self.session_id, "message": {"role": "user", "content": prompt}},
            {"type": "assistant", "uuid": answer_uuid, "parentUuid": user_uuid,
             "sessionId": self.session_id, "message": {
                 "role": "assistant", "content": [{"type": "text", "text": answer}]}},
        ]
        self.last_uuid = answer_uuid
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(entry) + "\n" for entry in entries))

    def write(self, message: dict[str, Any]) -> None:
        """One line on stdout (through an Agent, which holds the write lock)."""
        Agent(self.options, "", self.session_id).line(message)

    # -- the reader thread ------------------------------------------------------------------

    def read_stdin(self) -> None:
        """Dispatch stdin lines until EOF (then a None tells the turn loop to end)."""
        for raw in sys.stdin.buffer:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(line, dict):
                continue
            kind = line.get("type")
            if kind == "user":
                self.turns.put(line)
            elif kind == "control_request":
                self.on_control_request(line)
            elif kind == "control_response":
                response = line.get("response") or {}
                with self.answered:
                    self.answers[str(response.get("request_id"))] = response
                    self.answered.notify_all()
        self.turns.put(None)

    def on_control_request(self, line: dict[str, Any]) -> None:
        """Answer one of the caller's control requests."""
        request = line.get("request") or {}
        subtype = request.get("subtype")
        answer: dict[str, Any] = {}
        if subtype == "initialize":
            answer = {"commands": [], "output_style": "default", "models": [],
                      "account": {}, "pid": os.getpid()}
        elif subtype == "interrupt":
            with self.lock:
                if self.current is not None:
                    self.current.interrupted = True
        self.write({"type": "control_response", "response": {
            "subtype": "success", "request_id": line.get("request_id"), "response": answer}})

    # -- permissions ------------------------------------------------------------------------

    def ask_permission(self, agent: Agent, tool: str, tool_input: dict[str, Any],
                       tool_use_id: str) -> dict[str, Any] | None:
        """Put a tool call to the caller; its decision, or None if interrupted meanwhile."""
        request_id = str(uuid.uuid4())
        self.write({"type": "control_request", "request_id": request_id, "request": {
            "subtype": "can_use_tool", "tool_name": tool, "display_name": tool,
            "input": tool_input, "permission_suggestions": [], "tool_use_id": tool_use_id}})
        with self.answered:
            while request_id not in self.answers:
                if agent.interrupted:
                    return None
                self.answered.wait(SLEEP_STEP)
            response = self.answers.pop(request_id)
        decision = response.get("response")
        if response.get("subtype") != "success" or not isinstance(decision, dict):
            return {"behavior": "deny", "message": str(response.get("error") or "refused")}
        return decision

    # -- turns ------------------------------------------------------------------------------

    def on_sigint(self, signal_number: int, frame: FrameType | None) -> None:
        """SIGINT: interrupt the running turn, then end the process (as claude does)."""
        self.signalled = True
        with self.lock:
            if self.current is not None:
                self.current.interrupted = True

    def run_turn(self, line: dict[str, Any]) -> int:
        """One user line's turn: init ... result; the exit code if the process must end."""
        prompt = message_text(line.get("message"))
        unflushed = UNFLUSHED in prompt
        prompt = prompt.replace(UNFLUSHED, "")
        record_prompt(prompt)
        message = current_message(prompt)
        behaviour, argument = choose_behaviour(self.options, message)
        agent = Agent(self.options, prompt, self.session_id)
        agent.cost_before = self.total_cost
        agent.model_usage_before = self.total_model_usage
        if self.options.permission_prompt_tool == "stdio":
            agent.ask_permission = lambda tool, given, use_id: self.ask_permission(
                agent, tool, given, use_id)
        with self.lock:
            self.current = agent
        cleaned = without_markers(message)
        code = 0
        try:
            if behaviour != "fail":
                agent.init()
            if behaviour == "prompt":
                code = behave_prompt(agent, cleaned, argument, self.earlier)
            else:
                code = HANDLERS[behaviour](agent, cleaned, argument)
        except Interrupted:
            agent.interrupted_result()
        finally:
            with self.lock:
                self.current = None
        if agent.result_cost is not None:
            self.total_cost = agent.result_cost
        if agent.result_model_usage is not None:
            self.total_model_usage = agent.result_model_usage
        if code == 0 and not agent.interrupted:
            self.sessions.remember(self.session_id, prompt, agent.last_text)
            self.earlier.append({"prompt": prompt, "answer": agent.last_text})
            if self.keeps_transcript and not unflushed:
                self.write_transcript(line, prompt, agent.last_text)
        return code

    def run(self) -> int:
        """Serve turns until stdin ends, a behaviour fails, or SIGINT; the exit code."""
        remembered = (self.read_transcript(self.options.resume)
                      if self.keeps_transcript and self.options.resume is not None else None)
        if self.options.resume is not None:
            if not self.sessions.known(self.options.resume) or \
                    (self.keeps_transcript and remembered is None):
                agent = Agent(self.options, "", self.options.resume)
                agent.result("", is_error=True, subtype="error_during_execution", errors=[
                    f"No conversation found with session ID: {self.options.resume}"])
                return 1
            self.earlier = (remembered if remembered is not None
                            else self.sessions.transcript(self.options.resume))
            if self.options.fork_session:
                self.session_id = str(uuid.uuid4())
        signal.signal(signal.SIGINT, self.on_sigint)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        threading.Thread(target=self.read_stdin, name="standin-stdin", daemon=True).start()
        while True:
            line = self.turns.get()
            if line is None:
                return 0
            code = self.run_turn(line)
            if code != 0 or self.signalled:
                return code


def run_live(options: Options) -> int:
    """The stand-in's life in live mode; it ends the process itself (the stdin reader thread
    may still hold stdin, which would make the interpreter's shutdown abort)."""
    code = LiveStandin(options).run()
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
