"""Crash harness: a writer process is killed with SIGKILL at random moments, again and again.

After each kill the ledger must open, verify clean, hold every append the writer saw
acknowledged (whole: an append of several events is all there or not at all), and (on the
next activation) close interrupted turns. CI runs 200 kills; `--crash-kills N` (or
`CHATLEDGER_CRASH_KILLS=N`) runs more. Every `KILLS_PER_LEDGER` kills the harness starts a
fresh ledger, so a check stays cheap however many kills are asked for.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from chatledger.events import MessageSent, ResponseReceived, RunFailed, RunStarted
from chatledger.ledger import Ledger
from chatledger.storage import EventLog

WRITER = Path(__file__).parent / "support" / "crash_writer.py"
KILLS = int(os.environ.get("CHATLEDGER_CRASH_KILLS", "200"))
KILLS_PER_LEDGER = 25
EARLY_KILL_EVERY = 5
"""Every fifth kill lands at a random moment of start-up (opening, format check, first
appends) instead of after the writer said it is ready."""


def acknowledged(ack_file: Path) -> list[tuple[str, int, int, str, int]]:
    """(session, version, position, batch, parts) of every acknowledged event."""
    entries = []
    for line in ack_file.read_text().splitlines():
        session_id, version, position, batch, parts = line.split()
        entries.append((session_id, int(version), int(position), batch, int(parts)))
    return entries


def wait_ready(writer: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for the writer's `ready` line (False if it did not come in time)."""
    assert writer.stdout is not None
    readable, _, _ = select.select([writer.stdout], [], [], timeout)
    return bool(readable) and writer.stdout.readline().strip() == b"ready"


def check_ledger(ledger_path: Path, ack_file: Path, kill: int) -> int:
    """Verify, check every acknowledged append and that no append is half there; returns
    how many acknowledged events were checked."""
    with EventLog(ledger_path) as log:
        report = log.verify()
        assert report.ok, (kill, report.problems)
        present: dict[tuple[str, int], int] = {}
        parts_seen: dict[str, int] = defaultdict(int)
        parts_expected: dict[str, int] = {}
        for recorded in log.read_all():
            present[(recorded.session_id, recorded.version)] = recorded.position
            event = recorded.event
            if isinstance(event, MessageSent) and recorded.session_id.startswith("direct-"):
                parts_seen[event.text.split(" ", 1)[0]] += 1
    acks = acknowledged(ack_file)
    for session_id, version, position, batch, parts in acks:
        assert present.get((session_id, version)) == position, (kill, session_id, version)
        parts_expected[batch] = parts
    for batch, count in parts_seen.items():
        expected = parts_expected.get(batch)
        # An append the writer never heard back from may be there, but only whole.
        assert expected is None or count == expected, (kill, batch, count, expected)
        assert count in (1, 2, 3), (kill, batch, count)
    return len(acks)


def close_interrupted_turns(ledger_path: Path) -> int:
    """Activate every turn session; each open turn must be closed as interrupted."""
    closed = 0
    with Ledger(str(ledger_path), agent_command=("true",)) as ledger:
        for info in ledger.sessions():
            if not info.session_id.startswith("turns-"):
                continue
            was_open = info.open_turn is not None
            # Activation closes an open turn; a question to the actor waits for its start.
            ledger.runtime.live_info(info.session_id)
            after = ledger.info(info.session_id)
            assert after is not None and after.open_turn is None, info.session_id
            if was_open:
                last = ledger.events(info.session_id)[-1].event
                assert isinstance(last, RunFailed) and last.reason == "interrupted"
                closed += 1
            events = [r.event for r in ledger.events(info.session_id)]
            opened = sum(isinstance(e, RunStarted) for e in events)
            ended = sum(isinstance(e, (RunFailed, ResponseReceived)) for e in events)
            assert opened == ended, info.session_id
        assert ledger.verify().ok
    return closed


@pytest.mark.slow
@pytest.mark.timeout(120 + KILLS * 4)
def test_sigkill_at_random_moments_loses_no_acknowledged_append(tmp_path: Path) -> None:
    rng = random.Random(20261124)
    acks_checked = 0
    acks_distinct = 0
    interrupted_closed = 0
    not_ready = 0
    started = time.monotonic()
    for kill in range(KILLS):
        generation = kill // KILLS_PER_LEDGER
        ledger_path = tmp_path / f"ledger-{generation}"
        ack_file = tmp_path / f"acks-{generation}.txt"
        ack_file.touch()
        with_turns = kill % 4 == 0
        command = [sys.executable, str(WRITER), str(ledger_path), str(ack_file), str(kill)]
        if with_turns:
            command.append("--turns")
        writer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            if kill % EARLY_KILL_EVERY == 1:
                time.sleep(rng.uniform(0.0, 0.4))
            else:
                if not wait_ready(writer, 30):
                    not_ready += 1
                time.sleep(rng.uniform(0.0, 0.3))
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(10)
            assert writer.stdout is not None
            writer.stdout.close()
        count = check_ledger(ledger_path, ack_file, kill)
        acks_checked += count
        if with_turns:
            interrupted_closed += close_interrupted_turns(ledger_path)
            count = check_ledger(ledger_path, ack_file, kill)
        if (kill + 1) % KILLS_PER_LEDGER == 0 or kill == KILLS - 1:
            acks_distinct += count
    elapsed = time.monotonic() - started
    print(f"\ncrash harness: {KILLS} SIGKILLs survived; {acks_distinct} acknowledged events, "
          f"{acks_checked} ack checks in all; {interrupted_closed} interrupted turns closed; "
          f"{not_ready} writers not ready in time; {elapsed:.0f} s")
    assert acks_distinct > KILLS  # the writers made real progress between kills
    assert interrupted_closed > 0
    assert not_ready <= KILLS // 10
