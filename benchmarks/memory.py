"""Memory of a backend holding many sessions, measured in a fresh process.

`python -m benchmarks.memory LEDGER_PATH N [--cap C]` opens the ledger (which already holds at
least N sessions), starts chatledger's runtime with at most C live session actors (default:
N, so every session is live at once), uses each of the N sessions once (its actor answers),
then passivates every live actor, and prints one JSON line with the resident set size (RSS)
at each step. With a cap below N, the runtime passivates the least recently used idle
sessions as it goes: that is what a backend gets by default. Run alone in its process so
nothing else's memory is counted.
"""

from __future__ import annotations

import argparse
import gc
import json
import threading
import time

from chatledger.storage import EventLog

from .common import memory_status
from .runtime_bench import open_ledger


def main(path: str, count: int, cap: int | None = None) -> dict[str, float]:
    """Measure and return the memory figures (bytes, and bytes per session): total RSS,
    its anonymous (private) part and its file-backed part (LMDB pages read)."""
    with EventLog(path) as log:
        session_ids = [info.session_id for info in log.sessions() if info.version][:count]
    if len(session_ids) < count:
        raise SystemExit(f"the ledger holds {len(session_ids)} sessions, not {count}")
    ledger = open_ledger(path, max_live_sessions=cap or count)
    runtime = ledger.runtime
    threads_before = threading.active_count()
    gc.collect()
    time.sleep(0.2)
    baseline = memory_status()
    start = time.perf_counter()
    for session_id in session_ids:
        runtime.live_info(session_id)
    activation_seconds = time.perf_counter() - start
    gc.collect()
    live = memory_status()
    threads_live = threading.active_count()
    live_actors = len(runtime.live_sessions())
    for session_id in runtime.live_sessions():
        runtime.passivate(session_id)
    deadline = time.monotonic() + 120
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    gc.collect()
    passivated = memory_status()
    ledger.close()
    report: dict[str, float] = {
        "sessions": count,
        "max_live_sessions": cap or count,
        "live_actors": live_actors,
        "threads_before": threads_before,
        "threads_live": threads_live,
        "threads_after_passivation": threading.active_count(),
        "activation_seconds": activation_seconds,
    }
    for name, key in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile")):
        report[f"{name}_baseline"] = baseline.get(key, 0)
        report[f"{name}_live"] = live.get(key, 0)
        report[f"{name}_passivated"] = passivated.get(key, 0)
        report[f"{name}_per_live_session"] = (
            live.get(key, 0) - baseline.get(key, 0)) / max(live_actors, 1)
        report[f"{name}_per_passivated_session"] = max(
            0, passivated.get(key, 0) - baseline.get(key, 0)) / count
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("sessions", type=int)
    parser.add_argument("--cap", type=int, default=None,
                        help="live session actors at most (default: as many as sessions)")
    options = parser.parse_args()
    print(json.dumps(main(options.path, options.sessions, options.cap)))
