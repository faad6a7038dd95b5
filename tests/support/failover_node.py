"""One node under load for the failover test: appends through a PostgresStore opened on a
multi-host URL, from one thread per session, and follows the global order with a
subscription, across a failover of the primary.

Usage: python failover_node.py URL NODE SESSIONS

Prints `ready`, then one line per acknowledged append:
`ack SESSION VERSION TITLE POSITION MONOTONIC` (so the test knows exactly what was
acknowledged, and when). An append whose outcome is
unknown (the commit was cut) is re-read and reported as `unknown ...`; errors go to stderr,
one line each, and the thread carries on. A line on stdin stops it: it prints
`done {json}` with its counts, the highest position its subscription saw (once it saw
the last one acknowledged here, or after 20 s) and how many times its listener connected
(once it reconnected after the failover, or after 20 s more), and exits.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from chatledger.errors import LedgerError
from chatledger.events import SessionTitled
from chatledger.storage.postgresql import open_postgresql_store
from chatledger.storage.postgresql.store import PostgresStore

STOP = threading.Event()
APPENDS_ENDED = threading.Event()
STOPPED = [0.0]
"""When the last append ended (monotonic)."""
PRINT = threading.Lock()


def say(line: str) -> None:
    """One line on stdout, whole (threads share it)."""
    with PRINT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def append_forever(store: PostgresStore, session_id: str, counts: dict[str, int],
                   acknowledged: dict[str, int]) -> None:
    """Append one event at a time to the session until told to stop."""
    version = store.version(session_id)
    number = 0
    while not STOP.is_set():
        number += 1
        title = f"{session_id}-{version + 1}-{number}"
        try:
            recorded = store.append(session_id, [SessionTitled(title=title)],
                                    version)
        except LedgerError as error:
            counts["errors"] += 1
            print(f"{session_id}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            try:
                version = store.version(session_id)
            except LedgerError as again:
                print(f"{session_id}: re-read: {again}", file=sys.stderr, flush=True)
                STOP.wait(0.2)
            continue
        version, position = recorded[-1].version, recorded[-1].position
        counts["acks"] += 1
        with PRINT:
            acknowledged["position"] = max(acknowledged["position"], position)
        say(f"ack {session_id} {version} {title} {position} {time.monotonic():.4f}")


def follow(store: PostgresStore, seen: dict[str, int], acknowledged: dict[str, int]) -> None:
    """Follow the global order (catch-up, then live) until told to stop and caught up
    with what this node's appends were acknowledged at (20 s at most after the stop)."""
    subscription = store.subscribe(1)
    while not APPENDS_ENDED.is_set() or (seen["position"] < acknowledged["position"]
                                         and time.monotonic() < STOPPED[0] + 20):
        try:
            recorded = subscription.get(timeout=0.5)
        except LedgerError as error:
            seen["errors"] += 1
            print(f"subscription: {error}", file=sys.stderr, flush=True)
            STOP.wait(0.2)
            continue
        if recorded is not None:
            seen["position"] = recorded.position
    subscription.close()


def main() -> None:
    """Run the node (see the module docstring)."""
    url, node, sessions = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = open_postgresql_store(url, pool_size=sessions + 3, reconnect_timeout=10.0)
    counts = {session: {"acks": 0, "errors": 0} for session in
              (f"{node}-{number}" for number in range(sessions))}
    seen = {"position": 0, "errors": 0}
    acknowledged = {"position": 0}
    threads = [threading.Thread(target=append_forever, args=(store, session, count,
                                                             acknowledged))
               for session, count in counts.items()]
    threads.append(threading.Thread(target=follow, args=(store, seen, acknowledged)))
    say("ready")
    for thread in threads:
        thread.start()
    sys.stdin.readline()
    STOP.set()
    for thread in threads[:-1]:
        thread.join(60)
    STOPPED[0] = time.monotonic()
    APPENDS_ENDED.set()
    threads[-1].join(30)
    listener = store.listener
    # Every run of this node spans a failover: give its LISTEN connection (which retries on a
    # back-off of its own) up to 20 s to be up on the new primary before reporting it.
    reconnected = threading.Event()
    deadline = time.monotonic() + 20
    while listener and listener.connections < 2 and time.monotonic() < deadline:
        reconnected.wait(0.05)  # a bounded poll of the listener thread's counter
    say("done " + json.dumps({"counts": counts, "seen": seen, "acknowledged": acknowledged,
                              "listener_connections": listener.connections if listener else 0}))
    store.close()


if __name__ == "__main__":
    main()
