"""Stop the agents of a backend that died without stopping them (POSIX).

An agent runs in a process group of its own, so that a timeout or a cancel can stop it and
every child it started. The flip side: nothing stops it when the backend itself is killed
outright (SIGKILL, the OOM killer). A silent agent then runs its turn to the end, API calls
included, and only a write to its closed stdout would end it earlier.

So the first agent run of a process starts a guard: a small process holding the read end of
a pipe. Each agent's process group is announced to it when the agent starts and withdrawn
when the run has ended. End of file on the pipe means the backend is gone, however it died;
the guard then stops every group still announced: SIGTERM, then SIGKILL after a grace period.
It holds nothing else: its stdout and stderr are /dev/null and it closes every other
descriptor it inherited (the backend's ledger files among them) before it reads a line.

This file is also the guard itself (`python -I -S orphan_guard.py`, reading the announcements
on stdin), so it imports nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import BinaryIO

GRACE_SECONDS = 2.0
"""How long the guard gives an orphaned group between SIGTERM and SIGKILL."""

logger = logging.getLogger(__name__)


class OrphanGuard:
    """The backend's side: starts the guard when first needed and tells it which agent
    process groups are running. Does nothing where there are no process groups (Windows)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipe: int | None = None
        self._guard_pid: int | None = None
        self._unavailable = sys.platform == "win32" or not hasattr(os, "posix_spawn")
        self._warned_full = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._leave_to_parent)

    def watch(self, group: int) -> None:
        """Have the guard stop process group `group` if this process dies before the run ends."""
        self._send(b"+%d\n" % group)

    def release(self, group: int) -> None:
        """The run of process group `group` has ended: the guard forgets it."""
        self._send(b"-%d\n" % group)

    def _send(self, message: bytes) -> None:
        with self._lock:
            pipe = self._pipe if self._pipe is not None else self._start()
            if pipe is None:
                return
            try:
                os.write(pipe, message)  # a few bytes: written whole or not at all
            except BlockingIOError:  # the guard stopped reading: never block a run for it
                if not self._warned_full:
                    self._warned_full = True
                    logger.warning("the orphan guard is not reading; runs go unannounced")
            except OSError as error:
                logger.warning("the orphan guard went away (%s); starting another", error)
                self._close()

    def _start(self) -> int | None:
        """Start the guard process; None (after one warning) if this system cannot."""
        if self._unavailable:
            return None
        self._reap_previous()
        read_end, write_end = os.pipe()  # both close-on-exec: agents never inherit them
        os.set_blocking(write_end, False)
        try:
            self._guard_pid = os.posix_spawn(
                sys.executable, [sys.executable, "-I", "-S", os.path.abspath(__file__)],
                dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, read_end, 0),
                    # Not the backend's stdout or stderr: a reader of either waits for
                    # everyone holding it. The guard closes whatever else it inherited.
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                ],
                setsid=True,  # a Ctrl-C or hang-up aimed at the backend must not stop it
            )
        except (OSError, NotImplementedError) as error:
            logger.warning("cannot start the orphan guard (%s): agents of a backend that is "
                           "killed outright will run on until their turn ends", error)
            self._unavailable = True
            os.close(write_end)
            return None
        finally:
            os.close(read_end)
        self._pipe = write_end
        self._warned_full = False
        return write_end

    def _reap_previous(self) -> None:
        if self._guard_pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._guard_pid, os.WNOHANG)
            self._guard_pid = None

    def _close(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.close(self._pipe)
            self._pipe = None

    def _leave_to_parent(self) -> None:
        """In a forked child: the guard belongs to the parent; start our own if we need one."""
        self._lock = threading.Lock()
        self._close()
        self._guard_pid = None


def serve(announcements: BinaryIO, grace: float = GRACE_SECONDS) -> None:
    """The guard: follow the announcements until end of file, then stop what is left."""
    groups: set[int] = set()
    for line in announcements:
        sign, number = line[:1], line[1:].strip()
        if not number.isdigit():
            continue
        if sign == b"+":
            groups.add(int(number))
        elif sign == b"-":
            groups.discard(int(number))
    stop_groups(groups, grace)


def stop_groups(groups: set[int], grace: float) -> None:
    """SIGTERM every group, then SIGKILL those still alive after `grace` seconds."""
    alive = {group for group in groups if signal_group(group, signal.SIGTERM)}
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = {group for group in alive if signal_group(group, 0)}
    for group in alive:
        signal_group(group, signal.SIGKILL)


def signal_group(group: int, signal_number: int) -> bool:
    """Send a signal to a process group; False if the group no longer exists."""
    try:
        os.killpg(group, signal_number)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def close_inherited_descriptors() -> None:
    """Close every descriptor but 0, 1 and 2: the guard must hold none of its backend's files
    (an open ledger file would keep a deleted ledger's space in use as long as it lives)."""
    os.closerange(3, _descriptor_limit())


def _descriptor_limit() -> int:
    try:
        limit = os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        limit = -1
    return limit if limit > 0 else 65536


if __name__ == "__main__":
    close_inherited_descriptors()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer)
