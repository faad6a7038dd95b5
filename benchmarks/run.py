"""Run every benchmark, side by side, on the same data: `python -m benchmarks.run [--quick]`.

Contenders: chatledger's EventLog (and its actor runtime with the stand-in agent), a plain
SQLite event table, and the `eventsourcing` library with its SQLite persistence. Durability is
the same on every side (each append is fsync'ed before it returns). Each figure gets a warm-up
and at least five repetitions; the screen shows medians, spreads, ratios and targets, and a
JSON file keeps every sample. Full sizes by default (about 10 minutes on 2 cores); `--quick` is
a smoke size, `--tiny` the few-second size the tests use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import msgspec

from chatledger.config import Config
from chatledger.events import Recorded

from .common import (
    SIZES,
    Figure,
    Sizes,
    append_event,
    percentile,
    repeat,
    session_events,
    session_ids,
    timed,
)
from .contenders import ChatledgerStore, EventsourcingStore, SqliteStore, Store
from .runtime_bench import activation, cpu_per_turn, memory

CONTENDERS = ("chatledger", "sqlite", "eventsourcing")
DECODE_SAMPLE = 200_000
"""Records decoded in memory for the decode-only figure (enough to leave the CPU caches)."""


class Results:
    """Every figure by name and contender, with targets; prints and serialises itself."""

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, Figure]] = {}
        self.labels: dict[str, str] = {}
        self.notes: dict[str, str] = {}

    def add(self, name: str, label: str, contender: str, figure: Figure) -> None:
        """Record one contender's figure."""
        self.labels[name] = label
        self.figures.setdefault(name, {})[contender] = figure

    def value(self, name: str, contender: str = "chatledger") -> float | None:
        """A figure's median, or None if it was not measured."""
        figure = self.figures.get(name, {}).get(contender)
        return figure.median if figure is not None else None

    def ratio(self, name: str, other: str) -> float | None:
        """How many times better chatledger is than `other` on a figure (>1: better)."""
        ours, theirs = self.value(name), self.value(name, other)
        if ours is None or theirs is None or not ours or not theirs:
            return None
        higher = self.figures[name]["chatledger"].higher_is_better
        return ours / theirs if higher else theirs / ours


def log_line(text: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def make_store(name: str, directory: str) -> Store:
    """A fresh store of one contender in its own directory."""
    os.makedirs(directory, exist_ok=True)
    if name == "chatledger":
        return ChatledgerStore(directory)
    if name == "sqlite":
        return SqliteStore(directory)
    return EventsourcingStore(directory)


# -- appends --------------------------------------------------------------------------------------


def append_throughput(
    store: Store, sessions: int, seconds: float, sizes: Sizes, prefix: int
) -> tuple[Figure, Figure]:
    """Events/s with `sessions` threads each appending one event per commit to its own session,
    and the p99 latency (ms) of one append; one sample per repetition."""
    rng = random.Random(sessions)
    pool = [append_event(rng) for _ in range(64)]
    ids = session_ids(sessions, seed=prefix)
    writers = [store.writer(session_id) for session_id in ids]
    throughput: list[float] = []
    p99: list[float] = []

    def one_repetition() -> float:
        stop = threading.Event()
        barrier = threading.Barrier(sessions + 1)
        latencies: list[list[float]] = [[] for _ in range(sessions)]

        def worker(index: int) -> None:
            write = writers[index]
            mine = latencies[index]
            barrier.wait()
            turn = index
            clock = time.perf_counter
            while not stop.is_set():
                begin = clock()
                write(pool[turn % 64])
                mine.append(clock() - begin)
                turn += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(sessions)]
        for thread in threads:
            thread.start()
        barrier.wait()
        start = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        every = [value for mine in latencies for value in mine]
        throughput.append(len(every) / elapsed)
        p99.append(percentile(every, 0.99) * 1000)
        return len(every) / elapsed

    repeat(one_repetition, sizes.repetitions, sizes.warmups)
    del throughput[: sizes.warmups], p99[: sizes.warmups]
    return Figure("events/s", throughput, True), Figure("ms", p99, False)


def run_appends(results: Results, sizes: Sizes, work: str) -> None:
    """Durable append throughput and p99 latency, for every contender and concurrency."""
    for name in CONTENDERS:
        store = make_store(name, os.path.join(work, "appends", name))
        try:
            for sessions in sizes.concurrency:
                log_line(f"appends: {name}, {sessions} concurrent sessions")
                rate, p99 = append_throughput(store, sessions, sizes.append_seconds, sizes,
                                              prefix=1000 + sessions)
                results.add(f"append_{sessions}",
                            f"durable appends, {sessions} session{'s' * (sessions > 1)}",
                            name, rate)
                results.add(f"append_p99_{sessions}",
                            f"p99 append latency, {sessions} session{'s' * (sessions > 1)}",
                            name, p99)
        finally:
            store.close()


# -- the shared dataset: replay, verify, rehydrate, sessions, disk ---------------------------------


def run_dataset(results: Results, sizes: Sizes, work: str) -> tuple[str, list[str]]:
    """Load the same dataset into every store, then the read figures; returns chatledger's
    ledger path and the dataset's session ids (for the runtime benchmarks)."""
    log_line(f"building the dataset: {sizes.sessions} sessions x 10 events "
             f"+ one {sizes.big_session_events}-event session")
    ids = session_ids(sizes.sessions)
    dataset = [(session_id, session_events(index)) for index, session_id in enumerate(ids)]
    big_id = session_ids(1, seed=99)[0]
    big = session_events(123_456, sizes.big_session_events)
    total = sizes.events + sizes.big_session_events
    chatledger_path = ""
    for name in CONTENDERS:
        store = make_store(name, os.path.join(work, "dataset", name))
        try:
            log_line(f"dataset: loading {total} events into {name}")
            seconds = timed(lambda store=store: (store.load(dataset), store.load([(big_id, big)])))
            results.add("load", "bulk load of the dataset", name,
                        Figure("events/s", [total / seconds], True, {"single_run": True}))
            results.add("bytes_per_event", "bytes on disk per event", name,
                        Figure("bytes", [store.disk_bytes() / total], False, {"single_run": True}))
            log_line(f"dataset: {name} replay")
            replay = repeat(lambda store=store: total / timed(store.replay), sizes.repetitions,
                            sizes.warmups)
            results.add("replay", f"replay {total:,} events (read all, decoded)", name,
                        Figure("events/s", replay, True))
            rehydrate = repeat(
                lambda store=store: _per_call_ms(lambda: store.rehydrate(big_id), 20),
                sizes.repetitions, sizes.warmups,
            )
            results.add("rehydrate", f"rehydrate a {sizes.big_session_events:,}-event session",
                        name, Figure("ms", rehydrate, False))
            if not isinstance(store, EventsourcingStore):
                listing = repeat(lambda store=store: timed(store.list_sessions) * 1000,
                                 sizes.repetitions, sizes.warmups)
                results.add("sessions", f"list {sizes.sessions + 1:,} sessions", name,
                            Figure("ms", listing, False))
            if isinstance(store, ChatledgerStore):
                log_line("dataset: the decode ceiling (raw LMDB scan + msgspec, no chatledger)")
                ceiling = repeat(lambda store=store: total / timed(store.raw_scan_and_decode),
                                 sizes.repetitions, sizes.warmups)
                results.add("replay_ceiling", "  ceiling: raw LMDB scan + msgspec decode",
                            name, Figure("events/s", ceiling, True))
                records = store.stored_records(min(total, DECODE_SAMPLE))
                decode = repeat(lambda records=records: len(records) / timed(
                    lambda: _decode_all(records)), sizes.repetitions, sizes.warmups)
                results.add("decode_only", "  msgspec decode alone (records in memory)",
                            name, Figure("events/s", decode, True))
                log_line("dataset: chatledger verify")
                verify = repeat(lambda store=store: total / timed(store.verify),
                                max(5, sizes.repetitions), 0 if sizes.name == "full" else 1)
                if not store.verify():
                    raise RuntimeError("the benchmark ledger does not verify")
                results.add("verify", f"verify {total:,} events (hash chains + indexes)", name,
                            Figure("events/s", verify, True))
                chatledger_path = store.path
        finally:
            store.close()
    results.notes["sessions"] = (
        "chatledger: its session index; sqlite: GROUP BY stream_id over the event table; "
        "eventsourcing has no session listing without a projection of your own"
    )
    results.notes["verify"] = "only chatledger keeps hash chains; the baselines have nothing to verify"
    return chatledger_path, ids


def _decode_all(records: list[bytes]) -> None:
    """Decode every record with msgspec alone: what this machine's CPU allows a replay."""
    decode = msgspec.msgpack.Decoder(Recorded).decode
    for record in records:
        decode(record)


def _per_call_ms(function: Callable[[], Any], calls: int) -> float:
    """Mean milliseconds per call over `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) * 1000 / calls


# -- chatledger's runtime -----------------------------------------------------------------------


def run_runtime(results: Results, sizes: Sizes, work: str, ledger_path: str,
                ids: list[str]) -> None:
    """Activation, CPU per turn and memory, on chatledger only (the baselines have no runtime)."""
    from chatledger.storage import EventLog

    log_line("runtime: activation of passivated sessions")
    with EventLog(ledger_path) as log:
        per = max(1, min(sizes.activations, len(ids) // (sizes.repetitions + sizes.warmups)))
        figure = activation(ledger_path, log, ids, per, sizes.repetitions, sizes.warmups)
        results.add("activation", "activate a passivated session (10 events)", "chatledger",
                    figure)
        big = [session_ids(1, seed=99)[0]] * (sizes.repetitions + sizes.warmups)
        figure = activation(ledger_path, log, big, 1, sizes.repetitions, sizes.warmups,
                            session_events=sizes.big_session_events)
        results.add("activation_big", f"activate a passivated {sizes.big_session_events:,}-event "
                    "session", "chatledger", figure)
    log_line("runtime: CPU per turn with the stand-in agent")
    turns = max(1, sizes.turns // sizes.repetitions)
    cpu, wall = cpu_per_turn(os.path.join(work, "turns"), turns, sizes.repetitions, sizes.warmups)
    results.add("cpu_per_turn", "chatledger CPU per turn (agent excluded)", "chatledger", cpu)
    results.add("wall_per_turn", "wall time per turn (incl. stand-in agent)", "chatledger", wall)
    held = min(sizes.live_sessions, len(ids))
    cap = Config().max_live_sessions
    log_line(f"runtime: memory of a backend holding {held} sessions (child process)")
    report = memory(ledger_path, held, cap=min(cap, held))
    results.add("rss_held", f"RSS holding {held:,} sessions (at most {cap:,} live actors, "
                "the default)", "chatledger",
                Figure("MiB", [report["rss_live"] / 2**20], False, {"single_run": True, **report}))
    results.add("anon_held", "  of which private (anonymous)", "chatledger",
                Figure("MiB", [report["anon_live"] / 2**20], False, {"single_run": True}))
    log_line(f"runtime: memory with {held} live actors at once (child process)")
    report = memory(ledger_path, held)
    kib = 1024
    results.add("memory_live", "RSS per live session actor", "chatledger",
                Figure("KiB", [report["rss_per_live_session"] / kib], False, {"single_run": True}))
    results.add("memory_live_anon", "  of which private (anonymous)", "chatledger",
                Figure("KiB", [report["anon_per_live_session"] / kib], False,
                       {"single_run": True}))
    results.add("memory_passivated", "RSS per passivated session", "chatledger",
                Figure("KiB", [report["rss_per_passivated_session"] / kib], False,
                       {"single_run": True}))
    results.add("memory_passivated_anon", "  of which private (anonymous)", "chatledger",
                Figure("KiB", [report["anon_per_passivated_session"] / kib], False,
                       {"single_run": True}))
    results.add("rss_live", f"RSS with {held:,} live actors at once (no cap)", "chatledger",
                Figure("MiB", [report["rss_live"] / 2**20], False,
                       {"single_run": True, **report}))
    results.add("anon_live", "  of which private (anonymous)", "chatledger",
                Figure("MiB", [report["anon_live"] / 2**20], False, {"single_run": True}))
    results.notes["memory"] = (
        "RSS = private memory + file pages of the LMDB map that were read (shared page cache, "
        "dropped by the kernel under pressure); 'passivated' is what stays after the actors "
        "stopped (allocator residue and mapped pages, no session state)"
    )


# -- targets, table, JSON ------------------------------------------------------------------------


def targets(results: Results, sizes: Sizes) -> list[dict[str, Any]]:
    """Each target of issue 8 with the measured value and whether it is met."""
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, goal: str, met: bool | None) -> None:
        checks.append({"target": name, "value": value, "goal": goal,
                       "met": None if value is None else met})

    ratio_sqlite = results.ratio("append_16", "sqlite")
    ratio_es = results.ratio("append_16", "eventsourcing")
    check("16 sessions vs SQLite", ratio_sqlite, ">= 2x",
          ratio_sqlite is not None and ratio_sqlite >= 2)
    check("16 sessions vs eventsourcing", ratio_es, ">= 4x", ratio_es is not None and ratio_es >= 4)
    p99 = results.value("append_p99_16")
    check("p99 append latency, 16 sessions (ms)", p99, "<= 5", p99 is not None and p99 <= 5)
    a16, a64 = results.value("append_16"), results.value("append_64")
    scaling = a64 / a16 if a16 and a64 else None
    check("64 sessions / 16 sessions throughput", scaling, ">= 0.95 (no worse, 5% noise)",
          scaling is not None and scaling >= 0.95)
    replay = results.value("replay")
    check("replay (events/s)", replay, ">= 800,000", replay is not None and replay >= 800_000)
    verify = results.value("verify")
    check("verify (events/s)", verify, ">= 300,000", verify is not None and verify >= 300_000)
    rehydrate = results.value("rehydrate")
    check("rehydrate 1,000 events (ms)", rehydrate, "<= 2",
          rehydrate is not None and rehydrate <= 2)
    ratio = results.ratio("rehydrate", "eventsourcing")
    check("rehydrate vs eventsourcing", ratio, ">= 10x", ratio is not None and ratio >= 10)
    listing = results.value("sessions")
    check(f"sessions over {sizes.sessions + 1:,} (ms)", listing, "<= 200",
          listing is not None and listing <= 200)
    active = results.value("activation")
    check("activation of a passivated session (ms)", active, "<= 5",
          active is not None and active <= 5)
    cpu = results.value("cpu_per_turn")
    check("chatledger CPU per turn (ms)", cpu, "<= 2", cpu is not None and cpu <= 2)
    rss = results.value("rss_held")
    check(f"RSS of a backend holding {sizes.live_sessions:,} sessions (MiB)", rss,
          "< 500 (for 10,000)", rss is not None and rss < 500)
    return checks


def _format(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "events/s" or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_table(results: Results, checks: list[dict[str, Any]]) -> str:
    """The results as an aligned text table (medians, spread, ratios), then the targets."""
    header = ("figure", "unit", "chatledger", "±%", "sqlite", "eventsourcing",
              "x sqlite", "x evsrc")
    rows = [header]
    for name, by_contender in results.figures.items():
        ours = by_contender.get("chatledger")
        unit = ours.unit if ours else next(iter(by_contender.values())).unit
        spread = ours.summary()["spread_pct"] if ours and len(ours.samples) > 1 else None
        ratio_sqlite = results.ratio(name, "sqlite")
        ratio_es = results.ratio(name, "eventsourcing")
        rows.append((
            results.labels[name], unit,
            _format(results.value(name), unit),
            f"{spread:.0f}" if spread is not None else "",
            _format(results.value(name, "sqlite"), unit),
            _format(results.value(name, "eventsourcing"), unit),
            f"{ratio_sqlite:.1f}x" if ratio_sqlite else "",
            f"{ratio_es:.1f}x" if ratio_es else "",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines.append("")
    lines.append("x = how many times better chatledger is (higher throughput or lower time); "
                 "±% = (max - min) / median over the repetitions")
    lines.append("")
    lines.append("targets (issue 8):")
    for item in checks:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[item["met"]]
        lines.append(f"  {item['target']:<44} {_format(item['value']):>12}  "
                     f"{item['goal']:<28} {verdict}")
    return "\n".join(lines)


def environment_description() -> dict[str, Any]:
    """Where and with what the benchmark ran."""
    import lmdb
    import msgspec

    try:
        import eventsourcing

        eventsourcing_version = getattr(eventsourcing, "__version__", "installed")
    except ImportError:
        eventsourcing_version = None
    from importlib.metadata import version

    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "system": platform.platform(),
        "python": sys.version.split()[0],
        "lmdb": lmdb.version(),
        "py-lmdb": version("lmdb"),
        "msgspec": msgspec.__version__,
        "sqlite": __import__("sqlite3").sqlite_version,
        "eventsourcing": version("eventsourcing") if eventsourcing_version else None,
    }


def machine_counters() -> dict[str, int]:
    """Counters that tell how undisturbed the machine was, where the system has them: major
    page faults (pages read back from disk), and CPU ticks in all and stolen by the host
    (Linux /proc/stat)."""
    counters: dict[str, int] = {}
    try:
        import resource  # POSIX only
    except ImportError:
        pass
    else:
        counters["major_page_faults"] = (resource.getrusage(resource.RUSAGE_SELF).ru_majflt
                                         + resource.getrusage(resource.RUSAGE_CHILDREN).ru_majflt)
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            ticks = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return counters
    if len(ticks) >= 8:
        counters["cpu_ticks"] = sum(ticks[:8])  # user .. steal; guest time is inside user
        counters["steal_ticks"] = ticks[7]
    return counters


def machine_conditions(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    """What the machine did during the run, from two `machine_counters` readings."""
    conditions: dict[str, float] = {}
    if "major_page_faults" in after:
        conditions["major_page_faults"] = (after["major_page_faults"]
                                           - before["major_page_faults"])
    ticks = after.get("cpu_ticks", 0) - before.get("cpu_ticks", 0)
    if ticks > 0:
        conditions["cpu_steal_pct"] = (after["steal_ticks"] - before["steal_ticks"]) / ticks * 100
    return conditions


def describe_conditions(conditions: dict[str, float]) -> str:
    """One line on the machine's conditions during the run."""
    parts = []
    if "major_page_faults" in conditions:
        parts.append(f"{conditions['major_page_faults']:,.0f} major page faults (pages read "
                     "back from disk)")
    if "cpu_steal_pct" in conditions:
        parts.append(f"{conditions['cpu_steal_pct']:.1f}% of CPU time stolen by the host")
    return "machine during the run: " + (", ".join(parts) if parts else "no counters here")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks; print the table; write the JSON report; return it."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="size", const="quick",
                      help="a smoke size (about a minute)")
    size.add_argument("--tiny", action="store_const", dest="size", const="tiny",
                      help="the smallest size, for the test suite (a few seconds)")
    parser.add_argument("--output", default=None,
                        help="the JSON report (default benchmarks/results-SIZE.json)")
    parser.add_argument("--workdir", default=None,
                        help="where the stores are written (default: a temporary directory)")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["appends", "dataset", "runtime"],
                        help="leave out a group of figures (repeatable)")
    args = parser.parse_args(argv)
    sizes = SIZES[args.size or "full"]
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                         f"results-{sizes.name}.json")
    work = args.workdir or tempfile.mkdtemp(prefix="chatledger-bench-")
    results = Results()
    stores = {name: make_store(name, os.path.join(work, "probe", name)) for name in CONTENDERS}
    durability = {name: store.durability for name, store in stores.items()}
    synchronous = {name: getattr(store, "synchronous", None) for name, store in stores.items()}
    for store in stores.values():
        store.close()
    print(f"chatledger benchmarks, size {sizes.name}: same data and same durability on every "
          "side (each append is on stable storage when it returns):")
    for name, text in durability.items():
        print(f"  {name}: {text}")
    print(f"  (SQLite PRAGMA synchronous as read back: sqlite={synchronous['sqlite']}, "
          f"eventsourcing={synchronous['eventsourcing']}; 2 = FULL)")
    print(flush=True)
    started = time.perf_counter()
    counters = machine_counters()
    try:
        if "appends" not in args.skip:
            run_appends(results, sizes, work)
        if "dataset" not in args.skip:
            ledger_path, ids = run_dataset(results, sizes, work)
            if "runtime" not in args.skip:
                run_runtime(results, sizes, work, ledger_path, ids)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    conditions = machine_conditions(counters, machine_counters())
    checks = targets(results, sizes)
    print(render_table(results, checks))
    print("\n" + describe_conditions(conditions))
    report = {
        "size": sizes.name,
        "sizes": sizes.__dict__,
        "environment": environment_description(),
        "machine_conditions": conditions,
        "durability": durability,
        "sqlite_synchronous": synchronous,
        "seconds": time.perf_counter() - started,
        "figures": {
            name: {"label": results.labels[name],
                   **{contender: figure.summary() for contender, figure in by.items()}}
            for name, by in results.figures.items()
        },
        "ratios": {
            name: {other: results.ratio(name, other) for other in CONTENDERS[1:]
                   if results.ratio(name, other) is not None}
            for name in results.figures
        },
        "targets": checks,
        "notes": results.notes,
    }
    with open(output, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, default=str)
    print(f"\nJSON report: {output} ({report['seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
