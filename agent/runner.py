"""Runs one agent turn as a subprocess: a `RunSpec` in, typed updates out, a `RunOutcome` back.

`run_turn` BLOCKS its calling thread (a run-pool worker, never an actor or an event loop)
until the agent has exited or been stopped. The story of one run: build the environment
(ours, cached, plus the spec's extras and the dialect's defaults), spawn the agent as the
leader of its own process group and tell the orphan guard, then follow it: serve its pipes
(the prompt to stdin as the pipe takes it, stdout chunks to the dialect's reader, a bounded
stderr tail; with stream-json input, `control.ColdControl` writes stdin instead: the prompt
as a user line, then the answers to the agent's tool requests, until the result line), hand each update to `on_update` on this thread, and watch the clock, the cancel
switch and the output cap. On timeout or cancellation the WHOLE process tree is stopped
(SIGINT, SIGTERM after a grace, then SIGKILL; whatever is left in the group once the agent
exits is killed too). Last, the outcome: the runner rules out what it saw itself (a stop, an
agent killed by a signal or that would not die), and the dialect classifies the rest.

It never raises for anything the agent does: every failure is a `RunOutcome` with a reason
from `events.FAILURE_REASONS`. It knows no agent's protocol: the dialect does.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .control import ColdControl, ColdPermissionHandler
from .dialect import AgentDialect, FinishedTurn, OutputReader
from .dialects import CLAUDE
from .environment import INHERITED_ENVIRONMENT, agent_environment
from .orphan_guard import OrphanGuard
from .pipes import Pipes, open_pipes
from .process_tree import ProcessTree, Stopper, signal_name, spawn
from .run_types import (
    DEFAULT_KILL_GRACE,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_STDERR_TAIL_BYTES,
    AgentResult,
    AgentUpdate,
    Classification,
    ParsedResult,
    RunOutcome,
    RunSpec,
)

logger = logging.getLogger(__name__)

UpdateCallback = Callable[[AgentUpdate], None]
"""Receives a run's updates, on the run's thread; what it raises is logged and ignored."""

POLL_SECONDS = 0.05
"""The longest the run loop waits before it looks at the clock, the cancel switch and the
process again, when they cannot wake it (a plain threading.Event as the cancel switch, no
pidfd, or Windows)."""

WOKEN_POLL_SECONDS = 5.0
"""The longest the run loop sleeps when a CancelSwitch and a pidfd wake it (a safety net):
a silent agent then costs one wake-up per five seconds instead of twenty per second."""

EXIT_POLL_SECONDS = POLL_SECONDS / 5
"""How often the run loop looks for the agent's exit once stdout has ended, when nothing
(a Linux pidfd) wakes it at the exit."""

DRAIN_AFTER_EXIT_SECONDS = 1.0
"""How long stdout may stay open after the agent exited (a straggler escaped its group)."""

GIVE_UP_AFTER_KILL_SECONDS = 5.0
"""After SIGKILL, how long to wait for the process before returning without its exit code."""

ORPHAN_GUARD = OrphanGuard()
"""Stops this process's agents if it dies without stopping them (see orphan_guard)."""


def human_duration(seconds: float) -> str:
    """A duration as people say it: '5 minutes', '1 hour', '90 seconds', '1.5 seconds'."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and float(seconds) % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"


def run_turn(
    spec: RunSpec, dialect: AgentDialect = CLAUDE, on_update: UpdateCallback | None = None,
    on_permission: ColdPermissionHandler | None = None, turn_id: str | None = None,
) -> RunOutcome:
    """Run one turn in a fresh agent process and return how it ended. BLOCKING: call it on
    a worker thread. It takes at most about `timeout + 2 * kill_grace` seconds (plus a few
    if the agent will not even die of SIGKILL, plus the time tool requests wait for their
    answers). Raises ValueError only for an output format the dialect cannot read;
    everything the agent does becomes the outcome. With `spec.input_format` "stream-json"
    the agent's `can_use_tool` requests go to `on_permission` (denied when it is None) and
    `turn_id` is the prompt line's uuid."""
    reader = dialect.output_reader(spec.output_format)
    started = time.monotonic()
    if spec.cancel is not None and spec.cancel.is_set():
        return _not_started("cancelled", "Run cancelled before the agent started", started)
    defaults = dialect.environment_defaults(spec.timeout)
    if spec.base_environment is None and not spec.env_extras:
        environment, spawned_environment = INHERITED_ENVIRONMENT.get(defaults)
    else:
        environment = spawned_environment = agent_environment(
            spec.base_environment, defaults, spec.env_extras)
    try:
        process, group = spawn(spec.argv, spawned_environment, spec.cwd)
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        return _start_failure(error, spec, dialect, environment, started)
    ORPHAN_GUARD.watch(group)
    run = _Run(process, group, spec, dialect, reader, on_update, started, on_permission)
    return run.follow_to_the_end(turn_id)


def run_agent(
    argv: Sequence[str],
    prompt: str,
    *,
    output_format: str = "stream-json",
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    on_event: UpdateCallback | None = None,
    cancel: threading.Event | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    stderr_tail_bytes: int = DEFAULT_STDERR_TAIL_BYTES,
    kill_grace: float = DEFAULT_KILL_GRACE,
    dialect: AgentDialect = CLAUDE,
) -> RunOutcome:
    """`run_turn` with the spec's fields as keyword arguments (`env` replaces our
    environment). BLOCKING. Raises ValueError only for bad arguments."""
    spec = RunSpec(argv=tuple(argv), prompt=prompt, output_format=output_format,
                   timeout=timeout, base_environment=env, cwd=cwd, cancel=cancel,
                   max_output_bytes=max_output_bytes, stderr_tail_bytes=stderr_tail_bytes,
                   kill_grace=kill_grace)
    return run_turn(spec, dialect, on_event)


def _not_started(reason: str, message: str, started: float) -> RunOutcome:
    return RunOutcome(ok=False, failure_reason=reason, message=message,
                      duration=time.monotonic() - started)


def _start_failure(
    error: Exception, spec: RunSpec, dialect: AgentDialect, environment: Mapping[str, str],
    started: float,
) -> RunOutcome:
    """The outcome for an agent that could not be started at all."""
    program, cwd = spec.argv[0], spec.cwd
    if cwd is not None and not os.path.isdir(cwd):
        return _not_started(
            "spawn_failed", f"cannot start the agent: its working directory {cwd!r} does not "
            "exist", started)
    if isinstance(error, FileNotFoundError):
        if shutil.which(program, path=environment.get("PATH")) is None:
            return _not_started("not_found", dialect.not_found_message(program), started)
        return _not_started(
            "spawn_failed", f"cannot start the agent {program!r}: {error.strerror or error} "
            "(is the interpreter in its #! line missing?)", started)
    if isinstance(error, PermissionError):
        return _not_started(
            "spawn_failed", f"cannot start the agent {program!r}: permission denied (is it an "
            "executable file?)", started)
    return _not_started(
        "spawn_failed", f"cannot start the agent {program!r}: {type(error).__name__}: {error}",
        started)


class _Run:
    """One started agent process, followed to its end on the calling thread."""

    def __init__(
        self, process: subprocess.Popen[bytes], group: int, spec: RunSpec,
        dialect: AgentDialect, reader: OutputReader, on_update: UpdateCallback | None,
        started: float, on_permission: ColdPermissionHandler | None = None,
    ) -> None:
        self.process = process
        self.group = group
        self.spec = spec
        self.dialect = dialect
        self.reader = reader
        self.on_update = on_update
        self.tree = ProcessTree(process, group)
        self.stopper = Stopper(self.tree, spec.kill_grace)
        self.started = started
        self.deadline = started + spec.timeout
        self.hard_deadline = self.deadline + 2 * spec.kill_grace + GIVE_UP_AFTER_KILL_SECONDS
        self.cancel = spec.cancel
        self.max_output_bytes = spec.max_output_bytes
        self.output_bytes = 0
        self.discarding = False
        self.stop_reason: str | None = None
        self.control: ColdControl | None = None
        prompt: bytes | None = spec.prompt.encode("utf-8", errors="replace")
        if spec.input_format == "stream-json":
            assert process.stdin is not None
            self.control = ColdControl(process.stdin, on_permission, f"agent-{group}")
            prompt = None  # the control side writes stdin
        self.pipes: Pipes = open_pipes(process, prompt, spec.stderr_tail_bytes, spec.cancel)

    def follow_to_the_end(self, turn_id: str | None = None) -> RunOutcome:
        """Follow the process until it ends or is stopped; kill it if anything goes wrong."""
        try:
            self.pipes.start()
            if self.control is not None:
                self.control.start(self.spec.prompt, turn_id)
            self._follow()
            exit_code = self._end_process()
            stderr_tail = self.pipes.stderr_tail()
        except BaseException:
            self.tree.kill()
            self.tree.reap(1.0)
            raise
        finally:
            if self.control is not None:
                self.control.end_input()
            self.pipes.close()
            ORPHAN_GUARD.release(self.group)
        return self._outcome(exit_code, stderr_tail)

    def _emit(self, updates: Sequence[AgentUpdate]) -> None:
        if self.on_update is None:
            return
        for update in updates:
            try:
                self.on_update(update)
            except Exception:
                logger.exception("on_update raised for %s; the run goes on", type(update).__name__)

    def _stop(self, reason: str, now: float) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        # A flood of output gets no polite SIGINT: we would discard the answer anyway.
        self.stopper.start(now, politely=reason != "output_too_large")

    def _check_limits(self, now: float) -> None:
        """Begin stopping the agent if the run was cancelled or its time is up."""
        if self.stop_reason is None:
            if self.cancel is not None and self.cancel.is_set():
                self._stop("cancelled", now)
            elif now >= self._deadline(now):
                self._stop("timeout", now)

    def _deadline(self, now: float) -> float:
        """The run's deadline, paused while a tool request waits for the caller's answer."""
        if self.control is None:
            return self.deadline
        if self.control.waiting:
            return now + POLL_SECONDS * 20
        return self.deadline + self.control.paused_seconds

    def _give_up_at(self) -> float:
        """When to return even though the process has not exited (stuck in the kernel)."""
        killed_at = self.stopper.killed_at
        if killed_at is None:
            if self.control is not None:
                return max(self.hard_deadline, self._deadline(time.monotonic())
                           + 2 * self.spec.kill_grace + GIVE_UP_AFTER_KILL_SECONDS)
            return self.hard_deadline
        return min(self.hard_deadline, killed_at + GIVE_UP_AFTER_KILL_SECONDS)

    def _follow(self) -> None:
        """Serve the pipes until the agent exited and stdout ended, or it is time to give up."""
        exited_at: float | None = None
        last_output_at = self.started
        while True:
            now = time.monotonic()
            self._check_limits(now)
            if self.tree.has_exited():
                if exited_at is None:
                    exited_at = now
                    self.tree.kill_stragglers()
                if self.pipes.end_of_output:
                    return
                next_check_at = max(exited_at, last_output_at) + DRAIN_AFTER_EXIT_SECONDS
                if now >= next_check_at:
                    return  # stdout is held open by something that left the group
            else:
                self.stopper.advance(now)
                next_check_at = (self.stopper.next_step_at() if self.stopper.stopping
                                 else self._deadline(now))
            give_up_at = self._give_up_at()
            if now >= give_up_at:
                return  # not even SIGKILL ended it (a process stuck in the kernel)
            poll = (WOKEN_POLL_SECONDS
                    if self.pipes.cancel_wakes_us and self.pipes.exit_wakes_us
                    else POLL_SECONDS)
            wake_at = min(next_check_at, give_up_at, now + poll)
            if self.pipes.end_of_output and not self.pipes.exit_wakes_us:
                wake_at = min(wake_at, now + EXIT_POLL_SECONDS)
            chunks = self.pipes.wait(max(0.0, wake_at - now))
            if chunks:
                last_output_at = time.monotonic()
            for chunk in chunks:
                self._consume(chunk)

    def _consume(self, chunk: bytes) -> None:
        if self.discarding:
            return
        self.output_bytes += len(chunk)
        if self.output_bytes > self.max_output_bytes:
            self.discarding = True
            self._stop("output_too_large", time.monotonic())
            return
        if self.control is None:
            self._emit(self.reader.feed(chunk))
            return
        chunk = self.control.filter(chunk)
        if chunk:
            updates = self.reader.feed(chunk)
            self._emit(updates)
            if any(isinstance(update, AgentResult) for update in updates):
                self.control.end_input()  # the turn is over: the agent may exit

    def _end_process(self) -> int | None:
        """Kill the tree if the agent still runs; its exit code (None if it would not die)."""
        if not self.tree.has_exited():
            self.tree.kill()
        return self.tree.reap(GIVE_UP_AFTER_KILL_SECONDS)

    def _outcome(self, exit_code: int | None, stderr_bytes: bytes) -> RunOutcome:
        if not self.discarding:
            if self.control is not None:
                self._emit(self.reader.feed(self.control.rest()))
            self._emit(self.reader.end())
        parsed = self.reader.result()
        stderr_tail = stderr_bytes.decode("utf-8", errors="replace").strip()
        verdict = self._runner_verdict(exit_code, stderr_tail) or self.dialect.classify(
            FinishedTurn(spec=self.spec, parsed=parsed, exit_code=exit_code,
                         stderr_tail=stderr_tail))
        return outcome_of(parsed, verdict, exit_code=exit_code, stderr_tail=stderr_tail,
                           duration=time.monotonic() - self.started, pid=self.group)

    def _runner_verdict(self, exit_code: int | None, stderr_tail: str) -> Classification | None:
        """What the runner saw itself (a stop, a killed agent), before any dialect asks."""
        if self.stop_reason == "timeout":
            return Classification(failure_reason="timeout", message=(
                f"Response timeout ({human_duration(self.spec.timeout)})"))
        if self.stop_reason == "cancelled":
            return Classification(failure_reason="cancelled",
                                  message="Run cancelled while the agent was running")
        if self.stop_reason == "output_too_large":
            return Classification(failure_reason="output_too_large", message=(
                f"the agent printed more than {self.max_output_bytes} bytes and was stopped "
                "(raise max_output_bytes if such answers are expected)"))
        if exit_code is None:
            return Classification(failure_reason="interrupted",
                                  message="the agent did not exit, even after SIGKILL")
        if exit_code < 0:
            detail = f": {stderr_tail}" if stderr_tail else ""
            return Classification(failure_reason="interrupted", message=(
                f"the agent was killed by {signal_name(-exit_code)}{detail}"))
        return None


def outcome_of(
    parsed: ParsedResult, verdict: Classification, **fields: Any,
) -> RunOutcome:
    """The outcome: what the output amounted to, plus the verdict."""
    return RunOutcome(
        ok=verdict.failure_reason is None, failure_reason=verdict.failure_reason,
        message=verdict.message, agent_session_lost=verdict.agent_session_lost,
        text=parsed.text, tool_calls=parsed.tool_calls, cost_usd=parsed.cost_usd,
        usage=parsed.usage, agent_session_id=parsed.agent_session_id,
        num_turns=parsed.num_turns, api_error_status=parsed.api_error_status,
        garbage_lines=parsed.garbage_lines, diagnostics=parsed.diagnostics,
        text_blocks=parsed.text_blocks, permission_denials=parsed.permission_denials,
        model_usage=parsed.model_usage, **fields,
    )

