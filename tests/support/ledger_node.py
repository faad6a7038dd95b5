"""One backend node for the multi-node tests: a `chatledger.Ledger` on a shared ledger
location (PostgreSQL), running turns with the stand-in agent.

Usage: python ledger_node.py LOCATION NODE RESULT_FILE TURNS SESSION_ID...

It resumes each SESSION_ID (created if new), prints `ready`, waits for a line on stdin (so
that several nodes start their turns together), then runs TURNS turns in every session at once (one thread per session, turns one after another within a session) and
writes what it saw acknowledged to RESULT_FILE as JSON: {"turns": {session: [text, ...]},
"errors": [...]}. Texts are `NODE SESSION turn N`.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from testkit import STANDIN

from chatledger import Ledger


def main() -> None:
    """Run the node (see the module docstring)."""
    location, node, result_file, turns = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    session_ids = sys.argv[5:]
    result: dict[str, Any] = {"turns": {session_id: [] for session_id in session_ids},
                              "errors": []}
    lock = threading.Lock()
    with Ledger(location, agent_command=STANDIN, timeout=60) as ledger:
        for session_id in session_ids:
            ledger.resume_session(session_id, study_id=f"study-{node}")
        print("ready", flush=True)
        sys.stdin.readline()

        def run(session_id: str) -> None:
            for number in range(1, turns + 1):
                text = f"{node} {session_id} turn {number} [[slow 0.02]]"
                try:
                    outcome = ledger.send(session_id, text)
                except Exception as error:  # noqa: BLE001 - reported to the test
                    with lock:
                        result["errors"].append(f"{text}: {error!r}")
                    continue
                with lock:
                    if outcome.ok:
                        result["turns"][session_id].append(text)
                    else:
                        result["errors"].append(f"{text}: {outcome.error or outcome.reason}")

        threads = [threading.Thread(target=run, args=(session_id,)) for session_id in session_ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    with open(result_file, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
