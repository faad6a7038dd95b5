"""Runs one agent turn as a subprocess: prompt on stdin, stdout streamed and parsed, bounded.

`run_agent` BLOCKS its calling thread (a run-pool worker, never an actor or an event loop)
until the agent has exited or been stopped. It starts the agent in a process group of its
own and, on POSIX, serves all three pipes from one `selectors` loop on the calling thread,
with no helper threads: the prompt is written to stdin as the pipe takes it (a child that
never reads stdin cannot block us), stdout is read in chunks with its own line splitting
(lines of many megabytes are fine), parsed as stream-json as it arrives, and each event is
handed to `on_event` on the calling thread. Everything is bounded: total output
(`max_output_bytes`), the stderr tail, and time. On timeout or cancellation the WHOLE process
tree is stopped: SIGINT to the group (claude then prints a parseable interrupted result),
SIGTERM after a grace, then SIGKILL; after the agent exits, whatever is left in its group is
killed too; and if this process is killed outright mid-run, its orphan guard stops the group
(`orphan_guard`). On Windows, where selectors cannot wait on pipes, helper threads write stdin
and read stdout and stderr instead; the group is a CREATE_NEW_PROCESS_GROUP, interrupted with
CTRL_BREAK and killed with `taskkill /T /F`.

It never raises for anything the agent does: every failure is a `RunOutcome` with a reason
from `events.FAILURE_REASONS`. Only this package starts processes.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import logging
import math
import os
import queue
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, Protocol

import msgspec

from ..events import ToolCall
from .argv import OUTPUT_FORMATS
from .orphan_guard import OrphanGuard, signal_group
from .stream_json import AgentEvent, StreamJsonParser, TextDelta

logger = logging.getLogger(__name__)

NOT_FOUND_MESSAGE = (
    "Claude CLI not found in PATH. Install with: npm install -g @anthropic-ai/claude-code"
)
"""The old manager's message for a missing claude binary; such a not_found outcome starts with it."""


def not_found_message(argv: Sequence[str]) -> str:
    """What to say when the agent's program is not on PATH: the old message for claude, else
    the configured command and the setting that names it."""
    program = argv[0] if argv else ""
    if os.path.basename(program) == "claude":
        return f"{NOT_FOUND_MESSAGE} (no {program!r} was found)"
    return (f"agent command {shlex.join(argv)!r} not found: no {program!r} on PATH; fix "
            "CHATLEDGER_AGENT_COMMAND (setting 'agent_command')")

DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024
DEFAULT_STDERR_TAIL_BYTES = 8 * 1024
READ_CHUNK_BYTES = 256 * 1024
PIPE_BYTES = 1024 * 1024
"""The stdout pipe buffer asked for on Linux (capped by /proc/sys/fs/pipe-max-size)."""
QUEUED_CHUNKS = 64
"""Windows: at most this many unread stdout chunks wait for the parser (backpressure)."""

PIPES_SELECTABLE = sys.platform != "win32"
"""Whether `selectors` can wait on pipes; where it cannot (Windows), helper threads serve them."""

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

STDERR_LAST_READS = 8
"""At most this many reads collect what stderr still holds once the agent is gone."""

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


class _InheritedEnvironment:
    """The agent's environment when it inherits ours, built once and reused until ours changes.

    Copying os.environ and encoding it again for every run took about 900 Python calls, ~5%
    of chatledger's CPU per turn. CPython keeps the encoded environment in `os.environ._data`
    (every change to os.environ goes through it), so one C-level comparison with the copy
    taken at the last build tells whether to build again; where that dict does not exist, the
    environment is built for every run. On POSIX the agent gets it as bytes, which
    `subprocess` passes on without encoding each variable again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._source: dict[Any, Any] | None = None
        self._timeout: float | None = None
        self._built: tuple[dict[str, str], Mapping[Any, Any]] | None = None

    def get(self, timeout: float) -> tuple[dict[str, str], Mapping[Any, Any]]:
        """(the environment as text, for messages; the same, for spawning), for `timeout`."""
        source = getattr(os.environ, "_data", None)
        if not isinstance(source, dict):
            environment = agent_environment(None, timeout)
            return environment, environment
        with self._lock:
            if self._built is None or self._timeout != timeout or self._source != source:
                # The copy comes first: a change made meanwhile by another thread then
                # differs from it next time, rather than hiding behind a stale build.
                self._source, self._timeout = dict(source), timeout
                environment = agent_environment(None, timeout)
                spawned: Mapping[Any, Any] = environment
                if os.supports_bytes_environ:
                    spawned = {os.fsencode(key): os.fsencode(value)
                               for key, value in environment.items()}
                self._built = (environment, spawned)
            return self._built


_INHERITED_ENVIRONMENT = _InheritedEnvironment()

ORPHAN_GUARD = OrphanGuard()
"""Stops this process's agents if it dies without stopping them (see orphan_guard)."""


class CancelSwitch(threading.Event):
    """A cancel switch that also wakes the run loop waiting on it, so the loop need not poll.

    It is a threading.Event (`set`, `is_set`, `wait`); `set` also calls every waker a run
    registered with `add_waker`.
    """

    def __init__(self) -> None:
        super().__init__()
        self._wakers: list[Callable[[], None]] = []
        self._wakers_lock = threading.Lock()

    def set(self) -> None:
        """Flip the switch and wake every run waiting on it."""
        super().set()
        with self._wakers_lock:
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def add_waker(self, wake: Callable[[], None]) -> None:
        """Call `wake` when the switch is flipped (at once if it already is)."""
        with self._wakers_lock:
            self._wakers.append(wake)
        if self.is_set():
            wake()

    def remove_waker(self, wake: Callable[[], None]) -> None:
        """Stop calling `wake`."""
        with self._wakers_lock, contextlib.suppress(ValueError):
            self._wakers.remove(wake)


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
            signal_group(self.process.pid, signal_number)

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

    def next_step_at(self) -> float:
        """When the next step is due; infinity before stopping began or after the last step."""
        if self.started_at is None or not self._pending:
            return math.inf
        return self.started_at + self._taken * self._grace

    def advance(self, now: float) -> None:
        """Take the next step once the grace of the current one is over."""
        if now >= self.next_step_at():
            self._take_next()

    def _take_next(self) -> None:
        step = self._pending.pop(0)
        self._taken += 1
        step()

    def _kill(self) -> None:
        self.killed_at = time.monotonic()
        self._tree.kill()


class _Pipes(Protocol):
    """What the run loop needs from the agent's three pipes, however they are served.

    Every method is called on the run's calling thread.
    """

    @property
    def end_of_output(self) -> bool:
        """Whether stdout has ended (the agent and everything it started closed it)."""

    @property
    def exit_wakes_us(self) -> bool:
        """Whether the agent's exit ends a `wait` early (else the loop polls for it)."""

    @property
    def cancel_wakes_us(self) -> bool:
        """Whether flipping the cancel switch ends a `wait` early (else the loop polls it)."""

    def start(self) -> None:
        """Begin serving the pipes: the prompt starts flowing to stdin."""

    def wait(self, timeout: float) -> list[bytes]:
        """Serve the pipes for at most `timeout` seconds; the stdout chunks read meanwhile."""

    def stderr_tail(self) -> bytes:
        """The last bytes the agent printed on stderr, once it is gone."""

    def close(self) -> None:
        """Stop serving the pipes and let go of every resource. Safe to call more than once."""


class _SelectorPipes:
    """The agent's pipes, served by one selector on the calling thread (POSIX, no threads).

    All three are non-blocking: the prompt goes to stdin as fast as the child takes it (stdin
    is closed once it is all written, or when the child closed its end), stdout chunks are
    returned by `wait`, stderr keeps a bounded tail. On Linux a pidfd wakes `wait` when the
    agent exits. Every descriptor is unregistered and closed exactly once.
    """

    def __init__(
        self, process: subprocess.Popen[bytes], prompt: bytes, stderr_tail_bytes: int,
        cancel: threading.Event | None,
    ) -> None:
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        self._pid = process.pid
        self._cancel = cancel if isinstance(cancel, CancelSwitch) else None
        self._bell: _Bell | None = None
        self._stdin: IO[bytes] | None = process.stdin
        self._stdout: IO[bytes] | None = process.stdout
        self._stderr: IO[bytes] | None = process.stderr
        self._prompt = memoryview(prompt)
        self._tail_bytes = stderr_tail_bytes
        self._tail = bytearray()
        self._pidfd: int | None = None
        self._selector: selectors.BaseSelector | None = None

    @property
    def end_of_output(self) -> bool:
        """Whether stdout has ended (it is closed then)."""
        return self._stdout is None

    @property
    def exit_wakes_us(self) -> bool:
        """Whether a pidfd still waits for the agent's exit."""
        return self._pidfd is not None

    @property
    def cancel_wakes_us(self) -> bool:
        """Whether the cancel switch rings a bell this selector waits on."""
        return self._bell is not None

    def start(self) -> None:
        """Make the pipes non-blocking, write what stdin takes now, and register the rest."""
        assert self._stdin is not None and self._stdout is not None
        assert self._stderr is not None
        self._selector = selectors.DefaultSelector()
        for stream in (self._stdin, self._stdout, self._stderr):
            os.set_blocking(stream.fileno(), False)
        self._selector.register(self._stdout, selectors.EVENT_READ, "stdout")
        self._selector.register(self._stderr, selectors.EVENT_READ, "stderr")
        self._write_prompt()  # most prompts fit in the pipe at once
        if self._stdin is not None:
            self._selector.register(self._stdin, selectors.EVENT_WRITE, "stdin")
        self._pidfd = _open_pidfd(self._pid)
        if self._pidfd is not None:
            self._selector.register(self._pidfd, selectors.EVENT_READ, "exit")
        if self._cancel is not None:
            self._bell = _Bell()
            self._selector.register(self._bell.read_fd, selectors.EVENT_READ, "cancel")
            self._cancel.add_waker(self._bell.ring)

    def wait(self, timeout: float) -> list[bytes]:
        """Wait up to `timeout` seconds, serve the pipes that are ready, return stdout's chunks."""
        assert self._selector is not None
        if not self._selector.get_map():
            time.sleep(timeout)
            return []
        chunks: list[bytes] = []
        for key, _ in self._selector.select(timeout):
            if key.data == "stdout":
                chunk = self._read_stdout()
                if chunk:
                    chunks.append(chunk)
            elif key.data == "stderr":
                self._read_stderr()
            elif key.data == "stdin":
                self._write_prompt()
            elif key.data == "cancel":
                assert self._bell is not None
                self._bell.silence()  # the run loop looks at the switch next
            else:
                self._close_pidfd()  # the agent exited; the pidfd would stay ready
        return chunks

    def stderr_tail(self) -> bytes:
        """The stderr tail, after reading what the pipe still holds (never waits)."""
        for _ in range(STDERR_LAST_READS):
            if self._stderr is None or not self._read_stderr():
                break
        return bytes(self._tail)

    def close(self) -> None:
        """Unregister and close the pipes and the pidfd still open, then the selector."""
        for stream in (self._stdin, self._stdout, self._stderr):
            self._forget(stream)
        self._stdin = self._stdout = self._stderr = None
        self._close_pidfd()
        if self._bell is not None:
            assert self._cancel is not None
            self._cancel.remove_waker(self._bell.ring)
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(self._bell.read_fd)
            self._bell.close()
            self._bell = None
        if self._selector is not None:
            self._selector.close()
            self._selector = None

    def _write_prompt(self) -> None:
        assert self._stdin is not None
        try:
            self._prompt = self._prompt[os.write(self._stdin.fileno(), self._prompt):]
        except BlockingIOError:
            return  # the pipe is full: the selector says when it takes more
        except OSError:  # EPIPE: the child closed stdin, it will not read the rest
            self._prompt = self._prompt[:0]
        if not self._prompt:
            self._forget(self._stdin)
            self._stdin = None

    def _read_stdout(self) -> bytes:
        assert self._stdout is not None
        chunk = _read_some(self._stdout)
        if chunk == b"":
            self._forget(self._stdout)
            self._stdout = None
        return chunk or b""

    def _read_stderr(self) -> bool:
        """Add what stderr has now to the tail; whether there was anything."""
        assert self._stderr is not None
        chunk = _read_some(self._stderr)
        if chunk == b"":
            self._forget(self._stderr)
            self._stderr = None
        if not chunk:
            return False
        self._tail += chunk
        if len(self._tail) > self._tail_bytes:
            del self._tail[: len(self._tail) - self._tail_bytes]
        return True

    def _forget(self, stream: IO[bytes] | None) -> None:
        """Unregister a stream and close it (its holder then keeps None instead)."""
        if stream is not None:
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(stream)
            with contextlib.suppress(OSError):
                stream.close()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class _Bell:
    """A non-blocking pipe another thread rings to wake a selector (a cancel switch).

    Ringing and closing share a lock, so a late ring never writes to a closed descriptor
    (whose number may already belong to another file).
    """

    def __init__(self) -> None:
        self.read_fd, write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(write_fd, False)
        self._write_fd: int | None = write_fd
        self._lock = threading.Lock()

    def ring(self) -> None:
        """Wake the selector (any thread; a bell already ringing stays ringing)."""
        with self._lock:
            if self._write_fd is not None:
                with contextlib.suppress(OSError):  # full: it rings already
                    os.write(self._write_fd, b"\0")

    def silence(self) -> None:
        """Take back every ring (the selector's thread)."""
        with contextlib.suppress(OSError):
            while os.read(self.read_fd, 4096):
                pass

    def close(self) -> None:
        """Close both ends; later rings do nothing."""
        with self._lock:
            if self._write_fd is not None:
                os.close(self._write_fd)
                self._write_fd = None
                os.close(self.read_fd)


def _read_some(stream: IO[bytes]) -> bytes | None:
    """A chunk from a non-blocking pipe: None if it has nothing now, b"" once it has ended."""
    try:
        return os.read(stream.fileno(), READ_CHUNK_BYTES)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _open_pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when process `pid` exits (Linux 5.3+), else None."""
    if sys.platform.startswith("linux") and hasattr(os, "pidfd_open"):
        with contextlib.suppress(OSError):
            return os.pidfd_open(pid)
    return None


class _StreamReader(threading.Thread):
    """Windows: reads a pipe in chunks on its own thread, which alone closes the pipe.

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
    """Windows: write the prompt and close stdin, on its own thread; a closed pipe is fine."""
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


class _ThreadedPipes:
    """The agent's pipes, served by three helper threads (Windows, where selectors cannot
    wait on pipes): a stdin writer, a stdout reader handing chunks through a bounded queue
    and a stderr reader keeping a tail. Each thread closes its own pipe."""

    exit_wakes_us = False
    cancel_wakes_us = False

    def __init__(
        self, process: subprocess.Popen[bytes], prompt: bytes, stderr_tail_bytes: int,
        cancel: threading.Event | None,
    ) -> None:
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        self.end_of_output = False
        self._stdout = _StreamReader(process.stdout, f"agent-{process.pid}-stdout")
        self._stderr = _StreamReader(process.stderr, f"agent-{process.pid}-stderr",
                                     tail_bytes=stderr_tail_bytes)
        self._stdin = threading.Thread(target=_write_prompt, args=(process.stdin, prompt),
                                       name=f"agent-{process.pid}-stdin", daemon=True)

    def start(self) -> None:
        """Start the three threads."""
        self._stdin.start()
        self._stdout.start()
        self._stderr.start()

    def wait(self, timeout: float) -> list[bytes]:
        """The next stdout chunk, if one comes within `timeout` seconds."""
        if self.end_of_output:
            time.sleep(timeout)
            return []
        try:
            chunk = self._stdout.chunks.get(timeout=timeout)
        except queue.Empty:
            return []
        if chunk is None:
            self.end_of_output = True
            return []
        return [chunk]

    def stderr_tail(self) -> bytes:
        """The stderr tail, once its reader has finished (waiting for it at most 0.5 s)."""
        self._stderr.join(0.5)
        return bytes(self._stderr.tail)

    def close(self) -> None:
        """Let the stdout reader discard what is left; the threads close the pipes."""
        self._stdout.abandon()


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
    with contextlib.suppress(OSError):
        fcntl.fcntl(stream.fileno(), set_size, min(_pipe_max_size(), PIPE_BYTES))


@functools.cache
def _pipe_max_size() -> int:
    """The largest pipe buffer an unprivileged process may ask for (read once)."""
    try:
        with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return PIPE_BYTES


def _spawn(
    argv: Sequence[str], environment: Mapping[Any, Any], cwd: str | None
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
            return _failed_to_start("not_found", not_found_message(argv), started)
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
    will not even die of SIGKILL). Setting `cancel` stops the agent like a timeout does: a
    CancelSwitch wakes the run at once, a plain threading.Event is looked at every
    POLL_SECONDS.
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
    if env is None:
        environment, spawned_environment = _INHERITED_ENVIRONMENT.get(timeout)
    else:
        environment = spawned_environment = agent_environment(env, timeout)
    try:
        process = _spawn(argv, spawned_environment, cwd)
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        return _start_failure(error, argv, environment, cwd, started)
    ORPHAN_GUARD.watch(process.pid)  # the agent leads its own process group
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
        self.process = process
        self.tree = _ProcessTree(process)
        self.stopper = _Stopper(self.tree, kill_grace)
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
        pipes = _SelectorPipes if PIPES_SELECTABLE else _ThreadedPipes
        self.pipes: _Pipes = pipes(process, prompt.encode("utf-8", errors="replace"),
                                   stderr_tail_bytes, cancel)

    def wait(self) -> RunOutcome:
        """Follow the process until it ends or is stopped; kill it if anything goes wrong."""
        try:
            self.pipes.start()
            self._follow()
            exit_code = self._end_process()
            stderr_tail = self.pipes.stderr_tail()
        except BaseException:
            self.tree.kill()
            self.tree.reap(1.0)
            raise
        finally:
            self.pipes.close()
            ORPHAN_GUARD.release(self.process.pid)
        return self._outcome(exit_code, stderr_tail)

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

    def _check_limits(self, now: float) -> None:
        """Begin stopping the agent if the run was cancelled or its time is up."""
        if self.stop_reason is None:
            if self.cancel is not None and self.cancel.is_set():
                self._stop("cancelled", now)
            elif now >= self.deadline:
                self._stop("timeout", now)

    def _give_up_at(self) -> float:
        """When to return even though the process has not exited (stuck in the kernel)."""
        killed_at = self.stopper.killed_at
        if killed_at is None:
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
                                 else self.deadline)
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
        if self.parser is None:
            text = self.text_decoder.decode(chunk)
            if text:
                self.text_parts.append(text)
                self._emit([TextDelta(text=text)])
            return
        for line in self.splitter.feed(chunk):
            self._emit(self.parser.feed_line(line))

    def _end_process(self) -> int | None:
        """Kill the tree if the agent still runs; its exit code (None if it would not die)."""
        if not self.tree.has_exited():
            self.tree.kill()
        return self.tree.reap(GIVE_UP_AFTER_KILL_SECONDS)

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

    def _outcome(self, exit_code: int | None, stderr_bytes: bytes) -> RunOutcome:
        self._finish_output()
        stderr_tail = stderr_bytes.decode("utf-8", errors="replace").strip()
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
