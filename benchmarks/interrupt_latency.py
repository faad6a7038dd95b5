"""How long a cross-process interrupt takes: `chatledger interrupt` in one process, the turn
running in another (a backend with the stand-in agent, cold and warm).

Usage: python -m benchmarks.interrupt_latency [ROUNDS]

For each round a backend process starts a slow stand-in turn; once text streams, this
process records InterruptRequested (what `chatledger interrupt` does, without the CLI's
start-up) and waits for the RunFailed. Reported per mode, as medians and maxima in ms: from
the request's commit to the RunFailed's commit (the ledger's own clocks) and from the call to
the RunFailed seen here. Offline; no network.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chatledger.actors.interrupts import request_interrupt, wait_for_end
from chatledger.storage import open_store

STANDIN = f"{sys.executable} -m chatledger.testing.standin"


def backend(path: str) -> None:
    """The backend: one slow turn in a new session; prints `running ID` once it streams."""
    import threading

    from chatledger import Ledger
    from chatledger.actors.updates import TextDeltaUpdate

    with Ledger(path) as ledger:
        session_id = ledger.create_session().session_id
        told = threading.Event()

        def on_update(update: object) -> None:
            if isinstance(update, TextDeltaUpdate) and not told.is_set():
                told.set()
                print(f"running {session_id}", flush=True)

        ledger.send(session_id, "[[slow 60]]", on_update=on_update, stream_deltas=True)


def one_round(directory: Path, warm: bool) -> tuple[float, float]:
    """(commit-to-commit ms, call-to-seen ms) of one interrupt."""
    path = str(directory / f"ledger-{time.monotonic_ns()}")
    env = {**os.environ, "CHATLEDGER_AGENT_COMMAND": STANDIN,
           "CHATLEDGER_WARM_AGENTS": "yes" if warm else "no"}
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.interrupt_latency",
                                "--backend", path], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        words = process.stdout.readline().split()
        assert words and words[0] == "running", words
        with open_store(path) as log:
            called = time.perf_counter()
            asked = request_interrupt(log, words[1], "benchmark")
            assert asked.turn is not None and asked.recorded is not None
            ended = wait_for_end(log, words[1], asked.turn, asked.recorded.version, 30)
            seen = time.perf_counter()
        assert ended is not None
        commits = (ended.recorded_at - asked.recorded.recorded_at).total_seconds()
        process.wait(60)
        return commits * 1000, (seen - called) * 1000
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def main() -> None:
    """Run the rounds and print one JSON line per mode."""
    if sys.argv[1:2] == ["--backend"]:
        backend(sys.argv[2])
        return
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    with tempfile.TemporaryDirectory() as directory:
        for warm in (False, True):
            figures = [one_round(Path(directory), warm) for _ in range(rounds)]
            commits = [f[0] for f in figures]
            seen = [f[1] for f in figures]
            print(json.dumps({
                "mode": "warm" if warm else "cold", "rounds": rounds,
                "request_to_run_failed_ms_median": round(statistics.median(commits), 1),
                "request_to_run_failed_ms_max": round(max(commits), 1),
                "call_to_seen_ms_median": round(statistics.median(seen), 1),
                "call_to_seen_ms_max": round(max(seen), 1)}), flush=True)


if __name__ == "__main__":
    main()
