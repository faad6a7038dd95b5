"""chatledger on PostgreSQL against a plain psycopg event table, same server, same run.

`python -m benchmarks.postgresql [--quick]` starts its own throwaway cluster (the tests'
tests/support/postgres_server.py: fsync on, synchronous_commit=on for everyone) and measures:
- appends at 1, 16 and 64 sessions, each thread appending one ~256-byte event per call to its
  own session (throughput and p99): chatledger's store (group commit, each batch sealed in its
  own transaction when it can be, else answered once the sealer placed it; and "commit-only",
  `wait_for_seal=False`, where a batch left to the sealer is answered at commit, position 0)
  against a plain table with one INSERT per commit on one connection per thread, and that
  plain table with a global advisory lock taken by every insert (what serialising writers
  costs);
- replay (every record decoded), rehydrating a 1,000-event session, listing the sessions;
- the lag of a global-order reader on another store (like another node) under 16 writers,
  and how many events a checkpointing reader of the plain table's bigserial misses.
Every append figure runs in alternated rounds (`--rounds`, default 5: the four contenders
one after the other in each round, the plain table right after chatledger) and is reported as
the median; the 16-session target is judged on the median of the rounds' chatledger / plain
ratios, each of two figures taken seconds apart, so that load drifting on a shared machine
weighs on both sides alike (on this 2-core VM one round's ratio moves by 0.5x with it). It
prints a table with ratios and the targets of issue 15. Nothing here is imported by the
package.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from chatledger.events import MessageSent, SessionCreated
from chatledger.events.codec import decode_event, encode_event
from chatledger.events.model import Recorded
from chatledger.events.projections import SessionInfo, evolve
from chatledger.storage import GENESIS, SessionAppend
from chatledger.storage.postgresql import PostgresStore, open_postgresql_store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))
from postgres_server import PostgresServer  # noqa: E402

TEXT = ("the solver converged after twelve iterations; stress and displacement are within "
        "the limits of the study, and the report has been written to the results folder "
        "for review by the design team tomorrow")


def event(turn: int) -> MessageSent:
    """The ~256-byte event every contender appends."""
    return MessageSent(turn=turn, text=TEXT)


# -- contenders -----------------------------------------------------------------------------


class Plain:
    """A plain event table: UNIQUE(session, version), one INSERT per commit, a connection
    per thread; optionally a global advisory lock in every transaction."""

    def __init__(self, url: str, *, global_lock: bool = False) -> None:
        self.url = url
        self.global_lock = global_lock
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS plain_events (id bigserial PRIMARY KEY,"
                " session_id text NOT NULL, version bigint NOT NULL,"
                " recorded_at timestamptz NOT NULL DEFAULT now(), data bytea NOT NULL,"
                " UNIQUE (session_id, version))")
        self._local = threading.local()

    def _connection(self) -> psycopg.Connection[Any]:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = psycopg.connect(self.url)
        return connection

    def append(self, session_id: str, version: int, data: bytes) -> None:
        """One event, one transaction, one commit."""
        connection = self._connection()
        if self.global_lock:
            connection.execute("SELECT pg_advisory_xact_lock(42)")
        connection.execute("INSERT INTO plain_events (session_id, version, data)"
                           " VALUES (%s, %s, %s)", [session_id, version, data])
        connection.commit()

    def close_thread(self) -> None:
        """Close this thread's connection."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def _plain_record(row: tuple[Any, ...]) -> Recorded:
    position, session_id, version, recorded_at, data = row
    return Recorded(position=position, session_id=session_id, version=version,
                    recorded_at=recorded_at, schema_version=2, prev_session_hash=GENESIS,
                    prev_log_hash=GENESIS, event=decode_event(bytes(data)))


# -- measuring ------------------------------------------------------------------------------


def p99(samples: list[float]) -> float:
    """The 99th percentile of `samples` (0 if empty)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class CpuMeter:
    """CPU seconds of this process (the client) and of the cluster's processes (the server:
    the postmaster's live children and those it has reaped), read from /proc; the last
    measured run's figures per append, in microseconds."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.last: tuple[float, float] = (0.0, 0.0)
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def _server(self) -> float:
        if self.server_pid is None or not Path("/proc").is_dir():
            return 0.0
        ticks = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the process ended meanwhile
            if int(fields[1]) == self.server_pid:
                ticks += int(fields[11]) + int(fields[12])
            elif int(entry.name) == self.server_pid:
                ticks += sum(int(field) for field in fields[11:15])
        return ticks / self._tick

    def read(self) -> tuple[float, float]:
        """(client, server) CPU seconds so far."""
        return time.process_time(), self._server()

    def record(self, before: tuple[float, float], appends: int) -> None:
        """Keep the CPU per append since `before`."""
        after = self.read()
        self.last = tuple((a - b) / max(appends, 1) * 1e6  # type: ignore[assignment]
                          for a, b in zip(after, before, strict=True))


METER = CpuMeter(None)
"""Set to the benchmark's cluster in `main`."""


def run_threads(count: int, seconds: float, append: Callable[[int, int], None],
                setup: Callable[[int], None], teardown: Callable[[], None] | None = None
                ) -> tuple[float, float]:
    """`count` threads appending for `seconds`; (appends per second, p99 seconds). The CPU
    per append goes to `METER.last`."""
    latencies: list[list[float]] = [[] for _ in range(count)]
    ready = threading.Barrier(count + 1)
    stop = threading.Event()

    def worker(index: int) -> None:
        setup(index)
        ready.wait()
        version = 1
        samples = latencies[index]
        while not stop.is_set():
            started = time.perf_counter()
            append(index, version)
            samples.append(time.perf_counter() - started)
            version += 1
        if teardown is not None:
            teardown()

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    ready.wait()
    cpu_before = METER.read()
    started = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    every = [sample for samples in latencies for sample in samples]
    METER.record(cpu_before, len(every))
    return len(every) / elapsed, p99(every)


def chatledger_appends(store: PostgresStore, prefix: str, count: int, seconds: float
                       ) -> tuple[float, float]:
    """Throughput and p99 of chatledger appends from `count` sessions."""
    def setup(index: int) -> None:
        store.append(f"{prefix}-{index}", [SessionCreated()], 0)

    return run_threads(count, seconds,
                       lambda index, version: store.append(f"{prefix}-{index}",
                                                           [event(version)], version),
                       setup)


def plain_appends(plain: Plain, prefix: str, count: int, seconds: float) -> tuple[float, float]:
    """Throughput and p99 of plain-table appends from `count` sessions."""
    data = encode_event(event(1))
    return run_threads(count, seconds,
                       lambda index, version: plain.append(f"{prefix}-{index}", version, data),
                       lambda index: None, plain.close_thread)


def reader_lag(server: PostgresServer, url: str, seconds: float,
               tuning: dict[str, Any] | None = None) -> tuple[float, int]:
    """16 writers on one store, a subscriber on another: p99 of (received - recorded_at)."""
    writer = open_postgresql_store(url, **(tuning or {}))
    follower = open_postgresql_store(url, seal=False)
    lags: list[float] = []
    stop = threading.Event()
    start_position = writer.head().position + 1

    def follow() -> None:
        with follower.subscribe(start_position, poll_interval=1.0) as subscription:
            while not stop.is_set():
                record = subscription.get(timeout=0.5)
                if record is not None:
                    lags.append((datetime.now(timezone.utc) - record.recorded_at)
                                .total_seconds())

    reading = threading.Thread(target=follow)
    reading.start()
    try:
        chatledger_appends(writer, "lag", 16, seconds)
        deadline = time.monotonic() + 10
        while len(lags) < writer.head().position - start_position + 1 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        reading.join()
        writer.close()
        follower.close()
    return p99(lags), len(lags)


def bigserial_misses(url: str, seconds: float) -> tuple[int, int]:
    """A checkpointing reader of the plain table's bigserial under 16 writers: (missed, total)."""
    plain = Plain(url)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("TRUNCATE plain_events")
    seen: set[int] = set()
    stop = threading.Event()

    def read() -> None:
        checkpoint = 0
        with psycopg.connect(url, autocommit=True) as connection:
            while not stop.is_set():
                rows = connection.execute("SELECT id FROM plain_events WHERE id > %s ORDER BY id",
                                          [checkpoint]).fetchall()
                for (identifier,) in rows:
                    seen.add(identifier)
                    checkpoint = identifier

    reading = threading.Thread(target=read)
    reading.start()
    plain_appends(plain, "miss", 16, seconds)
    time.sleep(0.3)  # let the reader take its last look
    stop.set()
    reading.join()
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute("SELECT count(*) FROM plain_events").fetchone()
    total = int(row[0]) if row else 0
    return total - len(seen), total


ROUND_FIGURES = ("ours", "ours_p99", "fast", "fast_p99", "theirs", "theirs_p99", "serial",
                 "serial_p99")
"""The throughputs and p99s one round of append figures measures (see `append_round`), with
`ours_cpu` and `theirs_cpu`: (client, server) CPU per append."""


def append_round(store: PostgresStore, commit_only: PostgresStore, plain: Plain, locked: Plain,
                 sessions: int, seconds: float, number: int) -> dict[str, Any]:
    """One round of the four contenders at `sessions` sessions, one right after the other
    (rounds alternate them, so that the machine's load drifting between figures, as it does
    on a shared machine, weighs on each contender alike)."""
    figures: dict[str, Any] = {}
    figures["ours"], figures["ours_p99"] = chatledger_appends(
        store, f"c{sessions}-{number}", sessions, seconds)
    figures["ours_cpu"] = METER.last
    figures["theirs"], figures["theirs_p99"] = plain_appends(  # right after: the ratio's pair
        plain, f"p{sessions}-{number}", sessions, seconds)
    figures["theirs_cpu"] = METER.last
    figures["fast"], figures["fast_p99"] = chatledger_appends(
        commit_only, f"f{sessions}-{number}", sessions, seconds)
    figures["serial"], figures["serial_p99"] = plain_appends(
        locked, f"l{sessions}-{number}", sessions, seconds)
    return figures


def timed(function: Callable[[], Any], repetitions: int = 5) -> float:
    """Median seconds of `function` over `repetitions` runs after one warm-up."""
    function()
    samples = []
    for _ in range(repetitions):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def load_dataset(store: PostgresStore, plain: Plain, sessions: int) -> None:
    """`sessions` sessions of 2 events plus one 1,000-event session, in both contenders."""
    data = encode_event(event(1))
    created = encode_event(SessionCreated())
    batch = 1000
    for start in range(0, sessions, batch):
        ids = [f"list-{number}" for number in range(start, min(start + batch, sessions))]
        store.append_atomically([SessionAppend(session_id, [SessionCreated(), event(1)], 0)
                                 for session_id in ids])
        with psycopg.connect(plain.url) as connection, connection.cursor() as cursor, \
                cursor.copy("COPY plain_events (session_id, version, data) FROM STDIN") as copy:
            for session_id in ids:
                copy.write_row((session_id, 1, created))
                copy.write_row((session_id, 2, data))
    store.append("big", [SessionCreated()], 0)
    for start in range(1, 1000, 100):
        store.append("big", [event(turn) for turn in range(start, start + 100)], start)
    with psycopg.connect(plain.url) as connection, connection.cursor() as cursor, \
            cursor.copy("COPY plain_events (session_id, version, data) FROM STDIN") as copy:
        copy.write_row(("big", 1, created))
        for version in range(2, 1002):
            copy.write_row(("big", version, data))


def plain_rehydrate(url: str) -> SessionInfo:
    """The plain table's 1,000-event session read and folded."""
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT id, session_id, version, recorded_at, data"
                                  " FROM plain_events WHERE session_id = 'big'"
                                  " ORDER BY version").fetchall()
    info = SessionInfo(session_id="big")
    for row in rows:
        info = evolve(info, _plain_record(row))
    return info


def plain_replay(url: str) -> int:
    """Every plain row read in id order and decoded."""
    count = 0
    with psycopg.connect(url) as connection, connection.cursor(name="replay") as cursor:
        cursor.itersize = 2000
        cursor.execute("SELECT id, session_id, version, recorded_at, data FROM plain_events"
                       " ORDER BY id")
        for row in cursor:
            _plain_record(row)
            count += 1
    return count


def plain_listing(url: str) -> int:
    """The plain table's sessions (no index of its own: GROUP BY)."""
    with psycopg.connect(url) as connection:
        return len(connection.execute("SELECT session_id, max(version), max(recorded_at)"
                                      " FROM plain_events GROUP BY session_id").fetchall())


# -- the run ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every figure and print the table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.postgresql", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, 10k sessions listed")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per append figure")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of every append figure, alternated (default 5, quick 1)")
    parser.add_argument("--writers", type=int, default=None,
                        help="the stores' group-commit leaders (default: the store's default)")
    arguments = parser.parse_args(argv)
    tuning: dict[str, Any] = {} if arguments.writers is None else {"writers": arguments.writers}
    seconds = arguments.seconds or (1.0 if arguments.quick else 3.0)
    arguments.rounds = max(arguments.rounds or (1 if arguments.quick else 5), 1)
    listed = 10_000 if arguments.quick else 100_000
    rows: list[tuple[str, str, float, float | None, float | None]] = []
    with PostgresServer(shared_buffers="128MB") as server:
        METER.server_pid = server.pid
        url_chatledger = server.create_database("bench_chatledger")
        url_plain = server.create_database("bench_plain")
        url_locked = server.create_database("bench_locked")
        store = open_postgresql_store(url_chatledger, pool_size=16, **tuning)
        commit_only = open_postgresql_store(server.create_database("bench_commit_only"),
                                            pool_size=16, wait_for_seal=False, **tuning)
        plain = Plain(url_plain)
        locked = Plain(url_locked, global_lock=True)
        try:
            with psycopg.connect(url_plain) as connection:
                settings = [connection.execute(f"SHOW {name}").fetchone()
                            for name in ("synchronous_commit", "fsync", "server_version")]
            print(f"PostgreSQL {settings[2][0]}, synchronous_commit={settings[0][0]}, "  # type: ignore[index]
                  f"fsync={settings[1][0]}; {seconds:g} s per append figure; writers "
                  f"{store.writer.leaders}; load average {_load()}", flush=True)
            chatledger_appends(store, "warm", 4, 0.5)
            plain_appends(plain, "warm", 4, 0.5)
            ratios: dict[int, list[float]] = {}
            for sessions in (1, 16, 64):
                results = [append_round(store, commit_only, plain, locked, sessions, seconds,
                                        number) for number in range(arguments.rounds)]
                ratios[sessions] = [result["ours"] / max(result["theirs"], 1e-9)
                                    for result in results]
                ours, ours_p99, fast, fast_p99, theirs, theirs_p99, serial, serial_p99 = (
                    statistics.median(result[name] for result in results)
                    for name in ROUND_FIGURES)
                ours_cpu, theirs_cpu = (
                    tuple(statistics.median(result[name][part] for result in results)
                          for part in (0, 1)) for name in ("ours_cpu", "theirs_cpu"))
                rows.append((f"appends/s, {sessions} sessions", "/s", ours, theirs, serial))
                rows.append((f"p99 append, {sessions} sessions", "ms", ours_p99 * 1000,
                             theirs_p99 * 1000, serial_p99 * 1000))
                rows.append((f"  client CPU per append, {sessions}", "us", ours_cpu[0],
                             theirs_cpu[0], None))
                rows.append((f"  server CPU per append, {sessions}", "us", ours_cpu[1],
                             theirs_cpu[1], None))
                rows.append((f"  commit-only appends/s, {sessions}", "/s", fast, theirs, None))
                rows.append((f"  commit-only p99, {sessions}", "ms", fast_p99 * 1000,
                             theirs_p99 * 1000, None))
                print(f"  {sessions} sessions (medians of {len(results)} rounds): chatledger "
                      f"{ours:,.0f}/s (commit-only {fast:,.0f}/s), plain {theirs:,.0f}/s, "
                      f"plain+global lock {serial:,.0f}/s; x plain per round "
                      f"{' '.join(f'{ratio:.2f}' for ratio in ratios[sessions])} ("
                      + ", ".join(f"{result['ours']:,.0f}/{result['theirs']:,.0f}"
                                  for result in results) + ")", flush=True)
            commit_only.close()
            inline = (f"{store.writer.sealed_batches:,} of {store.writer.commits:,} batches "
                      "sealed in their own transaction")
            print(f"  {inline}", flush=True)
            print(f"loading {listed:,} sessions + a 1,000-event session ...", flush=True)
            load_dataset(store, plain, listed)
            store.seal_now()
            total = store.head().position

            def rehydrate() -> SessionInfo:
                info = SessionInfo(session_id="big")
                for recorded in store.read_session("big"):
                    info = evolve(info, recorded)
                return info

            rows.append(("rehydrate 1,000 events", "ms", timed(rehydrate) * 1000,
                         timed(lambda: plain_rehydrate(url_plain)) * 1000, None))
            rows.append((f"list sessions ({len(store.sessions()):,})", "ms",
                         timed(store.sessions, 3) * 1000,
                         timed(lambda: plain_listing(url_plain), 3) * 1000, None))
            replay_ours = timed(lambda: sum(1 for _ in store.read_all()), 3)
            replay_theirs = timed(lambda: plain_replay(url_plain), 3)
            rows.append((f"replay, events/s ({total:,})", "/s", total / replay_ours,
                         plain_replay(url_plain) / replay_theirs, None))
        finally:
            store.close()
            commit_only.close()
        lag, received = reader_lag(server, server.create_database("bench_lag"), seconds, tuning)
        rows.append(("reader lag p99, 16 writers", "ms", lag * 1000, None, None))
        missed, written = bigserial_misses(server.create_database("bench_miss"), seconds)
    print()
    print(f"{'figure':<34} {'unit':>4} {'chatledger':>11} {'plain':>11} {'x plain':>8}"
          f" {'plain+lock':>11} {'lock cost':>9}")
    for name, unit, ours, theirs, serial in rows:
        ratio = ""
        if theirs:
            better = ours / theirs if unit == "/s" else theirs / max(ours, 1e-9)
            ratio = f"{better:.2f}x"
        lock_cost = f"{1 - serial / theirs:.0%}" if serial is not None and theirs and \
            unit == "/s" else ""
        print(f"{name:<34} {unit:>4} {ours:>11,.1f} {_cell(theirs):>11} {ratio:>8}"
              f" {_cell(serial):>11} {lock_cost:>9}")
    print("\n(x plain: higher is better for chatledger; for ms and us it is plain / chatledger.)")
    print(f"load average at the end: {_load()}; {inline}")
    print(f"reader lag measured on {received:,} records delivered to a subscriber on another "
          f"store; a checkpointing reader of the plain table's bigserial missed {missed:,} of "
          f"{written:,} events ({missed / max(written, 1):.1%}).")
    figures = {name: (ours, theirs, serial) for name, _, ours, theirs, serial in rows}
    ratio_16 = statistics.median(ratios[16])  # each round's chatledger / plain, same minute
    targets = [
        ("16 sessions >= 2x the plain table", ratio_16 >= 2, f"{ratio_16:.2f}x"),
        ("p99 append <= 20 ms (16 sessions)", figures["p99 append, 16 sessions"][0] <= 20,
         f"{figures['p99 append, 16 sessions'][0]:.1f} ms"),
        ("rehydrate <= 5 ms", figures["rehydrate 1,000 events"][0] <= 5,
         f"{figures['rehydrate 1,000 events'][0]:.1f} ms"),
        ("reader lag p99 <= 100 ms", lag * 1000 <= 100, f"{lag * 1000:.1f} ms"),
    ]
    print()
    for name, met, value in targets:
        print(f"  {'met ' if met else 'MISS'}  {name}: {value}")
    return {"figures": figures, "targets": targets, "bigserial_missed": [missed, written]}


def _load() -> str:
    """The machine's load average (1, 5, 15 minutes), if it can be read."""
    try:
        return " ".join(f"{value:.1f}" for value in os.getloadavg())
    except OSError:
        return "?"


def _cell(value: float | None) -> str:
    return f"{value:,.1f}" if value is not None else "-"


if __name__ == "__main__":
    main()
