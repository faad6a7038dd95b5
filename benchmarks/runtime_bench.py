"""Benchmarks of chatledger's actor runtime (the sync `Ledger`) with the stand-in agent.

Activation of a passivated session, chatledger's own CPU per agent turn (this process only:
the agent runs as a child process, and `time.process_time()` does not count children), and,
in a fresh child process (`python -m benchmarks.memory`), memory per live and per passivated
session. Nothing here touches the baselines: they have no actor runtime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from chatledger.ledger import Ledger
from chatledger.storage import EventLog

from .common import Figure, percentile

STANDIN = (sys.executable, "-m", "chatledger.testing.standin")


def open_ledger(path: str, log: EventLog | None = None, **settings: Any) -> Ledger:
    """A Ledger on `path` (sharing an open log if given) whose agent is the stand-in."""
    return Ledger(path, log=log, agent_command=STANDIN, timeout=60, sweep_interval=3600,
                  **settings)


def activation(
    path: str, log: EventLog, session_ids: list[str], per_repetition: int,
    repetitions: int, warmups: int, session_events: int = 10,
) -> Figure:
    """Milliseconds to activate a passivated session until its actor answers (median of each
    repetition's median; p99 over every activation in `extra`)."""
    ledger = open_ledger(path, log)
    runtime = ledger.runtime
    every: list[float] = []
    samples: list[float] = []
    try:
        for repetition in range(warmups + repetitions):
            chosen = session_ids[repetition * per_repetition:(repetition + 1) * per_repetition]
            for session_id in chosen:  # activate once, then passivate: truly passivated
                runtime.live_info(session_id)
            for session_id in chosen:
                runtime.passivate(session_id)
            times = []
            for session_id in chosen:
                start = time.perf_counter()
                runtime.live_info(session_id)
                times.append((time.perf_counter() - start) * 1000)
            for session_id in chosen:
                runtime.passivate(session_id)
            if repetition >= warmups:
                samples.append(sorted(times)[len(times) // 2])
                every.extend(times)
    finally:
        ledger.close()
    return Figure("ms", samples, False, {"p99": percentile(every, 0.99),
                                          "session_events": session_events})


def cpu_per_turn(path: str, turns_per_repetition: int, repetitions: int,
                 warmups: int) -> tuple[Figure, Figure]:
    """chatledger's CPU milliseconds per turn (agent process excluded) and wall ms per turn,
    on a fresh ledger, one session, turns run one after another."""
    cpu: list[float] = []
    wall: list[float] = []
    with open_ledger(path) as ledger:
        session_id = ledger.create_session().session_id
        for repetition in range(warmups + repetitions):
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            for turn in range(turns_per_repetition):
                outcome = ledger.send(session_id, f"turn {repetition}.{turn}: how is the mesh?")
                if not outcome.ok:
                    raise RuntimeError(f"a stand-in turn failed: {outcome.error}")
            if repetition >= warmups:
                cpu.append((time.process_time() - cpu_start) * 1000 / turns_per_repetition)
                wall.append((time.perf_counter() - wall_start) * 1000 / turns_per_repetition)
    return Figure("ms", cpu, False), Figure("ms", wall, False)


def memory(path: str, sessions: int, cap: int | None = None,
           timeout: float = 600) -> dict[str, Any]:
    """Run `benchmarks.memory` in a fresh process on the ledger at `path` (at most `cap`
    live actors; default: every session live); its JSON report."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cap_option = ["--cap", str(cap)] if cap else []
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", path, str(sessions), *cap_option],
        cwd=root, capture_output=True, text=True, timeout=timeout, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the memory benchmark failed:\n{completed.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result
