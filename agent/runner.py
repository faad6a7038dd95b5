"""Runs one agent turn as a subprocess: prompt on stdin, stdout streamed and parsed, bounded.

`run_agent` BLOCKS its calling thread (a run-pool worker, never an actor or an event loop)
until the agent has exited or been stopped. It starts the agent in a process group of its
own, writes the prompt to stdin from a helper thread (a child that never reads stdin cannot
deadlock us), reads stdout in chunks with its own line splitting (lines of many megabytes are
fine), parses stream-json as it arrives and hands each event to `on_event` on the calling
thread. Everything is bounded: total output (`max_output_bytes`), the stderr tail, and time.
On timeout or cancellation the WHOLE process tree is stopped: SIGINT to the group (claude then
prints a parseable interrupted result), SIGTERM after a grace, then SIGKILL; after the agent
exits, whatever is left in its group is killed too. On Windows the group is a
CREATE_NEW_PROCESS_GROUP, interrupted with CTRL_BREAK and killed with `taskkill /T /F`.

It never raises for anything the agent does: every failure is a `RunOutcome` with a reason
from `events.FAILURE_REASONS`. Only this package starts processes.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import msgspec

from ..events import ToolCall
from .argv import OUTPUT_FORMATS
from .stream_json import AgentEvent, StreamJsonParser, TextDelta

logger = logging.getLogger(__name__)

NOT_FOUND_MESSAGE = (
    "Claude CLI not found in PATH. Install with: npm install -g @anthropic-ai/claude-code"
)
"""The old manager's message for a missing agent binary; a not_found outcome starts with it."""

DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024
DEFAULT_STDERR_TAIL_BYTES = 8 * 1024
READ_CHUNK_BYTES = 256 * 1024
PIPE_BYTES = 1024 * 1024
"""The stdout pipe buffer asked for on Linux (capped by /proc/sys/fs/pipe-max-size)."""
QUEUED_CHUNKS = 64
"""At most this many unread stdout chunks wait for the parser (backpressure on the agent)."""

POLL_SECONDS = 0.05
"""How often the run loop looks at the clock, the cancel switch and the process."""

DRAIN_AFTER_EXIT_SECONDS = 1.0
"""How long stdout may stay open after the agent exited (a straggler escaped its group)."""

GIVE_UP_AFTER_KILL_SECONDS = 5.0
"""After SIGKILL, how long to wait for the process before returning without its exit code."""

MAX_RETRIES_DEFAULT = "2"
"""`CLAUDE_CODE_MAX_RETRIES` unless the environment sets it: a dead API fails in seconds."""

MAX_API_TIMEOUT_MS = 600_000
"""claude's own default `API_TIMEOUT_MS`; ours is never above it, nor above the run timeout."""


class RunOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """How one agent run ended: its answer and cost, or why it failed (`failure_reason`)."""

    ok: bool
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    exit_code: int | None = None
    duration: float = 0.0
    cost_usd: float | None = None
    usage: dict[str, Any] | None = None
    agent_session_id: str | None = None
    failure_reason: str | None = None
    message: str = ""
    stderr_tail: str = ""
    pid: int | None = None
    num_turns: int | None = None
    api_error_status: int | None = None
    garbage_lines: int = 0
    diagnostics: tuple[str, ...] = ()


def human_duration(seconds: float) -> str:
    """A duration as people say it: '5 minutes', '1 hour', '90 seconds', '1.5 seconds'."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and float(seconds) % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds:g} second{'' if seconds == 1 else 's'}"


def agent_environment(base: Mapping[str, str] | None, timeout: float) -> dict[str, str]:
    """The child's environment: `base` (default: ours) plus bounds on claude's own retries.

    `CLAUDE_CODE_MAX_RETRIES` defaults to 2 and `API_TIMEOUT_MS` to the run timeout (at most
    claude's own 600000); values already set are kept.
    """
    environment = dict(os.environ if base is None else base)
    environment.setdefault("CLAUDE_CODE_MAX_RETRIES", MAX_RETRIES_DEFAULT)
    api_timeout_ms = max(1000, min(MAX_API_TIMEOUT_MS, int(timeout * 1000)))
    environment.setdefault("API_TIMEOUT_MS", str(api_timeout_ms))
    return environment


class _LineSplitter:
    """Splits a byte stream into lines without a length limit, in linear time."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """The complete lines (without their newline) that this chunk finishes."""
        self._buffer += chunk
        lines: list[bytes] = []
        start = 0
        while True:
            newline = self._buffer.find(b"\n", max(start, self._scanned))
            if newline < 0:
                break
            lines.append(bytes(self._buffer[start:newline]))
            start = newline + 1
        if start:
            del self._buffer[:start]
        self._scanned = len(self._buffer)
        return lines

    def rest(self) -> bytes:
        """What is left after the last newline (a final line printed without one)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return rest


class _StreamReader(threading.Thread):
    """Reads a pipe in chunks on its own thread; the pipe is closed by this thread alone.

    stdout chunks go to a bounded queue (None marks the end); stderr keeps only a tail.
    Once `abandon()` is called the reader drains and discards, so the writer never blocks.
    """

    def __init__(self, stream: IO[bytes], name: str, tail_bytes: int | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self._stream = stream
        self._tail_bytes = tail_bytes
        self.tail = bytearray()
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self._abandoned = threading.Event()

    def abandon(self) -> None:
        """Stop handing chunks on: drain and discard what is left. Thread-safe."""
        self._abandoned.set()

    def run(self) -> None:
        try:
            descriptor = self._stream.fileno()
            while True:
                try:
                    chunk = os.read(descriptor, READ_CHUNK_BYTES)
                except OSError:
                    break
                if not chunk:
                    break
                if self._tail_bytes is not None:
                    self.tail += chunk
                    if len(self.tail) > self._tail_bytes:
                        del self.tail[: len(self.tail) - self._tail_bytes]
                else:
                    self._hand_on(chunk)
        finally:
            with contextlib.suppress(OSError):
                self._stream.close()
            if self._tail_bytes is None:
                self._hand_on(None)

    def _hand_on(self, chunk: bytes | None) -> None:
        while not self._abandoned.is_set():
            try:
                self.chunks.put(chunk, timeout=POLL_SECONDS)
                return
            except queue.Full:
                continue


def _write_prompt(stream: IO[bytes], data: bytes) -> None:
    """Write the prompt and close stdin. Runs on its own thread; a closed pipe is fine."""
    view = memoryview(data)
    try:
        while view:  # an unbuffered pipe may take only part of a large prompt per write
            written = stream.write(view)
            if not written:
                break
            view = view[written:]
    except (BrokenPipeError, OSError, ValueError):
        pass
    finally:
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            stream.close()


class _ProcessTree:
    """The agent process and its group: signals, exit detection, the final kill."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.exited = False

    def has_exited(self) -> bool:
        """Whether the leader exited; on POSIX without reaping it, so its pid and process
        group id cannot be reused until we have killed what is left of the group."""
        if not self.exited:
            if sys.platform != "win32" and hasattr(os, "waitid"):
                try:
                    status = os.waitid(os.P_PID, self.process.pid,
                                       os.WEXITED | os.WNOHANG | os.WNOWAIT)
                    self.exited = status is not None
                except ChildProcessError:  # reaped already
                    self.exited = True
            else:
                self.exited = self.process.poll() is not None
        return self.exited

    def interrupt(self) -> None:
        """Ask the whole group to stop the way a user at a terminal would (SIGINT)."""
        if sys.platform == "win32":
            self._windows_signal(signal.CTRL_BREAK_EVENT)
        else:
            self._signal_group(signal.SIGINT)

    def terminate(self) -> None:
        """Tell the whole group to terminate (SIGTERM)."""
        if sys.platform == "win32":
            self._taskkill(force=False)
        else:
            self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the whole group (SIGKILL; on Windows `taskkill /T /F`)."""
        if sys.platform == "win32":
            self._taskkill(force=True)
            with contextlib.suppress(OSError):
                self.process.kill()
        else:
            self._signal_group(signal.SIGKILL)

    def kill_stragglers(self) -> None:
        """After the leader exited: kill anything left in its group (POSIX; the leader is
        not reaped yet, so the group id is still ours)."""
        if sys.platform != "win32":
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, signal_number: int) -> None:
        if sys.platform != "win32":
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal_number)

    def _windows_signal(self, signal_number: int) -> None:
        with contextlib.suppress(OSError):
            self.process.send_signal(signal_number)

    def _taskkill(self, *, force: bool) -> None:
        command = ["taskkill", "/T", "/PID", str(self.process.pid)]
        if force:
            command.insert(1, "/F")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=10, check=False)

    def reap(self, timeout: float) -> int | None:
        """The exit code, once the process is reaped (None if it would not die in time)."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


class _Stopper:
    """Escalates SIGINT -> SIGTERM -> SIGKILL of the process tree, one step per grace period."""

    def __init__(self, tree: _ProcessTree, grace: float) -> None:
        self._tree = tree
        self._grace = grace
        self._pending: list[Callable[[], None]] = []
        self._taken = 0
        self.started_at: float | None = None
        self.killed_at: float | None = None

    @property
    def stopping(self) -> bool:
        """Whether stopping has begun."""
        return self.started_at is not None

    def start(self, now: float, *, politely: bool) -> None:
        """Begin stopping: SIGINT first if `politely`, else straight to SIGTERM."""
        if self.started_at is not None:
            return
        self.started_at = now
        self._pending = [self._tree.interrupt] if politely else []
        self._pending += [self._tree.terminate, self._kill]
        self._take_next()

    def advance(self, now: float) -> None:
        """Take the next step once the grace of the current one is over."""
        due = self.started_at is not None and now - self.started_at >= self._taken * self._grace
        if due and self._pending:
            self._take_next()

    def _take_next(self) -> None:
        step = self._pending.pop(0)
        self._taken += 1
        step()

    def _kill(self) -> None:
        self.killed_at = time.monotonic()
        self._tree.kill()


def _enlarge_pipe(stream: IO[bytes]) -> None:
    """Give a pipe the largest buffer Linux allows (usually 1 MiB; elsewhere a no-op).

    The real `claude` exits without flushing what it still has queued for a full pipe: with
    the default 64 KiB pipe, about half of all 1 MB answers lost their last lines (the result
    line among them) even with a fast reader. With a 1 MiB pipe none did.
    """
    if not sys.platform.startswith("linux"):
        return
    import fcntl

    set_size = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    try:
        with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as handle:
            size = int(handle.read().strip())
    except (OSError, ValueError):
        size = PIPE_BYTES
    with contextlib.suppress(OSError):
        fcntl.fcntl(stream.fileno(), set_size, min(size, PIPE_BYTES))


def _spawn(
    argv: Sequence[str], environment: dict[str, str], cwd: str | None
) -> subprocess.Popen[bytes]:
    options: dict[str, Any] = {}
    if sys.platform == "win32":
        options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        options["start_new_session"] = True  # leads its own process group: we can stop it all
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment,
        cwd=cwd,
        bufsize=0,
        **options,
    )
    if process.stdout is not None:
        _enlarge_pipe(process.stdout)
    return process


def _failed_to_start(reason: str, message: str, started: float) -> RunOutcome:
    return RunOutcome(ok=False, failure_reason=reason, message=message,
                      duration=time.monotonic() - started)


def _start_failure(
    error: Exception, argv: Sequence[str], environment: Mapping[str, str], cwd: str | None,
    started: float,
) -> RunOutcome:
    """The outcome for an agent that could not be started at all."""
    program = argv[0]
    if cwd is not None and not os.path.isdir(cwd):
        return _failed_to_start(
            "spawn_failed", f"cannot start the agent: its working directory {cwd!r} does not "
            "exist", started)
    if isinstance(error, FileNotFoundError):
        if shutil.which(program, path=environment.get("PATH")) is None:
            return _failed_to_start(
                "not_found", f"{NOT_FOUND_MESSAGE} (no {program!r} was found)", started)
        return _failed_to_start(
            "spawn_failed", f"cannot start the agent {program!r}: {error.strerror or error} "
            "(is the interpreter in its #! line missing?)", started)
    if isinstance(error, PermissionError):
        return _failed_to_start(
            "spawn_failed", f"cannot start the agent {program!r}: permission denied (is it an "
            "executable file?)", started)
    return _failed_to_start(
        "spawn_failed", f"cannot start the agent {program!r}: {type(error).__name__}: {error}",
        started)


def _agent_error_message(errors: Sequence[str], text: str, status: int | None) -> str:
    """What an `is_error` result says went wrong: its errors, else its text, plus the status."""
    parts = [part.strip() for part in errors if part.strip()]
    if not parts and text.strip():
        parts = [text.strip()]
    message = "; ".join(parts) or "the agent reported an error"
    if status is not None and str(status) not in message:
        message += f" (API status {status})"
    return message


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_agent(
    argv: Sequence[str],
    prompt: str,
    *,
    output_format: str = "stream-json",
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    on_event: Callable[[AgentEvent], None] | None = None,
    cancel: threading.Event | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    stderr_tail_bytes: int = DEFAULT_STDERR_TAIL_BYTES,
    kill_grace: float = 2.0,
) -> RunOutcome:
    """Run the agent once and return how it ended. BLOCKING: call it on a worker thread.

    `on_event` is called on this (the calling) thread as events arrive (text deltas, tool
    calls, init, retries, the result); an exception it raises is logged and ignored. The run
    takes at most about `timeout + 2 * kill_grace` seconds (plus a few seconds if the agent
    will not even die of SIGKILL). Setting `cancel` stops the agent like a timeout does.
    Raises ValueError only for bad arguments; everything the agent does becomes the outcome.
    """
    if not argv or not all(isinstance(word, str) for word in argv):
        raise ValueError("argv must be a non-empty sequence of strings")
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(
            f"unknown output format {output_format!r}: expected one of {', '.join(OUTPUT_FORMATS)}"
        )
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    if max_output_bytes < 1 or stderr_tail_bytes < 0 or kill_grace < 0:
        raise ValueError("max_output_bytes must be positive; stderr_tail_bytes and kill_grace "
                         "must not be negative")
    started = time.monotonic()
    if cancel is not None and cancel.is_set():
        return _failed_to_start("cancelled", "Run cancelled before the agent started", started)
    environment = agent_environment(env, timeout)
    try:
        process = _spawn(argv, environment, cwd)
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        return _start_failure(error, argv, environment, cwd, started)
    return _Run(
        process, prompt, output_format=output_format, started=started, timeout=timeout,
        on_event=on_event, cancel=cancel, max_output_bytes=max_output_bytes,
        stderr_tail_bytes=stderr_tail_bytes, kill_grace=kill_grace,
    ).wait()


class _Run:
    """One started agent process, followed to its end on the calling thread."""

    def __init__(
        self, process: subprocess.Popen[bytes], prompt: str, *, output_format: str,
        started: float, timeout: float, on_event: Callable[[AgentEvent], None] | None,
        cancel: threading.Event | None, max_output_bytes: int, stderr_tail_bytes: int,
        kill_grace: float,
    ) -> None:
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        self.process = process
        self.tree = _ProcessTree(process)
        self.stopper = _Stopper(self.tree, kill_grace)
        self.output_format = output_format
        self.started = started
        self.timeout = timeout
        self.deadline = started + timeout
        self.hard_deadline = self.deadline + 2 * kill_grace + GIVE_UP_AFTER_KILL_SECONDS
        self.on_event = on_event
        self.cancel = cancel
        self.max_output_bytes = max_output_bytes
        self.parser = StreamJsonParser() if output_format == "stream-json" else None
        self.splitter = _LineSplitter()
        self.text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text_parts: list[str] = []
        self.output_bytes = 0
        self.discarding = False
        self.stop_reason: str | None = None
        self.stdout = _StreamReader(process.stdout, f"agent-{process.pid}-stdout")
        self.stderr = _StreamReader(process.stderr, f"agent-{process.pid}-stderr",
                                    tail_bytes=stderr_tail_bytes)
        self.stdin = threading.Thread(
            target=_write_prompt,
            args=(process.stdin, prompt.encode("utf-8", errors="replace")),
            name=f"agent-{process.pid}-stdin", daemon=True,
        )

    def wait(self) -> RunOutcome:
        """Follow the process until it ends or is stopped; kill it if anything goes wrong."""
        self.stdin.start()
        self.stdout.start()
        self.stderr.start()
        try:
            self._follow()
        except BaseException:
            self.tree.kill()
            self.stdout.abandon()
            self.tree.reap(1.0)
            raise
        return self._outcome()

    def _emit(self, events: Sequence[AgentEvent]) -> None:
        if self.on_event is None:
            return
        for event in events:
            try:
                self.on_event(event)
            except Exception:
                logger.exception("on_event raised for %s; the run goes on", type(event).__name__)

    def _stop(self, reason: str, now: float) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        # A flood of output gets no polite SIGINT: we would discard the answer anyway.
        self.stopper.start(now, politely=reason != "output_too_large")

    def _follow(self) -> None:
        exited_at: float | None = None
        last_output_at = self.started
        end_of_output = False
        while True:
            now = time.monotonic()
            if self.stop_reason is None:
                if self.cancel is not None and self.cancel.is_set():
                    self._stop("cancelled", now)
                elif now >= self.deadline:
                    self._stop("timeout", now)
            if self.tree.has_exited():
                if exited_at is None:
                    exited_at = now
                    self.tree.kill_stragglers()
                if end_of_output:
                    return
                if now - max(exited_at, last_output_at) >= DRAIN_AFTER_EXIT_SECONDS:
                    return  # stdout is held open by something that left the group
            else:
                self.stopper.advance(now)
            killed_at = self.stopper.killed_at
            if now >= self.hard_deadline or (
                killed_at is not None and now - killed_at >= GIVE_UP_AFTER_KILL_SECONDS
            ):
                return  # not even SIGKILL ended it (a process stuck in the kernel)
            if end_of_output:
                time.sleep(POLL_SECONDS / 5)
                continue
            try:
                chunk = self.stdout.chunks.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if chunk is None:
                end_of_output = True
                continue
            last_output_at = time.monotonic()
            self._consume(chunk)

    def _consume(self, chunk: bytes) -> None:
        if self.discarding:
            return
        self.output_bytes += len(chunk)
        if self.output_bytes > self.max_output_bytes:
            self.discarding = True
            self._stop("output_too_large", time.monotonic())
            return
        if self.parser is None:
            text = self.text_decoder.decode(chunk)
            if text:
                self.text_parts.append(text)
                self._emit([TextDelta(text=text)])
            return
        for line in self.splitter.feed(chunk):
            self._emit(self.parser.feed_line(line))

    def _finish_output(self) -> None:
        """Parse what is left: a last line without a newline, tool uses that got no result."""
        if self.discarding:
            return
        if self.parser is None:
            self.text_parts.append(self.text_decoder.decode(b"", final=True))
            return
        rest = self.splitter.rest()
        if rest.strip():
            self._emit(self.parser.feed_line(rest))
        self._emit(self.parser.unfinished_tool_calls())

    def _outcome(self) -> RunOutcome:
        self.stdout.abandon()
        if not self.tree.has_exited():
            self.tree.kill()
        exit_code = self.tree.reap(GIVE_UP_AFTER_KILL_SECONDS)
        self.stderr.join(0.5)
        self._finish_output()
        stderr_tail = bytes(self.stderr.tail).decode("utf-8", errors="replace").strip()
        fields: dict[str, Any] = {
            "exit_code": exit_code,
            "duration": time.monotonic() - self.started,
            "stderr_tail": stderr_tail,
            "pid": self.process.pid,
        }
        parsed = self.parser.finish() if self.parser is not None else None
        if parsed is not None:
            fields.update(
                text=parsed.text, tool_calls=parsed.tool_calls, cost_usd=parsed.cost_usd,
                usage=parsed.usage, agent_session_id=parsed.agent_session_id,
                num_turns=parsed.num_turns, api_error_status=parsed.api_error_status,
                garbage_lines=parsed.garbage_lines, diagnostics=parsed.diagnostics,
            )
        else:
            fields["text"] = "".join(self.text_parts).strip()
        reason, message = self._failure(exit_code, stderr_tail, parsed)
        return RunOutcome(ok=reason is None, failure_reason=reason, message=message, **fields)

    def _failure(
        self, exit_code: int | None, stderr_tail: str, parsed: Any
    ) -> tuple[str | None, str]:
        """(failure reason, message), or (None, "") when the run succeeded."""
        if self.stop_reason == "timeout":
            return "timeout", f"Response timeout ({human_duration(self.timeout)})"
        if self.stop_reason == "cancelled":
            return "cancelled", "Run cancelled while the agent was running"
        if self.stop_reason == "output_too_large":
            return "output_too_large", (
                f"the agent printed more than {self.max_output_bytes} bytes and was stopped "
                "(raise max_output_bytes if such answers are expected)"
            )
        if exit_code is None:
            return "interrupted", "the agent did not exit, even after SIGKILL"
        if exit_code < 0:
            detail = f": {stderr_tail}" if stderr_tail else ""
            return "interrupted", f"the agent was killed by {_signal_name(-exit_code)}{detail}"
        if parsed is not None and parsed.saw_result and parsed.is_error:
            return "agent_error", _agent_error_message(
                parsed.errors, parsed.text, parsed.api_error_status
            )
        if exit_code != 0:
            return "exit_status", "CLI error: " + (
                stderr_tail or f"the agent exited with status {exit_code} and printed nothing "
                "on stderr"
            )
        if parsed is not None and not parsed.saw_result:
            detail = f"; stderr: {stderr_tail}" if stderr_tail else ""
            return "exit_status", f"agent exited without a result line{detail}"
        return None, ""
