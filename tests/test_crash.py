"""Crash harness: a writer process is killed with SIGKILL at random moments, again and again.

After each kill the ledger must open, verify clean, hold every append the writer saw
acknowledged, and (on the next activation) close interrupted turns. CI runs 200 kills;
`CHATLEDGER_CRASH_KILLS=N` runs more.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatledger.events import RunFailed, RunStarted
from chatledger.ledger import Ledger
from chatledger.storage import EventLog

WRITER = Path(__file__).parent / "support" / "crash_writer.py"
KILLS = int(os.environ.get("CHATLEDGER_CRASH_KILLS", "200"))


def acknowledged(ack_file: Path) -> list[tuple[str, int, int]]:
    entries = []
    for line in ack_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:  # the last line may be cut by the kill
            entries.append((parts[0], int(parts[1]), int(parts[2])))
    return entries


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_acknowledged_append(tmp_path: Path) -> None:
    ledger_path = tmp_path / "ledger"
    ack_file = tmp_path / "acks.txt"
    ack_file.touch()
    rng = random.Random(20261124)
    checked_acks = 0
    interrupted_closed = 0
    started = time.monotonic()
    for kill in range(KILLS):
        with_turns = kill % 4 == 0
        command = [sys.executable, str(WRITER), str(ledger_path), str(ack_file), str(kill)]
        if with_turns:
            command.append("--turns")
        writer = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.25, 0.6) if with_turns else rng.uniform(0.15, 0.4))
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        with EventLog(ledger_path) as log:
            report = log.verify()
            assert report.ok, (kill, report.problems)
            present = {(r.session_id, r.version): r.position for r in log.read_all()}
            for session_id, version, position in acknowledged(ack_file):
                assert present.get((session_id, version)) == position, (kill, session_id, version)
            checked_acks = len(acknowledged(ack_file))
        if with_turns:
            interrupted_closed += close_interrupted_turns(ledger_path)
    elapsed = time.monotonic() - started
    print(f"\ncrash harness: {KILLS} kills survived, {checked_acks} acknowledged appends "
          f"checked, {interrupted_closed} interrupted turns closed, {elapsed:.0f} s")
    assert checked_acks > KILLS  # the writer made real progress between kills


def close_interrupted_turns(ledger_path: Path) -> int:
    """Activate every turn session; each open turn must be closed as interrupted."""
    closed = 0
    with Ledger(str(ledger_path), agent_command=("true",)) as ledger:
        for info in ledger.sessions():
            if not info.session_id.startswith("turns-"):
                continue
            was_open = info.open_turn is not None
            ledger.runtime.actor(info.session_id)
            after = ledger.info(info.session_id)
            assert after is not None
            deadline = time.monotonic() + 5
            while after.open_turn is not None and time.monotonic() < deadline:
                time.sleep(0.02)
                after = ledger.info(info.session_id)
                assert after is not None
            assert after.open_turn is None, info.session_id
            if was_open:
                last = ledger.events(info.session_id)[-1].event
                assert isinstance(last, RunFailed) and last.reason == "interrupted"
                closed += 1
            events = [r.event for r in ledger.events(info.session_id)]
            opened = sum(isinstance(e, RunStarted) for e in events)
            ended = sum(isinstance(e, RunFailed) or type(e).__name__ == "ResponseReceived"
                        for e in events)
            assert opened == ended, info.session_id
    return closed
