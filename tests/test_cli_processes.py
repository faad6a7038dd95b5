"""The CLI as real processes: beside a backend that writes, and following the log live."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from chatledger.events import SessionCreated
from chatledger.storage import EventLog

SUPPORT = Path(__file__).parent / "support"


def chatledger(ledger: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m chatledger --ledger LEDGER ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "chatledger", "--ledger", str(ledger), *args],
        capture_output=True, text=True, timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "CHATLEDGER_AGENT_COMMAND":
             f"{sys.executable} -m chatledger.agent.standin"},
    )


def test_the_console_entry_point_runs() -> None:
    result = subprocess.run([sys.executable, "-m", "chatledger", "--version"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "chatledger" in result.stdout


def test_every_command_works_while_a_backend_process_writes(ledger_path: Path) -> None:
    backend = subprocess.Popen(
        [sys.executable, str(SUPPORT / "cli_backend.py"), str(ledger_path), "12"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert backend.stdout is not None
        ready = backend.stdout.readline().split()
        assert ready[0] == "ready", ready
        backend_session = ready[1]
        mine = chatledger(ledger_path, "new", "--json")
        assert mine.returncode == 0, mine.stderr
        session_id = json.loads(mine.stdout)["session_id"]
        assert chatledger(ledger_path, "send", session_id, "hi [[echo]]").returncode == 0
        assert chatledger(ledger_path, "mode", session_id, "power").returncode == 0
        for args in (["sessions", "--json"], ["show", backend_session], ["history", backend_session],
                     ["events", "--json"], ["verify"], ["stats", "--json"],
                     ["replay", backend_session, "--at", "2"], ["export", "--format", "html"]):
            result = chatledger(ledger_path, *args)
            assert result.returncode == 0, (args, result.stderr)
        assert backend.wait(timeout=120) == 0
    finally:
        if backend.poll() is None:
            backend.kill()
            backend.wait(timeout=30)
    final = chatledger(ledger_path, "verify", "--json")
    assert json.loads(final.stdout)["ok"] is True
    with EventLog(ledger_path) as log:
        assert log.require_info(backend_session).turn_count == 12
        assert log.require_info(session_id).mode == "power"


def test_events_follow_prints_appends_from_another_process_live(ledger_path: Path) -> None:
    with EventLog(ledger_path) as log:
        log.append("s1", [SessionCreated()], 0)
    follower = subprocess.Popen(
        [sys.executable, "-m", "chatledger", "--ledger", str(ledger_path), "events", "--follow",
         "--json", "--limit", "4"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        assert first["event"]["type"] == "session_created"
        writer = subprocess.run(
            [sys.executable, "-c",
             "import sys, time\n"
             "from chatledger.storage import EventLog\n"
             "from chatledger.events import MessageSent\n"
             "with EventLog(sys.argv[1]) as log:\n"
             "    for turn in (1, 2, 3):\n"
             "        log.append('s1', [MessageSent(turn=turn, text=f'm{turn}')], turn)\n"
             "        time.sleep(0.2)\n",
             str(ledger_path)],
            timeout=60, capture_output=True, text=True,
        )
        assert writer.returncode == 0, writer.stderr
        started = time.monotonic()
        texts = [json.loads(follower.stdout.readline())["event"]["text"] for _ in range(3)]
        assert texts == ["m1", "m2", "m3"]
        assert follower.wait(timeout=30) == 0
        assert time.monotonic() - started < 30
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(timeout=30)


def test_piping_into_a_reader_that_closes_early_is_not_an_error(ledger_path: Path) -> None:
    with EventLog(ledger_path) as log:
        for index in range(300):
            log.append(f"s{index}", [SessionCreated()], 0)
    result = subprocess.run(
        f"{sys.executable} -m chatledger --ledger {ledger_path} events | head -n 1",
        shell=True, capture_output=True, text=True, timeout=60,
    )
    assert result.stdout.count("\n") == 1
    assert "Traceback" not in result.stderr
