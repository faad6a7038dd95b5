"""The agent's process tree: spawning it as a group leader, signalling the whole group,
noticing the leader's exit without reaping it, and stopping it step by step.

On POSIX the agent leads a process group of its own (`start_new_session`), so a signal to
the group reaches everything it started that did not leave the group; on Windows it is a
CREATE_NEW_PROCESS_GROUP, interrupted with CTRL_BREAK and killed with `taskkill /T /F`.
On Linux the process followed is the agent's reaper (`reaper`), which holds the descendants
that leave the group; the group signalled is still the agent's.
`Stopper` escalates SIGINT -> SIGTERM -> SIGKILL, one step per grace period, driven by the
run loop's clock. Nothing here reads the agent's output or knows its protocol.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import reaper
from .orphan_guard import signal_group
from .posix_pipes import enlarge_pipe


def spawn(
    argv: Sequence[str], environment: Mapping[Any, Any], cwd: str | None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start the agent with three pipes, leading a process group of its own: (the process
    to follow, the agent's process group). On Linux the process followed is the agent's
    reaper (see `reaper`), which exits with the agent's status once the whole tree is gone."""
    pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE,
                             "stderr": subprocess.PIPE, "bufsize": 0}
    if reaper.AVAILABLE:
        process, group = reaper.spawn_reaped(argv, environment, cwd, pipes)
    else:
        options: dict[str, Any] = {}
        if sys.platform == "win32":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            options["start_new_session"] = True  # leads its own process group
        process = subprocess.Popen(list(argv), env=environment, cwd=cwd, **pipes, **options)
        group = process.pid
    if process.stdout is not None:
        enlarge_pipe(process.stdout)
    return process, group


def signal_name(number: int) -> str:
    """A signal's name (SIGKILL), or its number when it has none."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"



class ProcessTree:
    """The agent process and its group: signals, exit detection, the final kill."""

    def __init__(self, process: subprocess.Popen[bytes], group: int | None = None) -> None:
        """`group`: the agent's process group (default: the process leads it)."""
        self.process = process
        self.group = process.pid if group is None else group
        self.exited = False
        self.killed_by_signal = False

    def has_exited(self) -> bool:
        """Whether the leader exited; on POSIX without reaping it, so its pid and process
        group id cannot be reused until we have killed what is left of the group."""
        if not self.exited:
            if sys.platform != "win32" and hasattr(os, "waitid"):
                try:
                    status = os.waitid(os.P_PID, self.process.pid,
                                       os.WEXITED | os.WNOHANG | os.WNOWAIT)
                    self.exited = status is not None
                    self.killed_by_signal = status is not None and status.si_code in (
                        os.CLD_KILLED, os.CLD_DUMPED)
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
        not reaped yet, so the group id is still ours). Under a reaper that exited by itself
        the tree is gone already (and the agent's group id is no longer held); a reaper that
        was killed left the agent's group behind."""
        if sys.platform != "win32" and (self.group == self.process.pid
                                        or self.killed_by_signal):
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, signal_number: int) -> None:
        if sys.platform != "win32":
            signal_group(self.group, signal_number)

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


class Stopper:
    """Escalates SIGINT -> SIGTERM -> SIGKILL of the process tree, one step per grace period."""

    def __init__(self, tree: ProcessTree, grace: float) -> None:
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
