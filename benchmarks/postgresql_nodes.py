"""Several nodes on one PostgreSQL ledger against one node, and the plain table the same way.

`python -m benchmarks.postgresql_nodes [--nodes 2] [--sessions 16] [--seconds 3] [--rounds 2]`
starts its own throwaway cluster (as `benchmarks.postgresql` does) and, in alternated rounds,
runs the same number of appending sessions (threads, one ~256-byte event per call each) in
one node process and then spread over `--nodes` node processes, each process opening its own
`PostgresStore` on one database, like backend nodes behind a load balancer; then the plain
table (one INSERT per commit) the same way. Every node process starts appending at the same
moment (a barrier) and reports its own figure; a figure is the sum over the processes. It
prints each round and the medians, with the ratios several nodes / one node and
chatledger / plain. Nothing here is imported by the package.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
from multiprocessing.synchronize import Barrier
from typing import Any

from .postgresql import (
    Plain,
    PostgresServer,
    chatledger_appends,
    open_postgresql_store,
    plain_appends,
)

RESULT_TIMEOUT = 120.0
"""How long the parent waits for a node process's figure (a node that hangs fails the run)."""


def node(contender: str, url: str, prefix: str, sessions: int, seconds: float,
         start: Barrier, results: Any) -> None:
    """One node process: its sessions appending for `seconds` once every node is ready."""
    if contender == "chatledger":
        store = open_postgresql_store(url, pool_size=max(sessions, 4))
        try:
            chatledger_appends(store, f"{prefix}-warm", sessions, 0.3)
            start.wait(RESULT_TIMEOUT)
            rate, p99 = chatledger_appends(store, prefix, sessions, seconds)
            results.put((rate, p99, store.writer.sealed_batches, store.writer.commits))
        finally:
            store.close()
    else:
        plain = Plain(url)
        start.wait(RESULT_TIMEOUT)
        rate, p99 = plain_appends(plain, prefix, sessions, seconds)
        results.put((rate, p99, 0, 0))


def run_nodes(contender: str, url: str, nodes: int, sessions: int, seconds: float,
              prefix: str) -> tuple[float, float]:
    """(appends per second summed over `nodes` processes, the worst p99 among them)."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(nodes)
    results = context.Queue()
    share = [sessions // nodes + (1 if index < sessions % nodes else 0)
             for index in range(nodes)]
    processes = [context.Process(target=node, args=(contender, url, f"{prefix}-{index}",
                                                     share[index], seconds, start, results))
                 for index in range(nodes)]
    for process in processes:
        process.start()
    try:
        figures = [results.get(timeout=RESULT_TIMEOUT) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=RESULT_TIMEOUT)
            if process.is_alive():
                process.kill()
    return sum(figure[0] for figure in figures), max(figure[1] for figure in figures)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the rounds and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postgresql_nodes",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2, help="node processes (default 2)")
    parser.add_argument("--sessions", type=int, default=16, help="sessions in all (default 16)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per figure")
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds (default 2)")
    arguments = parser.parse_args(argv)
    nodes = max(arguments.nodes, 2)
    figures: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with PostgresServer(shared_buffers="128MB") as server:
        urls = {"chatledger": server.create_database("nodes_chatledger"),
                "plain": server.create_database("nodes_plain")}
        Plain(urls["plain"])  # its table
        for number in range(max(arguments.rounds, 1)):
            for contender, url in urls.items():
                for count in (1, nodes):
                    rate, p99 = run_nodes(contender, url, count, arguments.sessions,
                                          arguments.seconds, f"r{number}-{count}")
                    figures.setdefault((contender, count), []).append((rate, p99))
                    print(f"round {number + 1}: {contender:10s} {count} node(s) x "
                          f"~{arguments.sessions // count} sessions: {rate:9,.0f} appends/s, "
                          f"p99 {p99 * 1000:6.1f} ms", flush=True)
    medians = {key: (statistics.median(rate for rate, _ in values),
                     statistics.median(p99 for _, p99 in values))
               for key, values in figures.items()}
    print()
    for contender in urls:
        one, several = medians[(contender, 1)], medians[(contender, nodes)]
        print(f"{contender:10s} 1 node {one[0]:9,.0f}/s (p99 {one[1] * 1000:.1f} ms), "
              f"{nodes} nodes {several[0]:9,.0f}/s (p99 {several[1] * 1000:.1f} ms): "
              f"{several[0] / max(one[0], 1e-9):.2f}x")
    for count in (1, nodes):
        print(f"chatledger / plain at {count} node(s): "
              f"{medians[('chatledger', count)][0] / max(medians[('plain', count)][0], 1e-9):.2f}x")
    return {f"{contender} {count}": value for (contender, count), value in medians.items()}


if __name__ == "__main__":
    main()
