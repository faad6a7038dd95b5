"""A writer process for the crash harness: appends and runs turns until it is killed.

Usage: python crash_writer.py LEDGER ACK_FILE SEED [--turns]

Three appender threads write to sessions of their own (so the group-commit writer batches
several callers into one transaction); every append the writer sees acknowledged is written
to ACK_FILE as `session version position batch parts` *after* `append` returned, in one
`write()` on an O_APPEND file, so a kill never leaves half a line. Each MessageSent's text
starts with its append's batch id and part, so the harness can check that an append is in
the ledger whole or not at all. With --turns it also runs agent turns with the stand-in
agent, so kills land in the middle of runs. It prints `ready` once its first append is
acknowledged (and its first turn is running, with --turns).
"""

from __future__ import annotations

import os
import random
import sys
import threading

from chatledger.events import MessageSent, SessionCreated
from chatledger.storage import EventLog

APPENDER_THREADS = 3
SESSIONS_PER_THREAD = 2


class Acks:
    """The acknowledgement file: whole lines, appended atomically, from any thread."""

    def __init__(self, path: str) -> None:
        self.descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.first = threading.Event()

    def write(self, lines: list[str]) -> None:
        """Append the lines with one write() (atomic on a local file)."""
        os.write(self.descriptor, "".join(lines).encode())
        self.first.set()


def append_forever(log: EventLog, acks: Acks, seed: int, thread: int) -> None:
    """Append 1-3 messages (or a SessionCreated) to this thread's sessions until killed."""
    rng = random.Random(seed * 100 + thread)
    counter = 0
    while True:
        session_id = f"direct-{thread}-{rng.randrange(SESSIONS_PER_THREAD)}"
        version = log.version(session_id)
        counter += 1
        batch = f"{seed}.{thread}.{counter}"
        parts = 1 if version == 0 else rng.randrange(1, 4)
        events = (
            [SessionCreated()]
            if version == 0
            else [MessageSent(turn=version, text=f"{batch} {part} " + "x" * rng.randrange(1, 400))
                  for part in range(parts)]
        )
        try:
            written = log.append(session_id, events, version)
        except Exception as error:  # no other writer touches these sessions: report it
            print(f"append failed: {error!r}", file=sys.stderr, flush=True)
            continue
        acks.write([f"{r.session_id} {r.version} {r.position} {batch} {parts}\n"
                    for r in written])


def run_turns(path: str, salt: float, running: threading.Event) -> None:
    """Run stand-in turns on a session of their own, so kills interrupt runs."""
    from chatledger.ledger import Ledger

    ledger = Ledger(path, agent_command=(sys.executable, "-m", "chatledger.agent.standin"),
                    timeout=30, kill_grace=0.2)
    session_id = f"turns-{os.getpid() % 3}"
    if ledger.info(session_id) is None:
        ledger.create_session(session_id)

    def on_update(item: object) -> None:
        running.set()

    while True:
        ledger.send(session_id, f"[[slow {0.1 + salt * 0.3:.2f}]]", on_update=on_update,
                    stream_deltas=True)


def main() -> None:
    """Append forever (until killed), logging acknowledgements."""
    path, ack_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    acks = Acks(ack_path)
    log = EventLog(path)
    running = threading.Event()
    if "--turns" in sys.argv:
        threading.Thread(target=run_turns, args=(path, random.Random(seed).random(), running),
                         daemon=True).start()
    else:
        running.set()
    for thread in range(APPENDER_THREADS):
        threading.Thread(target=append_forever, args=(log, acks, seed, thread),
                         daemon=True).start()
    acks.first.wait(60)
    running.wait(60)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
