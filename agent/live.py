"""A live agent process: one long-lived agent that takes many turns as stream-json lines on
stdin and speaks the control protocol (initialize, interrupt, can_use_tool).

`LiveAgent.start` spawns it the way the runner spawns a turn (its own process group, under
the per-run reaper on Linux, watched by the orphan guard) and waits for the answer to
`initialize`. `run_turn` BLOCKS its thread (a run-pool worker) for one turn: it writes the
user line (carrying the caller's id for the turn), feeds what the agent prints to the
dialect's stream-json reader until the `result` line, and returns a `RunOutcome` whose
`cost_usd` is this turn's share of the process's cumulative `total_cost_usd` (and
`model_usage` its share of the cumulative `modelUsage`). A cancel or
the turn's deadline sends the control `interrupt` (never SIGINT, which ends the process);
if no result follows within the kill grace the process is killed. A process that dies
mid-turn gives an `interrupted` outcome, and the process is dead for the next turn.
`close` ends it with stdin EOF (the agent finishes writing its transcript), then SIGTERM and
SIGKILL after a grace. One reader thread per process reads stdout and answers nothing
itself: control responses resolve our requests, the agent's own requests (`can_use_tool`)
go to the running turn. It knows no session and records nothing: the caller does.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from ..events import ModelUsage
from .cancel import CancelSwitch
from .control import CONTROL_PREFIX, PausedWaits, permission_answer, refusal, user_line
from .dialect import AgentDialect, FinishedTurn
from .environment import INHERITED_ENVIRONMENT, agent_environment
from .model_usage import merged_usage, usage_since
from .output_readers import LineSplitter
from .process_tree import ProcessTree, spawn
from .run_types import (
    AgentResult,
    AgentUpdate,
    Classification,
    RunOutcome,
    RunSpec,
    TextDelta,
    TextReset,
)
from .runner import ORPHAN_GUARD, human_duration, outcome_of

logger = logging.getLogger(__name__)

INITIALIZE_TIMEOUT = 30.0
"""How long a new process may take to answer `initialize` (claude: ~0.4 s)."""

POLL_SECONDS = 0.05
"""How often a turn looks at a plain threading.Event cancel switch."""

STDERR_TAIL_BYTES = 8 * 1024

PermissionHandler = Callable[[dict[str, Any]], None]
"""Receives the agent's `can_use_tool` request (its `request_id` and `request`) on the
turn's thread; the decision is given later with `LiveAgent.answer_permission`."""


class LiveStartError(Exception):
    """The live process could not be started or did not answer `initialize`."""


_WAKE = object()
_END = object()


class LiveAgent:
    """One long-lived agent process. `run_turn` is called by one thread at a time."""

    def __init__(self, argv: tuple[str, ...], dialect: AgentDialect, *,
                 environment: Mapping[str, str] | None = None,
                 env_extras: Mapping[str, str] | None = None, cwd: str | None = None,
                 kill_grace: float = 2.0, timeout: float = 300.0) -> None:
        self.argv = argv
        self.dialect = dialect
        self.kill_grace = kill_grace
        self._base_environment = environment
        self._env_extras = dict(env_extras or {})
        self._cwd = cwd
        self._timeout = timeout
        self._lines: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._requests = 0
        self._stderr_tail: collections.deque[bytes] = collections.deque()
        self._stderr_size = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._tree: ProcessTree | None = None
        self.group: int | None = None
        self.total_cost_usd = 0.0
        self.total_model_usage: tuple[ModelUsage, ...] = ()
        """The process's cumulative `modelUsage` after its last result (a new process: none)."""
        self.turns = 0
        self.ended = threading.Event()
        self.exit_code: int | None = None
        self.started_at = 0.0
        self.last_used = 0.0
        self._turn_ids: set[str] = set()
        self.waits = PausedWaits()  # tool requests put to the caller, over the process
        self.last_turn_times: tuple[float, float] = (0.0, 0.0)
        """perf_counter() when the last turn's user line was written and its result read:
        the agent's own share of the turn (benchmarks subtract it from the caller's time)."""

    # -- life -------------------------------------------------------------------------------

    def start(self, timeout: float = INITIALIZE_TIMEOUT) -> None:
        """Spawn the process and wait for its `initialize` answer; LiveStartError if it
        cannot be started or does not answer (the process is then stopped)."""
        defaults = self.dialect.environment_defaults(self._timeout)
        if self._base_environment is None and not self._env_extras:
            _, spawned = INHERITED_ENVIRONMENT.get(defaults)
        else:
            spawned = agent_environment(self._base_environment, defaults, self._env_extras)
        try:
            self._process, self.group = spawn(self.argv, spawned, self._cwd)
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            raise LiveStartError(f"cannot start the agent: {type(error).__name__}: "
                                 f"{error}") from None
        ORPHAN_GUARD.watch(self.group)
        self._tree = ProcessTree(self._process, self.group)
        self.started_at = self.last_used = time.monotonic()
        threading.Thread(target=self._read_stdout, name=f"chatledger-live-{self.group}",
                         daemon=True).start()
        threading.Thread(target=self._read_stderr, name=f"chatledger-live-err-{self.group}",
                         daemon=True).start()
        answer = self.control({"subtype": "initialize", "hooks": None}, timeout)
        if answer is None or answer.get("subtype") != "success":
            said = "no answer" if answer is None else json.dumps(answer)[:300]
            self.close()
            detail = f"; stderr: {self.stderr_tail()}" if self.stderr_tail() else ""
            raise LiveStartError(f"the agent did not accept initialize ({said}){detail}")

    @property
    def pid(self) -> int | None:
        """The agent's process (group) id."""
        return self.group

    @property
    def alive(self) -> bool:
        """Whether the process still runs and can take a turn."""
        return not self.ended.is_set() and self._tree is not None \
            and not self._tree.has_exited()

    def close(self, grace: float | None = None) -> int | None:
        """End the process: stdin EOF, then SIGTERM and SIGKILL a grace apart; its exit code
        (None if it would not die). Safe to call more than once."""
        if self._process is None or self._tree is None:
            return None
        grace = self.kill_grace if grace is None else grace
        with contextlib.suppress(OSError, ValueError):
            if self._process.stdin is not None:
                self._process.stdin.close()
        code = self._tree.reap(grace)
        if code is None:
            self._tree.terminate()
            code = self._tree.reap(grace)
        if code is None:
            self._tree.kill()
            code = self._tree.reap(5.0)
        if self.group is not None and self.exit_code is None:
            ORPHAN_GUARD.release(self.group)
        self.exit_code = code
        self.ended.set()
        return code

    def kill(self) -> int | None:
        """Kill the whole tree at once; its exit code."""
        if self._tree is not None:
            self._tree.kill()
        return self.close(grace=1.0)

    def stderr_tail(self) -> str:
        """The last few KiB the agent wrote on stderr."""
        return b"".join(self._stderr_tail).decode("utf-8", errors="replace").strip()

    # -- control protocol -------------------------------------------------------------------

    def _write(self, message: Mapping[str, Any]) -> None:
        """One line on the agent's stdin; OSError (BrokenPipeError) if it is gone."""
        data = json.dumps(message, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"
        assert self._process is not None and self._process.stdin is not None
        with self._lock:
            self._process.stdin.write(data)
            self._process.stdin.flush()

    def send_control(self, request: Mapping[str, Any]) -> tuple[str, threading.Event,
                                                                   list[dict[str, Any]]]:
        """Send a control request without waiting: (its id, set when answered, the answer)."""
        with self._lock:
            self._requests += 1
            request_id = f"req_{self._requests}_{uuid.uuid4().hex[:8]}"
            answered, box = threading.Event(), list[dict[str, Any]]()
            self._pending[request_id] = (answered, box)
        try:
            self._write({"type": "control_request", "request_id": request_id,
                         "request": dict(request)})
        except (OSError, ValueError):
            answered.set()
        return request_id, answered, box

    def control(self, request: Mapping[str, Any], timeout: float) -> dict[str, Any] | None:
        """Send a control request and wait for its answer (None: no answer in time)."""
        _, answered, box = self.send_control(request)
        if not answered.wait(timeout):
            return None
        return box[0] if box else None

    def answer_permission(self, request_id: str, allow: bool, *, message: str | None = None,
                          updated_input: Mapping[str, Any] | None = None) -> bool:
        """Answer the agent's `can_use_tool` request; whether the answer could be written."""
        self.waits.answered(request_id)
        try:
            self._write(permission_answer(request_id, allow, message=message,
                                          updated_input=updated_input))
        except (OSError, ValueError):
            return False
        return True

    # -- reader threads ---------------------------------------------------------------------

    def _read_stdout(self) -> None:
        """Split stdout into lines: control lines are handled here, the rest queued."""
        assert self._process is not None and self._process.stdout is not None
        descriptor = self._process.stdout.fileno()
        splitter = LineSplitter()
        try:
            while True:
                try:
                    chunk = os.read(descriptor, 1 << 16)
                except OSError:
                    break
                if not chunk:
                    break
                for line in splitter.feed(chunk):
                    if line.startswith(CONTROL_PREFIX):
                        self._on_control_line(line)
                    elif line.strip():
                        self._lines.put(line)
        finally:
            self.ended.set()
            with self._lock:
                pending = list(self._pending.values())
                self._pending.clear()
            for answered, _ in pending:
                answered.set()
            self._lines.put(_END)

    def _on_control_line(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if message.get("type") == "control_response":
            response = message.get("response")
            if not isinstance(response, dict):
                return
            with self._lock:
                entry = self._pending.pop(str(response.get("request_id")), None)
            if entry is not None:
                entry[1].append(response)
                entry[0].set()
        elif message.get("type") == "control_request":
            self._lines.put(message)  # the running turn decides (can_use_tool)

    def _read_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        descriptor = self._process.stderr.fileno()
        while True:
            try:
                chunk = os.read(descriptor, 1 << 14)
            except OSError:
                return
            if not chunk:
                return
            self._stderr_tail.append(chunk)
            self._stderr_size += len(chunk)
            while self._stderr_size > STDERR_TAIL_BYTES and len(self._stderr_tail) > 1:
                self._stderr_size -= len(self._stderr_tail.popleft())

    # -- turns ------------------------------------------------------------------------------

    def run_turn(self, spec: RunSpec, *, turn_id: str,
                 on_update: Callable[[AgentUpdate], None] | None = None,
                 on_permission: PermissionHandler | None = None) -> RunOutcome:
        """Run one turn (`spec.prompt` as the user line, `turn_id` as its uuid) and return
        how it ended. BLOCKING. Never raises for what the agent does. claude silently
        ignores a user line whose uuid it has seen, so a repeated `turn_id` is replaced."""
        if turn_id in self._turn_ids:
            logger.warning("turn id %s was already used in this process; a fresh one is sent",
                           turn_id)
            turn_id = str(uuid.uuid4())
        self._turn_ids.add(turn_id)
        return _LiveTurn(self, spec, turn_id, on_update, on_permission).run()


class _LiveTurn:
    """One turn in a live process, followed on the calling thread."""

    def __init__(self, agent: LiveAgent, spec: RunSpec, turn_id: str,
                 on_update: Callable[[AgentUpdate], None] | None,
                 on_permission: PermissionHandler | None) -> None:
        self.agent = agent
        self.spec = spec
        self.turn_id = turn_id
        self.on_update = on_update
        self.on_permission = on_permission
        self.reader = agent.dialect.output_reader("stream-json")
        self.started = time.monotonic()
        self.deadline = self.started + spec.timeout
        self.paused_before = agent.waits.seconds
        self.stop_reason: str | None = None
        self.interrupt_sent_at: float | None = None
        self.streamed: list[str] = []
        self.output_bytes = 0

    def _emit(self, updates: list[AgentUpdate]) -> None:
        for update in updates:
            if isinstance(update, TextDelta):
                self.streamed.append(update.text)
            elif isinstance(update, TextReset):
                self.streamed = [update.text]
            if self.on_update is not None:
                try:
                    self.on_update(update)
                except Exception:
                    logger.exception("on_update raised; the turn goes on")

    def run(self) -> RunOutcome:
        agent, spec = self.agent, self.spec
        agent.last_used = self.started
        if spec.cancel is not None and spec.cancel.is_set():
            return RunOutcome(ok=False, failure_reason="cancelled",
                              message="Run cancelled before the agent started")
        wake = (lambda: agent._lines.put(_WAKE))  # noqa: E731 - a waker, removed below
        if isinstance(spec.cancel, CancelSwitch):
            spec.cancel.add_waker(wake)
        try:
            return self._follow()
        finally:
            if isinstance(spec.cancel, CancelSwitch):
                spec.cancel.remove_waker(wake)
            agent.last_used = time.monotonic()

    def _follow(self) -> RunOutcome:
        agent = self.agent
        try:
            agent._write(user_line(self.spec.prompt, self.turn_id))
        except (OSError, ValueError) as error:
            agent.kill()
            return self._died(f"the live agent process could not take the turn: {error}")
        agent.turns += 1
        written_at = time.perf_counter()
        agent.last_turn_times = (written_at, written_at)
        while True:
            now = time.monotonic()
            self._check_limits(now)
            if self.interrupt_sent_at is not None and \
                    now >= self.interrupt_sent_at + agent.kill_grace:
                agent.kill()
                return self._stopped()
            wait_until = self._deadline(now) if self.stop_reason is None else \
                (self.interrupt_sent_at or now) + agent.kill_grace
            if self.spec.cancel is not None and not isinstance(self.spec.cancel, CancelSwitch):
                wait_until = min(wait_until, now + POLL_SECONDS)
            try:
                item = agent._lines.get(timeout=max(0.0, wait_until - now))
            except queue.Empty:
                continue
            if item is _WAKE:
                continue
            if item is _END:
                agent.close(grace=agent.kill_grace)
                if self.stop_reason is not None:
                    return self._stopped()
                return self._died("the live agent process ended before the turn's result")
            if isinstance(item, dict):
                self._on_request(item)
                continue
            self.output_bytes += len(item)
            if self.output_bytes > self.spec.max_output_bytes:
                self.stop_reason = "output_too_large"
                agent.kill()
                return self._stopped()
            updates = self.reader.feed(item + b"\n")
            self._emit(updates)
            if any(isinstance(update, AgentResult) for update in updates):
                agent.last_turn_times = (written_at, time.perf_counter())
                return self._finished()

    def _deadline(self, now: float) -> float:
        """The turn's deadline, paused while a tool request waits for the caller."""
        agent = self.agent
        if agent.waits.pending:
            return now + 1.0
        return self.deadline + agent.waits.seconds - self.paused_before

    def _check_limits(self, now: float) -> None:
        if self.stop_reason is not None:
            return
        if self.spec.cancel is not None and self.spec.cancel.is_set():
            self.stop_reason = "cancelled"
        elif now >= self._deadline(now):
            self.stop_reason = "timeout"
        else:
            return
        self.interrupt_sent_at = now
        self.agent.send_control({"subtype": "interrupt"})

    def _on_request(self, message: dict[str, Any]) -> None:
        request = message.get("request")
        request_id = message.get("request_id")
        if not isinstance(request, dict) or not isinstance(request_id, str):
            return
        if request.get("subtype") == "can_use_tool" and self.on_permission is not None:
            self.agent.waits.asked(request_id)
            try:
                self.on_permission(message)
            except Exception:
                logger.exception("the permission handler raised; the tool is denied")
                self.agent.answer_permission(request_id, False, message="chatledger failed")
            return
        # A request we do not serve: refuse it, so the agent does not wait for ever.
        with contextlib.suppress(OSError, ValueError):
            self.agent._write(refusal(request_id, request.get("subtype")))

    def _parsed_outcome(self, verdict: Classification | None) -> RunOutcome:
        agent = self.agent
        self._emit(self.reader.end())
        parsed = self.reader.result()
        stderr_tail = agent.stderr_tail() if agent.ended.is_set() else ""
        if verdict is None:
            verdict = agent.dialect.classify(FinishedTurn(
                spec=self.spec, parsed=parsed, exit_code=None, stderr_tail=""))
        total = parsed.cost_usd
        share: float | None = None
        if total is not None:
            share = round(max(0.0, total - agent.total_cost_usd), 10)
            agent.total_cost_usd = total
        # modelUsage is cumulative over the process too: this turn's is the difference.
        model_share = usage_since(parsed.model_usage, agent.total_model_usage)
        agent.total_model_usage = merged_usage(agent.total_model_usage, parsed.model_usage)
        outcome = outcome_of(parsed, verdict, exit_code=agent.exit_code,
                             stderr_tail=stderr_tail, duration=time.monotonic() - self.started,
                             pid=agent.group)
        return _replace(outcome, cost_usd=share, process_cost_usd=total,
                        model_usage=model_share,
                        process_model_usage=agent.total_model_usage if parsed.model_usage
                        else (),
                        partial_text="" if verdict.failure_reason is None
                        else "".join(self.streamed))

    def _finished(self) -> RunOutcome:
        if self.stop_reason is not None:
            return self._stopped()
        return self._parsed_outcome(None)

    def _stopped(self) -> RunOutcome:
        if self.stop_reason == "timeout":
            verdict = Classification(failure_reason="timeout", message=(
                f"Response timeout ({human_duration(self.spec.timeout)})"))
        elif self.stop_reason == "output_too_large":
            verdict = Classification(failure_reason="output_too_large", message=(
                f"the agent printed more than {self.spec.max_output_bytes} bytes and was "
                "stopped"))
        else:
            verdict = Classification(failure_reason="cancelled",
                                     message="Turn interrupted while the agent was running")
        return self._parsed_outcome(verdict)

    def _died(self, message: str) -> RunOutcome:
        tail = self.agent.stderr_tail()
        detail = f"; stderr: {tail}" if tail else ""
        return self._parsed_outcome(Classification(
            failure_reason="interrupted", message=f"{message}{detail}"))


def _replace(outcome: RunOutcome, **changes: Any) -> RunOutcome:
    return msgspec.structs.replace(outcome, **changes)
