"""A program that uses chatledger and never calls stop()/close() still exits: at its end, on an
uncaught exception, and on Ctrl-C mid-turn, with the turn in flight recorded.

Every test runs a real script in a real subprocess, bounded by a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from testkit import STANDIN, wait_until

from chatledger.events import RunFailed, RunStarted
from chatledger.storage import open_store

EXIT_BOUND = 30.0
"""Seconds a script gets to exit (it needs well under 5 on an idle machine)."""

PRELUDE = f"""
import asyncio, sys
from chatledger import Ledger, SessionManager
STANDIN = {list(STANDIN)!r}
path = sys.argv[1]
"""


def run_script(body: str, path: Path) -> subprocess.CompletedProcess[str]:
    """Run PRELUDE + body with the ledger path as its argument, bounded by EXIT_BOUND."""
    script = PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=EXIT_BOUND)


def test_a_script_that_never_closes_the_ledger_exits_at_its_end(tmp_path: Path) -> None:
    result = run_script("""
        ledger = Ledger(path, agent_command=STANDIN)
        info = ledger.create_session()
        outcome = ledger.send(info.session_id, "hello")
        print("answered" if outcome.ok else "failed")
    """, tmp_path / "ledger")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "answered"


def test_a_script_dying_of_an_uncaught_exception_exits(tmp_path: Path) -> None:
    result = run_script("""
        ledger = Ledger(path, agent_command=STANDIN)
        ledger.create_session()
        raise RuntimeError("the backend broke")
    """, tmp_path / "ledger")
    assert result.returncode == 1
    assert "the backend broke" in result.stderr


def test_an_async_backend_that_never_stops_the_manager_exits(tmp_path: Path) -> None:
    result = run_script("""
        async def main():
            manager = SessionManager(path=path, agent_command=STANDIN)
            session = await manager.create_session()
            async for item in manager.send_message(session.session_id, "hi"):
                print(item["type"])
        asyncio.run(main())
    """, tmp_path / "ledger")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "done"


def test_ctrl_c_of_a_backend_mid_turn_exits_and_records_the_turn(tmp_path: Path) -> None:
    path = tmp_path / "ledger"
    script = PRELUDE + textwrap.dedent("""
        async def main():
            manager = SessionManager(path=path, agent_command=STANDIN, kill_grace=0.5)
            session = await manager.create_session(resume_session_id="backend-session")
            async for item in manager.send_message(session.session_id, "[[slow 60]]"):
                pass
        asyncio.run(main())
    """)
    backend = subprocess.Popen([sys.executable, "-c", script, str(path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def run_started() -> bool:
            if not (path / "data.mdb").exists():
                return False
            with open_store(path) as store:
                return any(isinstance(r.event, RunStarted)
                           for r in store.read_session("backend-session"))

        assert wait_until(run_started, timeout=EXIT_BOUND)
        os.kill(backend.pid, signal.SIGINT)
        backend.wait(timeout=EXIT_BOUND)
    finally:
        if backend.poll() is None:
            backend.kill()
            backend.wait()
    assert backend.returncode != 0  # KeyboardInterrupt
    with open_store(path) as store:
        events = [recorded.event for recorded in store.read_session("backend-session")]
    assert isinstance(events[-1], RunFailed)
    assert events[-1].reason in ("cancelled", "interrupted")
