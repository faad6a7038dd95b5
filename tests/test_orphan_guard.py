"""The orphan guard: what it stops when its backend dies, and how (real process groups).

The end-to-end case (a backend killed with SIGKILL mid-run, its silent agent stopped) is
`test_actors.py::test_kill_9_of_the_process_hosting_a_run_then_reopen_closes_the_turn_interrupted`.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time

import pytest

from chatledger.agent import orphan_guard
from chatledger.agent.orphan_guard import OrphanGuard, serve, stop_groups

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")

SLEEPER = "import signal, sys, time\n{setup}\nprint('ready', flush=True)\ntime.sleep(60)\n"


def start_group(*, ignore_term: bool = False) -> subprocess.Popen[str]:
    """A process leading its own group, ready once it has printed 'ready'."""
    setup = "signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_term else ""
    process = subprocess.Popen(
        [sys.executable, "-c", SLEEPER.format(setup=setup)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def ended(process: subprocess.Popen[str], timeout: float) -> bool:
    """Whether the process exits within `timeout` seconds."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_at_end_of_file_only_the_groups_still_announced_are_stopped() -> None:
    kept, withdrawn = start_group(), start_group()
    try:
        announcements = io.BytesIO(
            b"+%d\n+%d\nnot an announcement\n-%d\n" % (kept.pid, withdrawn.pid, withdrawn.pid)
        )
        serve(announcements, grace=1.0)
        assert ended(kept, 5) and kept.returncode == -15  # SIGTERM
        assert not ended(withdrawn, 0.3)
    finally:
        for process in (kept, withdrawn):
            process.kill()
            process.wait(5)


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    stubborn = start_group(ignore_term=True)
    try:
        started = time.monotonic()
        stop_groups({stubborn.pid}, grace=0.5)
        assert ended(stubborn, 5) and stubborn.returncode == -9  # SIGKILL
        assert time.monotonic() - started >= 0.5
    finally:
        stubborn.kill()
        stubborn.wait(5)


def test_groups_that_are_gone_are_skipped_quietly() -> None:
    gone = start_group()
    gone.kill()
    gone.wait(5)
    started = time.monotonic()
    stop_groups({gone.pid}, grace=5.0)
    assert time.monotonic() - started < 1.0  # nothing left to wait for


def test_the_guard_process_itself_stops_its_groups_when_its_pipe_closes() -> None:
    agent = start_group()
    guard = subprocess.Popen([sys.executable, "-I", "-S", orphan_guard.__file__],
                             stdin=subprocess.PIPE, start_new_session=True)
    try:
        assert guard.stdin is not None
        guard.stdin.write(b"+%d\n" % agent.pid)
        guard.stdin.flush()
        assert not ended(agent, 0.3)  # the guard does nothing while its backend lives
        guard.stdin.close()  # as when the backend dies
        assert ended(agent, 5) and agent.returncode == -15
        assert ended(guard, 5) and guard.returncode == 0
    finally:
        for process in (agent, guard):
            process.kill()
            process.wait(5)


def test_a_guard_that_stops_reading_never_blocks_a_run(caplog: pytest.LogCaptureFixture) -> None:
    guard = OrphanGuard()
    guard.release(4_999_999)  # starts the guard process
    guard_pid = guard._guard_pid
    assert guard_pid is not None
    os.kill(guard_pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        for offset in range(20_000):  # far more than a pipe holds (64 KiB)
            guard.watch(5_000_000 + offset)  # beyond pid_max: no such group
        assert time.monotonic() - started < 10
        assert caplog.text.count("not reading") == 1  # said once, not per run
    finally:
        os.kill(guard_pid, signal.SIGCONT)
        guard._close()  # as at the backend's exit: the guard finds no live group and ends
        os.waitpid(guard_pid, 0)


def test_a_forked_child_leaves_the_parents_guard_alone() -> None:
    guard = OrphanGuard()
    guard.release(4_999_999)  # starts the parent's guard
    parent_guard = guard._guard_pid
    assert parent_guard is not None
    try:
        child = os.fork()
        if child == 0:  # the child must not announce its agents to the parent's guard
            os._exit(0 if guard._pipe is None and guard._guard_pid is None else 1)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert guard._guard_pid == parent_guard and guard._pipe is not None
    finally:
        guard._close()
        os.waitpid(parent_guard, 0)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/PID/fd")
def test_the_guard_holds_no_descriptor_but_its_pipe_and_dev_null(tmp_path: object) -> None:
    held = os.open(os.path.join(str(tmp_path), "data.mdb"), os.O_RDWR | os.O_CREAT)
    os.set_inheritable(held, True)  # as LMDB's descriptors are: spawned children inherit them
    guard = OrphanGuard()
    try:
        guard.release(4_999_999)  # starts the guard process
        guard_pid = guard._guard_pid
        assert guard_pid is not None

        def targets() -> set[str]:
            names = set()
            for fd in os.listdir(f"/proc/{guard_pid}/fd"):
                with contextlib.suppress(OSError):
                    names.add(os.readlink(f"/proc/{guard_pid}/fd/{fd}"))
            return names

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any("data.mdb" in t for t in targets()):
            time.sleep(0.02)  # polling a condition: the guard closes them as it starts
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{guard_pid}/fd"))
        assert fds == [0, 1, 2], targets()
        assert os.readlink(f"/proc/{guard_pid}/fd/0").startswith("pipe:")
        assert {os.readlink(f"/proc/{guard_pid}/fd/{fd}") for fd in (1, 2)} == {os.devnull}
    finally:
        os.close(held)
        guard_pid = guard._guard_pid
        guard._close()
        if guard_pid is not None:
            os.waitpid(guard_pid, 0)
