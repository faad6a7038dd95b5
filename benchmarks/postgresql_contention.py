"""chatledger on PostgreSQL against the plain table while other processes take the CPU.

`python -m benchmarks.postgresql_contention [--hogs 0 1 2] [--sessions 16] [--seconds 3]
[--rounds 3]` starts its own throwaway cluster (as `benchmarks.postgresql` does) and, for each
number of hogs (busy-looping processes started for the figure and stopped after it, by pid),
runs alternated rounds of the same appends (threads, one ~256-byte event per call each, its
own session each) into four contenders one after the other: chatledger with each of its
`batching` modes (`adaptive`, the default, `eager` and `gather`, see
storage/postgresql/batching.py), each on its own database, and the plain table with one
INSERT per commit. It prints each round, the medians and each mode's ratio to the plain
table. Nothing here is imported by the package.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from . import postgresql as bench
from .postgresql import (
    Plain,
    PostgresServer,
    chatledger_appends,
    open_postgresql_store,
    plain_appends,
)

MODES = ("adaptive", "eager", "gather")
HOG_LIFETIME = 900.0
"""A hog ends itself after this many seconds even if this run dies without stopping it."""


def start_hogs(count: int) -> list[subprocess.Popen[bytes]]:
    """`count` processes that keep one CPU each busy (for HOG_LIFETIME at most)."""
    code = f"import time\nend = time.monotonic() + {HOG_LIFETIME}\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    """Stop the hogs this run started."""
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait(10)


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    """Run every figure and print them; returns hogs -> contender -> median appends/s."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postgresql_contention",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hogs", type=int, nargs="+", default=[0, 1, 2],
                        help="numbers of busy processes to run beside (default 0 1 2)")
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per figure")
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args(argv)
    medians: dict[int, dict[str, float]] = {}
    with PostgresServer(shared_buffers="128MB") as server:
        bench.METER.server_pid = server.pid
        stores = {mode: open_postgresql_store(server.create_database(f"contention_{mode}"),
                                              pool_size=16, batching=mode) for mode in MODES}
        plain = Plain(server.create_database("contention_plain"))
        try:
            for store in stores.values():
                chatledger_appends(store, "warm", arguments.sessions, 0.5)
            plain_appends(plain, "warm", arguments.sessions, 0.5)
            for hogs in arguments.hogs:
                figures: dict[str, list[float]] = {name: [] for name in (*MODES, "plain")}
                started = start_hogs(hogs)
                try:
                    time.sleep(0.5)  # the hogs are running
                    for number in range(arguments.rounds):
                        line = [f"{hogs} hog(s), round {number + 1}:"]
                        for name in figures:
                            prefix = f"h{hogs}-{number}-{name}"
                            if name == "plain":
                                rate, p99 = plain_appends(plain, prefix, arguments.sessions,
                                                          arguments.seconds)
                            else:
                                rate, p99 = chatledger_appends(stores[name], prefix,
                                                               arguments.sessions,
                                                               arguments.seconds)
                            figures[name].append(rate)
                            line.append(f"{name} {rate:,.0f}/s (p99 {p99 * 1000:.1f} ms)")
                        print(" ".join(line), flush=True)
                finally:
                    stop_hogs(started)
                medians[hogs] = {name: statistics.median(rates) for name, rates in figures.items()}
                theirs = medians[hogs]["plain"]
                print(f"{hogs} hog(s), medians: " + ", ".join(
                    f"{name} {rate:,.0f}/s" + (f" ({rate / theirs:.2f}x plain)"
                                               if name != "plain" else "")
                    for name, rate in medians[hogs].items())
                    + f"; adaptive switched {stores['adaptive'].writer.policy.switches} times so far",
                    flush=True)
        finally:
            for store in stores.values():
                store.close()
    return medians


if __name__ == "__main__":
    main()
