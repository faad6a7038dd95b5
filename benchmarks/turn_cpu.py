"""Where chatledger's CPU per turn goes, thread by thread (Linux).

`python -m benchmarks.turn_cpu [TURNS]` runs TURNS stand-in turns one after another on a fresh
ledger and prints the process's user and system CPU per turn, then each long-lived thread's
share (from /proc/self/task): the caller, the session actor, the ledger writer and the run-pool
worker that drives the agent. The agent itself is a child process and is not counted. It
ends with what one wake-up of a blocked thread costs on this machine (a pipe reader woken by
200 lines written 2 ms apart): a turn holds about twenty of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

from .runtime_bench import open_ledger


def thread_times() -> dict[str, tuple[int, int]]:
    """Clock ticks of user and system CPU of every live Python thread, by thread name."""
    times: dict[str, tuple[int, int]] = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[thread.name] = (int(fields[11]), int(fields[12]))
    return times


def main(turns: int) -> None:
    """Run the turns and print the breakdown."""
    tick = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory() as directory, \
            open_ledger(os.path.join(directory, "ledger")) as ledger:
        session_id = ledger.create_session().session_id
        for _ in range(5):
            ledger.send(session_id, "warm-up")
        before, started = thread_times(), os.times()
        for turn in range(turns):
            ledger.send(session_id, f"turn {turn}: how is the mesh?")
        after, ended = thread_times(), os.times()
    print(f"{turns} turns: user {(ended.user - started.user) * 1000 / turns:.2f} ms/turn, "
          f"system {(ended.system - started.system) * 1000 / turns:.2f} ms/turn")
    for name, (user, system) in after.items():
        if name in before:
            user -= before[name][0]
            system -= before[name][1]
            print(f"  {name:32s} user {user * 1000 / tick / turns:.2f}  "
                  f"system {system * 1000 / tick / turns:.2f}")


_WRITER = (
    "import sys, time\n"
    "for _ in range(200):\n"
    "    sys.stdout.write('x' * 200 + '\\n'); sys.stdout.flush(); time.sleep(0.002)\n"
)


def wakeup_cost() -> float:
    """Microseconds of this thread's CPU per wake-up of a blocking pipe read."""
    child = subprocess.Popen([sys.executable, "-c", _WRITER], stdout=subprocess.PIPE, bufsize=0)
    assert child.stdout is not None
    started, wakeups = time.thread_time(), 0
    try:
        while os.read(child.stdout.fileno(), 65536):
            wakeups += 1
    finally:
        child.stdout.close()
        child.wait(10)
    return (time.thread_time() - started) * 1e6 / max(wakeups, 1)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
    print(f"one thread wake-up (blocking pipe read): {wakeup_cost():.1f} us of CPU")
