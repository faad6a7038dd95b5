"""A backend process that runs one slow turn, for the cross-process interrupt tests.

Usage: python slow_turn_backend.py LEDGER MESSAGE

Settings come from CHATLEDGER_* variables (the agent, warm sessions). It creates a session,
prints `running SESSION_ID` once the turn's first text delta arrived (its RunStarted is
recorded then), and, when the turn has ended, one JSON line (`ok`, `reason`, `error`).
"""

from __future__ import annotations

import json
import sys
import threading

from chatledger import Ledger
from chatledger.actors.updates import TextDeltaUpdate


def main() -> None:
    """Run MESSAGE as one turn of a new session and report how it ended."""
    path, message = sys.argv[1], sys.argv[2]
    with Ledger(path) as ledger:
        session_id = ledger.create_session().session_id
        told = threading.Event()

        def on_update(update: object) -> None:
            if isinstance(update, TextDeltaUpdate) and not told.is_set():
                told.set()
                print(f"running {session_id}", flush=True)

        outcome = ledger.send(session_id, message, on_update=on_update, stream_deltas=True)
        print(json.dumps({"ok": outcome.ok, "reason": outcome.reason, "error": outcome.error}),
              flush=True)


if __name__ == "__main__":
    main()
