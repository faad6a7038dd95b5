"""A process that sends one turn to each of several sessions at once, for the spend tests.

Usage: python owner_turns.py LEDGER TRIGGER_FILE MESSAGE SESSION...

Settings come from CHATLEDGER_* variables (the agent, the spend reserve). Prints `ready`
once its ledger is open, waits (at most 60 s) until TRIGGER_FILE exists, so that two such
processes start their turns together, then sends MESSAGE to every SESSION, each on its own
thread, and prints one JSON line per turn (`session`, `ok`, `reason`, `error`).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from chatledger import Ledger


def main() -> None:
    """Wait for the trigger, send the turns together, report how each ended."""
    path, trigger, message, sessions = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    ledger = Ledger(path)
    print("ready", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(trigger) and time.monotonic() < deadline:
        time.sleep(0.001)  # a file another process creates: no event to wait on
    results: dict[str, Any] = {}

    def send(session_id: str) -> None:
        results[session_id] = ledger.send(session_id, message)

    threads = [threading.Thread(target=send, args=(session_id,)) for session_id in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for session_id, outcome in results.items():
        print(json.dumps({"session": session_id, "ok": outcome.ok, "reason": outcome.reason,
                          "error": outcome.error}), flush=True)
    ledger.close()


if __name__ == "__main__":
    main()
