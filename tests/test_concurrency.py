"""Several processes on one ledger at once: a backend (the async SessionManager), a second
writer, the admin CLI, readers (some SIGKILLed mid-read, one stuck in a long read).

Expected-version conflicts must resolve with nothing lost or duplicated; readers must never
block a writer; the LMDB reader table must not fill up with the slots of killed readers.
Every subprocess and wait is bounded; time bounds are generous (two busy cores).
"""

from __future__ import annotations

import json
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit import pid_alive

from chatledger.errors import InvalidCommandError
from chatledger.events import (
    MessageSent,
    ModeSwitched,
    ResponseReceived,
    RunFailed,
    RunStarted,
    SessionCreated,
    StudyContextSet,
)
from chatledger.ledger import Ledger
from chatledger.storage import EventLog
from chatledger.storage.lmdb import environment

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and /proc")

SUPPORT = Path(__file__).parent / "support"
BACKEND = SUPPORT / "backend_process.py"
CLIENT = SUPPORT / "ledger_client.py"
ROUNDS = 4
WRITER_COUNT = 200
CLI_STUDIES = 3


def start(*args: str | Path) -> subprocess.Popen[bytes]:
    """Start a helper process with this interpreter; stdout piped, stderr kept for errors."""
    return subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_for_line(process: subprocess.Popen[bytes], expected: bytes, timeout: float) -> None:
    """Wait (bounded) for `expected` as the process's next stdout line."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    assert readable, f"no {expected!r} within {timeout} s"
    line = process.stdout.readline().strip()
    assert line == expected, (line, process.stderr.read() if process.stderr else b"")


def finish(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for a helper to end on its own, and insist that it succeeded."""
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=10)
        raise
    assert process.returncode == 0, stderr.decode(errors="replace")[-3000:]


def kill(process: subprocess.Popen[bytes]) -> bytes:
    """SIGKILL a helper and reap it; returns what it printed."""
    process.send_signal(signal.SIGKILL)
    stdout, _ = process.communicate(timeout=10)
    return stdout


def cli(ledger_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the admin CLI in a process of its own (bounded)."""
    return subprocess.run([sys.executable, "-m", "chatledger", "--ledger", str(ledger_path),
                           *args], capture_output=True, text=True, timeout=120)


def reader_pids(log: EventLog) -> list[int]:
    """The pids that hold a slot in the LMDB reader table."""
    rows = log.store.shared.env.readers().splitlines()[1:]
    return [int(row.split()[0]) for row in rows if row.strip()]


@pytest.fixture
def helpers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Helper processes to kill if a test fails half-way."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_backend_a_second_writer_the_cli_and_readers_share_one_ledger(
    ledger_path: Path, tmp_path: Path, helpers: list[subprocess.Popen[bytes]]
) -> None:
    shared = "shared-session"
    log = EventLog(ledger_path)
    try:
        log.append(shared, [SessionCreated(study_id="start")], 0)
        backend_result = tmp_path / "backend.json"
        writer_result = tmp_path / "writer.json"
        backend = start(BACKEND, ledger_path, shared, backend_result, ROUNDS)
        helpers.append(backend)
        wait_for_line(backend, b"ready", 120)
        writer = start(CLIENT, "write", ledger_path, shared, writer_result, WRITER_COUNT)
        helpers.append(writer)

        # The admin CLI beside them: a third writer to the shared session, in the background.
        cli_studies: list[str] = []
        cli_problems: list[str] = []
        cli_conflicts = 0

        def change_studies_with_the_cli() -> None:
            nonlocal cli_conflicts
            for number in range(CLI_STUDIES):
                for _ in range(20):
                    changed = cli(ledger_path, "study", shared, f"cli-{number}")
                    if changed.returncode == 5:  # the session moved on under it: run it again
                        cli_conflicts += 1
                        continue
                    if changed.returncode == 0:
                        cli_studies.append(f"cli-{number}")
                    else:
                        cli_problems.append(changed.stderr)
                    break

        cli_thread = threading.Thread(target=change_studies_with_the_cli, daemon=True)
        cli_thread.start()

        # Readers come and go; most are SIGKILLed in the middle of a read.
        rng = random.Random(7)
        killed_readers: list[int] = []
        reader_rounds = 0
        for _ in range(8):
            reader = start(CLIENT, "read", ledger_path)
            helpers.append(reader)
            wait_for_line(reader, b"reading", 60)
            time.sleep(rng.uniform(0.1, 0.5))
            assert reader.poll() is None, reader.stderr.read() if reader.stderr else b""
            killed_readers.append(reader.pid)
            reader_rounds += kill(reader).count(b".")

        # A stuck reader holds a read transaction; the writers go on regardless.
        stuck = start(CLIENT, "hold", ledger_path, "4")
        helpers.append(stuck)
        wait_for_line(stuck, b"holding", 60)
        slowest = 0.0
        for number in range(20):
            version = log.version("probe")
            began = time.monotonic()
            log.append("probe", [SessionCreated()] if version == 0 else
                       [MessageSent(turn=number, text="probe")], version)
            slowest = max(slowest, time.monotonic() - began)
        assert stuck.poll() is None  # the probes were all appended while it held its read
        killed_readers.append(stuck.pid)
        kill(stuck)
        assert slowest < 10, f"an append took {slowest:.1f} s beside a stuck reader"
        assert reader_rounds > 0

        # The CLI lists sessions while all of this goes on.
        listings = cli(ledger_path, "sessions", "--json")
        assert listings.returncode == 0, listings.stderr
        listed = {entry["session_id"] for entry in json.loads(listings.stdout)}
        assert {shared, "probe"} <= listed
        cli_thread.join(300)
        assert not cli_thread.is_alive() and cli_problems == []
        finish(writer, 240)
        finish(backend, 240)
        backend_seen = json.loads(backend_result.read_text())
        writer_seen = json.loads(writer_result.read_text())
        assert backend_seen["turn_errors"] == [] and backend_seen["study_failures"] == []
        assert len(backend_seen["turns"]) == 4 * ROUNDS

        # Conflicts resolved: every acknowledged study change is there exactly once.
        assert log.verify().ok
        records = log.read_session(shared)
        studies = Counter(r.event.study_id for r in records
                          if isinstance(r.event, StudyContextSet))
        acknowledged = backend_seen["studies"] + writer_seen["studies"] + cli_studies
        assert len(acknowledged) == 6 * ROUNDS + WRITER_COUNT + CLI_STUDIES
        assert set(studies) == set(acknowledged)
        assert all(count == 1 for count in studies.values()), studies.most_common(3)
        assert [r.version for r in records] == list(range(1, len(records) + 1))

        # Every acknowledged turn exactly once, each run closed, turn numbers in order.
        for session_id in [*backend_seen["sessions"], shared]:
            events = [r.event for r in log.read_session(session_id)]
            sent = [e for e in events if isinstance(e, MessageSent)]
            assert [e.turn for e in sent] == list(range(1, ROUNDS + 1)), session_id
            started = sum(isinstance(e, RunStarted) for e in events)
            closed = sum(isinstance(e, (ResponseReceived, RunFailed)) for e in events)
            assert started == closed == ROUNDS, session_id
        texts = Counter(r.event.text for r in log.read_all() if isinstance(r.event, MessageSent)
                        and r.session_id != "probe")
        assert set(texts) == set(backend_seen["turns"]) and max(texts.values()) == 1

        # No slot of a killed reader is left in the reader table once someone opened it.
        assert cli(ledger_path, "sessions", "--json").returncode == 0
        assert not set(reader_pids(log)) & set(killed_readers)
        assert all(pid_alive(pid) for pid in reader_pids(log))
        verified = cli(ledger_path, "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        print(f"\nconcurrency: {len(acknowledged)} acknowledged study changes from 3 processes "
              f"({backend_seen['study_conflicts']} backend, {writer_seen['conflicts']} writer, "
              f"{cli_conflicts} CLI conflicts retried), {len(backend_seen['turns'])} turns, "
              f"{len(killed_readers)} readers killed, slowest append beside a stuck reader "
              f"{slowest:.2f} s, slowest second-writer append {writer_seen['slowest']:.2f} s; "
              f"{reader_rounds} reader rounds")
    finally:
        log.close()


@pytest.mark.timeout(300)
def test_killed_readers_never_fill_the_reader_table(
    ledger_path: Path, monkeypatch: pytest.MonkeyPatch, helpers: list[subprocess.Popen[bytes]]
) -> None:
    # This process opens the ledger first, so its lock file gets a small reader table, and
    # keeps it open (as a long-lived backend would), so LMDB never resets the table.
    slots = 12
    monkeypatch.setattr(environment, "MAX_READERS", slots)
    with EventLog(ledger_path) as backend:
        backend.append("s", [SessionCreated()], 0)
        assert backend.store.shared.env.max_readers() == slots
        for round_number in range(3 * slots):
            holder = start(CLIENT, "hold", ledger_path, "60")  # a read-only CLI reader
            helpers.append(holder)
            wait_for_line(holder, b"holding", 60)
            kill(holder)  # dies holding its slot
            backend.append("s", [MessageSent(turn=round_number, text="x")], round_number + 1)
        assert backend.version("s") == 3 * slots + 1
        finish(start(CLIENT, "hold", ledger_path, "0"), 60)  # the next open frees the last
        assert all(pid_alive(pid) for pid in reader_pids(backend))
        assert backend.verify().ok


def test_commands_raced_by_another_writer_are_decided_again_not_recorded_twice(
    ledger_path: Path,
) -> None:
    standin = (sys.executable, "-m", "chatledger.agent.standin")
    with Ledger(str(ledger_path), agent_command=standin, timeout=30) as ledger:
        other = EventLog(ledger_path)  # appends as another process would (the actor's state
        try:                           # in memory goes stale)
            ledger.runtime.actor("raced", must_exist=False)
            other.append("raced", [SessionCreated()], 0)
            with pytest.raises(InvalidCommandError, match="already exists"):
                ledger.create_session("raced")
            other.append("raced", [ModeSwitched(from_mode="user", to_mode="power")], 1)
            assert ledger.switch_mode("raced", "power").version == 2  # nothing to record
            other.append("raced", [MessageSent(turn=1, text="from elsewhere"),
                                   RunStarted(turn=1), RunFailed(turn=1, reason="cancelled")], 2)
            assert ledger.send("raced", "mine").turn == 2
        finally:
            other.close()
        kinds = [type(r.event).__name__ for r in ledger.events("raced")]
        assert kinds == ["SessionCreated", "ModeSwitched", "MessageSent", "RunStarted",
                         "RunFailed", "MessageSent", "RunStarted", "ResponseReceived"]
        assert ledger.verify().ok
