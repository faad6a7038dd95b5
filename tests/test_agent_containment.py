"""Containment on Linux: an agent's whole tree, descendants that call setsid() or double-fork
included, is gone when its run ends by timeout, cancel, the ledger's close, or the agent's own
exit (real processes; the per-run reaper of `agent/reaper.py`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatledger.agent import CancelSwitch, reaper, run_agent
from chatledger.agent.reaper import descendants
from chatledger.ledger import Ledger

pytestmark = pytest.mark.skipif(not reaper.AVAILABLE, reason="the reaper is Linux's")

AGENT = '''
import os, signal, sys, time

DIRECTORY = {directory!r}


def daemon(name):
    """Become a daemon that ignores SIGINT and SIGTERM, holds no pipe, and says its pid."""
    null = os.open(os.devnull, os.O_RDWR)
    for standard in (0, 1, 2):
        os.dup2(null, standard)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(os.path.join(DIRECTORY, name + ".tmp"), "w") as handle:
        handle.write(str(os.getpid()))
    os.rename(os.path.join(DIRECTORY, name + ".tmp"), os.path.join(DIRECTORY, name + ".pid"))
    time.sleep(120)
    os._exit(0)


if os.fork() == 0:  # a child that leaves the agent's session and group
    os.setsid()
    daemon("setsid")
first = os.fork()
if first == 0:  # the classic double fork: the daemon's parent exits at once
    os.setsid()
    if os.fork() == 0:
        daemon("double-fork")
    os._exit(0)
os.waitpid(first, 0)
while not all(os.path.exists(os.path.join(DIRECTORY, n + ".pid")) for n in ("setsid", "double-fork")):
    time.sleep(0.01)
print("ready", flush=True)
if {then_exit!r}:
    sys.exit(0)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # only SIGKILL ends this agent
signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(120)
'''


def agent_script(tmp_path: Path, *, then_exit: bool = False) -> list[str]:
    path = tmp_path / "agent.py"
    path.write_text(textwrap.dedent(AGENT.format(directory=str(tmp_path), then_exit=then_exit)))
    return [sys.executable, str(path)]


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def daemon_pids(directory: Path) -> list[int]:
    return [int((directory / f"{name}.pid").read_text()) for name in ("setsid", "double-fork")]


def wait_for(condition: Callable[[], bool], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)  # polling a condition of other processes, not ordering threads
    return condition()


@pytest.fixture
def leftovers(tmp_path: Path) -> Iterator[None]:
    """Kill any daemon a failing test left behind."""
    yield
    for name in ("setsid", "double-fork"):
        path = tmp_path / f"{name}.pid"
        if path.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(path.read_text()), signal.SIGKILL)


def test_on_timeout_setsid_and_double_forked_descendants_are_gone(
    tmp_path: Path, leftovers: None,
) -> None:
    outcome = run_agent(agent_script(tmp_path), "", output_format="text", timeout=2,
                        kill_grace=0.3)
    assert outcome.failure_reason == "timeout" and outcome.text == "ready"
    pids = daemon_pids(tmp_path)
    assert not any(alive(pid) for pid in pids), pids


def test_on_cancel_setsid_and_double_forked_descendants_are_gone(
    tmp_path: Path, leftovers: None,
) -> None:
    cancel = CancelSwitch()
    flipper = threading.Thread(target=lambda: wait_for(
        lambda: (tmp_path / "double-fork.pid").exists()) and cancel.set())
    flipper.start()
    outcome = run_agent(agent_script(tmp_path), "", output_format="text", timeout=30,
                        cancel=cancel, kill_grace=0.3)
    flipper.join(30)
    assert outcome.failure_reason == "cancelled"
    assert not any(alive(pid) for pid in daemon_pids(tmp_path))


def test_what_an_agent_that_exits_leaves_behind_is_gone_when_its_run_returns(
    tmp_path: Path, leftovers: None,
) -> None:
    outcome = run_agent(agent_script(tmp_path, then_exit=True), "", output_format="text",
                        timeout=30)
    assert outcome.ok and outcome.exit_code == 0 and outcome.text == "ready"
    assert not any(alive(pid) for pid in daemon_pids(tmp_path))


def test_closing_the_ledger_mid_turn_stops_the_whole_tree(
    tmp_path: Path, leftovers: None,
) -> None:
    ledger = Ledger(str(tmp_path / "ledger"), agent_command=tuple(agent_script(tmp_path)),
                    output_format="text", timeout=60, kill_grace=0.3)
    closed = False
    try:
        session_id = ledger.create_session().session_id
        sender = threading.Thread(target=lambda: ledger.send(session_id, "hi", timeout=60))
        sender.start()
        assert wait_for(lambda: (tmp_path / "double-fork.pid").exists())
        ledger.close()
        closed = True
        sender.join(30)
    finally:
        if not closed:
            ledger.close()
    assert not any(alive(pid) for pid in daemon_pids(tmp_path))


def test_without_the_reaper_such_descendants_escape_the_process_group(
    tmp_path: Path, leftovers: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Why the reaper exists: the process group alone does not hold them.
    monkeypatch.setattr(reaper, "AVAILABLE", False)
    outcome = run_agent(agent_script(tmp_path), "", output_format="text", timeout=2,
                        kill_grace=0.3)
    assert outcome.failure_reason == "timeout"
    assert all(alive(pid) for pid in daemon_pids(tmp_path))


def test_descendants_follow_parent_links_below_a_process() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', "
         "'import sys; print(1, flush=True); sys.stdin.read()'])"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"1"
        below = descendants(os.getpid())
        assert child.pid in below and len(below - {child.pid}) >= 1  # the grandchild too
        assert os.getpid() not in below
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
