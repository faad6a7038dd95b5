"""Small client processes for the concurrency tests: a second writer, a reader, a stuck reader.

Usage:
  python ledger_client.py write LEDGER SESSION RESULT_FILE COUNT
      set SESSION's study to `writer-N` COUNT times with direct appends and expected
      versions (read, think a few milliseconds, append), retrying each on ConcurrencyError; write the acknowledged ones, the number
      of conflicts and the slowest append (seconds) to RESULT_FILE as JSON.
  python ledger_client.py read LEDGER
      read the whole log, the index and every session over and over (read-only), checking
      that every snapshot is contiguous; print `reading` once, then one `.` per round.
  python ledger_client.py hold LEDGER SECONDS
      open a read transaction, print `holding`, keep it open SECONDS, then exit.
"""

from __future__ import annotations

import json
import random
import sys
import time

from chatledger import ConcurrencyError
from chatledger.events import StudyContextSet
from chatledger.storage import EventLog


def write(path: str, session_id: str, result_file: str, count: int) -> None:
    """The second writer: direct appends with expected versions, retried on conflicts."""
    acknowledged: list[str] = []
    conflicts = 0
    slowest = 0.0
    rng = random.Random(count)
    with EventLog(path) as log:
        for number in range(count):
            study_id = f"writer-{number}"
            while True:
                version = log.version(session_id)
                time.sleep(rng.uniform(0, 0.04))  # decide, as a real writer would
                started = time.monotonic()
                try:
                    log.append(session_id, [StudyContextSet(study_id=study_id)], version)
                except ConcurrencyError:
                    conflicts += 1
                    continue
                finally:
                    slowest = max(slowest, time.monotonic() - started)
                acknowledged.append(study_id)
                break
    with open(result_file, "w", encoding="utf-8") as handle:
        json.dump({"studies": acknowledged, "conflicts": conflicts, "slowest": slowest}, handle)


def read(path: str) -> None:
    """Read everything again and again, checking each snapshot, until killed."""
    with EventLog(path, readonly=True) as log:
        print("reading", flush=True)
        while True:
            positions = [recorded.position for recorded in log.read_all()]
            assert positions == list(range(1, len(positions) + 1)), "a gap in the log"
            for info in log.sessions():
                versions = [r.version for r in log.read_session(info.session_id)]
                assert versions[: info.version] == list(range(1, info.version + 1))
            print(".", end="", flush=True)


def hold(path: str, seconds: float) -> None:
    """Keep one read transaction open for `seconds` (a reader that is slow or stuck)."""
    with EventLog(path, readonly=True) as log, log.store.shared.transaction():
        print("holding", flush=True)
        time.sleep(seconds)


def main() -> None:
    """Dispatch on the first argument."""
    command, path = sys.argv[1], sys.argv[2]
    if command == "write":
        write(path, sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif command == "read":
        read(path)
    elif command == "hold":
        hold(path, float(sys.argv[3]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
