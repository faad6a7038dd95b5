"""A writer process for the crash harness: appends and runs turns until it is killed.

Usage: python crash_writer.py LEDGER ACK_FILE SEED [--turns]

Every append the writer sees acknowledged is written to ACK_FILE as
`session version position` *after* `append` returned; the harness checks that each of
those is in the ledger after a SIGKILL at a random moment. With --turns it also runs agent
turns with the stand-in agent, so kills land in the middle of runs.
"""

from __future__ import annotations

import os
import random
import sys
import threading

from chatledger.events import MessageSent, SessionCreated
from chatledger.storage import EventLog

SESSIONS = 6


def main() -> None:
    """Append forever (until killed), logging acknowledgements."""
    path, ack_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(seed)
    ack = open(ack_path, "a", buffering=1)  # noqa: SIM115 - lives until the kill
    log = EventLog(path)
    if "--turns" in sys.argv:
        threading.Thread(target=run_turns, args=(path, rng.random()), daemon=True).start()
    while True:
        session_id = f"direct-{rng.randrange(SESSIONS)}"
        version = log.version(session_id)
        events = (
            [SessionCreated()]
            if version == 0
            else [MessageSent(turn=version, text="x" * rng.randrange(1, 3000))
                  for _ in range(rng.randrange(1, 4))]
        )
        try:
            written = log.append(session_id, events, version)
        except Exception as error:  # a conflict with the turn thread cannot happen here
            print(f"append failed: {error!r}", file=sys.stderr)
            continue
        for recorded in written:
            ack.write(f"{recorded.session_id} {recorded.version} {recorded.position}\n")


def run_turns(path: str, salt: float) -> None:
    """Run stand-in turns on a session of their own, so kills interrupt runs."""
    from chatledger.ledger import Ledger

    ledger = Ledger(path, agent_command=(sys.executable, "-m", "chatledger.agent.standin"),
                    timeout=30, kill_grace=0.2)
    session_id = f"turns-{os.getpid() % 3}"
    if ledger.info(session_id) is None:
        ledger.create_session(session_id)
    while True:
        ledger.send(session_id, f"[[slow {0.05 + salt * 0.2:.2f}]]")


if __name__ == "__main__":
    main()
