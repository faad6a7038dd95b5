"""A process that sends turns to one session, for the ownership tests.

Usage: python turn_sender.py LEDGER SESSION MESSAGE...

Settings come from CHATLEDGER_* variables (the agent, the lease's ttl). Prints `ready` once
its ledger is open, then one JSON line per turn (`ok`, `reason`, `text`, `error`) as each
ends; never calls close (the exit hook does).
"""

from __future__ import annotations

import json
import sys

from chatledger import Ledger


def main() -> None:
    """Send each message in turn and report how it ended."""
    path, session_id, messages = sys.argv[1], sys.argv[2], sys.argv[3:]
    ledger = Ledger(path)
    print("ready", flush=True)
    for message in messages:
        outcome = ledger.send(session_id, message)
        print(json.dumps({"ok": outcome.ok, "reason": outcome.reason, "text": outcome.text,
                          "error": outcome.error}), flush=True)


if __name__ == "__main__":
    main()
