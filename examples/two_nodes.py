"""Two backend nodes on one PostgreSQL ledger, and the handover when one of them dies.

    python examples/two_nodes.py postgresql://chatledger@db/chatledger

(or set CHATLEDGER_PATH to the URL). It starts two node processes (this file with `--node`),
each a `chatledger.Ledger` on the same database with the bundled stand-in agent (offline,
free). A "load balancer" here pins sessions a1, a2 to node A and b1, b2 to node B and sends a
turn to each. Then node A starts a long turn in a1 and is killed mid-turn (SIGKILL, as an OOM
kill or a crash would); the sessions of A are sent to B, which takes each over (its lease:
at once if it can see A's process is gone, as here on one machine; after the lease's ttl
from another machine), closes the cut turn as interrupted and answers. Finally it prints a1's
history and verifies the shared ledger. Exit status 0 when all of that happened.

A node reads one JSON request per line on stdin (`{"session": ..., "text": ...}`), runs each
in its own thread, and prints one JSON line per answer; `ready` once its ledger is open.
Settings for the nodes come from CHATLEDGER_* variables as usual (CHATLEDGER_LEASE_TTL).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

STANDIN = (sys.executable, "-m", "chatledger.testing.standin")
BOUND = 60.0
"""The longest wait for any one answer or event (seconds)."""


# -- a node ---------------------------------------------------------------------------------

def run_node(url: str, name: str) -> None:
    """Serve turns from stdin until it closes (see the module docstring)."""
    from chatledger import Ledger

    lock = threading.Lock()

    def say(message: dict[str, Any]) -> None:
        with lock:
            print(json.dumps(message), flush=True)

    def turn(ledger: Ledger, session_id: str, text: str) -> None:
        started = time.monotonic()
        try:
            outcome = ledger.send(session_id, text)
            say({"node": name, "session": session_id, "ok": outcome.ok, "text": outcome.text,
                 "reason": outcome.reason, "seconds": round(time.monotonic() - started, 2)})
        except Exception as error:  # noqa: BLE001 - reported to the driver
            say({"node": name, "session": session_id, "ok": False, "text": "",
                 "reason": f"{type(error).__name__}: {error}"})

    with Ledger(url, agent_command=STANDIN, timeout=BOUND) as ledger:
        say({"node": name, "ready": True, "pid": os.getpid()})
        threads = []
        for line in sys.stdin:
            request = json.loads(line)
            ledger.resume_session(request["session"])
            thread = threading.Thread(target=turn, args=(ledger, request["session"],
                                                         request["text"]), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(BOUND)


# -- the driver -----------------------------------------------------------------------------

class Node:
    """A node process and its answers (read on a thread)."""

    def __init__(self, url: str, name: str) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--node", name, url], text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.next_answer()
        if not ready.get("ready"):
            raise SystemExit(f"node {name} did not start: {ready}")
        self.pid = int(ready["pid"])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.answers.put(json.loads(line))
        self.answers.put({"node": self.name, "ok": False, "reason": "the node exited"})

    def send(self, session_id: str, text: str) -> None:
        """Give the node one turn to run (it answers on its stdout)."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"session": session_id, "text": text}) + "\n")
        self.process.stdin.flush()

    def next_answer(self) -> dict[str, Any]:
        """The node's next answer (bounded)."""
        try:
            return self.answers.get(timeout=BOUND)
        except queue.Empty:
            raise SystemExit(f"node {self.name} gave no answer within {BOUND:g} s") from None

    def stop(self) -> None:
        """Let the node finish and exit (killed if it does not within the bound)."""
        if self.process.poll() is None and self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(BOUND)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def show(answer: dict[str, Any]) -> None:
    """Print one answer on one line."""
    status = "ok" if answer["ok"] else f"failed ({answer['reason']})"
    print(f"  node {answer['node']} answered {answer['session']}: {answer['text']!r} "
          f"{status} in {answer.get('seconds', '?')} s")


def turns_started(url: str, session_id: str) -> int:
    """How many turns of the session have started their run."""
    from chatledger.events import RunStarted
    from chatledger.storage import open_store

    with open_store(url, create=False) as store:
        return sum(isinstance(recorded.event, RunStarted)
                   for recorded in store.read_session(session_id))


def wait_for_run(url: str, session_id: str, count: int) -> None:
    """Block until `count` turns of the session have started their run (bounded)."""
    deadline = time.monotonic() + BOUND
    while turns_started(url, session_id) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"the turn in {session_id} did not start within {BOUND:g} s")
        time.sleep(0.05)


def history(url: str, session_id: str) -> list[str]:
    """A session's turn events, one line each, with the process that ran each run."""
    from chatledger.events import MessageSent, ResponseReceived, RunFailed, RunStarted
    from chatledger.storage import open_store

    lines = []
    with open_store(url, create=False) as store:
        for recorded in store.read_session(session_id):
            event = recorded.event
            if isinstance(event, MessageSent):
                lines.append(f"v{recorded.version} message {event.turn}: {event.text!r}")
            elif isinstance(event, RunStarted):
                lines.append(f"v{recorded.version} run {event.turn} started by pid {event.pid} "
                             f"under lease epoch {event.lease_epoch}")
            elif isinstance(event, ResponseReceived):
                lines.append(f"v{recorded.version} answer {event.turn}: {event.text!r}")
            elif isinstance(event, RunFailed):
                lines.append(f"v{recorded.version} run {event.turn} failed: {event.reason}")
    return lines


def drive(url: str) -> int:
    """Run the two-node story (see the module docstring); the exit status."""
    from chatledger.storage import open_store

    open_store(url).close()  # the schema, before two nodes race to create it
    pinned = {"A": ["a1", "a2"], "B": ["b1", "b2"]}
    nodes = {name: Node(url, name) for name in pinned}
    failures = 0
    try:
        print(f"two nodes on {url.rpartition('@')[2]}: "
              + ", ".join(f"{name} (pid {node.pid})" for name, node in nodes.items()))
        print("1. every session's turn on the node it is pinned to")
        for name, session_ids in pinned.items():
            for session_id in session_ids:
                nodes[name].send(session_id, f"hello from {session_id}")
        for name, session_ids in pinned.items():
            for _ in session_ids:
                answer = nodes[name].next_answer()
                show(answer)
                failures += not answer["ok"]

        print("2. node A starts a long turn in a1 and is killed mid-turn")
        started = turns_started(url, "a1")
        nodes["A"].send("a1", "a long answer [[slow 60]]")
        wait_for_run(url, "a1", started + 1)
        os.kill(nodes["A"].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        nodes["A"].process.wait(10)
        print(f"  node A (pid {nodes['A'].pid}) killed")

        print("3. the load balancer sends A's sessions to B, which takes them over")
        for session_id in pinned["A"]:
            nodes["B"].send(session_id, f"still there? ({session_id})")
        for _ in pinned["A"]:
            answer = nodes["B"].next_answer()
            show(answer)
            failures += not answer["ok"]
        print(f"  handover and answers within {time.monotonic() - killed_at:.2f} s of the kill")
    finally:
        for node in nodes.values():
            if node.process.poll() is None:
                node.stop()

    print("4. a1's history in the shared ledger")
    lines = history(url, "a1")
    for line in lines:
        print(f"  {line}")
    if not any("failed: interrupted" in line for line in lines):
        print("  the cut turn was not closed as interrupted")
        failures += 1
    with open_store(url, create=False) as store:
        report = store.verify(store.head())
        records = store.head().position
    print(f"5. verify: {'ok' if report.ok else report.problems} "
          f"({report.sessions_checked} sessions, {records} records)")
    return 0 if failures == 0 and report.ok else 1


def main() -> None:
    """Parse the command line: drive the story, or (`--node NAME`) be one node."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default=os.environ.get("CHATLEDGER_PATH"),
                        help="the postgresql:// URL of the shared ledger")
    parser.add_argument("--node", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if not arguments.url or not arguments.url.startswith(("postgresql://", "postgres://")):
        parser.error("give a postgresql:// URL (or set CHATLEDGER_PATH to one)")
    if arguments.node:
        run_node(arguments.url, arguments.node)
        return
    sys.exit(drive(arguments.url))


if __name__ == "__main__":
    main()
