"""The agent's pipes on POSIX, served by one selector on the run's thread, with no threads.

All three pipes are non-blocking: the prompt goes to stdin as fast as the child takes it, so
a child that never reads stdin cannot block us; stdout chunks are handed to the run loop;
stderr keeps a bounded tail. On Linux a pidfd wakes the selector when the agent exits, and a
CancelSwitch rings a bell (a pipe) the selector waits on, so a quiet run needs no polling.
It also gives the stdout pipe Linux's largest buffer at spawn. Nothing here knows the agent's
protocol.
"""

from __future__ import annotations

import contextlib
import functools
import os
import selectors
import subprocess
import sys
import threading
import time
from typing import IO

from .cancel import CancelSwitch

READ_CHUNK_BYTES = 256 * 1024
PIPE_BYTES = 1024 * 1024
"""The stdout pipe buffer asked for on Linux (capped by /proc/sys/fs/pipe-max-size)."""

STDERR_LAST_READS = 8
"""At most this many reads collect what stderr still holds once the agent is gone."""


class SelectorPipes:
    """The agent's pipes, served by one selector on the calling thread (POSIX, no threads).

    All three are non-blocking: the prompt goes to stdin as fast as the child takes it (stdin
    is closed once it is all written, or when the child closed its end), stdout chunks are
    returned by `wait`, stderr keeps a bounded tail. On Linux a pidfd wakes `wait` when the
    agent exits. Every descriptor is unregistered and closed exactly once.
    """

    def __init__(
        self, process: subprocess.Popen[bytes], prompt: bytes | None, stderr_tail_bytes: int,
        cancel: threading.Event | None,
    ) -> None:
        """`prompt` None leaves stdin to the caller (a run that writes more than a prompt)."""
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        self._pid = process.pid
        self._cancel = cancel if isinstance(cancel, CancelSwitch) else None
        self._bell: _Bell | None = None
        self._stdin: IO[bytes] | None = process.stdin if prompt is not None else None
        self._stdout: IO[bytes] | None = process.stdout
        self._stderr: IO[bytes] | None = process.stderr
        self._prompt = memoryview(prompt or b"")
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
        assert self._stdout is not None and self._stderr is not None
        self._selector = selectors.DefaultSelector()
        for stream in (self._stdin, self._stdout, self._stderr):
            if stream is not None:
                os.set_blocking(stream.fileno(), False)
        self._selector.register(self._stdout, selectors.EVENT_READ, "stdout")
        self._selector.register(self._stderr, selectors.EVENT_READ, "stderr")
        if self._stdin is not None:
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



def enlarge_pipe(stream: IO[bytes]) -> None:
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
