"""What session ownership costs: CPU and wall per turn, hand-over after a SIGKILL, and
16-session append throughput with and without the lease check.

`python -m benchmarks.ownership [--turns N] [--kills K] [--seconds S] [--rounds R]` prints three figures,
each on a fresh LMDB ledger in a temporary directory:

- per turn: a turn's store work as the session actor does it (MessageSent + RunStarted in one
  append, then ResponseReceived), without ownership, then with it (the keeper's look at the
  lease record, its grant, both appends fenced, the release with the outcome); the
  difference in process CPU (every thread: the writer's included) and in wall time is what
  ownership adds (the lease is let go by the outcome's append, so a turn costs one more
  commit, the grant). The agent
  run is left out: it is the same either way;
- hand-over: a turn sender runs a long turn, a second waits on the same session, the first
  is SIGKILLed; the time from the kill until the second's RunStarted is recorded (same host:
  the waiter sees the pid gone); then the same with SIGSTOP, where the lease must expire
  (what bounds a hand-over from an owner on another host: the ttl, 5 s by default);
- throughput: 16 threads, each appending one event at a time to its own session for S
  seconds, without a lease and then with one (the fence read in the writer's transaction).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from chatledger.actors.ownership import LeaseKeeper
from chatledger.events import MessageSent, ResponseReceived, RunStarted, SessionCreated
from chatledger.storage import AuditStore, Lease, open_store

SUPPORT = Path(__file__).resolve().parent.parent / "tests" / "support"


def turn_cost(store: AuditStore, turns: int, owned: bool) -> tuple[float, float]:
    """Process CPU and wall seconds per turn of `turns` turns' store work on one session."""
    session_id = f"turns-{owned}-{time.perf_counter_ns()}"
    store.append(session_id, [SessionCreated(mode="user")], 0)
    version = 1
    keeper = LeaseKeeper(store, 30.0, lambda session_id, lease: None)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        for turn in range(1, turns + 1):
            lease = keeper.acquire(session_id) if owned else None
            store.append(session_id, [MessageSent(turn=turn, text="hello"),
                                      RunStarted(turn=turn, argv=("agent",))], version,
                         lease=lease)
            if lease is None:
                store.append(session_id, [ResponseReceived(turn=turn, text="hi")], version + 2)
            else:  # as the actor does: the lease goes with the outcome
                store.append(session_id, [ResponseReceived(turn=turn, text="hi")], version + 2,
                             lease=lease, release_lease=True)
                keeper.forget(session_id, lease)
            version += 3
        return ((time.process_time() - cpu) / turns, (time.perf_counter() - wall) / turns)
    finally:
        keeper.close()


def handover_seconds(directory: Path, attempt: int, freeze: bool = False) -> float:
    """Seconds from SIGKILL of a session's owner mid-turn (or, with `freeze`, SIGSTOP: the
    owner looks alive, so its lease must expire, as for an owner on another host) to its
    successor's RunStarted."""
    path = directory / f"handover-{attempt}-{freeze}"
    with open_store(path) as store:
        store.append("s", [SessionCreated(mode="user")], 0)
    environment = dict(os.environ, CHATLEDGER_AGENT_COMMAND=f"{sys.executable} -m "
                       "chatledger.agent.standin", CHATLEDGER_KILL_GRACE="0.5")
    sender = [sys.executable, str(SUPPORT / "turn_sender.py"), str(path), "s"]
    owner = subprocess.Popen([*sender, "[[slow 60]]"], stdout=subprocess.PIPE, text=True,
                             env=environment)
    successor: subprocess.Popen[str] | None = None
    try:
        with open_store(path) as store:
            def runs() -> int:
                return sum(isinstance(r.event, RunStarted) for r in store.read_session("s"))

            deadline = time.monotonic() + 60
            while runs() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            successor = subprocess.Popen([*sender, "next"], stdout=subprocess.PIPE, text=True,
                                         env=environment)
            assert successor.stdout is not None and successor.stdout.readline() == "ready\n"
            os.kill(owner.pid, signal.SIGSTOP if freeze else signal.SIGKILL)
            killed = time.perf_counter()
            while runs() < 2 and time.perf_counter() - killed < 60:
                time.sleep(0.005)
            return time.perf_counter() - killed
    finally:
        for process in (owner, successor):
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait()


def throughput(store: AuditStore, sessions: int, seconds: float, owned: bool) -> float:
    """Events per second appended by `sessions` threads, each to its own session."""
    keeper = LeaseKeeper(store, 30.0, lambda session_id, lease: None)
    leases: dict[str, Lease | None] = {}
    for number in range(sessions):
        session_id = f"throughput-{owned}-{number}-{time.perf_counter_ns()}"
        store.append(session_id, [SessionCreated(mode="user")], 0)
        leases[session_id] = keeper.acquire(session_id) if owned else None
    counts = [0] * sessions
    start = threading.Barrier(sessions + 1)
    stop_at = [0.0]

    def append_loop(index: int, session_id: str) -> None:
        version = 1
        start.wait()
        while time.perf_counter() < stop_at[0]:
            store.append(session_id, [MessageSent(turn=version, text="x")], version,
                         lease=leases[session_id])
            version += 1
        counts[index] = version - 1

    threads = [threading.Thread(target=append_loop, args=(index, session_id))
               for index, session_id in enumerate(leases)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    keeper.close()
    return sum(counts) / elapsed


def main() -> None:
    """Run the three measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatledger-ownership-") as scratch:
        directory = Path(scratch)
        with open_store(directory / "turns") as store:
            turn_cost(store, 50, owned=True)  # warm-up
            costs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for _ in range(options.rounds):  # alternated: the shared machine's load drifts
                for owned in (False, True):
                    costs[owned].append(turn_cost(store, options.turns, owned))
        plain_cpu, plain_wall = (statistics.median(c[i] for c in costs[False]) for i in (0, 1))
        owned_cpu, owned_wall = (statistics.median(c[i] for c in costs[True]) for i in (0, 1))
        print(f"per turn ({options.rounds} x {options.turns} turns each, medians): store "
              f"work without ownership {plain_cpu * 1e3:.3f} ms CPU, {plain_wall * 1e3:.3f} ms "
              f"wall; with it {owned_cpu * 1e3:.3f} ms CPU, {owned_wall * 1e3:.3f} ms wall; "
              f"added {(owned_cpu - plain_cpu) * 1e3:.3f} ms CPU, "
              f"{(owned_wall - plain_wall) * 1e3:.3f} ms wall")
        handovers = [handover_seconds(directory, attempt) for attempt in range(options.kills)]
        print(f"hand-over after SIGKILL ({options.kills} kills): median "
              f"{statistics.median(handovers):.3f} s, max {max(handovers):.3f} s")
        frozen = [handover_seconds(directory, attempt, freeze=True) for attempt in range(2)]
        print(f"hand-over from a frozen owner (SIGSTOP, lease ttl 5 s, as from another host): "
              f"{', '.join(f'{seconds:.3f}' for seconds in frozen)} s")
        rates: dict[bool, list[float]] = {False: [], True: []}
        with open_store(directory / "throughput") as store:
            for _ in range(options.rounds):
                for owned in (False, True):
                    rates[owned].append(throughput(store, 16, options.seconds, owned))
        plain, owned_rate = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"16-session appends ({options.rounds} alternated rounds of {options.seconds:g} s, "
              f"medians): {plain:,.0f} events/s without a lease, {owned_rate:,.0f} with one "
              f"({(owned_rate / plain - 1) * 100:+.1f}%); rounds without "
              f"{[round(rate) for rate in rates[False]]}, with {[round(r) for r in rates[True]]}")

if __name__ == "__main__":
    main()
