"""`chatledger interrupt` stops a turn that another process runs: a backend process runs a
slow stand-in turn, the CLI (a process of its own) asks, and the turn is recorded as
cancelled, with what it had streamed, within a bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chatledger.events import InterruptRequested, RunFailed
from chatledger.storage import open_store

SUPPORT = Path(__file__).parent / "support"
STANDIN = f"{sys.executable} -m chatledger.testing.standin"


def environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("CHATLEDGER_")}
    env.update({"CHATLEDGER_AGENT_COMMAND": STANDIN, **extra})
    return env


def chatledger(ledger: Path | str, *args: str,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatledger", "--ledger", str(ledger), *args],
                          capture_output=True, text=True, timeout=120, env=environment(),
                          cwd=cwd)


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_interrupt_from_another_process_stops_the_backend_s_turn(ledger_path: Path,
                                                                  warm: bool) -> None:
    interrupt_a_backend_turn(str(ledger_path), warm, ledger_path.parent)


def test_interrupt_from_another_process_on_a_postgresql_ledger(postgres_url: str,
                                                               tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    interrupt_a_backend_turn(postgres_url, False, tmp_path)


def interrupt_a_backend_turn(location: str, warm: bool, cwd: Path) -> None:
    """A backend process runs a slow turn; `chatledger interrupt` stops it; the ledger says
    so (the request, then RunFailed cancelled with the streamed text, within a bound)."""
    backend = subprocess.Popen(
        [sys.executable, str(SUPPORT / "slow_turn_backend.py"), location,
         "count slowly [[slow 60]]"],
        stdout=subprocess.PIPE, text=True, cwd=cwd,
        env=environment(CHATLEDGER_WARM_AGENTS="yes" if warm else "no"))
    try:
        assert backend.stdout is not None
        ready = backend.stdout.readline().split()
        assert ready and ready[0] == "running", ready
        session_id = ready[1]
        asked_at = time.monotonic()
        result = chatledger(location, "interrupt", session_id[:8], "--json", cwd=cwd)
        took = time.monotonic() - asked_at
        assert result.returncode == 0, result.stderr
        said = json.loads(result.stdout)
        assert (said["outcome"], said["reason"]) == ("interrupted", "cancelled")
        assert took < 30, took  # the turn alone would take 60 s
        ended = json.loads(backend.stdout.readline())
        assert (ended["ok"], ended["reason"]) == (False, "cancelled")
        assert backend.wait(timeout=60) == 0
    finally:
        if backend.poll() is None:
            backend.kill()
            backend.wait(timeout=30)
    with open_store(location) as log:
        records = log.read_session(session_id)
    requested = [r for r in records if isinstance(r.event, InterruptRequested)]
    failed = [r for r in records if isinstance(r.event, RunFailed)]
    assert len(requested) == 1 and requested[0].event.turn == 1
    assert requested[0].event.requested_by.startswith("cli:")
    assert [f.event.reason for f in failed] == ["cancelled"]
    assert failed[0].event.partial_text.startswith("echo")  # what the user had seen
    stopped_after = (failed[0].recorded_at - requested[0].recorded_at).total_seconds()
    assert 0 <= stopped_after < 5, stopped_after


def test_interrupt_without_a_running_turn_says_so(ledger_path: Path) -> None:
    created = chatledger(ledger_path, "new", "--json")
    session_id = json.loads(created.stdout)["session_id"]
    assert chatledger(ledger_path, "send", session_id, "hi [[echo]]").returncode == 0
    result = chatledger(ledger_path, "interrupt", session_id)
    assert result.returncode == 1
    assert f"no turn is running in session {session_id}" in result.stderr
    with open_store(str(ledger_path)) as log:
        assert not [r for r in log.read_session(session_id)
                    if isinstance(r.event, InterruptRequested)]


def test_interrupt_of_an_unknown_session_exits_3(ledger_path: Path) -> None:
    chatledger(ledger_path, "new")
    result = chatledger(ledger_path, "interrupt", "no-such-session")
    assert result.returncode == 3, result.stderr


def test_a_recorded_interrupt_request_stops_this_process_s_turn_within_a_bound(
        tmp_path: Path) -> None:
    from chatledger import Ledger
    from chatledger.actors.interrupts import request_interrupt
    from chatledger.actors.updates import TextDeltaUpdate

    with Ledger(str(tmp_path / "ledger"), agent_command=STANDIN) as ledger:
        session = ledger.create_session().session_id
        assert request_interrupt(ledger.runtime.log, session, "test").turn is None
        streaming = threading.Event()
        done: list[Any] = []
        sender = threading.Thread(target=lambda: done.append(ledger.send(
            session, "[[slow 60]]", stream_deltas=True,
            on_update=lambda u: streaming.set() if isinstance(u, TextDeltaUpdate) else None)))
        sender.start()
        assert streaming.wait(30)
        asked = request_interrupt(ledger.runtime.log, session, "test")
        assert asked.turn == 1
        sender.join(30)
        assert done and (done[0].ok, done[0].reason) == (False, "cancelled")
        failed = [r for r in ledger.events(session) if isinstance(r.event, RunFailed)]
        assert asked.recorded is not None
        took = (failed[-1].recorded_at - asked.recorded.recorded_at).total_seconds()
        assert took < 5, took


@pytest.mark.parametrize("since", [0, 1], ids=["start_unknown", "from_the_turns_start"])
def test_the_watcher_stops_only_the_turn_named_and_only_once(tmp_path: Path,
                                                             since: int) -> None:
    from chatledger.actors.interrupts import InterruptWatcher
    from chatledger.events import MessageSent, RunStarted, SessionCreated

    with open_store(str(tmp_path / "ledger")) as log:
        for session in ("a", "b"):
            log.append(session, [SessionCreated(), MessageSent(turn=1, text="hi"),
                                 RunStarted(turn=1, argv=("x",), prompt_digest="d")], 0)
        log.append("a", [InterruptRequested(turn=1, requested_by="t")], 3)  # before any look
        stopped: list[tuple[str, int]] = []
        told = threading.Event()

        def stop(session_id: str, turn: int) -> None:
            stopped.append((session_id, turn))
            told.set()

        # since: the sessions' version before turn 1 started (1), or not known (0)
        watcher = InterruptWatcher(log, lambda: [("a", 1, since), ("b", 1, since)], stop,
                                   poll=0.01)
        try:
            assert told.wait(10)
            log.append("b", [InterruptRequested(turn=2, requested_by="t")], 3)  # not turn 1
            log.append("a", [InterruptRequested(turn=1, requested_by="t")], 4)  # again
            looks: list[int] = []
            looked_again = threading.Event()

            def runs() -> list[tuple[str, int, int]]:
                looks.append(1)
                if len(looks) >= 6:  # three more polls after the appends
                    looked_again.set()
                return [("a", 1, since), ("b", 1, since)]

            watcher.runs = runs
            assert looked_again.wait(10)
        finally:
            watcher.close()
        assert stopped == [("a", 1)]
