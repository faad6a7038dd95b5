"""The agent's pipes on Windows, where selectors cannot wait on pipes: three helper threads.

A stdin writer, a stdout reader handing chunks to the run loop through a bounded queue
(backpressure), and a stderr reader keeping a tail. Each thread alone closes its own pipe.
Nothing here knows the agent's protocol.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
import time
from typing import IO

READ_CHUNK_BYTES = 256 * 1024
QUEUED_CHUNKS = 64
"""At most this many unread stdout chunks wait for the run loop (backpressure)."""

HAND_ON_POLL_SECONDS = 0.05
"""How often a reader blocked on a full queue looks whether the run abandoned it."""


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
                self.chunks.put(chunk, timeout=HAND_ON_POLL_SECONDS)
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


class ThreadedPipes:
    """The agent's pipes, served by three helper threads (Windows, where selectors cannot
    wait on pipes): a stdin writer, a stdout reader handing chunks through a bounded queue
    and a stderr reader keeping a tail. Each thread closes its own pipe."""

    exit_wakes_us = False
    cancel_wakes_us = False

    def __init__(
        self, process: subprocess.Popen[bytes], prompt: bytes | None, stderr_tail_bytes: int,
        cancel: threading.Event | None,
    ) -> None:
        """`prompt` None leaves stdin to the caller (a run that writes more than a prompt)."""
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        self.end_of_output = False
        self._stdout = _StreamReader(process.stdout, f"agent-{process.pid}-stdout")
        self._stderr = _StreamReader(process.stderr, f"agent-{process.pid}-stderr",
                                     tail_bytes=stderr_tail_bytes)
        self._stdin = None if prompt is None else threading.Thread(
            target=_write_prompt, args=(process.stdin, prompt),
            name=f"agent-{process.pid}-stdin", daemon=True)

    def start(self) -> None:
        """Start the three threads."""
        if self._stdin is not None:
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
