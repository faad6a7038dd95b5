"""The search side index's figures: word-query latency over a big log and index upkeep
against append throughput.

Run `python -m benchmarks.search` (100k events) or `python -m benchmarks.search --full`
(1M events, the issue's target size). It loads the benchmark dataset into a fresh LMDB
ledger in bulk, indexes it from the log (the catch-up every query does, here from position
1), measures durable single-event appends (each its own commit, as a turn's events are) and
the catch-up of those appends, then times word queries (each one catching up first, as
every query does). Prints one JSON object; writes nothing outside its work directory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from chatledger.catalog.search import SearchIndex
from chatledger.storage import SessionAppend, open_store

from .common import append_event, percentile, session_events, session_ids

QUERY_TARGET_MS = 300.0
UPKEEP_TARGET_PCT = 10.0
QUERIES: dict[str, tuple[str, str | None]] = {
    "one common word": ("solver", None),
    "two common words": ("mesh gradient", None),
    "three words": ("boundary load converge", None),
    "absent word": ("zyzzyva", None),
    "common and absent": ("solver zyzzyva", None),
    "common word, an owner with no sessions": ("solver", "nobody"),
}
"""Name -> (text, owner): the dataset's texts draw on 29 words, so these are its worst cases."""
_BULK_SESSIONS = 2000
"""Sessions per atomic append while loading the dataset."""


def load(path: str, events: int) -> float:
    """Fill a fresh ledger with `events` dataset events; returns the seconds it took."""
    sessions = events // 10
    ids = session_ids(sessions)
    started = time.perf_counter()
    with open_store(path) as store:
        for first in range(0, sessions, _BULK_SESSIONS):
            store.append_atomically([
                SessionAppend(ids[index], session_events(index), 0)
                for index in range(first, min(first + _BULK_SESSIONS, sessions))
            ])
    return time.perf_counter() - started


def appends_and_upkeep(path: str, index_file: Path, seconds: float) -> dict[str, Any]:
    """Durable single-event appends for `seconds`, then the catch-up that indexes them."""
    import random

    rng = random.Random(3)
    with open_store(path) as store, SearchIndex(store, index_file) as index:
        index.catch_up()
        appended = 0
        version = 0
        session_id = "bench-appender"
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            store.append(session_id, [append_event(rng)], version)
            version += 1
            appended += 1
        append_seconds = time.perf_counter() - started
        upkeep_started = time.perf_counter()
        indexed = index.catch_up()
        upkeep_seconds = time.perf_counter() - upkeep_started
    append_rate = appended / append_seconds
    upkeep_per_event = upkeep_seconds / max(indexed, 1)
    return {
        "appended_events": appended,
        "append_events_per_s": append_rate,
        "upkeep_seconds": upkeep_seconds,
        "upkeep_us_per_event": upkeep_per_event * 1e6,
        "upkeep_pct_of_append_time": upkeep_per_event * append_rate * 100,
    }


def queries(path: str, index_file: Path, repetitions: int, recent: datetime) -> dict[str, Any]:
    """Median and p99 milliseconds of each word query (catching up first), 50 hits each;
    the last ones only since `recent` (the single-event appends)."""
    figures: dict[str, Any] = {}
    cases = {name: (text, owner, None) for name, (text, owner) in QUERIES.items()}
    cases["common word, since the appends began"] = ("solver", None, recent)
    cases["common word, since a moment after everything"] = (
        "solver", None, datetime.now(timezone.utc) + timedelta(hours=1))
    with open_store(path) as store, SearchIndex(store, index_file) as index:
        index.catch_up()
        for name, (text, owner, since) in cases.items():
            samples = []
            hits = 0
            for _ in range(repetitions):
                started = time.perf_counter()
                hits = len(index.search(text, owner=owner, since=since, limit=50))
                samples.append((time.perf_counter() - started) * 1000)
            figures[name] = {"query": text, "owner": owner, "hits": hits,
                             "median_ms": statistics.median(samples),
                             "p99_ms": percentile(samples, 0.99), "max_ms": max(samples)}
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the search benchmark and print (and return) its figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__)
    parser.add_argument("--full", action="store_true", help="1M events (default 100k).")
    parser.add_argument("--events", type=int, help="This many events instead.")
    parser.add_argument("--append-seconds", type=float, default=3.0)
    parser.add_argument("--repetitions", type=int, default=30)
    parser.add_argument("--workdir", help="Where to build the ledger (default: a temp dir).")
    arguments = parser.parse_args(argv)
    events = arguments.events or (1_000_000 if arguments.full else 100_000)
    work = Path(arguments.workdir or tempfile.mkdtemp(prefix="chatledger-search-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    path = str(work / "ledger")
    index_file = work / "ledger.search.sqlite3"
    try:
        load_seconds = load(path, events)
        with open_store(path) as store, SearchIndex(store, index_file) as index:
            started = time.perf_counter()
            index.catch_up()
            build_seconds = time.perf_counter() - started
        recent = datetime.now(timezone.utc)
        upkeep = appends_and_upkeep(path, index_file, arguments.append_seconds)
        timings = queries(path, index_file, arguments.repetitions, recent)
        report = {
            "events": events,
            "bulk_load_seconds": load_seconds,
            "bulk_load_events_per_s": events / load_seconds,
            "index_build_seconds": build_seconds,
            "index_build_events_per_s": events / build_seconds,
            "index_build_pct_of_bulk_load": build_seconds / load_seconds * 100,
            "index_bytes": index_file.stat().st_size,
            "upkeep": upkeep,
            "queries": timings,
            "targets": {
                "word query <= 300 ms (worst median)": max(
                    figure["median_ms"] for figure in timings.values()) <= QUERY_TARGET_MS,
                "upkeep <= 10 % of append time": upkeep["upkeep_pct_of_append_time"]
                <= UPKEEP_TARGET_PCT,
            },
        }
    finally:
        if not arguments.workdir:
            shutil.rmtree(work, ignore_errors=True)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
