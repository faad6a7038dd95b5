"""Contain an agent's whole process tree on Linux, setsid() and double-forked descendants too.

A process group holds only what stays in it: an MCP server that daemonises (setsid, or a
double fork that leaves it an orphan) escapes every signal sent to the agent's group. So on
Linux each run starts a tiny reaper between the runner and the agent. The reaper marks itself
a child subreaper (PR_SET_CHILD_SUBREAPER): every orphan of the agent's tree is re-parented to
it rather than to init, so the tree can always be found by walking parent links from the
reaper. It starts the agent as the leader of a session and process group of its own (the
runner signals that group, as before), lets go of the agent's pipes, reaps whatever dies, and
once the agent has exited, for whatever reason (its answer, a timeout or a cancel escalated by
the runner, the orphan guard after the backend died), it SIGKILLs every descendant still
alive and exits with the agent's own status. The reaper never reads or writes the agent's
output; it holds no descriptor but a status pipe, closed once the agent has started.

Why a per-run reaper: cgroups are rarely writable (containers, unprivileged users); making
the backend itself a subreaper would hand it the orphans of every child its host starts;
polling /proc for descendants misses a double fork that completes between two polls.
The cost is one small Python process per turn (~10-20 ms of CPU outside the backend).

This file is also the reaper itself (`python -I -S reaper.py STATUS_FD ARGV_FD`, the agent's
argv read from ARGV_FD), so it imports nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "posix_spawnp")
"""Whether runs go through a reaper here (Linux); elsewhere the process group is the tree."""

PR_SET_CHILD_SUBREAPER = 36
CLEANUP_SECONDS = 5.0
"""How long the reaper keeps killing descendants that were still being born."""
STATUS_LINE_LIMIT = 4096


# -- the runner's side -------------------------------------------------------------------------


def spawn_reaped(
    argv: Sequence[str], environment: Mapping[Any, Any], cwd: str | None,
    popen_options: Mapping[str, Any],
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `argv` under a reaper: (the reaper's Popen, holding the agent's pipes; the
    agent's pid, which leads its process group). Raises what starting `argv` itself raised
    (FileNotFoundError, PermissionError, ...) if the agent could not be started."""
    status_read, status_write = os.pipe()
    argv_read, argv_write = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), str(status_write),
             str(argv_read)],
            env=environment, cwd=cwd, pass_fds=(status_write, argv_read),
            start_new_session=True, **popen_options,
        )
    except BaseException:
        os.close(status_read)
        os.close(argv_write)
        raise
    finally:
        os.close(status_write)
        os.close(argv_read)
    try:
        _write_argv(argv_write, argv)
        line = _read_line(status_read)
    finally:
        os.close(status_read)
    word, _, rest = line.partition(" ")
    if word == "ok" and rest.strip().isdigit():
        return process, int(rest)
    _discard(process)
    if word == "error":
        number, _, message = rest.partition(" ")
        if number.isdigit():
            raise OSError(int(number), message.strip() or os.strerror(int(number)))
    raise OSError(f"the agent's reaper did not start it (said {line[:200]!r})")


def _write_argv(descriptor: int, argv: Sequence[str]) -> None:
    """Hand the agent's argv to the reaper (NUL-separated), so its own command line stays
    short and names no agent: whoever looks for the agent by its command line finds it once."""
    try:
        data = memoryview(b"\0".join(os.fsencode(word) for word in argv))
        while data:
            data = data[os.write(descriptor, data):]
    except OSError:
        pass  # the reaper died: its status line says so
    finally:
        os.close(descriptor)


def _read_line(descriptor: int) -> str:
    """The reaper's status line (blocks until it has started the agent or failed to)."""
    data = b""
    while b"\n" not in data and len(data) < STATUS_LINE_LIMIT:
        chunk = os.read(descriptor, STATUS_LINE_LIMIT)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", errors="replace")


def _discard(process: subprocess.Popen[bytes]) -> None:
    """Close the pipes of a reaper that started nothing, and reap it."""
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


# -- the reaper ---------------------------------------------------------------------------------


def _become_subreaper() -> None:
    """Mark this process a child subreaper; without it only the agent's group is contained."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def descendants(root: int) -> set[int]:
    """Every live process below `root`, by the parent links in /proc."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != b"Z":
                children.setdefault(int(fields[1]), []).append(int(name))
    found: set[int] = set()
    waiting = [root]
    while waiting:
        for child in children.get(waiting.pop(), ()):
            if child not in found:
                found.add(child)
                waiting.append(child)
    return found


def _has_children() -> bool:
    """Reap every child that has ended; whether any is left."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _kill_the_rest() -> None:
    """SIGKILL every descendant, again and again while some are still being born."""
    deadline = time.monotonic() + CLEANUP_SECONDS
    while _has_children() and time.monotonic() < deadline:
        for pid in descendants(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _let_go_of_descriptors(status: int) -> None:
    """Hold nothing of the agent's: /dev/null as stdin, stdout and stderr; close the rest."""
    os.close(status)
    null = os.open(os.devnull, os.O_RDWR)
    for standard in (0, 1, 2):
        os.dup2(null, standard)
    os.closerange(3, max(3, os.sysconf("SC_OPEN_MAX")))


def _exit_like(status: int) -> None:
    """Exit with the agent's status: its exit code, or death by its signal."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP refuse it
            signal.signal(number, signal.SIG_DFL)
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _read_argv(descriptor: int) -> list[str]:
    data = b""
    while chunk := os.read(descriptor, 65536):
        data += chunk
    os.close(descriptor)
    return [os.fsdecode(word) for word in data.split(b"\0")] if data else []


def serve(status: int, argv: list[str]) -> None:
    """The reaper: start the agent, reap until it has exited, kill what it left, exit alike."""
    os.set_inheritable(status, False)  # the agent must not hold it
    if not argv:
        os.write(status, b"error 0 no agent command given\n")
        os._exit(127)
    _become_subreaper()
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)  # the agent's group gets those, not us
    try:
        agent = os.posix_spawnp(argv[0], argv, os.environ, setsid=True, setsigdef=(
            signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE))
    except OSError as error:
        os.write(status, f"error {error.errno or 0} {error.strerror or error}\n".encode())
        os._exit(127)
    os.write(status, b"ok %d\n" % agent)
    _let_go_of_descriptors(status)
    while True:
        try:
            pid, agent_status = os.waitpid(-1, 0)
        except ChildProcessError:  # cannot happen while the agent is ours; be safe
            agent_status = 0
            break
        if pid == agent:
            break
    _kill_the_rest()
    _exit_like(agent_status)


if __name__ == "__main__":
    serve(int(sys.argv[1]), _read_argv(int(sys.argv[2])))
