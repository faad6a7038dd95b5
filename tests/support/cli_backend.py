"""A backend stand-in for CLI tests: holds a ledger open and keeps running turns.

Usage: python cli_backend.py LEDGER TURNS. Prints `ready SESSION_ID` once its session exists,
then one `turn N` line per finished turn; exits after TURNS turns.
"""

from __future__ import annotations

import sys

from chatledger import Ledger


def main() -> None:
    """Run TURNS turns with the stand-in agent in one session of LEDGER."""
    path, turns = sys.argv[1], int(sys.argv[2])
    command = [sys.executable, "-m", "chatledger.agent.standin"]
    with Ledger(path, agent_command=command, timeout=60) as ledger:
        session_id = ledger.create_session(study_id="backend").session_id
        print(f"ready {session_id}", flush=True)
        for turn in range(1, turns + 1):
            outcome = ledger.send(session_id, f"turn {turn} [[echo]]")
            assert outcome.ok, outcome.error
            print(f"turn {turn}", flush=True)


if __name__ == "__main__":
    main()
